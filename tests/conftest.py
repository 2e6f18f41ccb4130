"""Shared fixtures: tiny task files under tests/tasks/, and a CLI runner in a scratch folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

TASKS = Path(__file__).parent / "tasks"


@pytest.fixture
def tasks() -> Path:
    return TASKS


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch current directory, so studies/ and reports/ land in it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def cli(workdir: Path):
    """Run ``batchtune ARGS`` in-process; returns click's Result (exit_code, stdout, stderr)."""
    from batchtune.cli import cli as group

    def run(*args: str, env: dict[str, str] | None = None):
        runner = CliRunner()
        return runner.invoke(group, [str(a) for a in args], env=env, catch_exceptions=False)

    return run


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Keep trials single-threaded in tests: the CI machine has 2 cores and tests run side by side.
os.environ.setdefault("BATCHTUNE_TEST", "1")
