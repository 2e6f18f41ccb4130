"""A Ctrl-C inside a measuring phase: what the phase had trained is counted, and the report says so."""

from __future__ import annotations

import optuna
import pytest

from batchtune.study import measured
from batchtune.study.budget import Budget, Spend
from batchtune.study.config import SearchConfig
from batchtune.study.report import measured_section


class Runner:
    """Answers the measuring phases' worker calls like the real worker, and raises KeyboardInterrupt (the
    user's Ctrl-C) at call number ``stop``."""

    device = "cpu"

    def __init__(self, stop: int) -> None:
        self.stop, self.calls = stop, []

    def call_task(self, name, args, timeout=None):
        self.calls.append(args)
        if len(self.calls) == self.stop:
            raise KeyboardInterrupt
        if name.endswith("range_test"):
            b, steps = args["batch_size"], args["steps"]
            lrs = [1e-5 * 10 ** (i / 8) for i in range(steps)]
            losses = [2.0 - i / steps for i in range(steps)]
            return {"batch_size": b, "norm": args["norm"], "lrs": lrs, "losses": losses, "samples": steps * b}
        plan = args["plan"]
        n = plan["steps"]
        return {"cpu": [0.01] * n, "wall": [0.01] * n, "calibration": {"cpu": [0.001] * n, "wall": [0.001] * n},
                "peak_memory_bytes": 1000, "memory_kind": "rss"}


def test_a_ctrl_c_inside_a_measuring_phase_counts_the_finished_measurements():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    cfg = SearchConfig(task_path="task.py")
    budget = Budget(trial_equivalents=30, trial_samples=10_000)
    sizes = (8, 16, 32, 64, 128)

    lr = Runner(stop=3)  # the range tests at batch 8 and 32 finish, the one at 128 is cut short
    with pytest.raises(KeyboardInterrupt):
        measured.measure_lr_windows(study, lr, cfg, sizes=sizes, norms=("batch",), device="cpu", threads=1,
                                    family="sgd", budget=budget, warnings=[])
    assert [c["batch_size"] for c in lr.calls] == [8, 32, 128]
    assert study.user_attrs[measured.INTERRUPTED_KEY] == {"lr_range": 50 * 8 + 50 * 32}
    assert "lr_range" not in study.user_attrs  # nothing half-measured is reused: the resume measures again

    speed = Runner(stop=2)  # one cell measured, the second visit cut short
    with pytest.raises(KeyboardInterrupt):
        measured.measure_speed(study, speed, cfg, sizes=sizes, norms=("batch",), device="cpu", threads=1,
                               budget=budget, limit_bytes=None, warnings=[])
    first = speed.calls[0]["plan"]
    assert study.user_attrs[measured.INTERRUPTED_KEY]["speed"] == (first["warmup"] + first["steps"]) * first["batch_size"]

    # A second interrupt of the same phase adds to the first; a Ctrl-C before anything finished adds nothing.
    with pytest.raises(KeyboardInterrupt):
        measured.measure_lr_windows(study, Runner(stop=2), cfg, sizes=sizes, norms=("batch",), device="cpu",
                                    threads=1, family="sgd", budget=budget, warnings=[])
    with pytest.raises(KeyboardInterrupt):
        measured.measure_lr_windows(study, Runner(stop=1), cfg, sizes=sizes, norms=("batch",), device="cpu",
                                    threads=1, family="sgd", budget=budget, warnings=[])
    record = study.user_attrs[measured.INTERRUPTED_KEY]
    assert record["lr_range"] == 50 * 8 + 50 * 32 + 50 * 8

    spend = Spend(budget)
    measured.add_interrupted(study, spend)
    assert spend.spent == record
    compute = {**spend.to_dict(), "interrupted_trial_equivalents": {k: budget.equivalents(v) for k, v in record.items()}}
    text = "\n".join(measured_section({"compute": compute}))
    assert "Ctrl-C cut short" in text and "lr_range 0.24" in text
    assert "Ctrl-C" not in "\n".join(measured_section({"compute": spend.to_dict()}))


def test_a_ctrl_c_between_a_candidate_s_seeds_counts_the_seed_that_finished():
    from types import SimpleNamespace

    import pandas as pd

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    cols = ["trial", "status", "feasible", "batch_size", "lr", "norm", "precision", "metric", "throughput"]
    trials = pd.DataFrame([[0, "ok", True, 16, 0.01, "batch", "fp32", 0.98, 900.0]], columns=cols)
    runs = []

    class Reruns:
        def run(self, spec, timeout=None):
            runs.append(spec)
            if len(runs) == 2:
                raise KeyboardInterrupt
            return SimpleNamespace(samples=4096, status="ok", final_metric=0.97, reason=None)

    with pytest.raises(KeyboardInterrupt):
        measured.rerun_candidates(study, Reruns(), SearchConfig(task_path="task.py"), trials=trials, cells=None,
                                  mode="max", count=1, seeds=2, spec_for=lambda c, seed: seed, close=0.01)
    assert runs == [1000, 1001]
    assert study.user_attrs[measured.INTERRUPTED_KEY] == {"reruns": 4096}
    assert not study.user_attrs.get("candidates")  # the unfinished candidate is re-trained on resume


def test_the_search_counts_the_recorded_interrupted_compute_in_its_budget():
    """The phase that plans the budget reads the record: the interrupted samples are spent (the trials get
    less) and stored with the budget for the report."""
    from types import SimpleNamespace

    import torch

    from batchtune.study import run

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(measured.INTERRUPTED_KEY, {"lr_range": 2_000, "speed": 500})
    # No speed measurement and a fixed LR range: only the record and the reserves shape the budget.
    cfg = SearchConfig(task_path="task.py", budget=30, epochs=1, probe=False, lr_min=1e-3, lr_max=1e-1)
    setup = SimpleNamespace(sizes=(8, 16), norms=("batch",), train_size=1_000, family="sgd",
                            task=SimpleNamespace(metric_mode="max"), device=torch.device("cpu"), left_out={})
    plan, spend, _ = run._measure_before_trials(study, cfg, setup, SimpleNamespace(device="cpu"), lambda line: None)
    assert spend.spent == {"lr_range": 2_000, "speed": 500}
    stored = study.user_attrs["budget"]
    assert stored["interrupted_trial_equivalents"] == {"lr_range": 2.0, "speed": 0.5}
    assert stored["spent_samples"] == {"speed": 500, "lr_range": 2_000}
    reserved = (4 * 2 + 2) * 1_000 + int(0.15 * 30_000)  # 4 candidates x 2 seeds, 2 race seeds, the climb's share
    assert plan.trial_budget == 30_000 - 2_500 - reserved
