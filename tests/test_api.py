"""The Python API: keywords as on the command line, and the spawn pitfall named before anything runs."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import batchtune
from batchtune.api import _keywords
from batchtune.errors import UsageError
from batchtune.study.config import SearchConfig


def test_cli_spellings_map_to_config_fields():
    options = _keywords("search", SearchConfig, batchtune.api._SEARCH_CLI,
                        {"output": "out", "no_plots": True, "no_probe": True, "no_doctor": True, "trials": 3})
    assert options == {"output_dir": "out", "plots": False, "probe": False, "doctor": False, "trials": 3}
    assert _keywords("search", SearchConfig, batchtune.api._SEARCH_CLI, {"output_dir": "x", "plots": False}) == {
        "output_dir": "x", "plots": False}


def test_values_spelled_as_on_the_command_line_are_parsed_as_the_cli_parses_them():
    """memory_budget="6GiB" reached the first trial as a string (a TypeError there, the trial left RUNNING);
    headroom="10%" failed the same way in search and probe."""
    from batchtune.api import _cli_strings

    parsed = _cli_strings("search", {"memory_budget": "6GiB", "headroom": "10%", "epochs": "1", "batch_sizes": "8,16",
                                     "norms": "batch,none", "trials": 3})
    assert parsed == {"memory_budget": 6 << 30, "headroom": 0.1, "epochs": 1.0, "batch_sizes": (8, 16),
                      "norms": ("batch", "none"), "trials": 3}
    assert _cli_strings("probe", {"headroom": "5%", "memory_budget": "1MiB"}) == {"headroom": 0.05,
                                                                                 "memory_budget": 1 << 20}
    with pytest.raises(UsageError, match=r"batchtune.search\(batch_sizes='abc'\): .*not a comma-separated list of "
                                         r"integers"):
        batchtune.search("task.py", batch_sizes="abc")
    with pytest.raises(UsageError, match=r"batchtune.search\(epochs='x'\): .*'x' is not a valid float"):
        batchtune.search("task.py", epochs="x")


def test_unknown_keyword_lists_the_valid_ones():
    with pytest.raises(UsageError, match=r"batchtune.search\(\) got an unknown keyword epoch=3; did you mean epochs=\? "
                                         r"Valid keywords .*no_plots, .*output, output_dir"):
        batchtune.search("task.py", epoch=3)


def test_json_keyword_points_at_the_summary():
    with pytest.raises(UsageError, match=r"json=\.\.\.\) is a CLI option; the returned result's .summary"):
        batchtune.search("task.py", json=True)


SCRIPT = """
import batchtune

{call}
"""


def run_script(tmp_path, call):
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(SCRIPT.format(call=call)))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          check=False)


def test_unguarded_script_is_named_before_any_worker_starts(tmp_path):
    done = run_script(tmp_path, 'batchtune.search("task.py", trials=0)')
    assert done.returncode != 0
    assert "run.py:4: batchtune.search() runs while the script is imported" in done.stderr
    assert 'put the call under `if __name__ == "__main__":`' in done.stderr


def test_guarded_script_passes_the_check(tmp_path):
    done = run_script(tmp_path, 'if __name__ == "__main__":\n    batchtune.search("task.py", trials=0)')
    assert "runs while the script is imported" not in done.stderr
    assert "--trials 0 must be at least 1" in done.stderr  # got past the check, to the config's validation
