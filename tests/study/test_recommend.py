"""The recommendation rule on hand-made trial tables."""

from __future__ import annotations

import pandas as pd
import pytest

from batchtune.study.config import Tolerance
from batchtune.study.recommend import (
    default_tolerance,
    lr_advice,
    lr_scale,
    pareto_front,
    recommend,
)


def table(rows):
    base = {"status": "ok", "feasible": True, "norm": "batch", "lr": 0.1, "precision": "fp32"}
    return pd.DataFrame([{**base, **r} for r in rows])


T = table(
    [
        {"trial": 0, "batch_size": 32, "metric": 0.980, "throughput": 1000.0, "peak_memory_bytes": 100},
        {"trial": 1, "batch_size": 64, "metric": 0.977, "throughput": 1800.0, "peak_memory_bytes": 150},
        {"trial": 2, "batch_size": 128, "metric": 0.960, "throughput": 3000.0, "peak_memory_bytes": 250},
        {"trial": 3, "batch_size": 64, "metric": 0.970, "throughput": 1700.0, "peak_memory_bytes": 160},  # dominated by 1
        {"trial": 4, "batch_size": 256, "metric": 0.990, "throughput": 9000.0, "peak_memory_bytes": 50, "status": "diverged"},
        {"trial": 5, "batch_size": 512, "metric": 0.995, "throughput": 9000.0, "peak_memory_bytes": 900, "feasible": False},
    ]
)


def test_pareto_front_excludes_dominated_infeasible_and_diverged():
    front = pareto_front(T, "max")
    assert sorted(front["trial"]) == [0, 1, 2]


def test_fastest_within_tolerance_wins():
    rec = recommend(T, mode="max")
    # 1 pp of 0.980: trial 1 (0.977) is in, trial 2 (0.960) is not; trial 1 is faster than trial 0.
    assert rec.trial == 1 and rec.best_trial == 0
    assert rec.tolerance == Tolerance(0.01, "absolute")
    assert rec.params == {"batch_size": 64, "lr": 0.1, "norm": "batch"}
    assert "gives up 0.30 points" in rec.reason and "1.80x its throughput" in rec.reason


def test_wider_tolerance_takes_faster_trial():
    assert recommend(T, mode="max", tolerance=Tolerance(0.03, "absolute")).trial == 2


def test_throughput_tie_goes_to_lower_memory():
    t = table(
        [
            {"trial": 0, "batch_size": 32, "metric": 0.9, "throughput": 1000.0, "peak_memory_bytes": 300},
            {"trial": 1, "batch_size": 16, "metric": 0.9, "throughput": 990.0, "peak_memory_bytes": 100},
        ]
    )
    assert recommend(t, mode="max").trial == 1


def test_min_mode_uses_relative_tolerance():
    t = table(
        [
            {"trial": 0, "batch_size": 32, "metric": 2.00, "throughput": 1000.0, "peak_memory_bytes": 100},
            {"trial": 1, "batch_size": 64, "metric": 2.015, "throughput": 2000.0, "peak_memory_bytes": 100},
            {"trial": 2, "batch_size": 128, "metric": 2.10, "throughput": 4000.0, "peak_memory_bytes": 100},
        ]
    )
    rec = recommend(t, mode="min")
    assert rec.tolerance == Tolerance(0.01, "relative") and rec.best_trial == 0 and rec.trial == 1


def test_nothing_feasible_means_no_recommendation():
    t = T.assign(status="oom")
    assert recommend(t, mode="max") is None


def test_default_tolerance_by_metric_range():
    assert default_tolerance(pd.Series([0.1, 0.9]), "max").kind == "absolute"
    assert default_tolerance(pd.Series([0.1, 1.5]), "max").kind == "relative"
    assert default_tolerance(pd.Series([0.1, 0.2]), "min").kind == "relative"


def test_lr_scaling_rules():
    assert lr_scale(32, 128, "sgd") == pytest.approx(4.0)
    assert lr_scale(32, 128, "adaptive") == pytest.approx(2.0)
    text = lr_advice(128, 0.4, 32, "sgd")
    assert "use lr 0.1 (0.4 x 0.25)" in text and "Goyal et al. 2017" in text
    assert "Malladi" in lr_advice(128, 0.004, 32, "adaptive")
    assert lr_advice(128, 0.4, 128, "sgd") is None
