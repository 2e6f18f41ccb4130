"""Learning-rate rules: the scaling math, the reference batch, warm-up, and trials that follow the rule."""

from __future__ import annotations

import json
import math

import optuna
import pytest

from batchtune.errors import UsageError
from batchtune.study import lr_rule
from batchtune.study.results import measurements
from batchtune.task.contract import load_task, make_dataset
from batchtune.trial.train import TrialSpec, run_trial

# LR rules scale a sampled base LR: the --objective pareto and time-to-target searches (the default measures the LR).
FAST = ["--threads", "1", "--no-plots", "--objective", "pareto"]


def test_factor_and_scaled_lr():
    assert lr_rule.factor("linear", 512, 256) == 2.0
    assert lr_rule.factor("linear", 64, 256) == 0.25
    assert lr_rule.factor("sqrt", 1024, 256) == 2.0
    assert lr_rule.factor("sqrt", 64, 256) == 0.5
    assert lr_rule.factor("none", 1024, 256) == 1.0
    assert lr_rule.scaled_lr(0.1, "linear", 1024, 256) == pytest.approx(0.4)
    assert lr_rule.scaled_lr(1e-3, "sqrt", 16, 256) == pytest.approx(2.5e-4)


def test_resolve_rule_from_optimizer_family():
    assert lr_rule.resolve_rule("auto", "sgd") == "linear"
    assert lr_rule.resolve_rule("auto", "adaptive") == "sqrt"
    assert lr_rule.resolve_rule("none", "sgd") == "none"
    with pytest.raises(UsageError, match="--lr-rule 'cubic' is not a rule"):
        lr_rule.resolve_rule("cubic", "sgd")


def test_reference_batch_is_256_clipped_into_range():
    assert lr_rule.reference_batch(None, (8, 16, 512, 1024)) == 256
    assert lr_rule.reference_batch(None, (8, 16, 32, 64)) == 64
    assert lr_rule.reference_batch(None, (512, 1024)) == 512
    assert lr_rule.reference_batch(100, (512, 1024)) == 100


def test_default_warmup_only_for_linear():
    assert lr_rule.default_warmup_epochs("linear", 3.0) == pytest.approx(0.15)
    assert lr_rule.default_warmup_epochs("sqrt", 3.0) == 0.0
    assert lr_rule.default_warmup_epochs("none", 3.0) == 0.0


def test_lr_table_rows():
    rows = lr_rule.lr_table(0.1, "linear", 256, [512, 64, 256, 64])
    assert [(r.batch_size, r.lr) for r in rows] == [(64, pytest.approx(0.025)), (256, 0.1), (512, 0.2)]


def test_warmup_ramps_the_lr_linearly(tasks):
    task = load_task(tasks / "lr_recorder.py")
    lrs = task.build_optimizer.__globals__["LRS"]
    lrs.clear()
    # 512 samples / batch 64 = 8 steps per epoch; 0.5 epochs of warm-up = 4 steps.
    spec = TrialSpec(batch_size=64, lr=0.2, norm="none", epochs=1.0, lr_warmup_epochs=0.5, threads=1)
    result = run_trial(task, spec, make_dataset(task, "train"), make_dataset(task, "val"))
    assert result.status == "ok", result.reason
    assert lrs == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.2, 0.2, 0.2, 0.2])


def test_search_scales_each_trial_lr_by_the_rule(cli, tasks, workdir):
    # tiny_min uses Adam: auto picks the square-root rule; 256 clipped into 16..64 gives reference 64.
    result = cli("search", tasks / "tiny_min.py", "--trials", "3", "--batch-sizes", "16,64", "--lr-min", "0.003",
                 "--lr-max", "0.05", "--epochs", "2", "--target", "1.0", *FAST)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny_min", storage="sqlite:///studies/tiny_min.db")
    assert study.user_attrs["batchtune_space"]["lr_rule"] == "sqrt"
    for t in study.trials:
        a = measurements(t)
        assert a["lr_rule"] == "sqrt" and a["lr_reference_batch"] == 64
        assert t.params["base_lr"] == a["base_lr"]
        assert a["lr"] == pytest.approx(a["base_lr"] * math.sqrt(t.params["batch_size"] / 64))
        assert a["lr_warmup_epochs"] == 0.0
        # --target under the default pareto objective: recorded from the learning curve.
        first = next((p["samples"] for p in a["curve"] if p["val_metric"] <= 1.0), None)
        assert a["samples_to_target"] == first and a["reached_target"] == (first is not None)
        if first is not None:
            assert a["time_to_target"] == pytest.approx(first / a["throughput"])
    summary = json.loads((workdir / "reports" / "tiny_min" / "summary.json").read_text())
    rec = summary["recommendation"]
    table = {row["batch_size"]: row["lr"] for row in rec["lr_table"]}
    assert set(table) == {16, 64}
    assert table[64] == pytest.approx(rec["base_lr"]) and table[16] == pytest.approx(rec["base_lr"] / 2)
    assert "## Learning rate by batch size" in (workdir / "reports" / "tiny_min" / "report.md").read_text()
    # The rule is part of the study's search space: resuming with another one is refused.
    again = cli("search", tasks / "tiny_min.py", "--trials", "4", "--batch-sizes", "16,64", "--lr-min", "0.003",
                "--lr-max", "0.05", "--epochs", "2", "--target", "1.0", "--lr-rule", "none", *FAST)
    assert again.exit_code == 2
    assert "was created with lr_rule sqrt, not none" in again.output
