"""Learning-rate bounds from a measurement: the LR range test (Smith 2017, "Cyclical Learning Rates", sec. 3.3).

For a (batch size, normalization) cell, a fresh model trains for a few dozen steps while the LR
grows exponentially; the smoothed training loss falls, reaches a minimum and then blows up
(Lightning's ``lr_find`` reads the same curve). The search samples each cell's LR from a window
from 1/200 of the LR at the loss minimum up to half of it, so no trial is spent where training
diverges or where nothing learns in the budget. A short ramp's minimum sits above the best fixed
LR of a full run (a few dozen steps reward the LR that moves fastest): against the exhaustive grids of
four tasks (``benchmarks/lr_window.py``) the best LR per cell was a median 1.16 decades below it (1/14;
fastai's suggestion is 1/10), 90% of cells between 1/60 and 1/4.5. Cells that were not
tested are interpolated in log-LR over log-batch between the tested sizes of the same norm, and the
slope of log(LR) on log(batch) is reported as the task's own LR scaling exponent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# The ramp: 10 steps per decade from START to END (Smith ramps over a few epochs; a few dozen
# steps suffice to find where the loss turns, and keep the test a small share of the budget).
STEPS = 50
START = {"sgd": 1e-5, "adaptive": 1e-6}
END = {"sgd": 10.0, "adaptive": 1.0}
SMOOTHING = 0.9  # EMA of the loss, debiased (fastai and Lightning use 0.98 over hundreds of steps)
BLOWUP = 4.0  # stop once the smoothed loss is 4x its minimum (Lightning's early-stop threshold)
# The window around the loss minimum's LR: [minimum / 200, minimum / 2]. Against the grids of four tasks
# (benchmarks/lr_window.py, 93 range tests) it covered the best grid LR in 98.9% and 51% of it scored
# within 1 point of the cell's best, against 97.8% and 42% for [minimum / 100, 2 x minimum] (shipped
# before), more on each task, the held-out one included (28% against 23%): above minimum / 2 lay the best
# LR of one test in 93 (a held-out GroupNorm cell whose best was 0.56); it is where training diverges or
# only wins over few steps.
WINDOW_BELOW = 200.0
WINDOW_ABOVE = 0.5
# The first trials start at the LR the range test suggests, a tenth of the LR at the loss minimum
# (fastai's ``lr_find`` suggestion "minimum/10", Howard and Gugger 2020, "Fastai: a layered API"),
# and, when the budget holds two start trials per norm, also half a decade below it. Against the
# exhaustive grids (benchmarks/start_lr.py, 6 range-test seeds x 9 example/norm cells) the suggestion
# alone started 0.36 decades from the middle cell's best LR, mostly above it; with the second point
# the nearer start was 0.14 decades away (0.29 when the second trial is a random draw in the window),
# and the better start scored 0.27 points below the cell's best grid accuracy (1.58 with the draw).
SUGGESTED_BELOW_MIN = 10.0
BRACKET_BELOW_MIN = 30.0
# A minimum is a signal only when it comes after the ramp's start, the plateau of its first 1.2 decades of
# LR (10 of 50 steps; fewer when the budget shortens the ramp), where nothing trains yet, and lies more than
# 2% below the plateau's level: the median of its last two thirds (the debiased average's first steps are
# single batches' losses). A ramp too short for the model to learn at all wanders around that level, and its
# lowest wobble is no minimum: on a 1D CNN without BatchNorm it put the windows 1000x below the LRs that
# train it.
PLATEAU_DECADES = 1.2
PLATEAU_DROP = 0.02


def plateau(lrs: Sequence[float], losses: Sequence[float]) -> tuple[int, float]:
    """The number of steps in a ramp's starting plateau (see :data:`PLATEAU_DECADES`, at least one) and its level."""
    steps = max(1, sum(1 for lr in lrs if math.log10(lr / lrs[0]) < PLATEAU_DECADES - 1e-9))
    start = np.asarray(losses[:steps], dtype=float)
    return steps, float(np.median(start[steps // 3:]))


@dataclass(frozen=True)
class RangeTest:
    """One LR range test: the ramp's LRs and smoothed losses, and where the loss was lowest."""

    batch_size: int
    norm: str
    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    samples: int
    error: str | None = None

    @property
    def lr_at_blowup(self) -> float | None:
        """The last LR of the ramp: where the smoothed loss passed :data:`BLOWUP` x its minimum, or the ramp's end."""
        return float(self.lrs[-1]) if self.lr_at_min is not None else None

    @property
    def lr_at_min(self) -> float | None:
        """The LR of the smoothed loss's minimum, if the ramp lowered the loss beyond its start's noise (else
        None: no signal, and the cell's window comes from other tests)."""
        if self.error or len(self.losses) < 5:
            return None
        losses = np.asarray(self.losses)
        i = int(np.argmin(losses))
        steps, level = plateau(self.lrs, self.losses)
        if i < steps or losses[i] > level - PLATEAU_DROP * abs(level):
            return None
        return float(self.lrs[i])

    def to_dict(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "norm": self.norm, "lr_at_min": self.lr_at_min,
                "lr_at_blowup": self.lr_at_blowup,
                "samples": self.samples, "error": self.error,
                "lrs": [float(f"{v:.4g}") for v in self.lrs], "losses": [float(f"{v:.4g}") for v in self.losses]}


def range_test(task: Any, train_set: Any, val_set: Any, *, batch_size: int, norm: str, precision: str, device: str,
               seed: int, family: str, steps: int = STEPS, threads: int | None = None) -> dict[str, Any]:
    """Run in the worker (:meth:`TrialRunner.call_task`): the ramp for one cell, as a dict of :class:`RangeTest` fields."""
    import torch

    from batchtune.task.contract import build_model, build_optimizer, forward
    from batchtune.trial.oom import is_oom, oom_reason, release_memory
    from batchtune.trial.train import autocast, seed_everything, to_device, train_batches

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    start, end = START[family], END[family]
    lrs: list[float] = []
    losses: list[float] = []
    error = None
    failure: BaseException | None = None
    try:
        seed_everything(seed)
        model = build_model(task, norm).to(dev)
        model.train()
        optimizer = build_optimizer(task, model, start)
        batches = train_batches(train_set, batch_size, torch.Generator().manual_seed(seed), pin=False, task=task)
        avg, best = 0.0, math.inf
        for i in range(steps):
            lr = start * (end / start) ** (i / max(1, steps - 1))
            for group in optimizer.param_groups:
                group["lr"] = lr
            inputs, target = next(batches)
            optimizer.zero_grad(set_to_none=True)
            with autocast(dev, precision):
                loss = task.loss_fn(forward(model, to_device(inputs, dev), task.target_key), to_device(target, dev))
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                break
            avg = SMOOTHING * avg + (1 - SMOOTHING) * value
            smoothed = avg / (1 - SMOOTHING ** (i + 1))
            lrs.append(lr)
            losses.append(smoothed)
            best = min(best, smoothed)
            if smoothed > BLOWUP * best:
                break
    except Exception as exc:  # classified below, outside the except block
        failure = exc
    if failure is not None:
        error = oom_reason(failure) if is_oom(failure) else f"{type(failure).__name__}: {str(failure)[:200]}"
        failure = None
    release_memory(dev)
    return {"batch_size": batch_size, "norm": norm, "lrs": tuple(lrs), "losses": tuple(losses),
            "samples": len(lrs) * batch_size, "error": error}


def sizes_to_test(sizes: Sequence[int]) -> tuple[int, ...]:
    """The sizes to test per norm: the smallest, the largest and one in the geometric middle."""
    ordered = sorted(set(sizes))
    if len(ordered) <= 3:
        return tuple(ordered)
    middle = min(ordered, key=lambda b: abs(math.log(b) - (math.log(ordered[0]) + math.log(ordered[-1])) / 2))
    return tuple(sorted({ordered[0], middle, ordered[-1]}))


@dataclass(frozen=True)
class LrBounds:
    """The LR window of every searched cell, and the measured scaling of the LR with the batch size."""

    windows: dict[str, tuple[float, float]]  # "batch/norm" -> (low, high)
    exponent: float | None  # d log(LR) / d log(batch), pooled over norms
    exponent_se: float | None
    fallback: tuple[float, float]  # the window of a cell with no usable test
    # Tested cells ("batch/norm") whose loss still fell at the ramp's last LR: their minimum lies beyond the
    # ramp, so their windows may sit too low, and they are left out of the exponent's fit.
    at_ramp_end: tuple[str, ...] = ()

    def window(self, batch_size: int, norm: str) -> tuple[float, float]:
        return self.windows.get(f"{batch_size}/{norm}", self.fallback)

    def lr(self, batch_size: int, norm: str, position: float) -> float:
        """The LR at ``position`` in [0, 1] of the cell's window, log-uniformly."""
        low, high = self.window(batch_size, norm)
        return float(math.exp(math.log(low) + position * (math.log(high) - math.log(low))))

    def suggested_position(self, batch_size: int, norm: str, below_min: float = SUGGESTED_BELOW_MIN) -> float:
        """The position in the cell's window of the suggested LR (the loss minimum's LR / ``below_min``, 10
        by default); the middle of the window for a cell without a test of its own norm."""
        if f"{batch_size}/{norm}" not in self.windows:
            return 0.5
        low, high = self.window(batch_size, norm)
        suggested = low * WINDOW_BELOW / below_min
        position = math.log(suggested / low) / math.log(high / low) if high > low else 0.5
        return float(min(1.0, max(0.0, position)))

    def to_dict(self) -> dict[str, Any]:
        return {"windows": {k: [float(f"{v:.4g}") for v in w] for k, w in self.windows.items()},
                "exponent": self.exponent, "exponent_se": self.exponent_se, "fallback": list(self.fallback),
                "at_ramp_end": list(self.at_ramp_end)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LrBounds:
        return cls(windows={k: (float(w[0]), float(w[1])) for k, w in data["windows"].items()},
                   exponent=data.get("exponent"), exponent_se=data.get("exponent_se"),
                   fallback=(float(data["fallback"][0]), float(data["fallback"][1])),
                   at_ramp_end=tuple(data.get("at_ramp_end") or ()))


def fit_bounds(tests: Sequence[RangeTest], sizes: Sequence[int], norms: Sequence[str], family: str) -> LrBounds:
    """Windows for every (size, norm) from the tests: log-linear in log(batch) between tested sizes, flat beyond."""
    lows: dict[str, dict[int, float]] = {}
    highs: dict[str, dict[int, float]] = {}
    for t in tests:
        if t.lr_at_min is not None and t.lr_at_blowup is not None:
            lows.setdefault(t.norm, {})[t.batch_size] = t.lr_at_min / WINDOW_BELOW
            highs.setdefault(t.norm, {})[t.batch_size] = min(t.lr_at_blowup, t.lr_at_min * WINDOW_ABOVE)
    every_low = [v for per in lows.values() for v in per.values()]
    every_high = [v for per in highs.values() for v in per.values()]
    fallback = (START[family] * 10, END[family] / 10) if not every_low else (min(every_low), max(every_high))
    windows: dict[str, tuple[float, float]] = {}
    for norm in norms:
        if not lows.get(norm):
            continue
        for b in sizes:
            windows[f"{b}/{norm}"] = (_interp(lows[norm], b), _interp(highs[norm], b))
    # A minimum at the ramp's last LR is censored (the loss was still falling): it bounds the window, but
    # fitting the scaling on it would measure the ramp's end (all such cells alike: an exponent of 0 ± 0).
    ends = {(t.batch_size, t.norm) for t in tests if t.lr_at_min is not None and _min_at_ramp_end(t, family)}
    peaks = {norm: {b: v * WINDOW_BELOW for b, v in per.items() if (b, norm) not in ends} for norm, per in lows.items()}
    exponent, se = scaling_exponent(peaks)
    return LrBounds(windows=windows, exponent=exponent, exponent_se=se, fallback=fallback,
                    at_ramp_end=tuple(f"{b}/{n}" for b, n in sorted(ends)))


def _min_at_ramp_end(test: RangeTest, family: str) -> bool:
    """Whether the smoothed loss was lowest at the ramp's last step, the end of its LR range."""
    return (int(np.argmin(test.losses)) == len(test.losses) - 1
            and test.lrs[-1] >= END[family] * (1 - 1e-6))


def start_design(bounds: LrBounds, sizes: Sequence[int], norms: Sequence[str], *,
                 bracket: bool = False) -> list[dict[str, Any]]:
    """The first trials of a fresh study: each norm at the geometric middle batch size, at its suggested LR,
    then (``bracket``) each norm again half a decade lower (the loss minimum's LR / 30).

    The sampler's start-up trials are otherwise random draws over the window; these put one trial
    per norm where the range test says training is fastest, so the sampler's model starts from a
    measured point of every norm (parameters in the study's space: batch_size, lr_position, norm).
    The LR matters most (Bengio 2012, "Practical recommendations"), and one point cannot tell on
    which side of the best LR it fell; the bracket's second point can, at the cost of one trial per
    norm, which successive halving stops early where it loses (all start trials share a batch size).
    A norm without a range test of its own gets one trial, at the middle of the fallback window.
    """
    ordered = sorted(set(sizes))
    middle = min(ordered, key=lambda b: abs(math.log(b) - (math.log(ordered[0]) + math.log(ordered[-1])) / 2))
    design = [{"batch_size": middle, "lr_position": round(bounds.suggested_position(middle, n), 4), "norm": n}
              for n in norms]
    if bracket:
        design += [{"batch_size": middle, "lr_position": round(bounds.suggested_position(middle, n, BRACKET_BELOW_MIN), 4),
                    "norm": n} for n in norms if f"{middle}/{n}" in bounds.windows]
    return design


def _interp(points: dict[int, float], batch_size: int) -> float:
    """``points`` (batch -> LR) interpolated log-linearly at ``batch_size``, flat beyond the ends."""
    xs = np.log(sorted(points))
    ys = np.log([points[b] for b in sorted(points)])
    return float(np.exp(np.interp(math.log(batch_size), xs, ys)))


def scaling_exponent(points: dict[str, dict[int, float]]) -> tuple[float | None, float | None]:
    """Slope of log(LR) on log(batch) with one intercept per norm (least squares), and its standard error.

    ``points`` maps norm -> {batch size: LR}. None when fewer than two sizes of one norm, or no
    residual degrees of freedom for the error.
    """
    xs, ys = [], []
    for per in points.values():
        if len(per) < 2:
            continue
        x = np.log(np.array(sorted(per), dtype=float))
        y = np.log(np.array([per[b] for b in sorted(per)], dtype=float))
        xs.append(x - x.mean())
        ys.append(y - y.mean())
    if not xs:
        return None, None
    x, y = np.concatenate(xs), np.concatenate(ys)
    sxx = float((x * x).sum())
    if sxx <= 0:
        return None, None
    slope = float((x * y).sum() / sxx)
    dof = len(x) - 1 - len(xs)
    if dof < 1:
        return slope, None
    residual = y - slope * x
    return slope, float(math.sqrt(float((residual * residual).sum()) / dof / sxx))
