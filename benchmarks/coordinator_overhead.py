"""Coordinator time per trial with SQLite and PostgreSQL storage (target < 50 ms with PostgreSQL).

Times what the coordinator does around each trial, with the coordinator's own functions: claim a
trial and read the study (batchtune.study.ledger), suggest its parameters, record the measurements (one
user attribute, the memory constraint), tell. The trial's own work happens in the worker process and
is not part of this figure. Side by side, trial by trial on a second study, the same work through
Optuna's public ask/suggest/set_user_attr/set_constraint/tell, which batchtune used before: the
ratio holds on a loaded machine, the absolute times do not. Also counts SQL statements per trial,
which load cannot move. Set BATCHTUNE_TEST_POSTGRES_URL (bash .ci/postgres.sh) for PostgreSQL.

    PYTHONPATH=. python benchmarks/coordinator_overhead.py [--trials 40]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid

import optuna
import sqlalchemy

from batchtune.study.config import SearchConfig
from batchtune.study.coordinator import (
    Progress,
    Tally,
    claim,
    record,
    trial_space,
    trial_spec,
)
from batchtune.study.run import quiet_optuna, trial_plan
from batchtune.study.storage import open_storage
from batchtune.trial.train import TrialResult

NORMS = ("batch", "group", "layer", "none")
SIZES = (16, 32, 64, 128)


def _study(storage):
    return optuna.create_study(study_name=f"overhead_{uuid.uuid4().hex[:8]}", storage=storage,
                               directions=["maximize", "maximize", "minimize"],
                               sampler=optuna.samplers.TPESampler(seed=0, multivariate=True))


def _result(i: int) -> TrialResult:
    curve = [{"step": s, "epoch": s, "samples": 100 * s, "train_loss": 1.0, "val_loss": 1.0, "val_metric": 0.9,
              "time": 1.0} for s in range(3)]
    return TrialResult(status="ok", throughput=1000.0 + i, final_metric=0.9 - 0.001 * (i % 7), best_metric=0.9,
                       peak_memory_bytes=2**28, step_times=[0.01] * 200, curve=curve)


def measure(url: str, n: int) -> dict[str, tuple[list[float], float]]:
    """Per path: seconds per trial, and SQL statements per trial."""
    storage = open_storage(url)
    statements = [0]
    sqlalchemy.event.listen(storage.engine, "before_cursor_execute",
                            lambda *a, **k: statements.__setitem__(0, statements[0] + 1))
    lean, plain = _study(storage), _study(storage)
    cfg = SearchConfig(task_path="x.py", memory_budget=2**30, lr_rule="none", objective="pareto", trials=n).validated()
    plan = trial_plan(cfg, SIZES, 1000, "sgd", "max")
    progress = Progress(n, "max")
    out: dict[str, tuple[list[float], float]] = {"batchtune": ([], 0.0), "optuna ask/tell": ([], 0.0)}
    space = trial_space(cfg, plan, NORMS)
    for i in range(n):
        # batchtune.study.coordinator.worker_loop around runner.run: the same calls in the same order.
        statements[0] = 0
        start = time.perf_counter()
        tally = Tally(lean.get_trials(deepcopy=False))
        progress.seen(tally.done)
        trial = claim(lean, cfg.trials, space, tally.trials)
        spec, base_lr = trial_spec(trial.params, cfg, plan, "cpu", 1)
        result = _result(i)
        record(lean, trial, result, spec, cfg, plan, base_lr, "cpu")
        progress.finished(result.status)
        out["batchtune"][0].append(time.perf_counter() - start)
        out["batchtune"] = (out["batchtune"][0], out["batchtune"][1] + statements[0] / n)

        # The same work through Optuna's public trial API.
        statements[0] = 0
        start = time.perf_counter()
        sum(t.state.is_finished() for t in plain.get_trials(deepcopy=False))
        t = plain.ask()
        t.set_user_attr("worker", {"host": "h", "pid": 1})
        t.suggest_categorical("batch_size", list(SIZES))
        t.suggest_float("lr", cfg.lr_min, cfg.lr_max, log=True)
        t.suggest_categorical("norm", list(NORMS))
        t.set_user_attr("result", result.to_dict())
        t.set_constraint("memory", -0.75)
        plain.tell(t, [result.final_metric, result.throughput, float(result.peak_memory_bytes)])
        out["optuna ask/tell"][0].append(time.perf_counter() - start)
        out["optuna ask/tell"] = (out["optuna ask/tell"][0], out["optuna ask/tell"][1] + statements[0] / n)
    return out


def report(name: str, figures: dict[str, tuple[list[float], float]], target: float | None = None) -> None:
    ours = statistics.median(figures["batchtune"][0])
    for path, (times, sql) in figures.items():
        med = statistics.median(times)
        verdict = f"; target < {target * 1000:.0f} ms: {'PASS' if med < target else 'FAIL'}" if target and path == "batchtune" else ""
        print(f"{name} {path:16s} {sql:5.1f} SQL statements per trial, median {med * 1000:6.1f} ms, "
              f"last 10 median {statistics.median(times[-10:]) * 1000:6.1f} ms{verdict}")
    print(f"{name} batchtune / optuna ask-tell time per trial: {ours / statistics.median(figures['optuna ask/tell'][0]):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    args = parser.parse_args()
    with quiet_optuna(), tempfile.TemporaryDirectory() as tmp:
        report("SQLite:    ", measure(f"sqlite:///{tmp}/overhead.db", args.trials))
        url = os.environ.get("BATCHTUNE_TEST_POSTGRES_URL")
        if not url:
            print("PostgreSQL: skipped (set BATCHTUNE_TEST_POSTGRES_URL; bash .ci/postgres.sh starts a server)")
            return
        report("PostgreSQL:", measure(url, args.trials), target=0.05)


if __name__ == "__main__":
    main()
