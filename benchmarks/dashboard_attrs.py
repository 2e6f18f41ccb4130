"""What the readable trial attributes for optuna-dashboard cost: SQL statements and time per trial.

``batchtune.study.coordinator.record`` stores a trial's measurements as one attribute ("result") and,
for optuna-dashboard, the key figures again as separate rounded attributes
(:func:`batchtune.study.dashboard.readable_attrs`), one storage transaction each. This records the
same ``--trials`` results with and without them, alternating trial by trial on two SQLite studies,
and prints the SQL statements and the median milliseconds of ``record`` per trial, and the
difference per attribute. (PostgreSQL too when BATCHTUNE_TEST_POSTGRES_URL is set.)

    PYTHONPATH=. python benchmarks/dashboard_attrs.py [--trials 40]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from unittest import mock

import optuna
import sqlalchemy

from batchtune.study import dashboard
from batchtune.study.config import SearchConfig
from batchtune.study.coordinator import Tally, claim, record, trial_space, trial_spec
from batchtune.study.run import quiet_optuna, trial_plan
from batchtune.study.storage import open_storage
from batchtune.trial.train import TrialResult

NORMS = ("batch", "group", "layer", "none")
SIZES = (16, 32, 64, 128)


def _result(i: int) -> TrialResult:
    curve = [{"step": s, "epoch": s, "samples": 100 * s, "train_loss": 1.0, "val_loss": 1.0, "val_metric": 0.9,
              "time": 1.0} for s in range(3)]
    return TrialResult(status="ok", throughput=1000.0 + i, final_metric=0.9 - 0.001 * (i % 7), best_metric=0.9,
                       peak_memory_bytes=2**28, step_times=[0.01] * 200, curve=curve, wall_time=12.345678)


def measure(url: str, n: int) -> dict[str, tuple[list[float], float]]:
    storage = open_storage(url)
    statements = [0]
    sqlalchemy.event.listen(storage.engine, "before_cursor_execute",
                            lambda *a, **k: statements.__setitem__(0, statements[0] + 1))
    cfg = SearchConfig(task_path="x.py", lr_rule="none", objective="metric", trials=n).validated()
    plan = trial_plan(cfg, SIZES, 1000, "sgd", "max")
    space = trial_space(cfg, plan, NORMS)
    studies = {name: optuna.create_study(study_name=f"attrs_{uuid.uuid4().hex[:8]}", storage=storage,
                                         direction="maximize") for name in ("with", "without")}
    out: dict[str, tuple[list[float], float]] = {name: ([], 0.0) for name in studies}
    for i in range(n):
        for name, study in studies.items():
            trial = claim(study, n, space, Tally(study.get_trials(deepcopy=False)).trials)
            spec, base_lr = trial_spec(trial.params, cfg, plan, "cpu", 1)
            patch = mock.patch.object(dashboard, "readable_attrs", lambda data: {}) if name == "without" else mock.MagicMock()
            with patch:
                statements[0] = 0
                start = time.perf_counter()
                record(study, trial, _result(i), spec, cfg, plan, base_lr, "cpu")
                elapsed = time.perf_counter() - start
            times, sql = out[name]
            out[name] = (times + [elapsed], sql + statements[0] / n)
    return out


def report(name: str, figures: dict[str, tuple[list[float], float]]) -> None:
    count = len(dashboard.readable_attrs(_result(0).to_dict() | {"lr": 0.01}))
    for path, (times, sql) in figures.items():
        print(f"{name} record() {path:7s} readable attributes: {sql:5.1f} SQL statements, "
              f"median {statistics.median(times) * 1000:6.1f} ms per trial")
    extra = statistics.median(figures["with"][0]) - statistics.median(figures["without"][0])
    print(f"{name} {count} readable attributes add {extra * 1000:.1f} ms per trial ({extra * 1000 / count:.1f} ms each), "
          f"{figures['with'][1] - figures['without'][1]:.0f} SQL statements")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    args = parser.parse_args()
    with quiet_optuna(), tempfile.TemporaryDirectory() as tmp:
        report("SQLite:    ", measure(f"sqlite:///{tmp}/attrs.db", args.trials))
        url = os.environ.get("BATCHTUNE_TEST_POSTGRES_URL")
        if url:
            report("PostgreSQL:", measure(url, args.trials))


if __name__ == "__main__":
    main()
