"""The batch doctor: each check fires on a task built to trigger it and stays quiet on a clean one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from batchtune.doctor.checks import (
    Labels,
    check_batchnorm,
    check_dataset_size,
    check_label_balance,
    check_sorted,
    diagnose,
)
from batchtune.doctor.report import doctor_lines, doctor_markdown


def _by_check(diagnosis):
    return {(f.check, f.severity) for f in diagnosis.findings}


def test_clean_task_has_no_warnings(tasks):
    d = diagnose(tasks / "tiny_mlp.py", batch_sizes=[32], device="cpu")
    assert d.errors == () and d.warnings == ()
    assert {f.check for f in d.findings} >= {"label-balance", "sorted-labels", "loader"}
    assert d.exit_code == 0
    assert d.to_dict()["counts"] == {"info": len(d.findings), "warning": 0, "error": 0}


def test_sorted_labels_and_sliced_validation(tasks):
    d = diagnose(tasks / "doctor_sorted.py", batch_sizes=[16], device="cpu", loader=False)
    found = _by_check(d)
    assert ("sorted-labels", "warning") in found and ("val-coverage", "warning") in found
    sorted_finding = next(f for f in d.findings if f.check == "sorted-labels")
    assert sorted_finding.details["adjacent_same_label"] > 0.9 and "shuffle" in sorted_finding.fix


def test_imbalanced_labels(tasks):
    d = diagnose(tasks / "doctor_imbalanced.py", batch_sizes=[16], device="cpu", loader=False)
    finding = next(f for f in d.findings if f.check == "label-balance")
    assert finding.severity == "warning"
    assert finding.details["rarest_class"] == 1 and finding.details["rarest_share"] == pytest.approx(0.02)
    # (1 - 0.02)^16 = 0.72 of shuffled batches miss the minority class.
    assert finding.details["rarest_absent_fraction"] == pytest.approx(0.98**16, abs=0.06)
    assert "WeightedRandomSampler" in finding.fix and "149" in finding.fix  # ceil(ln 0.05 / ln 0.98)


def test_tiny_dataset_and_batchnorm(tasks):
    too_big = diagnose(tasks / "doctor_tiny.py", batch_sizes=[32], device="cpu")
    assert ("batch-vs-dataset", "error") in _by_check(too_big) and too_big.exit_code == 1
    small = diagnose(tasks / "doctor_tiny.py", batch_sizes=[4], device="cpu", loader=False)
    found = _by_check(small)
    # 21 % 4 == 1: without drop_last the last batch holds one sample.
    assert ("batchnorm-batch", "warning") in found and ("batchnorm-last-batch", "warning") in found
    assert small.exit_code == 0
    group = diagnose(tasks / "doctor_tiny.py", batch_sizes=[4], norm="group", device="cpu", loader=False)
    assert not any(f.check.startswith("batchnorm") for f in group.findings)


def test_slow_loader_starves_the_model(tasks):
    d = diagnose(tasks / "doctor_slow.py", batch_sizes=[16], device="cpu")
    finding = next(f for f in d.findings if f.check == "loader")
    assert finding.severity == "warning"
    assert finding.details["loader_share"] >= 0.3 and finding.details["suggested_num_workers"] >= 1
    assert 'DATALOADER = {"num_workers": ' in finding.fix


def test_loader_check_counts_the_task_files_workers(tasks, tmp_path):
    """A task whose DATALOADER already sets workers is judged with them, and never told to use fewer."""
    import os

    task = tmp_path / "slow_with_workers.py"
    task.write_text((tasks / "doctor_slow.py").read_text() + "\n\nDATALOADER = {\"num_workers\": 2}\n")
    d = diagnose(task, batch_sizes=[16], device="cpu")
    finding = next(f for f in d.findings if f.check == "loader")
    assert finding.details["num_workers"] == 2 and finding.details["suggested_num_workers"] >= 2
    one_process = finding.details["load_seconds_per_batch"] / (
        finding.details["load_seconds_per_batch"] + finding.details["compute_seconds_per_step"])
    assert finding.details["loader_share"] < one_process  # two workers hide part of the loading
    assert finding.severity == "warning"  # 40 ms of waiting per batch against well under 1 ms of compute
    if (os.cpu_count() or 1) <= 3:  # no core left for a third worker: the fix is precomputing
        assert "precompute" in finding.fix and '"num_workers": ' not in finding.fix
    else:
        assert int(finding.fix.split('"num_workers": ')[1].split(",")[0]) > 2


def test_checks_as_pure_functions():
    assert check_dataset_size(100, [64])[0].check == "drop-last"  # 36 of 100 dropped
    assert check_dataset_size(100, [50]) == []
    balanced = Labels(np.tile(np.arange(4), 100), "class", True)
    assert check_label_balance(balanced, 32)[0].severity == "info"
    # Period-4 cycling labels never repeat a neighbour: not sorted.
    assert check_sorted(balanced)[0].severity == "info"
    ramp = Labels(np.linspace(0, 1, 300), "scalar", True)
    assert check_sorted(ramp)[0].severity == "warning"
    from torch import nn

    bn = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4))
    ones = check_batchnorm(bn, 100, [1])
    assert ones[0].severity == "error"
    assert check_batchnorm(bn, 100, [4], other_norms=("batch", "group"))[0].severity == "info"


def test_rendering(tasks):
    d = diagnose(tasks / "doctor_tiny.py", batch_sizes=[4, 32], device="cpu", loader=False)
    lines = doctor_lines(d)
    assert lines[0].startswith("batch doctor:") and lines[1].startswith("ERROR")  # worst first
    assert "exit code 1" in lines[-1]
    md = doctor_markdown(d.to_dict())
    assert md.startswith("## Batch doctor") and "| severity" in md


def test_check_cli_exit_codes_and_json(cli, tasks):
    clean = cli("check", tasks / "tiny_mlp.py", "--batch-size", "32")
    assert clean.exit_code == 0, clean.output
    assert "no errors or warnings" in clean.output
    bad = cli("check", tasks / "doctor_tiny.py", "--batch-size", "64", "--json")
    assert bad.exit_code == 1
    data = json.loads(bad.stdout)
    assert set(data) == {"task", "batch_sizes", "norm", "train_size", "counts", "exit_code", "findings"}
    assert data["exit_code"] == 1 and data["batch_sizes"] == [64] and data["train_size"] == 21
    assert {"check", "severity", "message", "fix", "details"} == set(data["findings"][0])
    missing = cli("check", "nope.py")
    assert missing.exit_code == 2 and "no such task file" in missing.output
    zero = cli("check", tasks / "tiny_mlp.py", "--batch-size", "0")
    assert zero.exit_code == 2 and "--batch-size" in zero.output


def test_a_labels_attribute_of_strings_falls_back_to_the_items():
    """A Dataset keeping its labels as names (mapped to numbers in __getitem__) had every label check
    skipped as "not one number per sample"; the items hold the numbers."""
    import torch

    from batchtune.doctor.checks import read_labels

    names = ["a", "b", "c"]

    class Named(torch.utils.data.Dataset):
        def __init__(self):
            self.labels = sorted(names[i % 3] for i in range(30))

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return torch.zeros(2), names.index(self.labels[i])

    labels = read_labels(Named())
    assert labels is not None and labels.kind == "class"
    assert labels.values.tolist() == [0] * 10 + [1] * 10 + [2] * 10


def test_labels_a_collate_fn_adds_are_read_through_it():
    """Hugging Face style: items hold "label", collate_fn returns "labels" (TARGET_KEY) so the model computes
    its own loss. The labels were unread: no chance level for the near-chance warning, no label checks."""
    import torch

    from batchtune.doctor.checks import read_labels
    from batchtune.study.run import majority_share

    items = [{"input_ids": torch.ones(3 + i % 4, dtype=torch.long), "label": int(i % 10 == 0)} for i in range(150)]

    def collate(batch):
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.stack([torch.nn.functional.pad(b["input_ids"], (0, width - len(b["input_ids"]))) for b in batch])
        return {"input_ids": ids, "labels": torch.tensor([b["label"] for b in batch])}

    assert read_labels(items, target_key="labels") is None  # without the collate_fn: not in the items
    labels = read_labels(items, target_key="labels", collate=collate)
    assert labels is not None and labels.kind == "class" and labels.complete and len(labels.values) == 150
    assert majority_share(items, "labels", collate) == 0.9
