"""A study as optuna-dashboard serves it: objective names, learning curves and readable trial figures.

Starts optuna-dashboard on loopback against the study of a small search and reads its HTTP API, as
the web page does. Skipped only when optuna-dashboard is not installed (the test extras install it).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from batchtune.study.dashboard import readable_attrs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def dashboard(workdir):
    """Start optuna-dashboard on the study that the test made in ``workdir``; yields its base URL."""
    pytest.importorskip("optuna_dashboard")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from optuna_dashboard._cli import main; main()", "sqlite:///studies/tiny_mlp.db",
         "--host", "127.0.0.1", "--port", str(port), "--quiet"],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _get(f"{base}/api/meta")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"optuna-dashboard did not start: {proc.stderr.read().decode()[-2000:]}")
                time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_dashboard_shows_named_objective_learning_curves_and_readable_figures(cli, tasks, workdir, request):
    result = cli("search", tasks / "tiny_mlp.py", "--budget", "4", "--epochs", "1", "--threads", "1", "--no-plots",
                 "--no-doctor", "--no-probe", "--rerun-seeds", "0", "--norms", "batch,none")
    assert result.exit_code == 0, result.output
    # Nothing was re-trained, and neither the terminal nor the report says it was.
    assert "Candidates, not re-trained (--rerun-seeds 0" in result.output and "re-trained on fresh" not in result.output
    report = (workdir / "reports" / "tiny_mlp" / "report.md").read_text()
    assert "## Candidates, not re-trained" in report and "re-trained on fresh seeds" not in report
    import optuna

    stored_trials = {t.number: t for t in optuna.load_study(study_name="tiny_mlp",
                                                            storage="sqlite:///studies/tiny_mlp.db").trials}
    base = request.getfixturevalue("dashboard")
    (summary,) = _get(f"{base}/api/studies")["study_summaries"]
    study = _get(f"{base}/api/studies/{summary['study_id']}?after=0")
    assert study["objective_names"] == ["validation metric"]
    assert study["has_intermediate_values"]
    measured = [t for t in study["trials"] if t["state"] in ("Complete", "Pruned")]
    assert measured
    for t in measured:
        attrs = {a["key"]: a["value"] for a in t["user_attrs"]}
        stored = stored_trials[t["number"]].user_attrs["result"]  # the dashboard abridges long values
        # The learning curve: the validation metric at each evaluation, the values the pruner judged.
        curve = {int(p["samples"]): p["val_metric"] for p in stored["curve"]}
        shown = {int(v["step"]): v["value"] for v in t["intermediate_values"]}
        assert shown and shown == pytest.approx({s: curve[s] for s in shown})
        if t["state"] == "Complete":
            assert t["values"] == pytest.approx([stored["final_metric"]]) and max(shown) == max(curve)
        # The readable figures: the LR the trial trained with (its parameter is a position in the
        # measured LR window), rounded; short strings, not the JSON of every measurement.
        expected = readable_attrs(stored)
        assert {"lr", "val_metric", "samples_per_s", "peak_memory_MiB", "outcome"} <= set(expected)
        for key, value in expected.items():
            assert attrs[key] == str(value) and len(attrs[key]) <= 10, (key, attrs[key])
        assert float(attrs["lr"]) == pytest.approx(stored["lr"], rel=5e-3)
        assert {p["name"] for p in t["params"]} == {"batch_size", "lr_position", "norm"}
