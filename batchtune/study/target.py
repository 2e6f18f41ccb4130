"""Time to a target metric: read off a learning curve, turned into the objective, pruned on the way.

A trial's *samples to target* is the number of training samples seen at the first evaluation whose
validation metric reaches ``--target`` (an upper bound, with the resolution of ``--eval-every``).
Its *time to target* is those samples divided by the trial's measured median throughput: pure
training time on this hardware, without evaluation and start-up, comparable across batch sizes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# A trial that never reaches the target gets this objective value plus its relative distance from
# the target at its end. Every miss then ranks behind every hit (no real time to target comes near
# 10^7 s, about four months), and misses that came closer rank ahead of those that did not, which
# the sampler can learn from. The trials table shows the miss as such, never this number.
MISS_PENALTY_S = 1e7

# Successive halving keeps the best 1/3 at each rung: the reduction factor of Hyperband
# (Li et al. 2018) and of the examples in ASHA (Li et al. 2020).
REDUCTION_FACTOR = 3


def reached(value: float, target: float, mode: str) -> bool:
    """True when ``value`` is at least as good as ``target`` (``mode`` is ``"max"`` or ``"min"``)."""
    if not math.isfinite(value):
        return False
    return value >= target if mode == "max" else value <= target


def samples_to_target(curve: Iterable[Mapping[str, Any]], target: float, mode: str) -> int | None:
    """Samples seen at the first curve point that reaches ``target``; None if none does."""
    for point in sorted(curve, key=lambda p: p["samples"]):
        if reached(float(point["val_metric"]), target, mode):
            return int(point["samples"])
    return None


def time_to_target(samples: int | None, throughput: float | None) -> float | None:
    """Estimated training seconds to reach the target: samples / measured samples per second."""
    if samples is None or not throughput or not math.isfinite(throughput) or throughput <= 0:
        return None
    return samples / throughput


@dataclass(frozen=True)
class TargetOutcome:
    """What a trial's learning curve says about the target."""

    reached: bool
    samples: int | None
    seconds: float | None

    def objective(self, last_metric: float | None, target: float) -> float:
        """The value to minimise: the time to target, or the miss penalty (see MISS_PENALTY_S)."""
        if self.reached and self.seconds is not None:
            return self.seconds
        if last_metric is None or not math.isfinite(last_metric):
            return MISS_PENALTY_S * 2
        gap = abs(target - last_metric) / max(abs(target), 1e-12)
        return MISS_PENALTY_S * (1.0 + min(gap, 1.0))


def outcome(curve: Iterable[Mapping[str, Any]], target: float, mode: str, throughput: float | None) -> TargetOutcome:
    samples = samples_to_target(curve, target, mode)
    return TargetOutcome(reached=samples is not None, samples=samples, seconds=time_to_target(samples, throughput))


def intermediate_value(metric: float, mode: str) -> float:
    """The learning-curve value reported to the pruner of a minimising study: lower is better."""
    return -metric if mode == "max" else metric


def make_pruner(min_resource: int) -> Any:
    """Asynchronous successive halving (Li et al. 2020) with samples seen as the resource.

    Rungs sit at ``min_resource * 3**k`` samples; at each, a trial goes on only if its metric is in
    the best third of the trials that reached the rung (the best so far while fewer than three have).
    """
    import optuna

    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=max(1, int(min_resource)), reduction_factor=REDUCTION_FACTOR, min_early_stopping_rate=0
    )


def first_rung_samples(sizes: Iterable[int], train_size: int, eval_every: float | None, budget_samples: float) -> int:
    """Where the pruner's first rung sits, in samples seen.

    At 1/9 of the trial's budget, so that the rungs fall at 1/9 and 1/3 of it (reduction factor 3),
    and never before the earliest evaluation of any batch size: the metric right after
    initialisation says nothing. Evaluations follow batchtune.trial.train (every ``eval_every`` epochs of
    ``train_size // B`` steps).
    """
    points = []
    for b in sizes:
        steps_per_epoch = max(1, train_size // int(b))
        points.append(max(1, round((eval_every or 1.0) * steps_per_epoch)) * int(b))
    return max(min(points), int(budget_samples / REDUCTION_FACTOR**2))
