"""Many workers on one study in a real PostgreSQL server (started by .ci/run; skipped without one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import optuna
import pytest

from batchtune.study.results import status

URL = os.environ.get("BATCHTUNE_TEST_POSTGRES_URL")
pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        not URL, reason="no PostgreSQL server: set BATCHTUNE_TEST_POSTGRES_URL (bash .ci/postgres.sh starts one)"
    ),
]


def test_two_workers_share_one_study_and_stop_at_the_total(tasks, workdir):
    study = f"pg_{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, "-m", "batchtune", "search", str(tasks / "tiny_mlp.py"), "--storage", URL, "--study", study,
           "--trials", "6", "--epochs", "1", "--threads", "1", "--no-plots", "--batch-sizes", "32,64"]
    procs = [subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    from batchtune.study.results import counts

    stored = optuna.load_study(study_name=study, storage=URL)
    counted = [t for t in stored.trials if counts(t)]
    # Under the default objective the pruner may stop a trial early (the other process's trials count as
    # its rivals); a pruned trial counts towards the total, a failed one would not be "ok" or "pruned".
    assert len(counted) == 6 and all(status(t) in ("ok", "pruned") for t in counted), [status(t) for t in counted]
    # Both processes ran trials.
    assert len({t.user_attrs["worker"]["pid"] for t in counted}) == 2
    # Issue 14 item 3: and drew distinct configurations (only 4 of 6 were before).
    assert len({tuple(sorted(t.params.items())) for t in counted}) == 6
    password = URL.split(":")[2].split("@")[0]
    for out, err in outputs:
        assert password not in out and password not in err

    # The report regenerates from any machine that reaches the server (here: another folder).
    other = workdir / "elsewhere"
    other.mkdir()
    rep = subprocess.run([sys.executable, "-m", "batchtune", "report", "--study", study, "--storage", URL, "--json"],
                         cwd=other, capture_output=True, text=True, timeout=120)
    assert rep.returncode == 0, rep.stderr
    summary = json.loads(rep.stdout)
    assert summary["n_trials"] == 6 and summary["recommendation"] is not None
    written = (other / "reports" / study / "report.md").read_text() + (other / "reports" / study / "summary.json").read_text()
    assert password not in written and "***" in written
