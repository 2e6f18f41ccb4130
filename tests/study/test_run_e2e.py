"""End-to-end searches through the CLI on tiny tasks (CPU, a few trials)."""

from __future__ import annotations

import json

import optuna
import pandas as pd

from batchtune.study.results import measurements

# The Pareto objective: these tests check its front and report (tests/study/test_measured_e2e.py covers the default).
FAST = ["--epochs", "2", "--threads", "1", "--no-plots", "--no-probe", "--no-doctor", "--objective", "pareto"]


def test_search_writes_report_and_recommends(cli, tasks, workdir):
    result = cli("search", tasks / "tiny_mlp.py", "--trials", "4", "--batch-sizes", "16,32,64", "--lr-min", "0.01",
                 "--lr-max", "0.3", "--epochs", "2", "--threads", "1", "--objective", "pareto")
    assert result.exit_code == 0, result.output
    assert "Recommended: batch size" in result.output
    out = workdir / "reports" / "tiny_mlp"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["study"] == "tiny_mlp" and summary["n_trials"] == 4
    rec = summary["recommendation"]
    assert rec["params"]["batch_size"] in (16, 32, 64) and rec["params"]["norm"] in ("batch", "group", "layer", "none")
    assert 0.0 <= rec["metric"] <= 1.0 and rec["throughput"] > 0 and rec["peak_memory_bytes"] > 0
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 4 and (trials["status"] == "ok").all()
    assert (trials["throughput"] > 0).all() and (trials["peak_memory_bytes"] > 0).all()
    report = (out / "report.md").read_text()
    assert "## Recommendation" in report and "## Pareto front" in report and "## Environment" in report
    for png in ("throughput_vs_batch_size", "memory_vs_batch_size", "metric_vs_batch_size", "learning_curves"):
        path = out / "plots" / f"{png}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(plots/{png}.png)" in report
    # The study is the source of truth: measurements live in its user attributes.
    study = optuna.load_study(study_name="tiny_mlp", storage="sqlite:///studies/tiny_mlp.db")
    attrs = study.trials[0].user_attrs
    assert attrs["result"]["status"] == "ok" and "status" not in attrs and attrs["result"]["throughput"] > 0 and len(attrs["result"]["curve"]) == 2


def test_resume_adds_trials_up_to_total(cli, tasks, workdir):
    args = ["search", tasks / "tiny_mlp.py", "--batch-sizes", "32,64", *FAST]
    first = cli(*args, "--trials", "2")
    assert first.exit_code == 0, first.output
    second = cli(*args, "--trials", "3")
    assert second.exit_code == 0, second.output
    study = optuna.load_study(study_name="tiny_mlp", storage="sqlite:///studies/tiny_mlp.db")
    assert len(study.trials) == 3
    again = cli(*args, "--trials", "3")
    assert again.exit_code == 0
    assert len(optuna.load_study(study_name="tiny_mlp", storage="sqlite:///studies/tiny_mlp.db").trials) == 3


def test_resume_with_other_space_is_refused(cli, tasks, workdir):
    assert cli("search", tasks / "tiny_mlp.py", "--batch-sizes", "32,64", "--trials", "1", *FAST).exit_code == 0
    result = cli("search", tasks / "tiny_mlp.py", "--batch-sizes", "16,64", "--trials", "2", *FAST)
    assert result.exit_code == 2
    assert "was created with batch_sizes [32, 64]" in result.output and "new --study" in result.output


def test_metric_mode_min(cli, tasks, workdir):
    result = cli("search", tasks / "tiny_min.py", "--trials", "3", "--batch-sizes", "16,32", "--lr-min", "0.001",
                 "--lr-max", "0.05", "--json", *FAST)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["metric_mode"] == "min"
    ok = pd.read_csv(workdir / "reports" / "tiny_min" / "trials.csv")
    ok = ok[ok["status"] == "ok"]
    front_metrics = [p["metric"] for p in summary["pareto"]]
    # Lower is better: the most accurate trial is the one with the smallest error.
    assert summary["recommendation"]["best_metric"] == min(front_metrics) == ok["metric"].min()
    assert summary["recommendation"]["tolerance"]["kind"] == "relative"


def test_converted_norms_and_report_command(cli, tasks, workdir):
    result = cli("search", tasks / "tiny_convert.py", "--trials", "4", "--batch-sizes", "16,32", "--norms",
                 "batch,group,layer,none", *FAST)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny_convert", storage="sqlite:///studies/tiny_convert.db")
    assert {t.params["norm"] for t in study.trials} <= {"batch", "group", "layer", "none"}
    (workdir / "reports" / "tiny_convert" / "report.md").unlink()
    again = cli("report", "--study", "tiny_convert")
    assert again.exit_code == 0, again.output
    assert "BatchNorm layers of each fresh model are converted" in (
        workdir / "reports" / "tiny_convert" / "report.md"
    ).read_text()


def test_oom_trials_are_recorded_and_study_goes_on(cli, tasks, workdir):
    # --no-probe: the probe would drop 128 before any trial ran (tests/probing/test_measure.py covers that).
    result = cli("search", tasks / "oom_above.py", "--trials", "2", "--batch-sizes", "128", "--norms", "none",
                 "--no-probe", *FAST, env={"BATCHTUNE_TEST_OOM_ABOVE": "64"})
    # Nothing feasible is a failure of the search (exit 1), with the outcomes counted.
    assert result.exit_code == 1, result.output
    assert "nothing to recommend: 2 oom (out of memory" in result.stderr
    trials = pd.read_csv(workdir / "reports" / "oom_above" / "trials.csv")
    assert list(trials["status"]) == ["oom", "oom"]
    assert trials["reason"].str.contains("out of memory").all()
    summary = json.loads((workdir / "reports" / "oom_above" / "summary.json").read_text())
    assert summary["recommendation"] is None and summary["status_counts"] == {"oom": 2}


def test_python_api_returns_dataframe_and_recommendation(tasks, workdir):
    import batchtune

    result = batchtune.search(tasks / "tiny_mlp.py", trials=2, epochs=1, batch_sizes=[32], threads=1, plots=False,
                              tolerance="1pp", current_batch_size=64)
    assert isinstance(result.trials, pd.DataFrame) and len(result.trials) == 2
    rec = result.recommendation
    assert rec.params["batch_size"] == 32 and rec.tolerance.value == 0.01
    assert "You train at batch 64" in rec.lr_advice and "Goyal" in rec.lr_advice
    assert result.paths["json"].exists()
    again = batchtune.report(study="tiny_mlp", plots=False)
    assert again.summary["n_trials"] == 2


def test_memory_budget_is_an_optuna_constraint(cli, tasks, workdir):
    # Every CPU trial's peak RSS (torch alone is hundreds of MiB) is far above 1 MiB.
    result = cli("search", tasks / "tiny_mlp.py", "--trials", "2", "--batch-sizes", "32", "--memory-budget", "1MiB",
                 *FAST)
    assert result.exit_code == 1, result.output
    assert "no trial finished feasibly, nothing to recommend: 2 over --memory-budget;" in result.stderr
    study = optuna.load_study(study_name="tiny_mlp", storage="sqlite:///studies/tiny_mlp.db")
    for t in study.trials:
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert t.constraints["memory"] > 0
        assert "above the --memory-budget" in measurements(t)["reason"]
    summary = json.loads((workdir / "reports" / "tiny_mlp" / "summary.json").read_text())
    assert summary["recommendation"] is None and summary["memory_budget_bytes"] == 2**20
    assert "over budget" in (workdir / "reports" / "tiny_mlp" / "report.md").read_text()


def test_resume_with_another_task_or_budget_is_refused_before_probing(cli, tasks, workdir, monkeypatch):
    # Issue 14 items 1-2: a regression study resumed with a classifier, or with another --epochs,
    # was accepted and mixed trials of different meanings in one table.
    fast = ["--threads", "1", "--no-plots", "--no-doctor", "--batch-sizes", "16,32"]
    assert cli("search", tasks / "tiny_min.py", "--trials", "1", "--epochs", "0.5", "--no-probe", *fast).exit_code == 0

    def probe(*args, **kwargs):
        raise AssertionError("the probe ran before the resume was checked")

    monkeypatch.setattr("batchtune.probing.measure.probe_for_search", probe)
    other_task = cli("search", tasks / "tiny_mlp.py", "--study", "tiny_min", "--trials", "2", "--epochs", "0.5", *fast)
    assert other_task.exit_code == 2, other_task.output
    assert "study 'tiny_min' was created with another task file" in other_task.output
    other_budget = cli("search", tasks / "tiny_min.py", "--trials", "2", "--epochs", "1", *fast)
    assert other_budget.exit_code == 2, other_budget.output
    assert "was created with --epochs 0.5, not 1; run with --epochs 0.5 to resume it" in other_budget.output
    study = optuna.load_study(study_name="tiny_min", storage="sqlite:///studies/tiny_min.db")
    assert len(study.trials) == 1 and study.user_attrs["batchtune_meta"]["metric_mode"] == "min"
