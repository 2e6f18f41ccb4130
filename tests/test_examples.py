"""The example task files load and pass the contract checks batchtune runs before every study."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchtune.task.contract import (
    build_model,
    dry_run,
    load_task,
    make_dataset,
    search_norms,
)
from batchtune.task.norm import count_batchnorm

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_passes_the_contract_checks(path):
    if path.stem.startswith("digits"):
        pytest.importorskip("sklearn")
    if path.stem.startswith("hf_"):
        pytest.importorskip("transformers")
    task = load_task(path)
    norms, _ = search_norms(task, None)
    dry_run(task, norms)
    assert len(make_dataset(task, "train")) > len(make_dataset(task, "val")) > 0


def test_digits_mlp_has_batchnorm_only_when_asked():
    pytest.importorskip("sklearn")
    task = load_task(Path(__file__).parent.parent / "examples" / "digits_mlp.py")
    assert count_batchnorm(build_model(task, "batch")) == 2
    assert count_batchnorm(build_model(task, "group")) == 0
