"""Coordinator time per trial with SQLite and PostgreSQL storage (target < 50 ms with PostgreSQL).

Times what the coordinator does around each trial, with the coordinator's own functions: read and
count the study's trials, claim a trial (ask), suggest its parameters, record the measurements (one
user attribute, the memory constraint), tell. The trial's own work happens in the
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
import sqlalchemy
from optuna.trial import TrialState

from batchtune.config import SearchConfig
from batchtune.results import counts
from batchtune.storage import open_storage
from batchtune.study import (
    _claim,
    _Progress,
    _record,
    _suggest,
    _trial_plan,
    quiet_optuna,
)
from batchtune.train import TrialResult


def measure(url: str, n: int = 40) -> tuple[list[float], float]:
    """Seconds per trial, and SQL statements per trial (a figure the machine's load cannot move)."""
    storage = open_storage(url)
    statements = [0]
    sqlalchemy.event.listen(storage.engine, "before_cursor_execute", lambda *a, **k: statements.__setitem__(0, statements[0] + 1))
    study = optuna.create_study(study_name=f"overhead_{uuid.uuid4().hex[:8]}", storage=storage,
                                directions=["maximize", "maximize", "minimize"],
                                sampler=optuna.samplers.TPESampler(seed=0, multivariate=True))
    cfg = SearchConfig(task_path="x.py", memory_budget=2**30, lr_rule="none", trials=n)
    plan = _trial_plan(cfg, (16, 32, 64, 128), 1000, "sgd", "max")
    progress = _Progress(n, "max")
    curve = [{"step": i, "epoch": i, "samples": 100 * i, "train_loss": 1.0, "val_loss": 1.0, "val_metric": 0.9,
              "time": 1.0} for i in range(3)]
    times = []
    statements[0] = 0
    for i in range(n):
        # The same calls, in the same order, as batchtune.study._worker_loop around runner.run.
        start = time.perf_counter()
        trials = study.get_trials(deepcopy=False)
        done = sum(counts(t) for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        progress.seen(done)
        trial = _claim(study, cfg.trials, trials, known=done + running + waiting)
        spec, base_lr = _suggest(trial, cfg, plan, ("batch", "group", "layer", "none"), "cpu", 1)
        result = TrialResult(status="ok", throughput=1000.0 + i, final_metric=0.9, best_metric=0.9,
                             peak_memory_bytes=2**28, step_times=[0.01] * 200, curve=curve)
        _record(study, trial, result, spec, cfg, plan, base_lr, "cpu")
        progress.finished(result.status)
        times.append(time.perf_counter() - start)
    return times, statements[0] / n


def main() -> None:
    with quiet_optuna(), tempfile.TemporaryDirectory() as tmp:
        sqlite, sql = measure(f"sqlite:///{tmp}/overhead.db")
        print(f"SQLite: {sql:.0f} SQL statements per trial, median {statistics.median(sqlite) * 1000:.1f} ms per trial, "
              f"last 10 median {statistics.median(sqlite[-10:]) * 1000:.1f} ms (TPE grows with the trials)")
        url = os.environ.get("BATCHTUNE_TEST_POSTGRES_URL")
        if not url:
            print("PostgreSQL: skipped (set BATCHTUNE_TEST_POSTGRES_URL; bash .ci/postgres.sh starts a server)")
            return
        pg, sql = measure(url)
        med = statistics.median(pg)
        print(f"PostgreSQL: {sql:.0f} SQL statements per trial, median {med * 1000:.1f} ms per trial, last 10 median {statistics.median(pg[-10:]) * 1000:.1f} ms; "
              f"target < 50 ms: {'PASS' if med < 0.05 else 'FAIL'}")


if __name__ == "__main__":
    main()
