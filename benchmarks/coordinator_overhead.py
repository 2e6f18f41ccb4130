"""Coordinator time per trial with SQLite and PostgreSQL storage (target < 50 ms with PostgreSQL).

Times what the coordinator does around each trial: count the study's trials, ask, suggest the three
parameters, record the measurements as user attributes, tell. The trial's own work happens in the
worker process and is not part of this figure. Set BATCHTUNE_TEST_POSTGRES_URL (bash .ci/postgres.sh)
for the PostgreSQL figure.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import uuid

import optuna

from batchtune.config import SearchConfig
from batchtune.results import counts
from batchtune.storage import open_storage
from batchtune.study import _record, _trial_plan, quiet_optuna
from batchtune.train import TrialResult, TrialSpec


def measure(url: str, n: int = 40) -> list[float]:
    storage = open_storage(url)
    study = optuna.create_study(study_name=f"overhead_{uuid.uuid4().hex[:8]}", storage=storage,
                                directions=["maximize", "maximize", "minimize"],
                                sampler=optuna.samplers.TPESampler(seed=0, multivariate=True))
    cfg = SearchConfig(task_path="x.py", memory_budget=2**30, lr_rule="none")
    plan = _trial_plan(cfg, (16, 32, 64, 128), 1000, "sgd", "max")
    curve = [{"step": i, "epoch": i, "samples": 100 * i, "train_loss": 1.0, "val_loss": 1.0, "val_metric": 0.9,
              "time": 1.0} for i in range(3)]
    times = []
    for i in range(n):
        start = time.perf_counter()
        sum(counts(t) for t in study.get_trials(deepcopy=False))
        trial = study.ask()
        trial.set_user_attr("worker", {"host": "h", "pid": 1})
        bs = trial.suggest_categorical("batch_size", [16, 32, 64, 128])
        lr = trial.suggest_float("lr", 1e-4, 0.3, log=True)
        norm = trial.suggest_categorical("norm", ["batch", "group", "layer", "none"])
        spec = TrialSpec(batch_size=bs, lr=lr, norm=norm)
        result = TrialResult(status="ok", throughput=1000.0 + i, final_metric=0.9, best_metric=0.9,
                             peak_memory_bytes=2**28, step_times=[0.01] * 200, curve=curve)
        _record(study, trial, result, spec, cfg, plan, lr)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    with quiet_optuna(), tempfile.TemporaryDirectory() as tmp:
        sqlite = measure(f"sqlite:///{tmp}/overhead.db")
        print(f"SQLite: median {statistics.median(sqlite) * 1000:.1f} ms per trial, "
              f"last 10 median {statistics.median(sqlite[-10:]) * 1000:.1f} ms (TPE grows with the trials)")
        url = os.environ.get("BATCHTUNE_TEST_POSTGRES_URL")
        if not url:
            print("PostgreSQL: skipped (set BATCHTUNE_TEST_POSTGRES_URL; bash .ci/postgres.sh starts a server)")
            return
        pg = measure(url)
        med = statistics.median(pg)
        print(f"PostgreSQL: median {med * 1000:.1f} ms per trial, last 10 median {statistics.median(pg[-10:]) * 1000:.1f} ms; "
              f"target < 50 ms: {'PASS' if med < 0.05 else 'FAIL'}")


if __name__ == "__main__":
    main()
