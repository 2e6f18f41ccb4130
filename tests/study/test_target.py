"""Time to target: read off learning curves, the miss penalty, and a pruned time-to-target search."""

from __future__ import annotations

import json

import optuna
import pandas as pd
import pytest

from batchtune.study import target as tt
from batchtune.study.results import measurements

CURVE = [
    {"samples": 512, "val_metric": 0.50},
    {"samples": 1024, "val_metric": 0.91},
    {"samples": 1536, "val_metric": 0.89},
    {"samples": 2048, "val_metric": 0.95},
]


def test_samples_and_time_to_target_from_a_curve():
    assert tt.samples_to_target(CURVE, 0.9, "max") == 1024
    assert tt.samples_to_target(list(reversed(CURVE)), 0.9, "max") == 1024
    assert tt.samples_to_target(CURVE, 0.95, "max") == 2048
    assert tt.samples_to_target(CURVE, 0.99, "max") is None
    assert tt.samples_to_target(CURVE, 0.6, "min") == 512
    assert tt.time_to_target(1024, 2048.0) == pytest.approx(0.5)
    assert tt.time_to_target(None, 2048.0) is None and tt.time_to_target(1024, None) is None
    out = tt.outcome(CURVE, 0.9, "max", throughput=4096.0)
    assert out.reached and out.samples == 1024 and out.seconds == pytest.approx(0.25)


def test_misses_rank_behind_hits_and_by_distance():
    hit = tt.outcome(CURVE, 0.9, "max", throughput=1.0)  # 1024 s: slow, but it got there
    miss_close = tt.outcome(CURVE, 0.96, "max", throughput=1e9)
    miss_far = tt.outcome(CURVE[:1], 0.96, "max", throughput=1e9)
    assert not miss_close.reached and miss_close.seconds is None
    assert hit.objective(0.95, 0.9) < miss_close.objective(0.95, 0.96) < miss_far.objective(0.50, 0.96)


def test_first_rung_at_a_ninth_of_the_budget_and_after_the_first_evaluation():
    # 512 samples: batch 8 evaluates first at 64 * 8, batch 128 at 4 * 128 (each epoch).
    assert tt.first_rung_samples([8, 128], 512, None, budget_samples=9 * 512) == 512
    assert tt.first_rung_samples([8, 128], 512, 0.25, budget_samples=3 * 512) == 170


def test_time_to_target_search_prunes_a_lagging_trial(cli, tasks, workdir):
    # Two trials in a fixed order: batch 8 at a good LR learns quickly; batch 128 at a tiny LR has
    # taken 2 steps at the first rung (256 samples) and is still near chance, so it must be pruned.
    storage = "sqlite:///studies/tiny_mlp.db"
    (workdir / "studies").mkdir()
    study = optuna.create_study(study_name="tiny_mlp", storage=storage, directions=["minimize"])
    study.enqueue_trial({"batch_size": 8, "lr": 0.05, "norm": "none"})
    study.enqueue_trial({"batch_size": 128, "lr": 1e-4, "norm": "none"})
    result = cli("search", tasks / "tiny_mlp.py", "--trials", "2", "--batch-sizes", "8,128", "--norms", "none",
                 "--lr-rule", "none", "--lr-min", "1e-4", "--lr-max", "0.1", "--epochs", "3", "--eval-every", "0.5",
                 "--objective", "time-to-target", "--target", "0.9", "--threads", "1", "--no-plots")
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny_mlp", storage=storage)
    first, second = study.trials
    assert first.state == optuna.trial.TrialState.COMPLETE and measurements(first)["reached_target"] is True
    # It stopped at the target: its last evaluation is the first that reached it.
    assert measurements(first)["samples"] == measurements(first)["samples_to_target"] < 3 * 512
    assert first.value == pytest.approx(measurements(first)["samples_to_target"] / measurements(first)["throughput"])
    assert second.state == optuna.trial.TrialState.PRUNED
    assert measurements(second)["status"] == "pruned" and measurements(second)["reached_target"] is False
    assert "pruned by successive halving at 256 samples" in measurements(second)["reason"]
    trials = pd.read_csv(workdir / "reports" / "tiny_mlp" / "trials.csv")
    assert list(trials["status"]) == ["ok", "pruned"]
    summary = json.loads((workdir / "reports" / "tiny_mlp" / "summary.json").read_text())
    assert summary["n_trials"] == 2 and summary["status_counts"] == {"ok": 1, "pruned": 1}
    rec = summary["recommendation"]
    assert rec["objective"] == "time-to-target" and rec["trial"] == 0
    assert rec["time_to_target"] == pytest.approx(first.value)
    report = (workdir / "reports" / "tiny_mlp" / "report.md").read_text()
    assert "## Time to target" in report and "| pruned " in report
