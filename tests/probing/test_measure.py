"""batchtune probe: the size search, OOM handling, the CPU memory budget, knee, memory model, FLOPs, CLI."""

from __future__ import annotations

import gc
import importlib
import json
import math

import pytest
import torch

from batchtune.errors import UsageError
from batchtune.probing.flops import count_training_flops, device_peak, table_peak
from batchtune.probing.measure import ProbeConfig, SizeSearch, probe, size_bound
from batchtune.probing.result import (
    ProbePoint,
    fit_memory_model,
    knee,
    largest_fit,
    recommended_max,
)
from batchtune.trial.process import CallResult, TrialRunner, WorkerContext

FAST = {"threads": 1, "time_cap": 0.05, "matmul_seconds": 0.02}


class _InProcess:
    """Runs the worker's calls in this process: for the fake OOMs, which need no process isolation."""

    def __init__(self, task_path):
        self.context = WorkerContext(str(task_path), None, None)

    def call(self, target, *, timeout=None, **kwargs):
        module, _, name = target.partition(":")
        threads = torch.get_num_threads()
        try:
            return CallResult("ok", value=getattr(importlib.import_module(module), name)(self.context, **kwargs))
        finally:
            torch.set_num_threads(threads)  # the measuring functions set the worker's thread count
            gc.unfreeze()  # and freeze the worker's long-lived objects


def _run_search(maximum: int, low: int, ceiling: int, granularity: int) -> SizeSearch:
    search = SizeSearch(low, ceiling, granularity)
    while (size := search.next_size()) is not None:
        search.record(size, size <= maximum)
    return search


# ------------------------------------------------------------------------------ the size search


@pytest.mark.parametrize("low,granularity", [(1, 1), (8, 1), (8, 8), (3, 4)])
def test_size_search_finds_the_maximum_within_the_bound(low, granularity):
    ceiling = 5000
    for maximum in range(low, 700):
        s = _run_search(maximum, low, ceiling, granularity)
        assert s.fit is not None and s.fit <= maximum  # never a size that does not fit
        assert s.fail is not None and s.fail > maximum and s.fail - s.fit <= granularity
        if granularity == 1:
            assert s.fit == maximum
        assert s.fit in s.measured and s.fail in s.measured  # never reports a size it did not run
        assert max(s.measured) <= ceiling and len(set(s.measured)) == len(s.measured)
        doubled = s.measured.index(next(b for b in s.measured if b > maximum))  # where doubling stopped
        first_fail, last_fit = s.measured[doubled], s.measured[doubled - 1]
        assert len(s.measured) <= size_bound(first_fail, low, first_fail - last_fit, granularity)


def test_size_search_stops_at_the_ceiling_and_below_the_minimum():
    s = _run_search(10_000, 8, 300, 1)
    assert s.fit == 300 and s.fail is None and s.measured == [8, 16, 32, 64, 128, 256, 300]
    s = _run_search(4, 8, 300, 1)
    assert s.fit is None and s.measured == [8]


# ------------------------------------------------------------------------- what the points say


def _pt(b, tput, peak, fits=True):
    return ProbePoint(batch_size=b, fits=fits, status="ok" if fits else "oom", throughput=tput,
                      peak_memory_bytes=peak)


def test_knee_recommended_max_and_memory_model_from_points():
    points = [_pt(8, 100.0, 180), _pt(16, 190.0, 260), _pt(32, 300.0, 420), _pt(64, 310.0, 740),
              _pt(128, 312.0, 1380), _pt(256, None, None, fits=False)]
    assert largest_fit(points) == 128
    assert knee(points, 0.05, 128) == 32  # 300 >= 0.95 * 312; 190 is not
    assert knee(points, 0.0, 128) == 128
    assert recommended_max(points, 1000, 0.10, 128) == 64  # 740 <= 900 < 1380
    assert recommended_max(points, 100, 0.10, 128) is None
    model = fit_memory_model(points, 1000)
    assert model.per_sample_bytes == pytest.approx(10.0) and model.fixed_bytes == pytest.approx(100.0)
    assert model.predicted_max == 90 and model.r2 == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------- FLOPs


def test_flop_count_and_peak_table():
    model = torch.nn.Linear(10, 20)
    x = torch.randn(4, 10)
    # forward 2*4*10*20; backward the same again for the weight's gradient, and again for the input's
    # when the input needs one (a hidden layer's input always does).
    assert count_training_flops(lambda: model(x).sum().backward()) == 2 * 2 * 4 * 10 * 20
    x.requires_grad_(True)
    assert count_training_flops(lambda: model(x).sum().backward()) == 3 * 2 * 4 * 10 * 20
    assert table_peak("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.4e12)
    assert table_peak("NVIDIA A100-SXM4-80GB", "fp16") == pytest.approx(312e12)
    assert table_peak("NVIDIA L4", "bf16") == pytest.approx(121e12)
    assert table_peak("Tesla T4", "bf16") is None and table_peak("NVIDIA A10G", "bf16") is None
    assert device_peak("AMD EPYC", "fp32", 5e11).flops == 5e11
    assert device_peak("AMD EPYC", "fp32", None).flops is None


# ---------------------------------------------------------------------------- OOM at a batch size


def test_probe_cli_reports_exactly_the_oom_size(cli, tasks, workdir, monkeypatch):
    monkeypatch.setenv("BATCHTUNE_TEST_OOM_ABOVE", "37")
    result = cli("probe", tasks / "oom_above.py", "--norms", "none", "--granularity", "1", "--batch-size-min", "8",
                 "--threads", "1", "--time-cap", "0.05", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    (curve,) = data["curves"]
    assert curve["largest_fit"] == 37 and curve["recommended_max"] == 37 and curve["knee"] <= 37
    sizes = {p["batch_size"]: p for p in curve["points"]}
    assert sizes[37]["fits"] and not sizes[38]["fits"]
    assert all(not p["fits"] and "out of memory" in p["reason"] for b, p in sizes.items() if b > 37)
    assert all(p["fits"] and p["throughput"] > 0 and p["peak_memory_bytes"] > 0 for b, p in sizes.items() if b <= 37)
    assert set(data) >= {"curves", "environment", "settings"}
    out = workdir / "reports" / "oom_above"
    assert json.loads((out / "probe.json").read_text())["curves"][0]["largest_fit"] == 37
    md = (out / "probe.md").read_text()
    assert "largest fit, recommended max" in md and "FlopCounterMode" in md
    assert (out / "plots" / "probe_throughput_vs_batch_size.png").stat().st_size > 0
    assert (out / "plots" / "probe_memory_vs_batch_size.png").stat().st_size > 0


@pytest.mark.parametrize(
    "kind,where",
    # "backward" is left out: oom_above.py's _Boom sits on the input, which needs no gradient, so its
    # backward never runs.
    [("cuda", "forward"), ("cudnn", "step"), ("mps", "forward"), ("hip", "step"), ("xpu", "forward"),
     ("cpu", "step")],
)
def test_probe_treats_every_oom_message_as_not_fitting(tasks, monkeypatch, kind, where):
    monkeypatch.setenv("BATCHTUNE_TEST_OOM_ABOVE", "37")
    monkeypatch.setenv("BATCHTUNE_TEST_OOM_KIND", kind)
    monkeypatch.setenv("BATCHTUNE_TEST_OOM_WHERE", where)
    path = tasks / "oom_above.py"
    result = probe(ProbeConfig(task_path=str(path), norms=("none",), batch_size_min=32, granularity=1, **FAST),
                   runner=_InProcess(path))
    (curve,) = result.curves
    assert curve.largest_fit == 37
    assert [p.batch_size for p in curve.points if p.fits] == [32, 36, 37]
    assert all(p.status == "oom" for p in curve.points if p.batch_size > 37)


def test_a_killed_worker_is_a_size_that_does_not_fit(tasks, monkeypatch):
    monkeypatch.setenv("BATCHTUNE_TEST_KILL_ABOVE", "20")
    result = probe(ProbeConfig(task_path=str(tasks / "kill_above.py"), norms=("none",), batch_size_min=16,
                               batch_size_max=24, granularity=4, **FAST))
    (curve,) = result.curves
    # 24 killed the worker; a fresh one measured 20 after it.
    assert [p.batch_size for p in curve.points] == [16, 20, 24] and curve.largest_fit == 20
    assert curve.point(20).order == 3 and curve.point(20).fits
    killed = [p for p in curve.points if not p.fits]
    assert [p.batch_size for p in killed] == [24]
    assert all(p.status == "killed" and "SIGKILL" in p.reason for p in killed)


# ------------------------------------------------------------------------- memory budget on CPU


def test_cpu_memory_budget_is_enforced_by_measured_peak(tasks):
    base = {"task_path": str(tasks / "wide_mlp.py"), "norms": ("none",), **FAST}
    with TrialRunner(base["task_path"], env={"OMP_NUM_THREADS": "1"}) as runner:
        free = probe(ProbeConfig(batch_size_min=16, batch_size_max=256, **base), runner=runner).curves[0]
        assert free.largest_fit == 256
        peaks = {p.batch_size: p.peak_memory_bytes for p in free.points}
        # 240 more samples of at least 256 KiB each; peak RSS is noisy by a few tens of MiB.
        assert peaks[256] > peaks[16] + 32 * 2**20
        budget = (peaks[64] + peaks[128]) // 2
        granularity = 8
        config = ProbeConfig(batch_size_min=16, memory_budget=budget, granularity=granularity, headroom=0.0, **base)
        curve = probe(config, runner=runner).curves[0]
    best = curve.point(curve.largest_fit)
    assert best is not None and best.fits and best.peak_memory_bytes <= budget
    above = curve.point(curve.largest_fit + granularity)
    assert above is not None and not above.fits and above.status == "over-budget"
    assert above.peak_memory_bytes > budget and "--memory-budget" in above.reason
    assert all(not p.fits for p in curve.points if p.batch_size > curve.largest_fit)
    # Per sample: a 16,384-wide hidden layer, before and after ReLU, in fp32 is 128 KiB at least.
    assert curve.memory_model.per_sample_bytes > 128 * 1024
    assert curve.recommended_max == curve.largest_fit  # no headroom asked for


# ------------------------------------------------------------------------ knee and memory model


def test_knee_and_memory_model_on_the_digits_example(tasks):
    pytest.importorskip("sklearn")
    examples = tasks.parent.parent / "examples"
    result = probe(ProbeConfig(task_path=str(examples / "digits_cnn.py"), norms=("batch",), batch_size_min=16,
                               batch_size_max=128, memory_budget=2**40, knee=0.05, **FAST))
    (curve,) = result.curves
    ok = [p for p in curve.points if p.fits]
    assert [p.batch_size for p in ok] == [16, 32, 64, 128] and curve.largest_fit == 128
    best = max(p.throughput for p in ok)
    assert curve.point(curve.knee).throughput >= 0.95 * best
    assert all(p.throughput < 0.95 * best for p in ok if p.batch_size < curve.knee)
    model = curve.memory_model
    assert model is not None and model.n_points == 4
    assert 16 * 1024 < model.per_sample_bytes < 2**20 and model.fixed_bytes > 0
    for p in ok:
        assert model.predict(p.batch_size) == pytest.approx(p.peak_memory_bytes, rel=0.05)
    assert model.predict(model.predicted_max) <= 2**40 < model.predict(model.predicted_max + 1)
    assert curve.flops_per_sample > 1e6  # three convolutions on 8x8 images, forward and backward
    assert all(p.achieved_flops and p.matmul_utilisation > 0 for p in ok)


# ----------------------------------------------------------------------------- search integration


def test_search_uses_and_reuses_the_probe(cli, tasks, workdir, monkeypatch):
    import optuna

    monkeypatch.setenv("BATCHTUNE_TEST_OOM_ABOVE", "40")
    args = ["search", tasks / "oom_above.py", "--objective", "pareto", "--batch-sizes", "16,32,64", "--norms", "none", "--precisions",
            "fp32,bf16", "--epochs", "1", "--threads", "1", "--no-plots"]
    first = cli(*args, "--trials", "1")
    assert first.exit_code == 0, first.output
    study = optuna.load_study(study_name="oom_above", storage="sqlite:///studies/oom_above.db")
    stored = study.user_attrs["probe"]
    assert study.user_attrs["batchtune_space"]["batch_sizes"] == [16, 32]  # 64 does not fit
    assert {c["precision"] for c in stored["curves"]} == {"fp32", "bf16"}
    assert all(c["largest_fit"] == 40 for c in stored["curves"])
    assert all(t.params["batch_size"] in (16, 32) and t.params["precision"] in ("fp32", "bf16") for t in study.trials)
    summary = json.loads((workdir / "reports" / "oom_above" / "summary.json").read_text())
    assert summary["probe"]["curves"][0]["largest_fit"] == 40
    report = (workdir / "reports" / "oom_above" / "report.md").read_text()
    assert "## Probe" in report and "### none / bf16" in report and "largest fit" in report

    def no_probe(*a, **k):
        raise AssertionError("the stored probe should have been reused")

    monkeypatch.setattr("batchtune.probing.measure.probe", no_probe)
    second = cli(*args, "--trials", "2")
    assert second.exit_code == 0, second.output
    study = optuna.load_study(study_name="oom_above", storage="sqlite:///studies/oom_above.db")
    assert len(study.trials) == 2 and study.user_attrs["probe"]["created"] == stored["created"]


# -------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--precision", "fp64"], "unknown precision 'fp64'"),
        (["--headroom", "150%"], "--headroom"),
        (["--peak-flops", "lots"], "--peak-flops"),
        (["--batch-size-min", "4096"], "larger than the training set"),
        (["--granularity", "0"], "--granularity 0 must be at least 1"),
    ],
)
def test_probe_cli_rejects_bad_input(cli, tasks, flags, message):
    result = cli("probe", tasks / "tiny_mlp.py", *flags)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_probe_config_is_validated():
    with pytest.raises(UsageError, match="--knee 100% must be at least 0% and below 100%"):
        ProbeConfig(task_path="x.py", knee=1.0).validated()
    assert math.isclose(ProbeConfig(task_path="x.py").headroom, 0.10)


def test_search_refuses_when_no_size_fits(cli, tasks, workdir, monkeypatch):
    monkeypatch.setenv("BATCHTUNE_TEST_OOM_ABOVE", "64")
    result = cli("search", tasks / "oom_above.py", "--objective", "pareto", "--trials", "1", "--batch-sizes", "128", "--norms", "none",
                 "--epochs", "1", "--threads", "1", "--no-plots")
    assert result.exit_code == 2
    assert "none of the batch sizes 128 fits" in result.output and "--no-probe" in result.output


def test_variable_length_data_fits_only_if_the_longest_batch_does(tasks, monkeypatch):
    """A padded batch needs most memory when it holds the longest items. With 200 padded tokens allowed and
    one item of 40 tokens among 63 of 4, batch 5 is the largest that fits every batch (5 x 40); random
    batches of 8-32 seldom hold the long item and fitted before the probe trained on the longest items."""
    from batchtune.trial.train import longest_batch
    from batchtune.task.contract import load_task, make_dataset

    monkeypatch.setenv("BATCHTUNE_TEST_OOM_TOKENS", "200")
    path = tasks / "oom_tokens.py"
    result = probe(ProbeConfig(task_path=str(path), norms=("as-built",), batch_size_min=2, granularity=1, **FAST),
                   runner=_InProcess(path))
    (curve,) = result.curves
    assert curve.largest_fit == 5
    assert all(p.status == "oom" for p in curve.points if p.batch_size > 5)
    assert any("variable-length data" in n for n in result.notes)
    # The longest batch holds the long item; fixed-size items (a TensorDataset) have none.
    task = load_task(path)
    inputs, _ = longest_batch(make_dataset(task, "train"), 4, task)
    assert tuple(inputs.shape) == (4, 40)
    dense = torch.utils.data.TensorDataset(torch.zeros(8, 3), torch.zeros(8))
    assert longest_batch(dense, 4, None) is None


def test_noisy_sizes_are_named_in_the_notes(tasks, monkeypatch):
    """Timings whose IQR is a large share of the median (a busy machine) are named, with the fix."""
    import batchtune.probing.measure as measure

    real = measure._to_point

    def noisy(outcome, size, budget, order):
        point = real(outcome, size, budget, order)
        if point.fits and size == 16:
            from dataclasses import replace

            point = replace(point, step_time_iqr=point.step_time_median * 1.5)
        return point

    monkeypatch.setattr(measure, "_to_point", noisy)
    path = tasks / "tiny_mlp.py"
    result = probe(ProbeConfig(task_path=str(path), norms=("batch",), batch_size_min=8, batch_size_max=32, **FAST),
                   runner=_InProcess(path))
    (note,) = [n for n in result.notes if n.startswith("Noisy timing")]
    assert "worst 150% at batch/fp32 batch 16" in note and "--threads 1" in note


def test_the_terminal_table_fits_80_columns(tasks):
    """probe's tables were about 100 columns wide: in an 80-column terminal every row wrapped onto two lines."""
    from batchtune.probing.report import terminal_table

    path = tasks / "oom_above.py"
    result = probe(ProbeConfig(task_path=str(path), norms=("none",), batch_size_min=8, batch_size_max=32, **FAST),
                   runner=_InProcess(path))
    text = terminal_table(result, width=79)
    assert max(len(line) for line in text.splitlines()) <= 79, text
    assert "largest fit 32, recommended max" in " ".join(text.split())  # the marks live in the head line
