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


def test_search_runs_on_the_hugging_face_example(cli):
    pytest.importorskip("transformers")
    example = Path(__file__).parent.parent / "examples" / "hf_text_classifier.py"
    result = cli("search", example, "--trials", "2", "--epochs", "0.2", "--batch-sizes", "16,32", "--lr-min", "1e-4",
                 "--lr-max", "3e-3", "--no-probe", "--no-doctor", "--no-plots", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert "Recommended: batch size" in result.output
    assert "norms as-built" in result.output
