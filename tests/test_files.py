"""Whole-or-nothing writes (batchtune.files): the file gets the mode any other file would."""

from __future__ import annotations

import os
import stat

import pytest

from batchtune.files import write_json, write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_reports_get_the_umask_mode_like_plots(tmp_path, umask_022):
    # Issue 14 item 17: the temporary file's 0600 leaked into every report while plots were 0644.
    plot = tmp_path / "plot.png"
    plot.write_bytes(b"png")
    report = write_text(tmp_path / "report.md", "# report\n")
    summary = write_json(tmp_path / "summary.json", {"a": 1})
    assert mode(report) == mode(summary) == mode(plot) == 0o644
    assert report.read_text() == "# report\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_rewrite_keeps_a_mode_the_user_chose(tmp_path, umask_022):
    path = write_text(tmp_path / "report.md", "one\n")
    path.chmod(0o600)
    write_text(path, "two\n")
    assert mode(path) == 0o600 and path.read_text() == "two\n"


def test_a_folder_in_the_way_is_named_not_a_full_disk(tmp_path):
    """report.md existing as a folder was reported as "free disk space"."""
    import pytest

    from batchtune.errors import OutputError
    from batchtune.files import write_text

    (tmp_path / "report.md").mkdir()
    with pytest.raises(OutputError, match=r"Is a directory; a folder is in the way: move or remove .*report.md"):
        write_text(tmp_path / "report.md", "# report\n")


def test_an_infinite_budget_is_named_as_such():
    import pytest

    from batchtune.errors import UsageError
    from batchtune.study.config import SearchConfig

    with pytest.raises(UsageError, match=r"--budget inf is not a number of trial-equivalents; pass a finite one"):
        SearchConfig(task_path="t.py", budget=float("inf")).validated()
    with pytest.raises(UsageError, match=r"--budget 0.5 must be at least 1 trial-equivalent"):
        SearchConfig(task_path="t.py", budget=0.5).validated()
