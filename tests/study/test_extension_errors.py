"""Bad values of the LR-rule, objective, target and accumulation options: one-line errors, exit 2."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "args, message",
    [
        (["--accumulate", "0"], "--accumulate 0 must be at least 1"),
        (["--objective", "time-to-target"], "--objective time-to-target needs --target"),
        (["--warmup-epochs", "-1"], "--warmup-epochs -1 must be 0 or a positive number"),
        (["--warmup-epochs", "3", "--epochs", "2"], "--warmup-epochs 3 is not shorter than the trial"),
        (["--lr-reference-batch", "0"], "--lr-reference-batch 0 must be a positive batch size"),
    ],
)
def test_bad_values_give_one_line(cli, tasks, args, message):
    result = cli("search", tasks / "tiny_mlp.py", *args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]


@pytest.mark.parametrize("option", ["--lr-rule", "--objective"])
def test_unknown_choices_are_refused(cli, tasks, option):
    result = cli("search", tasks / "tiny_mlp.py", option, "foo")
    assert result.exit_code == 2
    assert f"Invalid value for '{option}': 'foo' is not one of" in result.output
    assert "Traceback" not in result.output
