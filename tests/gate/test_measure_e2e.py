"""End-to-end CI gate through the CLI: save a baseline, compare, refuse, reject bad files.

Measurements run in real worker processes on a tiny task with few steps. The regression is made by
BATCHTUNE_TEST_SLOWDOWN (tests/tasks/slowable_mlp.py spins for that fraction of each step), large
enough (3x) that the verdict does not depend on the machine's noise; benchmarks/bench_gate.py
measures the gate's statistical power at its default settings.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TASKS = Path(__file__).parent.parent / "tasks"

FAST = ["--batch-size", "32", "--repeat", "4", "--steps", "12", "--warmup", "3", "--processes", "1", "--threads", "1"]
# The A/A comparison here checks the plumbing, not the statistics: a wide threshold keeps it
# independent of how busy the test machine is.
WIDE = ["--max-slowdown", "60%"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One baseline with a convergence check, measured once for the whole module."""
    from click.testing import CliRunner

    from batchtune.cli import cli as group

    folder = tmp_path_factory.mktemp("bench")
    path = folder / "baselines" / "slowable.json"
    result = CliRunner().invoke(
        group, ["bench", str(TASKS / "slowable_mlp.py"), *FAST, "--epochs", "1", "--save", str(path)],
        env={"BATCHTUNE_TEST_SLOWDOWN": "0"}, catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return path, result


def test_save_writes_versioned_json_with_raw_samples(saved):
    path, result = saved
    assert "| figure" in result.stdout and "FLOPs per sample" in result.stdout
    assert "reference workload (calibration)" in result.stdout
    data = json.loads(path.read_text())
    assert data["format"] == "batchtune-bench" and data["schema"] == 3
    assert len(data["samples"]) == 4 and all(len(rep) == 12 for rep in data["samples"])
    assert all(t > 0 for rep in data["samples"] for t in rep)
    # One reference run timed before every step, by the same clock (the machine-speed calibration).
    assert [len(rep) for rep in data["calibration"]] == [12] * 4
    assert all(t > 0 for rep in data["calibration"] for t in rep)
    assert data["config"]["calibration"] and data["summary"]["calibration_median_s"] > 0
    assert data["config"]["batch_size"] == 32 and data["config"]["clock"] == "wall"
    # The CPU time of every step and reference run is kept beside the wall-time decision figure.
    assert [len(rep) for rep in data["cpu_samples"]] == [12] * 4 == [len(rep) for rep in data["cpu_calibration"]]
    fp = data["fingerprint"]
    assert fp["threads"] == 1 and fp["precision"] == "fp32" and len(fp["task_sha256"]) == 64
    for key in ("device_name", "device_memory_bytes", "cpu", "torch", "cuda", "optuna", "batchtune"):
        assert key in fp
    assert data["peak_memory_bytes"][0] > 0 and data["flops_per_sample"] > 0
    assert 0.0 <= data["metric"] <= 1.0


def test_compare_unchanged_passes_and_writes_step_summary(cli, tasks, saved, workdir):
    path, _ = saved
    summary = workdir / "summary.md"
    summary.write_text("earlier step\n")
    result = cli("bench", tasks / "slowable_mlp.py", "--compare", path, *WIDE,
                 env={"BATCHTUNE_TEST_SLOWDOWN": "0", "GITHUB_STEP_SUMMARY": str(summary)})
    assert result.exit_code == 0, result.output
    assert "pass (exit 0)" in result.stdout
    assert "validation metric after 1 epochs" in result.stdout
    text = summary.read_text()
    assert text.startswith("earlier step\n") and "| figure" in text and "pass (exit 0)" in text


@pytest.mark.parametrize("kind", ["compute", "stall"])
def test_compare_slowed_task_fails(cli, tasks, saved, kind):
    # stall: the step sleeps (a host stall), which costs no CPU time: issue 15's blind spot.
    path, _ = saved
    result = cli("bench", tasks / "slowable_mlp.py", "--compare", path, *WIDE, "--json",
                 env={"BATCHTUNE_TEST_SLOWDOWN": "2.0", "BATCHTUNE_TEST_SLOWDOWN_KIND": kind})
    assert result.exit_code == 1, result.output
    decision = json.loads(result.stdout)
    assert decision["status"] == "regression" and decision["exit_code"] == 1
    speed = decision["rows"][0]
    assert speed["decision"] == "REGRESSION" and speed["values"]["ci_low"] > 1.6
    assert speed["values"]["calibrated"] and "step time / reference" in speed["change"]
    waiting = any("more time waiting" in note for note in decision["notes"])
    assert waiting == (kind == "stall")


def test_doctored_fingerprint_is_refused(cli, tasks, saved, workdir):
    path, _ = saved
    data = json.loads(path.read_text())
    data["fingerprint"]["torch"] = "1.13.1"
    data["fingerprint"]["cpu"] = "Some Other CPU"
    doctored = workdir / "doctored.json"
    doctored.write_text(json.dumps(data))
    result = cli("bench", tasks / "slowable_mlp.py", "--compare", doctored)
    assert result.exit_code == 3, result.output
    assert "NOT COMPARABLE" in result.stdout and "torch" in result.stdout and "Some Other CPU" in result.stdout
    assert "repeat 1/" not in result.output  # refused before measuring anything
    # Comparing the files directly uses the same decision; --allow-mismatch compares anyway.
    assert cli("compare", path, doctored).exit_code == 3
    allowed = cli("compare", path, doctored, "--allow-mismatch", "--json", *WIDE)
    assert allowed.exit_code == 0, allowed.output
    assert any("torch differs" in note for note in json.loads(allowed.stdout)["notes"])


def test_compare_files_without_measuring(cli, saved):
    path, _ = saved
    result = cli("compare", path, path, *WIDE)
    assert result.exit_code == 0, result.output
    assert "step time / reference +0.0%" in result.stdout


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"some": "other tool"}', "not a batchtune bench file"),
        ('{"format": "batchtune-bench", "schema": 99}', "upgrade batchtune"),
        ('{"format": "batchtune-bench", "schema": 3, "config": {}}', "malformed baseline"),
        ('{"format": "batchtune-bench", "schema": 1, "config": {}}', "re-save the baseline"),
        ('{"format": "batchtune-bench", "schema": 2, "config": {}}', "timed steps by CPU time"),
    ],
)
def test_corrupt_or_foreign_baseline_exits_2(cli, tasks, workdir, content, message):
    bad = workdir / "bad.json"
    bad.write_text(content)
    result = cli("bench", tasks / "slowable_mlp.py", "--compare", bad)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_usage_and_task_errors_exit_2(cli, tasks, workdir):
    missing = cli("bench", tasks / "slowable_mlp.py")
    assert missing.exit_code == 2 and "--batch-size is required" in missing.output
    alone = cli("bench", tasks / "slowable_mlp.py", "--batch-size", "8", "--until-decided")
    assert alone.exit_code == 2 and "--until-decided needs a comparison" in alone.output
    no_task = cli("bench", workdir / "nope.py", "--batch-size", "8")
    assert no_task.exit_code == 2 and "no such task file" in no_task.output
    bad_threshold = cli("compare", "a.json", "b.json", "--max-slowdown", "lots")
    assert bad_threshold.exit_code == 2 and "--max-slowdown" in bad_threshold.output
    no_file = cli("compare", workdir / "a.json", workdir / "b.json")
    assert no_file.exit_code == 2 and "no such baseline file" in no_file.output


def test_failed_measurement_exits_2(cli, tasks):
    result = cli("bench", tasks / "slowable_mlp.py", "--batch-size", "4096", "--repeat", "2", "--steps", "3",
                 "--processes", "1")
    assert result.exit_code == 2
    assert "larger than the training set" in result.output and "Traceback" not in result.output


def test_interleaved_comparison_catches_the_slowdown(cli, tasks):
    # The baseline's workers run the same file without the slowdown; the repeats alternate.
    result = cli("bench", tasks / "slowable_mlp.py", *FAST, *WIDE, "--against-env", "BATCHTUNE_TEST_SLOWDOWN=0",
                 "--json", env={"BATCHTUNE_TEST_SLOWDOWN": "2.0"})
    assert result.exit_code == 1, result.output
    decision = json.loads(result.stdout)
    assert decision["status"] == "regression" and "(interleaved)" in decision["baseline"]
    assert decision["rows"][0]["values"]["ci_low"] > 1.6
    assert "repeat 4/4 baseline" in result.stderr and "repeat 4/4 current" in result.stderr
    bad = cli("bench", tasks / "slowable_mlp.py", *FAST, "--against-env", "NOEQUALS")
    assert bad.exit_code == 2 and "KEY=VALUE" in bad.output
