"""The CI gate's decision: baseline vs current, per figure, with an exit code (rendering: ``render``).

Speed: a slowdown fails only when it is beyond ``max_slowdown`` *and* statistically significant.
On a CPU the figure is the median of the *normalised* step times: each step's time divided by the
time of batchtune's fixed reference workload run just before it (``batchtune.gate.measure``). A shared
machine's speed drifts by +-20% within minutes, which no statistic of raw step times can tell from
a 15% regression; drift slows the neighbouring reference run alike and cancels in the ratio (on the
2-core machine this was built on, the spread of a repeat's figure fell from 7.5% to 1.5%).
Without calibration (accelerators) the figure is the median of the raw step times.

Significance comes from a cluster bootstrap confidence interval (99% by default) of the ratio of
that figure, current / baseline: whole repeats are resampled with replacement and their steps pooled
(Davison & Hinkley 1997, sec. 3.8; Field & Welsh 2007, "Bootstrapping clustered data"). Steps of
one repeat share its model and the machine's state at the time, so they are not independent: a
rank test on pooled steps (Mann-Whitney U on hundreds of samples) calls a 1% shift "significant",
while repeats are the independent units. The interval is on the threshold's scale (a ratio of step
times). In an interleaved comparison repeat ``r`` of both sides ran back to back, so the bootstrap
draws the same repeats on both sides (paired) and the noise they shared cancels too.

Memory is deterministic enough to compare directly with its own threshold. The metric comes from
one seeded training run and is compared directly too. A change beyond a threshold in the good
direction is reported as "baseline stale: refresh it" and does not fail.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from batchtune.gate.baseline import (
    CONFIG_FIELDS,
    FINGERPRINT_FIELDS,
    NOTED_FIELDS,
    BenchRun,
)
from batchtune.study.config import Tolerance
from batchtune.trial.timing import summarize
from batchtune.units import format_bytes

EXIT_PASS = 0
EXIT_REGRESSION = 1
EXIT_USAGE = 2
EXIT_MISMATCH = 3

# Verdicts of one figure.
PASS = "pass"
REGRESSION = "REGRESSION"
STALE = "stale"
NOISE = "noise"  # beyond the threshold but not significant
INFO = "info"

# Reference workload medians further apart than this factor get a note: the calibration cancels
# most of a machine-speed change this large, not all of it (docs/bench.md, Benchmark).
SPEED_SWING = 1.25


@dataclass(frozen=True)
class Thresholds:
    """How much worse a figure may get before the gate fails. Mirrors the CLI flags."""

    max_slowdown: float = 0.05  # step time may grow 5% (TorchBench flags 7%; asv's default factor is 10%)
    max_memory_increase: float = 0.03
    max_metric_drop: Tolerance = field(default_factory=lambda: Tolerance(0.005, "relative"))
    # The speed figure compared is this quantile of the (normalised) step times. The median: with the
    # calibration, interference that hits a step or its reference run moves the ratio either way, and
    # the median is the steadiest figure (docs/bench.md has the measured spreads).
    quantile: float = 0.5
    confidence: float = 0.99
    resamples: int = 4000
    seed: int = 0  # the bootstrap is seeded: the same two files always give the same verdict


@dataclass(frozen=True)
class SpeedChange:
    """Ratio of the step-time figure (current / baseline) with its bootstrap confidence interval."""

    ratio: float
    low: float
    high: float
    confidence: float
    verdict: str

    @property
    def slowdown(self) -> float:
        """How much longer a step takes now: +0.15 is 15% slower, -0.10 is 10% faster."""
        return self.ratio - 1.0


def speed_change(
    baseline: Sequence[Sequence[float]],
    current: Sequence[Sequence[float]],
    *,
    max_slowdown: float,
    baseline_calibration: Sequence[Sequence[float]] | None = None,
    current_calibration: Sequence[Sequence[float]] | None = None,
    quantile: float = 0.5,
    paired: bool = False,
    confidence: float = 0.99,
    resamples: int = 4000,
    seed: int = 0,
) -> SpeedChange:
    """Decide on step-time samples grouped by repeat (seconds per step; lower is better).

    With ``*_calibration`` (the reference workload's seconds before each step, same shape) every
    step time is divided by its reference time first. The figure is the ``quantile`` of the pooled
    (normalised) step times of a side; the interval comes from resampling whole repeats.
    Regression: the ratio of the figures is above ``1 + max_slowdown`` and the whole confidence
    interval is above 1. Stale: the ratio is below ``1 / (1 + max_slowdown)`` (throughput up by
    more than the threshold) and the whole interval is below 1. Beyond a threshold but not
    significant: noise.

    ``paired``: repeat ``r`` of both sides ran back to back (``bench --against-env``), so the same
    repeats are drawn for both sides and noise they shared cancels in the ratio.
    """
    if (baseline_calibration is None) != (current_calibration is None):
        raise ValueError("calibrate both sides or neither: a normalised and a raw step time do not compare")
    base = _log_times(baseline, baseline_calibration, "baseline")
    cur = _log_times(current, current_calibration, "current")
    if paired and len(base) != len(cur):
        raise ValueError("paired samples need the same number of repeats on both sides")
    log_ratio = _pooled_quantile(cur, quantile) - _pooled_quantile(base, quantile)
    rng = np.random.default_rng(seed)
    chosen_base = rng.integers(0, len(base), size=(resamples, len(base)))
    chosen_cur = chosen_base if paired else rng.integers(0, len(cur), size=(resamples, len(cur)))
    boot = _bootstrap_quantiles(cur, chosen_cur, quantile) - _bootstrap_quantiles(base, chosen_base, quantile)
    alpha = 1.0 - confidence
    low, high = (math.exp(float(v)) for v in np.quantile(boot, [alpha / 2, 1 - alpha / 2]))
    ratio = math.exp(log_ratio)
    if ratio > 1.0 + max_slowdown:
        verdict = REGRESSION if low > 1.0 else NOISE
    elif ratio < 1.0 / (1.0 + max_slowdown):
        verdict = STALE if high < 1.0 else NOISE
    else:
        verdict = PASS
    return SpeedChange(ratio=ratio, low=low, high=high, confidence=confidence, verdict=verdict)


def _log_times(
    samples: Sequence[Sequence[float]], calibration: Sequence[Sequence[float]] | None, name: str
) -> list[np.ndarray]:
    """log step time per repeat, minus the log of the reference time before each step when calibrated.

    Logs make the ratio a difference and leave every quantile in place (the log is monotonic).
    """
    groups = [np.log(np.asarray(g, dtype=float)) for g in samples]
    if not groups or any(len(g) == 0 for g in groups):
        raise ValueError(f"{name} has a repeat without step-time samples")
    if calibration is None:
        return groups
    refs = [np.log(np.asarray(c, dtype=float)) for c in calibration]
    if [len(c) for c in refs] != [len(g) for g in groups]:
        raise ValueError(f"{name} needs one calibration sample per step sample")
    return [g - c for g, c in zip(groups, refs)]


def _pooled_quantile(groups: list[np.ndarray], q: float) -> float:
    return float(np.quantile(np.concatenate(groups), q))


def _bootstrap_quantiles(groups: list[np.ndarray], chosen: np.ndarray, q: float, chunk: int = 256) -> np.ndarray:
    """The ``q`` quantile of each bootstrap sample: the steps of the ``chosen`` repeats, pooled."""
    sizes = np.array([len(g) for g in groups])
    padded = np.full((len(groups), int(sizes.max())), np.inf)  # a shorter repeat keeps its own sample count
    for i, g in enumerate(groups):
        padded[i, : len(g)] = g
    out = np.empty(chosen.shape[0])
    for start in range(0, chosen.shape[0], chunk):  # bounded memory for long runs
        rows = chosen[start : start + chunk]
        flat = np.sort(padded[rows].reshape(len(rows), -1), axis=1)  # the padding sorts last
        count = sizes[rows].sum(axis=1)
        at = q * (count - 1)  # linear interpolation between order statistics, as numpy.quantile's default
        lo = np.floor(at).astype(int)
        hi = np.minimum(lo + 1, count - 1)
        idx = np.arange(len(rows))
        out[start : start + len(rows)] = flat[idx, lo] + (at - lo) * (flat[idx, hi] - flat[idx, lo])
    return out


def memory_verdict(baseline: int, current: int, *, max_increase: float) -> tuple[float, str]:
    """Relative change of peak memory and its verdict (no test: the peak is not a noisy figure)."""
    if baseline <= 0:
        return 0.0, INFO
    change = current / baseline - 1.0
    if change > max_increase:
        return change, REGRESSION
    if change < -max_increase:
        return change, STALE
    return change, PASS


def metric_verdict(baseline: float, current: float, *, mode: str, tolerance: Tolerance) -> tuple[float, str]:
    """How much worse the metric got (positive: worse) in the tolerance's units, and the verdict."""
    worse = (baseline - current) if mode == "max" else (current - baseline)
    drop = worse / abs(baseline) if tolerance.kind == "relative" and baseline != 0 else worse
    if drop > tolerance.value:
        return drop, REGRESSION
    if -drop > tolerance.value:
        return drop, STALE
    return drop, PASS


# ----------------------------------------------------------------------------------- the decision


@dataclass(frozen=True)
class Mismatch:
    """A fingerprint or configuration field that differs between the two runs."""

    field: str
    baseline: Any
    current: Any


@dataclass(frozen=True)
class Row:
    """One line of the comparison table."""

    figure: str
    baseline: str
    current: str
    change: str
    threshold: str
    verdict: str  # for people: "pass", "REGRESSION", "stale: faster, refresh the baseline", ...
    decision: str = INFO  # for the exit code: PASS, REGRESSION, STALE, NOISE or INFO
    values: dict[str, Any] = field(default_factory=dict)  # the numbers behind the text, for --json


@dataclass(frozen=True)
class Decision:
    """The gate's outcome: rows, refusals and notes; it owns the exit code (as black's Report does)."""

    rows: tuple[Row, ...]
    mismatches: tuple[Mismatch, ...]
    refused: bool
    notes: tuple[str, ...] = ()
    baseline_name: str = "baseline"
    current_name: str = "current"

    @property
    def exit_code(self) -> int:
        if self.refused:
            return EXIT_MISMATCH
        return EXIT_REGRESSION if any(r.decision == REGRESSION for r in self.rows) else EXIT_PASS

    @property
    def status(self) -> str:
        if self.refused:
            return "mismatch"
        if self.exit_code == EXIT_REGRESSION:
            return "regression"
        return "stale" if any(r.decision == STALE for r in self.rows) else "pass"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "baseline": self.baseline_name,
            "current": self.current_name,
            "rows": [asdict(r) for r in self.rows],
            "mismatches": [asdict(m) for m in self.mismatches],
            "notes": list(self.notes),
        }


def mismatches(baseline: BenchRun, current: BenchRun, *, ignore: Sequence[str] = ()) -> list[Mismatch]:
    """Fields of the configuration and the refusing fingerprint that differ (except ``ignore``)."""
    out = []
    for key in CONFIG_FIELDS:
        a, b = baseline.config.get(key), current.config.get(key)
        if a != b:
            out.append(Mismatch(key, a, b))
    for key in FINGERPRINT_FIELDS:
        a, b = baseline.fingerprint.get(key), current.fingerprint.get(key)
        if a != b:
            out.append(Mismatch(key, a, b))
    return [m for m in out if m.field not in ignore]


def config_mismatches(baseline: BenchRun, config: dict[str, Any], fingerprint: dict[str, Any]) -> list[Mismatch]:
    """:func:`mismatches` against a run not yet measured (its config and fingerprint only)."""
    probe = BenchRun(
        task="", created="", config=config, fingerprint=fingerprint, samples=[[1.0]], wall_samples=[[1.0]],
        repeat_process=[0], peak_memory_bytes=[0], memory_kind="",
    )
    return mismatches(baseline, probe)


def refuse(found: Sequence[Mismatch], *, baseline_name: str = "baseline", current_name: str = "current") -> Decision:
    """The decision when the runs are not comparable and the caller did not allow it (exit 3)."""
    return Decision(rows=(), mismatches=tuple(found), refused=True, baseline_name=baseline_name, current_name=current_name)


def decide(
    baseline: BenchRun,
    current: BenchRun,
    thresholds: Thresholds | None = None,
    *,
    allow_mismatch: bool = False,
    ignore: Sequence[str] = (),
    baseline_name: str = "baseline",
    current_name: str = "current",
) -> Decision:
    """Compare two runs figure by figure. Pure: no measuring, no I/O.

    ``ignore`` names comparability fields that may differ (an interleaved comparison of two task
    files ignores ``task_sha256``).
    """
    th = thresholds or Thresholds()
    found = mismatches(baseline, current, ignore=ignore)
    if found and not allow_mismatch:
        return refuse(found, baseline_name=baseline_name, current_name=current_name)
    notes = [f"{m.field} differs (baseline {m.baseline!r}, current {m.current!r}); compared anyway (--allow-mismatch)" for m in found]
    for key in NOTED_FIELDS:
        a, b = baseline.fingerprint.get(key), current.fingerprint.get(key)
        if a != b:
            notes.append(f"{key} differs (baseline {a!r}, current {b!r}); it does not affect the figures")
    notes += [f"baseline: {w}" for w in baseline.warnings] + [f"current: {w}" for w in current.warnings]
    if current.config.get("clock") == "cpu":
        shares = (baseline.cpu_share, current.cpu_share)
        if min(shares) < 0.5 * max(shares):
            # Preemption evicts the caches, so even CPU time grows on a crowded machine.
            notes.append(
                f"the machine was much busier during one run (the timed steps got {shares[0]:.0%} of a core "
                f"for the baseline, {shares[1]:.0%} now); CPU time also grows under heavy contention"
            )

    if baseline.calibration is not None and current.calibration is not None:
        ref_b, ref_c = (summarize([c for rep in refs for c in rep]).median for refs in (baseline.calibration, current.calibration))
        if max(ref_b, ref_c) > SPEED_SWING * min(ref_b, ref_c):
            # Measured: a 30% faster machine moved the calibrated figure of unchanged code by +4.6%
            # (the reference sped up a little more than the step); most of the swing still cancels.
            notes.append(
                f"the machine ran at a very different speed (reference workload {ref_b * 1e3:.2f} ms in the baseline, "
                f"{ref_c * 1e3:.2f} ms now); calibration removes most of such a change, not all: a speed change "
                "near the threshold is worth confirming with --against-env"
            )
    rows = [_speed_row(baseline, current, th), _wall_row(baseline, current), _memory_row(baseline, current, th)]
    if baseline.flops_per_sample is not None or current.flops_per_sample is not None:
        rows.append(_flops_row(baseline, current))
    if baseline.metric is not None or current.metric is not None:
        rows.append(_metric_row(baseline, current, th))
    speed = rows[0]
    if speed.decision == NOISE:
        notes.append(
            "the speed change is beyond the threshold but its confidence interval includes no change: "
            "treated as noise (raise --repeat for a sharper test)"
        )
    if any(r.decision == STALE for r in rows):
        notes.append("an improvement beyond the threshold: the baseline is stale, refresh it (save a new one)")
    return Decision(
        rows=tuple(rows),
        mismatches=tuple(found),
        refused=False,
        notes=tuple(notes),
        baseline_name=baseline_name,
        current_name=current_name,
    )


def clock_label(run: BenchRun) -> str:
    return "CPU time" if run.config.get("clock") == "cpu" else "wall time"


def _speed_row(baseline: BenchRun, current: BenchRun, th: Thresholds) -> Row:
    paired = _paired(baseline, current)
    calibrated = baseline.calibration is not None and current.calibration is not None
    sc = speed_change(
        baseline.samples, current.samples, max_slowdown=th.max_slowdown,
        baseline_calibration=baseline.calibration if calibrated else None,
        current_calibration=current.calibration if calibrated else None,
        quantile=th.quantile, paired=paired, confidence=th.confidence, resamples=th.resamples, seed=th.seed,
    )
    b, c = baseline.throughput, current.throughput
    stat = ("median" if th.quantile == 0.5 else f"p{th.quantile * 100:g}") + " step time" + (" / reference" if calibrated else "")
    verdict = {STALE: "stale: faster, refresh the baseline", NOISE: "pass (not significant)"}.get(sc.verdict, sc.verdict)
    return Row(
        figure=f"throughput (samples/s, {clock_label(current)})",
        baseline=throughput_text(b.median, baseline.step_time.rel_iqr),
        current=throughput_text(c.median, current.step_time.rel_iqr),
        change=f"{stat} {sc.slowdown:+.1%} ({sc.confidence:.0%} CI {sc.low - 1:+.1%} .. {sc.high - 1:+.1%}"
        + (", paired)" if paired else ")"),
        threshold=f"{stat} <= +{th.max_slowdown:.1%}",
        verdict=verdict,
        decision=sc.verdict,
        values={
            "baseline_throughput": b.median, "current_throughput": c.median, "step_time_ratio": sc.ratio,
            "ci_low": sc.low, "ci_high": sc.high, "confidence": sc.confidence, "max_slowdown": th.max_slowdown,
            "quantile": th.quantile, "paired": paired, "calibrated": calibrated,
            "decision": sc.verdict,
        },
    )


def _paired(baseline: BenchRun, current: BenchRun) -> bool:
    """Both runs come from one interleaved measurement, repeat for repeat."""
    token = baseline.config.get("interleave_id")
    return (
        token is not None
        and token == current.config.get("interleave_id")
        and len(baseline.samples) == len(current.samples)
        and baseline.repeat_process == current.repeat_process
    )


def throughput_text(value: float, rel_iqr: float) -> str:
    return f"{value:,.1f} (IQR {rel_iqr:.0%})"


def _wall_row(baseline: BenchRun, current: BenchRun) -> Row:
    b = baseline.batch_size / baseline.wall_step_time.median
    c = current.batch_size / current.wall_step_time.median
    return Row(
        figure="throughput (samples/s, wall time)",
        baseline=throughput_text(b, baseline.wall_step_time.rel_iqr),
        current=throughput_text(c, current.wall_step_time.rel_iqr),
        change=f"{c / b - 1:+.1%}",
        threshold="-" if current.config.get("clock") != "wall" else "see above",
        verdict=INFO,
        values={"baseline": b, "current": c},
    )


def _memory_row(baseline: BenchRun, current: BenchRun, th: Thresholds) -> Row:
    b, c = baseline.peak_memory, current.peak_memory
    change, verdict = memory_verdict(b, c, max_increase=th.max_memory_increase)
    kind = {"cpu-rss": "CPU peak RSS", "cuda-allocated": "CUDA max allocated"}.get(current.memory_kind, current.memory_kind)
    return Row(
        figure=f"peak memory ({kind})",
        baseline=format_bytes(b),
        current=format_bytes(c),
        change=f"{change:+.1%}",
        threshold=f"<= +{th.max_memory_increase:.1%}",
        verdict="stale: less memory, refresh the baseline" if verdict == STALE else verdict,
        decision=verdict,
        values={"baseline": b, "current": c, "change": change, "decision": verdict},
    )


def _flops_row(baseline: BenchRun, current: BenchRun) -> Row:
    b, c = baseline.flops_per_sample, current.flops_per_sample
    change = f"{c / b - 1:+.1%}" if b and c else "-"
    return Row(
        figure="FLOPs per sample (forward + backward)",
        baseline=flops_text(b),
        current=flops_text(c),
        change=change,
        threshold="-",
        verdict=INFO,
        values={"baseline": b, "current": c},
    )


def flops_text(value: float | None) -> str:
    if value is None:
        return "n/a"
    for unit, scale in (("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g} FLOP"


def _metric_row(baseline: BenchRun, current: BenchRun, th: Thresholds) -> Row:
    b, c = baseline.metric, current.metric
    epochs = current.config.get("epochs") or baseline.config.get("epochs")
    figure = f"validation metric after {epochs:g} epochs ({current.metric_mode}imize)" if epochs else "validation metric"
    if b is None or c is None:
        missing = "baseline" if b is None else "current run"
        return Row(figure, num(b), num(c), "-", "-", INFO, INFO, {"note": f"the {missing} has no metric; pass --epochs to both"})
    drop, verdict = metric_verdict(b, c, mode=current.metric_mode, tolerance=th.max_metric_drop)
    tol = th.max_metric_drop
    unit = "%" if tol.kind == "relative" else ""
    shown = f"{-drop:+.2%}" if tol.kind == "relative" else f"{c - b:+.4g}"
    limit = f"drop <= {tol.value:.2%}" if unit else f"drop <= {tol.value:g}"
    return Row(
        figure=figure,
        baseline=num(b),
        current=num(c),
        change=shown,
        threshold=limit,
        verdict="stale: better, refresh the baseline" if verdict == STALE else verdict,
        decision=verdict,
        values={"baseline": b, "current": c, "drop": drop, "decision": verdict},
    )


def num(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"
