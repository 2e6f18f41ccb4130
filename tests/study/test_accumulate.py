"""Gradient accumulation: the split of effective batches, equivalence with a full batch, and the search."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest

from batchtune.errors import UsageError
from batchtune.study.accumulate import Split, plan, split
from batchtune.study.results import measurements
from batchtune.task.contract import load_task, make_dataset
from batchtune.trial.train import TrialSpec, run_trial


def test_split_uses_the_fewest_steps_that_fit():
    assert split(32, 64, 4) == Split(32, 32, 1)
    assert split(128, 64, 4) == Split(128, 64, 2)
    assert split(96, 40, 4) == Split(96, 32, 3)
    with pytest.raises(UsageError, match="batch size 1024 cannot be split into at most 4"):
        split(1024, 64, 4)


def test_plan_extends_powers_of_two_up_to_the_training_set():
    sizes = plan((8, 16, 32), max_steps=8, micro_max=32, train_size=200, explicit=False)
    assert list(sizes) == [8, 16, 32, 64, 128]
    assert sizes[128] == Split(128, 32, 4)
    assert list(plan((8, 16, 32), max_steps=1, micro_max=32, train_size=200, explicit=False)) == [8, 16, 32]


def test_accumulated_micro_batches_match_the_full_batch(tasks):
    task = load_task(tasks / "lr_recorder.py")  # no BatchNorm: micro-batch statistics do not matter
    train, val = make_dataset(task, "train"), make_dataset(task, "val")
    common = dict(lr=0.1, norm="none", epochs=2.0, eval_every=0.5, threads=1)
    full = run_trial(task, TrialSpec(batch_size=64, **common), train, val)
    accumulated = run_trial(task, TrialSpec(batch_size=16, accumulate=4, **common), train, val)
    assert full.status == accumulated.status == "ok"
    assert [p["samples"] for p in accumulated.curve] == [p["samples"] for p in full.curve]
    for a, b in zip(accumulated.curve, full.curve):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    assert accumulated.steps == full.steps == 16


def test_search_reaches_batches_above_the_micro_batch_limit(cli, tasks, workdir):
    result = cli("search", tasks / "tiny_mlp.py", "--objective", "pareto", "--trials", "3", "--batch-sizes", "32,128", "--batch-size-max", "32",
                 "--accumulate", "4", "--norms", "none,layer", "--lr-min", "0.01", "--lr-max", "0.3", "--epochs", "2",
                 "--threads", "1", "--no-plots")
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny_mlp", storage="sqlite:///studies/tiny_mlp.db")
    space = study.user_attrs["batchtune_space"]
    assert space["accumulate"] == 4 and space["micro_batch_max"] == 32 and space["lr_rule"] == "linear"
    for t in study.trials:
        a = measurements(t)
        assert a["micro_batch"] * a["accumulate"] == a["effective_batch_size"] == t.params["batch_size"]
        assert a["micro_batch"] == 32
        # Linear rule (SGD), reference 128 (256 clipped into 32..128), with the default warm-up.
        assert a["lr"] == pytest.approx(a["base_lr"] * t.params["batch_size"] / 128)
        assert a["lr_warmup_epochs"] == pytest.approx(0.1)
    trials = pd.read_csv(workdir / "reports" / "tiny_mlp" / "trials.csv")
    rows = set(zip(trials["batch_size"], trials["micro_batch"], trials["accumulate"]))
    assert (128, 32, 4) in rows and rows <= {(32, 32, 1), (128, 32, 4)}
    assert "32 x 4" in (workdir / "reports" / "tiny_mlp" / "report.md").read_text()
