"""Reading a baseline file (batchtune.gate.baseline): every field read from a file is bounded."""

from __future__ import annotations

import json

import pytest

from batchtune.errors import BaselineError
from batchtune.gate.baseline import from_dict
from tests.gate.test_decision import repeats, run


def baseline(**config):
    data = run(repeats(0.01, seed=0, n_repeats=2, steps=3)).to_dict()
    data["config"].update(config)
    return json.loads(json.dumps(data))  # what a file gives back


def test_a_saved_run_reads_back():
    assert from_dict(baseline()).config["repeat"] == 8


@pytest.mark.parametrize(
    "config, message",
    [
        # Issue 14 item 10: repeat = 1e9 made `bench --compare` run for ever.
        ({"repeat": 10**9}, r"config.repeat must be an integer from 2 to 1000"),
        ({"repeat": 1e9}, r"config.repeat must be an integer from 2 to 1000"),
        ({"steps": 10**12}, r"config.steps must be an integer from 3 to 100000"),
        ({"warmup": -1}, r"config.warmup must be an integer from 0 to 100000"),
        ({"processes": 10**6}, r"config.processes must be an integer from 1 to 64"),
        ({"epochs": 1e12}, r"config.epochs must be null or a number of epochs above 0 and at most 1000"),
        ({"seed": -1}, r"config.seed must be an integer from 0 to 4294967295"),
        ({"batch_size": 2**40}, r"config.batch_size must be an integer from 1 to"),
        ({"lr": "fast"}, r"config.lr must be a positive finite number"),
        ({"repeat": True}, r"config.repeat must be an integer"),
    ],
)
def test_unbounded_fields_are_refused(config, message):
    with pytest.raises(BaselineError, match=message):
        from_dict(baseline(**config), where="b.json")


def test_threads_in_the_fingerprint_are_bounded():
    data = baseline()
    data["fingerprint"]["threads"] = 10**7
    with pytest.raises(BaselineError, match=r"fingerprint.threads must be an integer from 1 to 1024"):
        from_dict(data, where="b.json")


def test_bench_refuses_a_baseline_that_would_run_for_ever(cli, tasks, workdir):
    path = workdir / "b.json"
    path.write_text(json.dumps(baseline(repeat=10**9)))
    result = cli("bench", tasks / "tiny_mlp.py", "--compare", path)
    assert result.exit_code == 2 and "config.repeat must be an integer from 2 to 1000" in result.output


def test_flags_have_the_bounds_a_file_is_read_back_with(cli, tasks):
    result = cli("bench", tasks / "tiny_mlp.py", "--batch-size", "16", "--repeat", "5000")
    assert result.exit_code == 2 and "--repeat 5000 is above the most batchtune measures, 1000" in result.output
