"""The noise-scale estimators, the goodput arithmetic and the `batchtune noise` command."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest

from batchtune.errors import UsageError
from batchtune.noise.goodput import compare, efficiency, goodput_curve, hardware_knee
from batchtune.noise.measure import (
    NoiseConfig,
    estimate_from_norms,
    measure_gradient_noise,
    repeat_band,
    run_noise,
    unbiased_parts,
)
from batchtune.noise.report import noise_markdown, noise_section


def _synthetic_norms(rng, grad, noise_sd, b_small, b_big, steps):
    """Squared norms of batch-mean gradients where each sample's gradient is grad + N(0, diag(noise_sd^2))."""
    small, big = [], []
    for _ in range(steps):
        per_sample = grad + rng.normal(size=(b_big, grad.size)) * noise_sd
        big.append(float(np.sum(per_sample.mean(axis=0) ** 2)))
        chunks = per_sample.reshape(b_big // b_small, b_small, grad.size).mean(axis=1)
        small.append(float(np.mean(np.sum(chunks**2, axis=1))))
    return small, big


def test_estimator_recovers_known_noise_scale():
    rng = np.random.default_rng(0)
    d = 20
    grad = np.full(d, 1 / math.sqrt(d))  # |G|^2 = 1
    noise_sd = np.full(d, math.sqrt(50 / d))  # tr(Sigma) = 50, so B_simple = 50
    small, big = _synthetic_norms(rng, grad, noise_sd, 8, 64, 400)
    est = estimate_from_norms(small, big, 8, 64)
    assert est.grad_sq == pytest.approx(1.0, rel=0.15)
    assert est.trace_sigma == pytest.approx(50.0, rel=0.1)
    assert est.b_simple == pytest.approx(50.0, rel=0.15)
    assert est.low < 50.0 < est.high and est.steps == 400


def test_unbiased_parts_are_exact_on_expectations():
    # E|G_B|^2 = |G|^2 + tr(Sigma)/B with |G|^2 = 2 and tr(Sigma) = 30.
    g2, tr = unbiased_parts(np.array([2 + 30 / 5]), np.array([2 + 30 / 50]), 5, 50)
    assert g2[0] == pytest.approx(2.0) and tr[0] == pytest.approx(30.0)


def test_unresolved_signal_gives_no_value():
    est = estimate_from_norms([10.0, 10.0, 10.0], [0.0, 0.0, 0.0], 1, 2)
    assert est.b_simple is None and est.high is None
    with pytest.raises(ValueError, match="b_big must be larger"):
        estimate_from_norms([1.0, 1.0], [1.0, 1.0], 8, 8)


def _load(tasks, name):
    spec = importlib.util.spec_from_file_location(name, tasks / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_measurement_matches_linear_regression_theory(tasks):
    theory = _load(tasks, "noise_linear")
    x, y = theory.train_dataset().tensors
    # The analytic value for this finite sample: per-sample gradients at w = 0.
    g = -2 * y * x
    expected = float(((g - g.mean(0)) ** 2).sum(1).mean() / (g.mean(0) ** 2).sum())
    assert expected == pytest.approx(theory.EXPECTED_B_SIMPLE, rel=0.05)
    result = measure_gradient_noise(
        task_path=str(tasks / "noise_linear.py"), norm=None, lr=0.01, b_small=4, b_big=64, steps=150,
        burst_epochs=0.05, device="cpu", seed=1, threads=1,
    )
    init, after = result.phases
    assert init.label == "initialisation" and init.estimate.b_simple == pytest.approx(expected, rel=0.12)
    # Training shrinks |G| while the label noise stays: the noise scale grows (McCandlish et al., sec. 3).
    assert after.train_loss < init.train_loss
    assert after.estimate.b_simple is None or after.estimate.b_simple > 2 * init.estimate.b_simple


def test_burst_until_loss_stops_at_the_target_and_measures_there(tasks):
    # Validation loss starts near |w*|^2 + SIGMA^2 = 9.25 and falls towards SIGMA^2 = 4.
    result = measure_gradient_noise(
        task_path=str(tasks / "noise_linear.py"), norm=None, lr=0.01, b_small=4, b_big=32, steps=20,
        burst_epochs=1.0, device="cpu", seed=1, threads=1, until_loss=6.0,
    )
    init, after = result.phases
    assert after.reached is True and after.until.what == "loss" and after.until.value == 6.0 and after.val_loss <= 6.0
    assert 0 < after.epochs < 0.5  # stopped well before the cap of one epoch (2048 steps)
    assert after.label.startswith(f"at validation loss {after.val_loss:.3g} (after ")
    assert after.to_dict()["reached"] is True and after.to_dict()["until"] == {"what": "loss", "value": 6.0, "higher_better": False}
    assert init.reached is None
    # The loss it stopped at is the loss it measured at: the measured batches' loss is near 6, not near 4.
    assert 4.5 < after.train_loss < 7.5


def test_burst_until_loss_not_reached_is_warned_about(tasks):
    # The loss cannot fall below the label noise SIGMA^2 = 4: the burst runs to its cap.
    cfg = NoiseConfig(task_path=str(tasks / "noise_linear.py"), b_small=4, b_big=32, steps=6, burst_epochs=0.01,
                      burst_until_loss=1.0, threads=1, device="cpu")
    report = run_noise(cfg, throughput={16: 1000.0, 32: 1900.0}, isolate=False)
    final = report.final
    assert final.reached is False and final.epochs == pytest.approx(0.01, rel=0.1)
    assert "(target 1 not reached)" in final.label
    (warning,) = report.warnings
    assert "short of --burst-until-loss 1 (validation loss " in warning and "larger --burst-epochs" in warning
    with pytest.raises(UsageError, match="--burst-until-loss needs a training burst"):
        NoiseConfig(task_path="x.py", burst_epochs=0, burst_until_loss=1.0).validated()
    with pytest.raises(UsageError, match="--burst-until-loss or --burst-until-metric, not both"):
        NoiseConfig(task_path="x.py", burst_until_loss=1.0, burst_until_metric=0.9).validated()


def test_burst_until_metric_follows_the_metric_direction(tasks):
    # noise_linear's metric is the mean absolute error with METRIC_MODE "min": about 2.4 at w = 0, 1.6 at w*.
    result = measure_gradient_noise(
        task_path=str(tasks / "noise_linear.py"), norm=None, lr=0.01, b_small=4, b_big=32, steps=10,
        burst_epochs=1.0, device="cpu", seed=1, threads=1, until_metric=2.0,
    )
    after = result.phases[-1]
    assert after.until.what == "metric" and after.until.higher_better is False
    assert after.reached is True and 1.8 < after.val_metric <= 2.0 and after.val_loss < 6.0
    assert 16 / 2048 < after.epochs < 0.5  # trained past the first check, stopped long before the cap
    assert after.label.startswith(f"at validation metric {after.val_metric:.3g} (after ")


def test_repeats_report_the_median_and_widen_the_band(tasks):
    cfg = NoiseConfig(task_path=str(tasks / "noise_linear.py"), b_small=4, b_big=32, steps=30, burst_epochs=0.02,
                      repeats=3, seed=5, threads=1, device="cpu")
    report = run_noise(cfg, throughput={16: 1000.0, 32: 1900.0}, isolate=False)
    seeds = [seed for seed, _ in report.repeats]
    values = [v for _, v in report.repeats]
    assert seeds == [5, 6, 7] and None not in values and len(set(values)) == 3  # three different measurements
    assert report.b_noise == sorted(values)[1] and report.seed == seeds[values.index(report.b_noise)]
    est = report.final.estimate
    assert repeat_band(est, values) == (min(values + [est.low]), max(values + [est.high]))
    assert repeat_band(est, [values[0], None])[1] is None  # an unresolved repeat leaves the band open above
    assert report.to_dict()["repeats"][0] == {"seed": 5, "b_simple": values[0]}
    assert "over 3 repeats" in noise_markdown(report) and f"median repeat's (seed {report.seed})" in noise_markdown(report)
    with pytest.raises(UsageError, match="--repeats 0 must be at least 1"):
        NoiseConfig(task_path="x.py", repeats=0).validated()


def test_curvature_recovers_the_hessian_weighted_noise_scale(tasks):
    theory = _load(tasks, "noise_aniso")
    # The gradient lies mostly along low curvature, the noise along high: B_noise is 2.5 times B_simple.
    assert theory.EXPECTED_B_NOISE > 2 * theory.EXPECTED_B_SIMPLE
    result = measure_gradient_noise(
        task_path=str(tasks / "noise_aniso.py"), norm=None, lr=0.01, b_small=4, b_big=64, steps=500,
        burst_epochs=0, device="cpu", seed=0, threads=1, curvature=True,
    )
    (init,) = result.phases
    assert init.estimate.b_simple == pytest.approx(theory.EXPECTED_B_SIMPLE, rel=0.1)
    assert init.curvature.b_simple == pytest.approx(theory.EXPECTED_B_NOISE, rel=0.15)
    assert init.curvature.low < theory.EXPECTED_B_NOISE < init.curvature.high
    assert init.used is init.curvature and init.to_dict()["b_noise_curvature"]["b_simple"] == init.curvature.b_simple


def test_curvature_report_and_goodput_use_b_noise(tasks):
    cfg = NoiseConfig(task_path=str(tasks / "noise_aniso.py"), b_small=4, b_big=32, steps=20, burst_epochs=0,
                      curvature=True, threads=1, device="cpu")
    report = run_noise(cfg, throughput={16: 1000.0, 32: 1900.0}, isolate=False)
    assert report.b_noise == report.final.curvature.b_simple != report.final.estimate.b_simple
    assert report.goodput.b_noise == report.b_noise
    markdown = noise_markdown(report)
    assert "B_noise (Hessian)" in markdown and "(the Hessian-weighted estimate, initialisation;" in markdown


def test_curvature_refuses_a_model_without_second_derivatives(tasks):
    with pytest.raises(UsageError, match=r"--curvature needs second derivatives of the model.*; drop --curvature"):
        measure_gradient_noise(
            task_path=str(tasks / "once_diff.py"), norm=None, lr=0.01, b_small=4, b_big=16, steps=2,
            burst_epochs=0, device="cpu", seed=0, threads=1, curvature=True,
        )


def test_efficiency_and_goodput_math():
    assert efficiency(32, 100.0, 32) == 1.0
    assert efficiency(64, 0.0, 32) == pytest.approx(0.5)  # no noise: a sample at 64 does half the work
    assert efficiency(1024, math.inf, 32) == 1.0
    assert efficiency(64, 100.0, 32) == pytest.approx(132 / 164)
    sizes = [8, 16, 32, 64, 128, 256, 512]
    # Throughput saturating as B/(B+64) and B_noise = 64: goodput ~ B/(B+64)^2 peaks at B = 64.
    saturating = {b: 1000 * b / (b + 64) for b in sizes}
    curve = goodput_curve(saturating, 64.0)
    assert curve.best == 64 and curve.reference == 8
    assert curve.goodput == pytest.approx(tuple(t * e for t, e in zip(curve.throughput, curve.efficiency)))
    assert goodput_curve({b: 100.0 * b for b in sizes}, 64.0).best == 512  # perfect scaling: biggest wins
    assert goodput_curve({b: 100.0 for b in sizes}, 64.0).best == 8  # flat throughput: smallest wins
    band = goodput_curve(saturating, 64.0, band=(16.0, 256.0))
    assert band.best_range[0] < 64 < band.best_range[1]


def test_hardware_knee_and_comparison():
    assert hardware_knee({8: 100, 16: 200, 32: 390, 64: 400, 128: 405}) == 32
    assert hardware_knee({8: 100, 16: 200, 32: 400}) == 32  # never flattens: the largest
    assert hardware_knee({8: 100}) is None
    curve = goodput_curve({8: 100, 16: 200, 32: 390, 64: 400, 128: 405}, 32.0)
    agree = " ".join(compare(curve, curve.best))
    assert "agrees with goodput" in agree
    differ = " ".join(compare(curve, 128))
    assert "The search recommended 128" in differ and "larger than the goodput optimum" in differ


def test_run_noise_in_process_and_section(tasks, tmp_path):
    cfg = NoiseConfig(task_path=str(tasks / "noise_linear.py"), b_small=4, b_big=32, steps=20, burst_epochs=0,
                      threads=1, device="cpu")
    report = run_noise(cfg, throughput={16: 1000.0, 32: 1900.0, 64: 2000.0}, recommended=64, isolate=False)
    assert report.goodput is not None and report.goodput.sizes == (16, 32, 64)
    assert report.b_noise == report.phases[0].estimate.b_simple
    payload = noise_section(report, tmp_path)
    assert (tmp_path / "plots" / "goodput_vs_batch_size.png").stat().st_size > 0
    json.dumps(payload, allow_nan=False)
    assert payload["markdown"].startswith("## Gradient noise scale and goodput")
    assert "The search recommended 64" in noise_markdown(report)


def test_noise_cli_json(cli, tasks, workdir):
    result = cli("noise", tasks / "noise_linear.py", "--batch-small", "4", "--batch-big", "32", "--steps", "8",
                 "--burst-epochs", "0.01", "--batch-sizes", "16,64", "--throughput-steps", "6", "--threads", "1",
                 "--device", "cpu", "--repeats", "2", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [r["seed"] for r in data["repeats"]] == [0, 1] and data["seed"] in (0, 1)
    assert [p["label"] for p in data["phases"]] == ["initialisation", "after 0.01 epochs"]
    assert {"b_simple", "low", "high", "grad_sq", "trace_sigma", "steps", "train_loss"} <= set(data["phases"][0])
    assert data["goodput"]["sizes"] == [16, 64] and data["goodput"]["best"] in (16, 64)
    out = workdir / "reports" / "noise_linear"
    assert (out / "noise.md").exists() and (out / "noise.json").exists()
    assert (out / "plots" / "goodput_vs_batch_size.png").exists()


def test_noise_cli_bad_input(cli, tasks):
    same = cli("noise", tasks / "noise_linear.py", "--batch-small", "16", "--batch-big", "16")
    assert same.exit_code == 2 and "--batch-big 16 must be larger than --batch-small 16" in same.output
    # Raised in the child process, re-raised here with the same class and exit code.
    big = cli("noise", tasks / "noise_linear.py", "--batch-big", "100000", "--steps", "2", "--threads", "1")
    assert big.exit_code == 2 and "larger than the training set (8192 samples)" in big.output
    until = cli("noise", tasks / "noise_linear.py", "--burst-epochs", "0", "--burst-until-loss", "5")
    assert until.exit_code == 2 and "--burst-until-loss needs a training burst; pass --burst-epochs above 0" in until.output
    assert "Traceback" not in until.output
    # Raised in the child process: the model has no second derivatives.
    curv = cli("noise", tasks / "once_diff.py", "--curvature", "--batch-small", "4", "--batch-big", "16", "--steps", "2",
               "--burst-epochs", "0", "--threads", "1", "--device", "cpu")
    assert curv.exit_code == 2 and "--curvature needs second derivatives of the model" in curv.output
    assert "Traceback" not in curv.output


def _bn_report(tasks, **kwargs):
    cfg = NoiseConfig(task_path=str(tasks / "tiny_convert.py"), b_small=4, b_big=32, steps=4, burst_epochs=0.1,
                      threads=1, device="cpu", **kwargs)
    return run_noise(cfg, throughput={16: 1000.0, 32: 1900.0}, isolate=False)


def test_batchnorm_in_train_mode_is_warned_about(tasks):
    report = _bn_report(tasks)
    assert report.norm == "batch" and report.batchnorm_layers == 1 and report.bn_stats == "batch"
    (warning,) = report.warnings
    assert "1 BatchNorm layer(s) in train mode" in warning and "--batchnorm-stats running" in warning
    assert f"**Warning:** {warning}." in noise_markdown(report)
    assert report.to_dict()["warnings"] == [warning]
    assert _bn_report(tasks, norm="group").warnings == ()  # converted to GroupNorm: nothing to warn about


def test_running_batchnorm_statistics_remove_the_warning(tasks):
    report = _bn_report(tasks, bn_stats="running")
    assert report.warnings == () and report.bn_stats == "running"
    assert any("running statistics" in n and "PreciseBN" in n for n in report.notes)
    assert all(p.estimate.steps == 4 for p in report.phases)
    with pytest.raises(UsageError, match="--batchnorm-stats 'frozen' is not one of batch, running"):
        NoiseConfig(task_path="x.py", bn_stats="frozen").validated()


def test_precise_batchnorm_uses_the_statistics_of_the_batches_seen():
    import torch
    from torch import nn

    from batchtune.noise.measure import precise_batchnorm

    bn = nn.BatchNorm1d(3)
    data = [torch.randn(8, 3) * 2 + 5 for _ in range(4)]
    seen = precise_batchnorm(nn.Sequential(bn), iter((x, torch.zeros(8)) for x in data), 32, "cpu")
    assert seen == 32 and bn.momentum == 0.1  # the momentum is put back
    # A cumulative average of the batch means (equal batches: the mean of all 32 samples).
    assert torch.allclose(bn.running_mean, torch.cat(data).mean(0), atol=1e-5)


def test_noise_cli_warns_about_batchnorm(cli, tasks):
    result = cli("noise", tasks / "tiny_convert.py", "--batch-small", "4", "--batch-big", "32", "--steps", "3",
                 "--burst-epochs", "0", "--batch-sizes", "16,32", "--throughput-steps", "4", "--threads", "1",
                 "--device", "cpu", "--no-plots")
    assert result.exit_code == 0, result.output
    assert "warning: the model has 1 BatchNorm layer(s) in train mode" in result.stderr
