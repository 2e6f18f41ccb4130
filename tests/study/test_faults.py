"""Faults a study must survive: each trial failure is recorded with its reason and the study goes on."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch

from batchtune.study.results import status
from batchtune.task.contract import load_task, make_dataset
from batchtune.trial.train import TrialSpec, run_trial

# One candidate on one fresh seed: the re-runs are exercised, not the 4 x 2 default (no test here asserts on them).
FAST = ["--epochs", "1", "--threads", "1", "--no-plots", "--no-probe", "--no-doctor", "--lr-rule", "none", "--batch-sizes", "16",
        "--lr-min", "0.01", "--lr-max", "0.1", "--candidates", "1", "--rerun-seeds", "1"]


QUICK = ["--epochs", "0.2", "--threads", "1", "--no-plots", "--no-probe", "--no-doctor", "--batch-sizes", "16,32"]


def configurations(study) -> list[tuple]:
    """The sampled configuration of every trial that counts (a retry of an interrupted one included)."""
    from batchtune.study.results import counts

    return [tuple(sorted(t.params.items())) for t in study.trials if counts(t)]


def fault_env(tmp_path: Path, fault: str) -> dict[str, str]:
    return {"BATCHTUNE_TEST_FAULT": fault, "BATCHTUNE_TEST_FAULT_DIR": str(tmp_path)}


def trials_csv(workdir: Path, study: str) -> pd.DataFrame:
    return pd.read_csv(workdir / "reports" / study / "trials.csv")


@pytest.mark.parametrize(
    "fault, status, reason",
    [
        ("kill", "failed", "the worker process killed by SIGKILL"),
        ("raise", "failed", "ValueError: boom from the model"),
        ("nan", "diverged", "training loss became nan"),
        ("hang", "timeout", "no result within the trial timeout of 5 s; the worker was killed"),
    ],
)
def test_failed_trial_is_recorded_and_next_runs_healthy(cli, tasks, workdir, fault, status, reason):
    # Only the hanging trial should meet the timeout, even on a loaded machine.
    timeout = "5" if fault == "hang" else "120"
    result = cli("search", tasks / "faulty.py", "--trials", "2", "--trial-timeout", timeout, *FAST,
                 env=fault_env(workdir, fault))
    assert result.exit_code == 0, result.output
    trials = trials_csv(workdir, "faulty")
    assert list(trials["status"]) == [status, "ok"]
    assert reason in trials.loc[0, "reason"]
    assert trials.loc[1, "metric"] > 0


def test_every_trial_failing_exits_1_with_the_reasons_counted(cli, tasks, workdir):
    # Issue 14 item 4: "No trial finished feasibly" exited 0, so a CI job passed.
    env = {**fault_env(workdir, "raise"), "BATCHTUNE_TEST_FAULT_ALWAYS": "1"}
    result = cli("search", tasks / "faulty.py", "--trials", "2", *FAST, env=env)
    assert result.exit_code == 1, result.output
    assert ("no trial finished feasibly, nothing to recommend: 2 failed (ValueError: boom from the model); "
            "every reason is in reports/faulty/report.md") in result.stderr
    assert (workdir / "reports" / "faulty" / "report.md").exists()


@pytest.mark.parametrize("where", ["forward", "backward", "step"])
@pytest.mark.parametrize("kind", ["torch", "cuda", "cudnn", "mps", "hip", "xpu", "cpu"])
def test_oom_anywhere_is_infeasible_and_releases_memory(tasks, monkeypatch, where, kind):
    monkeypatch.setenv("BATCHTUNE_TEST_OOM_ABOVE", "8")
    monkeypatch.setenv("BATCHTUNE_TEST_OOM_KIND", kind)
    monkeypatch.setenv("BATCHTUNE_TEST_OOM_WHERE", where)
    task = load_task(tasks / "oom_above.py")
    train, val = make_dataset(task, "train"), make_dataset(task, "val")
    spec = TrialSpec(batch_size=32, lr=0.01, norm="none", max_steps=3, threads=1)
    run_trial(task, spec, train, val)  # warm caches so the count below compares like with like
    before = live_tensors()
    result = run_trial(task, spec, train, val)
    after = live_tensors()
    assert result.status == "oom" and result.reason.startswith("out of memory")
    # Nothing of the failed trial (model, activations, optimizer state) is still alive.
    assert after == before
    fits = run_trial(task, TrialSpec(batch_size=8, lr=0.01, norm="none", max_steps=3, threads=1), train, val)
    assert fits.status == "ok"


def live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance() on deprecated torch aliases warns
        return sum(isinstance(o, torch.Tensor) for o in gc.get_objects())


def _study(url="sqlite:///studies/faulty.db", name="faulty"):
    return optuna.load_study(study_name=name, storage=url)


def wait_for_a_trial_done_and_one_running(timeout: float = 120) -> list:
    """Poll the study of a search running in another process; returns its completed trials."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            trials = _study().trials
        except Exception:  # the other process has not created the study yet
            continue
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        if complete and any(t.state == optuna.trial.TrialState.RUNNING for t in trials):
            return complete
    raise AssertionError("no trial completed while another ran")


def _search_cmd(tasks, *extra):
    return [sys.executable, "-m", "batchtune", "search", str(tasks / "faulty.py"), *FAST, *extra]


def test_sigkill_of_coordinator_then_rerun_keeps_and_finishes(tasks, workdir):
    env = {**os.environ, **fault_env(workdir, "slow"), "BATCHTUNE_TEST_FAULT_ALWAYS": "1"}
    cmd = _search_cmd(tasks, "--trials", "4")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_before = {t.number: t.values for t in wait_for_a_trial_done_and_one_running()}
    proc.kill()
    proc.wait()
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    study = _study()
    from batchtune.study.results import counts

    counted = [t for t in study.trials if counts(t)]
    assert len(counted) == 4
    for number, values in done_before.items():
        assert study.trials[number].values == values  # kept, and counted once
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") is not None]
    assert len(retried) == 1  # the trial the kill interrupted ran again with the same parameters
    original = study.trials[retried[0].system_attrs["failed_trial"]]
    assert original.user_attrs["status"] == "interrupted" and original.params == retried[0].params
    assert original.user_attrs["reason"] == "its coordinator process died; retried with the same parameters"
    assert status(retried[0]) == "ok"  # the retry does not inherit the interrupted trial's outcome
    # The rerun drew new configurations; only the retry repeats the one the kill interrupted.
    assert len(set(configurations(study))) == 4


def test_ctrl_c_marks_trial_interrupted_writes_report_exits_130(tasks, workdir):
    env = {**os.environ, **fault_env(workdir, "slow"), "BATCHTUNE_TEST_FAULT_ALWAYS": "1"}
    # SIGINT back to its default in the child: a test run started in the background (nohup ... &)
    # inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
    proc = subprocess.Popen(_search_cmd(tasks, "--trials", "5"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for_a_trial_done_and_one_running()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    study = _study()
    statuses = [status(t) for t in study.trials]
    assert "interrupted" in statuses
    summary = json.loads((workdir / "reports" / "faulty" / "summary.json").read_text())
    assert summary["n_trials"] == statuses.count("ok") >= 1


def test_parallel_workers_make_exactly_the_requested_trials(cli, tasks, workdir):
    result = cli("search", tasks / "tiny_mlp.py", "--trials", "6", "--workers", "2", "--epochs", "1", "--threads", "1",
                 "--no-plots", "--batch-sizes", "32,64")
    assert result.exit_code == 0, result.output
    study = _study("sqlite:///studies/tiny_mlp.db", "tiny_mlp")
    from batchtune.study.results import counts

    counted = [t for t in study.trials if counts(t)]
    # Under the default objective successive halving prunes some: finished or pruned, never failed.
    assert len(counted) == 6 and all(status(t) in ("ok", "pruned") for t in counted)
    assert "database is locked" not in result.output
    pids = {t.user_attrs["worker"]["pid"] for t in counted}
    assert len(pids) == 1  # one coordinator process, two worker threads/processes
    # Issue 14 item 3: every worker draws its own configuration.
    assert len(set(configurations(study))) == 6


def test_resume_draws_new_configurations(cli, tasks, workdir):
    # Issue 14 item 3: the rerun's sampler replayed the first run's start-up draws (trials 2, 3 = 0, 1).
    args = ["search", tasks / "tiny_mlp.py", *QUICK]
    assert cli(*args, "--trials", "2").exit_code == 0
    first = configurations(_study("sqlite:///studies/tiny_mlp.db", "tiny_mlp"))
    assert cli(*args, "--trials", "4").exit_code == 0
    resumed = configurations(_study("sqlite:///studies/tiny_mlp.db", "tiny_mlp"))
    assert resumed[:2] == first and len(set(resumed)) == 4


def test_two_processes_on_one_sqlite_study_draw_distinct_configurations(tasks, workdir):
    cmd = [sys.executable, "-m", "batchtune", "search", str(tasks / "tiny_mlp.py"), *QUICK, "--trials", "4"]
    procs = [subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    study = _study("sqlite:///studies/tiny_mlp.db", "tiny_mlp")
    assert len(configurations(study)) == 4 and len(set(configurations(study))) == 4


def test_stale_trial_of_a_dead_machine_is_retried_once(cli, tasks, workdir):
    from batchtune.study.storage import open_storage

    storage = open_storage("sqlite:///studies/faulty.db", heartbeat_interval=1, grace_period=2, create_folder=True)
    study = optuna.create_study(study_name="faulty", storage=storage,
                                directions=["maximize", "maximize", "minimize"])
    ghost = study.ask({"batch_size": optuna.distributions.CategoricalDistribution([16]),
                       "lr": optuna.distributions.FloatDistribution(0.01, 0.1, log=True),
                       "norm": optuna.distributions.CategoricalDistribution(["as-built"])})
    ghost.set_user_attr("worker", {"host": "another-machine", "pid": 1})
    storage.record_heartbeat(ghost._trial_id)
    time.sleep(3)
    result = cli("search", tasks / "faulty.py", "--trials", "2", *FAST, "--objective", "pareto", "--heartbeat-interval", "1",
                 "--heartbeat-grace", "2")
    assert result.exit_code == 0, result.output
    study = _study()
    assert study.trials[0].state == optuna.trial.TrialState.FAIL
    # Issue 14 item 6: the dead machine's trial was stored as FAIL with no status and no reason.
    assert status(study.trials[0]) == "interrupted"
    assert study.trials[0].user_attrs["reason"] == (
        "its coordinator (another-machine, pid 1) sent no heartbeat for 2 s; retried with the same parameters"
    )
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retried) == 1 and retried[0].params == study.trials[0].params
    assert retried[0].state == optuna.trial.TrialState.COMPLETE and status(retried[0]) == "ok"


def test_a_dead_coordinator_s_trial_is_interrupted_with_a_reason_and_its_retry_starts_clean(workdir):
    import socket

    from batchtune.study.coordinator import reap_dead_local_trials
    from batchtune.study.results import counts
    from batchtune.study.storage import open_storage

    storage = open_storage("sqlite:///studies/faulty.db", create_folder=True)
    study = optuna.create_study(study_name="faulty", storage=storage, directions=["maximize", "maximize", "minimize"])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    ghost = study.ask({"lr": optuna.distributions.FloatDistribution(0.01, 0.1, log=True)})
    ghost.set_user_attr("worker", {"host": socket.gethostname(), "pid": int(dead.stdout)})
    assert reap_dead_local_trials(study) == 1
    original, retry = study.trials
    assert original.state == optuna.trial.TrialState.FAIL and status(original) == "interrupted"
    assert original.user_attrs["reason"] == "its coordinator process died; retried with the same parameters"
    # The retry carries the parameters and the worker, not the interrupted outcome (it would never count).
    assert retry.state == optuna.trial.TrialState.WAITING and retry.params == original.params
    assert status(retry) is None and "reason" not in retry.user_attrs and not counts(retry)


def test_unwritable_output_keeps_the_study(cli, tasks, workdir):
    args = ["search", tasks / "tiny_mlp.py", "--epochs", "1", "--threads", "1", "--batch-sizes", "32", "--no-probe",
            "--no-doctor", "--no-plots"]
    assert cli(*args, "--trials", "1").exit_code == 0
    (workdir / "afile").write_text("not a folder")
    result = cli(*args, "--trials", "2", "--output", "afile/reports")
    assert result.exit_code == 1
    assert "cannot create the output folder afile/reports" in result.output and "Traceback" not in result.output
    # Refused before any trial ran, and the stored trial is still there.
    assert len(_study("sqlite:///studies/tiny_mlp.db", "tiny_mlp").trials) == 1


def test_full_disk_while_writing_report(cli, tasks, workdir, monkeypatch):
    args = ["search", tasks / "tiny_mlp.py", "--trials", "1", "--epochs", "1", "--threads", "1", "--no-plots",
            "--batch-sizes", "32", "--no-probe", "--no-doctor"]
    assert cli(*args).exit_code == 0
    report = workdir / "reports" / "tiny_mlp" / "report.md"
    before = report.read_text()

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("batchtune.files.os.replace", full)
    result = cli(*[a if a != "1" else "2" for a in args[:4]], *args[4:])
    assert result.exit_code == 1
    assert "No space left on device; free disk space or pass another --output" in result.output
    assert report.read_text() == before  # the old report is whole, no half-written file
    assert not [p for p in report.parent.iterdir() if p.name.startswith(".")]
    assert len(_study("sqlite:///studies/tiny_mlp.db", "tiny_mlp").trials) == 2


def test_corrupt_study_file_is_left_alone(cli, tasks, workdir):
    (workdir / "studies").mkdir()
    bad = workdir / "studies" / "tiny_mlp.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    result = cli("search", tasks / "tiny_mlp.py", "--trials", "1")
    assert result.exit_code == 1
    assert "is not a readable Optuna study" in result.output and "left as it is" in result.output
    assert bad.read_bytes() == b"this is not sqlite" * 100


def test_unreachable_storage_server(cli, tasks):
    result = cli("search", tasks / "tiny_mlp.py", "--trials", "1",
                 "--storage", "postgresql://me:pw@127.0.0.1:9/studies")
    assert result.exit_code == 1
    assert "cannot reach the storage server postgresql://me:***@127.0.0.1:9/studies" in result.output


def test_doctor_crash_does_not_take_the_search_down(cli, tasks, workdir):
    # The doctor times training steps of the user's model: here the first such step kills its process.
    args = [a for a in FAST if a != "--no-doctor"]
    result = cli("search", tasks / "faulty.py", "--trials", "1", *args, env=fault_env(workdir, "kill"))
    assert result.exit_code == 0, result.output
    summary = json.loads((workdir / "reports" / "faulty" / "summary.json").read_text())
    messages = [f["message"] for f in summary["doctor"]["findings"]]
    assert any("the batch doctor could not finish" in m and "died" in m for m in messages)
    assert summary["status_counts"] == {"ok": 1}
