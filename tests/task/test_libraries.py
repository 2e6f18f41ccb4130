"""Models and data as people write them with the real libraries (tiny configurations, random
initialisation, generated data; nothing is downloaded): each task file passes the dry run and trains.

timm and torchvision 0.28 cannot be imported against the CPU torch here; their BatchNormAct2d layer
is reproduced in tests/tasks/bn_act.py and tests/task/test_norm.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from batchtune.task.contract import (
    AS_BUILT,
    dry_run,
    load_task,
    make_dataset,
    search_norms,
)
from batchtune.trial.train import TrialSpec, run_trial

EXAMPLES = Path(__file__).parent.parent.parent / "examples"


def trained(path, batch_size=8, lr=3e-3):
    task = load_task(path)
    norms, _ = search_norms(task, None)
    dry_run(task, norms)
    spec = TrialSpec(batch_size=batch_size, lr=lr, norm=norms[0], epochs=1, threads=1, warmup_steps=1)
    result = run_trial(task, spec, make_dataset(task, "train"), make_dataset(task, "val"))
    assert result.status == "ok", result.reason
    return task, result


def test_transformers_sequence_classifier_as_written():
    pytest.importorskip("transformers")
    task, result = trained(EXAMPLES / "hf_text_classifier.py", batch_size=32)
    assert task.target_key == "labels" and not task.custom_loss and not task.custom_metric
    assert 0.0 <= result.final_metric <= 1.0


def test_transformers_causal_lm_trains_on_its_own_loss(tasks):
    pytest.importorskip("transformers")
    import torch

    from batchtune.task.contract import build_model, default_loss, forward, split_batch

    task, result = trained(tasks / "hf_causal_lm.py")
    assert not task.custom_loss
    assert result.curve[-1]["val_metric"] == pytest.approx(result.curve[-1]["val_loss"], rel=1e-5)
    from torch.utils.data import default_collate

    inputs, target = split_batch(task, default_collate(make_dataset(task, "train")[:2]))
    torch.manual_seed(0)
    output = forward(build_model(task, AS_BUILT), inputs, "labels")
    assert default_loss(output, target) is output.loss  # labels reached the model, which shifted them itself


def test_causal_lm_with_the_default_metric_names_the_fix(tasks, tmp_path):
    pytest.importorskip("transformers")
    from batchtune.errors import TaskError

    source = (tasks / "hf_causal_lm.py").read_text().replace("def metric(", "def _metric(").replace('METRIC_MODE = "min"', "")
    (tmp_path / "lm.py").write_text(source)
    task = load_task(tmp_path / "lm.py")
    with pytest.raises(TaskError, match=r"the model computes its own loss from targets of shape \(2, 12\) .*define "
                                        r"metric\(output, target\), e.g. `return output.loss.item\(\)`"):
        dry_run(task, (AS_BUILT,))


def test_datasets_dict_items_without_a_wrapper(tasks):
    pytest.importorskip("datasets")
    pytest.importorskip("transformers")
    task, result = trained(tasks / "hf_datasets_bert.py")
    assert task.target_key == "label" and result.final_metric is not None


def test_datasets_labels_out_of_range_are_read_from_the_column(tasks, tmp_path):
    pytest.importorskip("datasets")
    pytest.importorskip("transformers")
    from batchtune.errors import TaskError

    source = (tasks / "hf_datasets_bert.py").read_text().replace("num_labels=3", "num_labels=2")
    (tmp_path / "two.py").write_text(source)
    with pytest.raises(TaskError, match=r"train_dataset\(\) has labels outside \[0, 2\): they range over \[0, 2\]"):
        dry_run(load_task(tmp_path / "two.py"), (AS_BUILT,))


def test_variable_length_lstm_with_collate_fn_trains_and_is_doctored(tasks):
    from batchtune.doctor.checks import diagnose

    task, _ = trained(tasks / "lstm_varlen.py")
    assert task.collate_fn is not None
    diagnosis = diagnose(task, batch_sizes=[8])
    assert diagnosis.exit_code == 0
    assert {f.check for f in diagnosis.findings} >= {"loader"}
