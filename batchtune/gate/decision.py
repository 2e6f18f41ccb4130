"""The CI gate's decision: baseline vs current, per figure, with an exit code (rendering: ``render``).

Speed has three verdicts (with T = 1 + ``max_slowdown`` and the ratio r = current / baseline):
regression when r > T and the whole confidence interval is above 1; pass when the interval's upper
end is at most T (a slowdown beyond the threshold is ruled out); inconclusive otherwise: the
interval holds both "no change" and "beyond the threshold", so the machine was too noisy to decide,
and the decision estimates how many more repeats would (the interval's width shrinks as one over
the square root of the repeats). "Stale" is the mirror image of a regression: r < 1/T and the whole
interval below 1. The figure is synchronised wall time by default (``batchtune.gate.measure``).
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

Exit codes: 0 pass (also stale), 1 regression, 2 usage error (the CLI's), 3 not comparable,
4 inconclusive (no regression, but the speed could not be decided).
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
    INT_BOUNDS,
    NOTED_FIELDS,
    BenchRun,
)
from batchtune.study.config import Tolerance
from batchtune.task.choices import AS_BUILT
from batchtune.trial.timing import summarize
from batchtune.units import format_bytes

EXIT_PASS = 0
EXIT_REGRESSION = 1
EXIT_USAGE = 2
EXIT_MISMATCH = 3
EXIT_INCONCLUSIVE = 4

# Verdicts of one figure.
PASS = "pass"
REGRESSION = "REGRESSION"
STALE = "stale"
INCONCLUSIVE = "inconclusive"  # the interval holds both no change and a change beyond the threshold
INFO = "info"

# --until-decided asks for this many times the repeats the estimate needs: at exactly the estimate
# the interval would reach the margin only about half the time.
MORE_MARGIN = 1.25
MAX_REPEATS = INT_BOUNDS["repeat"][1]

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
    """Ratio of the step-time figure (current / baseline) with its bootstrap confidence interval.

    ``more_repeats``: for an inconclusive verdict, about how many more repeats (of the current run;
    of both sides when paired) would likely decide; None when decided, or when more repeats of the
    current run cannot decide (``baseline_limited``: the baseline's own spread is too wide).
    """

    ratio: float
    low: float
    high: float
    confidence: float
    verdict: str
    more_repeats: int | None = None
    baseline_limited: bool = False

    @property
    def slowdown(self) -> float:
        """How much longer a step takes now: +0.15 is 15% slower, -0.10 is 10% faster."""
        return self.ratio - 1.0


def speed_verdict(ratio: float, low: float, high: float, *, max_slowdown: float) -> str:
    """The three-verdict rule (plus stale, a pass) on a ratio and its confidence interval.

    Regression: ratio > T = 1 + max_slowdown and low > 1 (significant, and beyond the threshold).
    Stale: the mirror image, ratio < 1/T and high < 1. Pass: high <= T (a slowdown beyond the
    threshold is ruled out). Inconclusive: anything else, where the interval holds both no change
    and a change beyond the threshold.
    """
    limit = 1.0 + max_slowdown
    if ratio > limit and low > 1.0:
        return REGRESSION
    if ratio < 1.0 / limit and high < 1.0:
        return STALE
    if high <= limit:
        return PASS
    return INCONCLUSIVE


def repeats_to_decide(
    ratio: float, low: float, high: float, *, max_slowdown: float, repeats: int, current_share: float = 1.0
) -> int | None:
    """About how many more repeats would likely turn an inconclusive verdict into a decision.

    The decision in reach is the one the ratio points to: regression when ratio > T (the lower end
    must rise above 1), pass otherwise (the upper end must fall to T). A half-width h shrinks as
    1/sqrt(repeats); ``current_share`` is the part of the interval's variance that more repeats of
    the current run reduce (1.0 when both sides grow, as in an interleaved comparison): the half-width
    after m repeats is h * sqrt(1 - s + s * n / m). None when more repeats cannot reach the margin
    (the baseline's share alone is too wide, or the ratio sits on the threshold).
    """
    limit = math.log1p(max_slowdown)
    lr = math.log(ratio)
    if lr > limit:
        margin, half = lr, lr - math.log(low)
    else:
        margin, half = limit - lr, math.log(high) - lr
    if margin <= 1e-9 or half <= 0:
        return None
    s = min(max(current_share, 0.0), 1.0)
    room = (margin / half) ** 2 - (1.0 - s)
    if room <= 0 or s == 0:
        return None
    needed = MORE_MARGIN * s * repeats / room
    if needed > MAX_REPEATS:
        return None  # beyond what batchtune measures: the estimate sits too close to the threshold
    return max(1, math.ceil(needed - repeats))


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
    (normalised) step times of a side; the interval comes from resampling whole repeats, and the
    verdict from :func:`speed_verdict`.

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
    boot_cur = _bootstrap_quantiles(cur, chosen_cur, quantile)
    boot_base = _bootstrap_quantiles(base, chosen_base, quantile)
    boot = boot_cur - boot_base
    alpha = 1.0 - confidence
    low, high = (math.exp(float(v)) for v in np.quantile(boot, [alpha / 2, 1 - alpha / 2]))
    ratio = math.exp(log_ratio)
    verdict = speed_verdict(ratio, low, high, max_slowdown=max_slowdown)
    more: int | None = None
    limited = False
    if verdict == INCONCLUSIVE:
        # Unpaired, the two sides' bootstrap draws are independent, so the variance splits into
        # theirs; more repeats of the current run shrink only its part.
        v_cur, v_base = float(np.var(boot_cur)), float(np.var(boot_base))
        share = 1.0 if paired or v_cur + v_base == 0 else v_cur / (v_cur + v_base)
        more = repeats_to_decide(ratio, low, high, max_slowdown=max_slowdown, repeats=len(cur), current_share=share)
        limited = more is None and share < 1.0
    return SpeedChange(ratio=ratio, low=low, high=high, confidence=confidence, verdict=verdict,
                       more_repeats=more, baseline_limited=limited)


def log_figure(
    samples: Sequence[Sequence[float]], calibration: Sequence[Sequence[float]] | None, quantile: float = 0.5
) -> float:
    """The ``quantile`` of log(step time [/ reference]) pooled over repeats: a side's speed figure."""
    return _pooled_quantile(_log_times(samples, calibration, "run"), quantile)


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
    decision: str = INFO  # for the exit code: PASS, REGRESSION, STALE, INCONCLUSIVE or INFO
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
        """3 not comparable, 1 any regression, 4 inconclusive (and no regression), else 0."""
        if self.refused:
            return EXIT_MISMATCH
        if any(r.decision == REGRESSION for r in self.rows):
            return EXIT_REGRESSION
        if any(r.decision == INCONCLUSIVE for r in self.rows):
            return EXIT_INCONCLUSIVE
        return EXIT_PASS

    @property
    def status(self) -> str:
        if self.refused:
            return "mismatch"
        code = self.exit_code
        if code == EXIT_REGRESSION:
            return "regression"
        if code == EXIT_INCONCLUSIVE:
            return "inconclusive"
        return "stale" if any(r.decision == STALE for r in self.rows) else "pass"

    @property
    def more_repeats(self) -> int:
        """Further repeats ``--until-decided`` should measure: the speed row's estimate while the
        decision is inconclusive, 0 when decided or when more repeats of this run cannot decide."""
        if self.status != "inconclusive":
            return 0
        more = next((r.values.get("more_repeats") for r in self.rows if r.decision == INCONCLUSIVE), None)
        return int(more) if more else 0

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
    same_task = baseline.fingerprint.get("task_sha256") == current.fingerprint.get("task_sha256")
    for key in CONFIG_FIELDS:
        a, b = baseline.config.get(key), current.config.get(key)
        if key == "norm" and same_task and {a, b} == {"batch", AS_BUILT}:
            continue  # a model with no BatchNorm and no `norm` argument, labelled "batch" by earlier releases
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
    rows = [_speed_row(baseline, current, th)]
    cpu_row = _cpu_row(baseline, current, th)
    rows += [cpu_row] if cpu_row is not None else [_wall_row(baseline, current)]
    rows.append(_memory_row(baseline, current, th))
    if baseline.flops_per_sample is not None or current.flops_per_sample is not None:
        rows.append(_flops_row(baseline, current))
    if baseline.metric is not None or current.metric is not None:
        rows.append(_metric_row(baseline, current, th))
    speed = rows[0]
    if speed.decision == INCONCLUSIVE:
        notes.append(_inconclusive_note(speed.values, len(current.samples)))
    if cpu_row is not None and (waiting := _waiting_note(speed.values, cpu_row.values, th)):
        notes.append(waiting)
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
    verdict = {STALE: "stale: faster, refresh the baseline", INCONCLUSIVE: "INCONCLUSIVE: too noisy to decide"}.get(
        sc.verdict, sc.verdict)
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
            "quantile": th.quantile, "paired": paired, "calibrated": calibrated, "clock": current.config.get("clock"),
            "decision": sc.verdict, "more_repeats": sc.more_repeats, "baseline_limited": sc.baseline_limited,
        },
    )


def _cpu_row(baseline: BenchRun, current: BenchRun, th: Thresholds) -> Row | None:
    """The CPU time of the same steps, for diagnosis, when the decision clock is wall time."""
    if current.config.get("clock") != "wall" or baseline.cpu_samples is None or current.cpu_samples is None:
        return None
    calibrated = baseline.cpu_calibration is not None and current.cpu_calibration is not None
    ratio = math.exp(
        log_figure(current.cpu_samples, current.cpu_calibration if calibrated else None, th.quantile)
        - log_figure(baseline.cpu_samples, baseline.cpu_calibration if calibrated else None, th.quantile)
    )
    b, c = (summarize([t for rep in run.cpu_samples or [] for t in rep]) for run in (baseline, current))
    stat = ("median" if th.quantile == 0.5 else f"p{th.quantile * 100:g}") + " CPU step time" + (" / reference" if calibrated else "")
    return Row(
        figure="throughput (samples/s, CPU time)",
        baseline=throughput_text(baseline.batch_size / b.median, b.rel_iqr),
        current=throughput_text(current.batch_size / c.median, c.rel_iqr),
        change=f"{stat} {ratio - 1:+.1%}",
        threshold="- (diagnostic)",
        verdict=INFO,
        values={"baseline": baseline.batch_size / b.median, "current": current.batch_size / c.median,
                "step_time_ratio": ratio, "calibrated": calibrated},
    )


def _waiting_note(speed: dict[str, Any], cpu: dict[str, Any], th: Thresholds) -> str | None:
    """Say when wall time and CPU time moved apart by more than the threshold and the wall interval.

    Wall time = CPU time + waiting (with one thread), so a wall-time change CPU time does not share
    is waiting that appeared or vanished.
    """
    wall, cpu_ratio = speed["step_time_ratio"], cpu["step_time_ratio"]
    gap = math.log(wall) - math.log(cpu_ratio)
    half = max(math.log(speed["ci_high"]) - math.log(wall), math.log(wall) - math.log(speed["ci_low"]))
    if abs(gap) <= max(math.log1p(th.max_slowdown), half):
        return None
    figures = f"wall time {wall - 1:+.1%}, CPU time {cpu_ratio - 1:+.1%}"
    if gap > 0:
        return (f"the steps now spend more time waiting ({figures}): a sleep, a lock, a device synchronisation "
                "or a data loader that starves the model costs wall time that CPU time cannot see")
    return (f"the steps now spend less time waiting than in the baseline ({figures}): waiting vanished, "
            "or the machine let the steps run more of the time")


def _inconclusive_note(speed: dict[str, Any], repeats: int) -> str:
    low, high = speed["ci_low"] - 1, speed["ci_high"] - 1
    head = (f"inconclusive: the {speed['confidence']:.0%} interval of the speed change ({low:+.1%} .. {high:+.1%}) holds "
            f"both no change and more than the +{speed['max_slowdown']:.1%} threshold, so the machine was too noisy "
            "to decide (exit 4)")
    more = speed.get("more_repeats")
    if more:
        sides = " on each side" if speed.get("paired") else ""
        return (f"{head}; about {more} more repeats{sides} would likely decide: rerun with --repeat {repeats + more}, "
                "or add --until-decided")
    if speed.get("baseline_limited"):
        return (f"{head}; the baseline's own spread is too wide for more repeats of this run to decide: re-save the "
                "baseline with more --repeat on a quieter machine, or compare interleaved (--against-env)")
    return (f"{head}; the change sits too close to the threshold for up to {MAX_REPEATS} repeats to decide: "
            "more repeats narrow the interval, not the estimate")


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
    # The change as the values moved (a perplexity rising 22-fold is +2118%, not -2118%), then which way is worse.
    shown = f"{(c - b) / abs(b):+.2%}" if tol.kind == "relative" and b != 0 else f"{c - b:+.4g}"
    if drop:
        shown += " (worse)" if drop > 0 else " (better)"
    word = "drop" if current.metric_mode == "max" else "rise"
    limit = f"{word} <= {tol.value:.2%}" if unit else f"{word} <= {tol.value:g}"
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
