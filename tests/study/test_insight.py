"""The search runs the batch doctor first and, with --noise, measures the noise scale into its report."""

from __future__ import annotations

import json

FAST = ["--epochs", "1", "--threads", "1", "--lr-min", "0.01", "--lr-max", "0.2"]


def test_search_reports_doctor_and_noise(cli, tasks, workdir):
    result = cli("search", tasks / "tiny_mlp.py", "--trials", "2", "--batch-sizes", "4,32", "--noise", *FAST)
    assert result.exit_code == 0, result.output
    out = workdir / "reports" / "tiny_mlp"
    summary = json.loads((out / "summary.json").read_text())
    doctor = summary["doctor"]
    assert doctor["batch_sizes"] == [4, 32] and doctor["exit_code"] == 0
    bn = next(f for f in doctor["findings"] if f["check"] == "batchnorm-batch")
    # Batch 4 is below 8 with BatchNorm, but the search compares GroupNorm too: info, not a warning.
    assert bn["severity"] == "info" and "compares group" in bn["message"]
    noise = summary["noise"]
    assert [p["label"] for p in noise["phases"]] == ["initialisation", "after 1 epoch"]
    assert noise["goodput"]["sizes"] and noise["recommended"] == summary["recommendation"]["params"]["batch_size"]
    report = (out / "report.md").read_text()
    assert "## Batch doctor" in report and "## Gradient noise scale and goodput" in report
    assert "plots/goodput_vs_batch_size.png" in report and (out / "plots" / "goodput_vs_batch_size.png").exists()


def test_search_without_doctor(cli, tasks, workdir):
    result = cli("search", tasks / "tiny_mlp.py", "--trials", "1", "--batch-sizes", "32", "--no-doctor", "--no-plots",
                 "--json", *FAST)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert "doctor" not in summary and "noise" not in summary


def test_search_noise_is_measured_at_the_target(cli, tasks, workdir):
    # 3 classes: chance is 0.33; the separable data pass 0.8 accuracy within the first epoch.
    result = cli("search", tasks / "tiny_mlp.py", "--trials", "2", "--batch-sizes", "32", "--noise", "--target", "0.8",
                 "--no-doctor", "--no-plots", "--json", *FAST)
    assert result.exit_code == 0, result.output
    final = json.loads(result.stdout)["noise"]["phases"][-1]
    assert final["until"] == {"what": "metric", "value": 0.8, "higher_better": True}
    assert final["reached"] is True and final["val_metric"] >= 0.8 and 0 < final["epochs"] < 2
    assert final["label"].startswith("at validation metric ")
