"""The default search end to end on a tiny task: every phase runs, is counted, and the report says so."""

from __future__ import annotations

import json
import math

import optuna
import pytest

from batchtune.study.lr_range import LrBounds

FAST = ["--epochs", "1", "--threads", "1", "--no-plots", "--no-doctor", "--norms", "batch,none"]


def summary_of(workdir, study="tiny_mlp"):
    return json.loads((workdir / "reports" / study / "summary.json").read_text())


def test_default_search_measures_prunes_reruns_and_states_the_fresh_seeds_mean(cli, tasks, workdir, monkeypatch):
    from batchtune.study import coordinator, run

    # One worker process serves every phase (speed, LR tests, trials, climb steps, re-runs): the task file
    # is imported and its datasets built once, and no idle second process sits beside the trials (on CUDA
    # it would hold a second context on the GPU they measure). It is closed when the search ends.
    made, pids = [], []
    real_make, real_trials = coordinator.make_runner, run._run_trials

    def make(*args, **kwargs):
        made.append(real_make(*args, **kwargs))
        return made[-1]

    def trials(*args, **kwargs):
        out = real_trials(*args, **kwargs)
        pids.append([r.pid for r in made if r.alive()])
        return out

    monkeypatch.setattr(coordinator, "make_runner", make)
    monkeypatch.setattr(run, "_run_trials", trials)
    result = cli("search", tasks / "tiny_mlp.py", "--budget", "12", *FAST)
    assert result.exit_code == 0, result.output
    assert len(made) == 1 and len(pids) >= 2  # the sampled trials and at least one climb step
    assert all(p == [made[0].pid] for p in pids)  # the same process, alive from phase to phase
    assert not made[0].alive()
    for phase in ("speed and memory", "LR range tests", "re-training"):
        assert phase in result.stderr
    s = summary_of(workdir)
    # 512 samples x 1 epoch: batch 16 gives 32 steps, fewer than 50, so only 8 is judged... unless kept.
    assert s["search_space"]["batch_sizes"] == [8]
    assert "16" in s["compute"]["left_out"] and "optimizer steps" in s["compute"]["left_out"]["16"]
    spent = s["compute"]["spent_trial_equivalents"]
    assert {"speed", "lr_range", "trials", "reruns"} <= set(spent) <= {"speed", "lr_range", "trials", "climb", "reruns"}
    assert all(v > 0 for v in spent.values())
    assert s["compute"]["total_trial_equivalents"] <= 12 * 1.15  # at most the last trial's overshoot
    # Trials sampled their LR inside the window the range test measured for their cell.
    bounds = LrBounds.from_dict(s["lr_range"]["bounds"])
    assert bounds.windows  # at least one cell's range test gave a signal
    study = optuna.load_study(study_name="tiny_mlp", storage="sqlite:///studies/tiny_mlp.db")
    for t in study.get_trials():
        if "result" in t.user_attrs:
            low, high = bounds.window(t.params["batch_size"], t.params["norm"])
            assert low * 0.999 <= t.user_attrs["result"]["lr"] <= high * 1.001
    # The first trials, one per norm, started at the LR the range test suggests.
    first = study.get_trials()[:2]
    assert [(t.user_attrs.get("origin"), t.params["norm"]) for t in first] == [("start", "batch"), ("start", "none")]
    assert first[0].params["lr_position"] == pytest.approx(bounds.suggested_position(8, "batch"), abs=1e-4)
    assert any(t.state == optuna.trial.TrialState.PRUNED for t in study.get_trials())
    pruned = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.PRUNED]
    assert "successive halving" in pruned[0].user_attrs["result"]["reason"]
    # The recommendation states the mean of fresh seeds, not the trial's own seed.
    rec = s["recommendation"]
    chosen = next(c for c in s["candidates"] if c["trial"] == rec["trial"])
    assert chosen["seeds"] == [1000, 1001]
    assert rec["metric"] == pytest.approx(sum(chosen["metrics"]) / 2)
    assert rec["objective"] == "metric" and s["pareto"] == []
    report = (workdir / "reports" / "tiny_mlp" / "report.md").read_text()
    for section in ("## Candidates re-trained on fresh seeds", "## Speed and memory per cell",
                    "## Learning-rate windows (LR range test)", "## Compute spent"):
        assert section in report
    # The recommended candidate is marked, in the terminal and the report, and only it.
    marked = [line for line in result.output.splitlines() if line.startswith("* trial ")]
    assert [int(line.split()[2]) for line in marked] == [rec["trial"]]
    assert report.count("(recommended)") == 1 and f"| {rec['trial']} (recommended) " in report


def test_a_resume_reuses_the_measurements_and_a_larger_budget_adds_trials(cli, tasks, workdir):
    args = ["search", tasks / "tiny_mlp.py", *FAST, "--batch-sizes", "8,16", "--candidates", "2", "--rerun-seeds", "1"]
    assert cli(*args, "--budget", "16").exit_code == 0
    first = summary_of(workdir)
    again = cli(*args, "--budget", "24")
    assert again.exit_code == 0, again.output
    assert "LR range tests" not in again.stderr and "speed and memory" not in again.stderr  # reused
    second = summary_of(workdir)
    assert second["n_trials"] > first["n_trials"]
    assert second["compute"]["spent_samples"]["lr_range"] == first["compute"]["spent_samples"]["lr_range"]
    assert all(len(c["seeds"]) == 1 for c in second["candidates"])


def test_a_budget_too_small_for_the_trials_says_so(cli, tasks, workdir):
    result = cli("search", tasks / "tiny_mlp.py", "--budget", "2", *FAST, "--batch-sizes", "8")
    assert result.exit_code == 0, result.output
    warnings = " ".join(summary_of(workdir)["warnings"])
    assert "too small to measure speed per cell" in warnings and "too small for LR range tests" in warnings
    assert "2 trials run anyway (the budget is exceeded); raise --budget" in warnings
    assert "lr_range" not in summary_of(workdir)  # not measured, so not stored for a resume to reuse
    assert math.isfinite(summary_of(workdir)["recommendation"]["metric"])


def test_budget_belongs_to_the_metric_objective(cli, tasks, workdir):
    result = cli("search", tasks / "tiny_mlp.py", "--budget", "5", "--objective", "pareto", *FAST)
    assert result.exit_code == 2
    assert "--budget is the compute budget of --objective metric" in result.stderr


def test_sizes_that_do_not_fit_are_left_out_by_the_cell_measurement(cli, tasks, workdir, monkeypatch):
    monkeypatch.setenv("BATCHTUNE_TEST_OOM_ABOVE", "32")
    result = cli("search", tasks / "oom_above.py", "--budget", "40", "--batch-sizes", "16,32,64", "--norms", "none",
                 "--threads", "1", "--no-plots", "--no-doctor", "--epochs", "1", "--candidates", "1",
                 "--rerun-seeds", "1")
    assert result.exit_code == 0, result.output
    s = summary_of(workdir, "oom_above")
    assert s["search_space"]["batch_sizes"] == [16, 32]
    assert "does not fit" in s["compute"]["left_out"]["64"] and "out of memory" in s["compute"]["left_out"]["64"]
    cell = next(c for c in s["cells"] if c["batch_size"] == 64)
    assert not cell["fits"] and "out of memory" in cell["error"]
    assert "batch size 64 left out: does not fit" in result.stderr


def test_a_search_stopped_before_its_reruns_recommends_provisionally(cli, tasks, workdir, monkeypatch):
    """Ctrl-C in the trials phase, after some trials finished: the report said "No trial finished feasibly"
    (the recommendation read only the re-run candidates, which an interrupted search has none of)."""
    import batchtune.study.run as run

    monkeypatch.setattr(run, "_climb", lambda *a, **k: True)  # interrupted once the first trials are done
    result = cli("search", tasks / "tiny_mlp.py", "--budget", "12", *FAST, "--batch-sizes", "8,16")
    assert result.exit_code == 130, result.output
    said = " ".join(result.output.split())  # the terminal wraps long lines
    assert "No trial finished feasibly" not in said
    assert "Provisional: the search stopped before re-training its candidates" in said
    assert "on its own seed, not re-trained" in said and "fresh seed(s)" not in said  # nothing was re-trained
    summary = summary_of(workdir)
    assert not summary.get("candidates") and summary["recommendation"]["trial"] is not None
    report = (workdir / "reports" / "tiny_mlp" / "report.md").read_text()
    assert "Provisional:" in report and "nothing to recommend" not in report
    assert summary["compute"]["spent_samples"]["trials"] > 0  # the finished trials count in the compute line


def test_the_main_process_builds_each_dataset_once(cli, tasks, workdir):
    """train_dataset() ran twice in batchtune's own process (the dry run, then again for its size): a task whose
    dataset takes 15 s to build paid 30 s before the first phase."""
    import os

    calls = workdir / "calls.txt"
    source = (tasks / "tiny_mlp.py").read_text().replace(
        "def train_dataset():", f"def train_dataset():\n    open({str(calls)!r}, 'a').write(f'{{__import__(\"os\").getpid()}}\\n')")
    (workdir / "counted.py").write_text(source)
    result = cli("search", workdir / "counted.py", "--budget", "6", *FAST, "--batch-sizes", "8")
    assert result.exit_code == 0, result.output
    pids = calls.read_text().split()
    assert pids.count(str(os.getpid())) == 1, pids


def test_ctrl_c_in_the_reruns_still_writes_the_report(cli, tasks, workdir, monkeypatch):
    """Ctrl-C while the candidates re-trained printed "interrupted" and left the report folder empty."""
    import batchtune.study.run as run

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "_rerun_and_account", stopped)
    result = cli("search", tasks / "tiny_mlp.py", "--budget", "12", *FAST, "--batch-sizes", "8,16")
    assert result.exit_code == 130, result.output
    report = (workdir / "reports" / "tiny_mlp" / "report.md").read_text()
    assert "Provisional:" in report


def test_an_empty_study_name_is_refused(cli, tasks, workdir):
    """--study '' resumed the study named after the task file and overwrote its report."""
    result = cli("search", tasks / "tiny_mlp.py", "--study", "", *FAST)
    assert result.exit_code == 2 and "--study '' is not a plain name" in result.output
