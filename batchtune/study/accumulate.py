"""Effective batch sizes beyond memory: gradient accumulation over micro-batches that fit.

An effective batch B above the largest micro-batch that fits is trained as ``steps`` micro-batches of
``B / steps`` samples each, one optimizer step per B samples (batchtune.trial.train divides each
micro-batch loss by ``steps``, so the gradient is the mean over the whole effective batch). Memory
and throughput are those of the real micro-batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from batchtune.errors import UsageError


@dataclass(frozen=True)
class Split:
    """How one effective batch size is trained."""

    effective: int
    micro: int
    steps: int


def split(effective: int, micro_max: int, max_steps: int) -> Split:
    """Fewest accumulation steps (at most ``max_steps``) whose equal micro-batches are <= ``micro_max``."""
    if effective <= micro_max:
        return Split(effective, effective, 1)
    for steps in range(2, max_steps + 1):
        if effective % steps == 0 and effective // steps <= micro_max:
            return Split(effective, effective // steps, steps)
    raise UsageError(
        f"batch size {effective} cannot be split into at most {max_steps} equal micro-batches of at most "
        f"{micro_max} samples; raise --accumulate, raise --batch-size-max, or drop that batch size"
    )


def plan(
    sizes: Sequence[int],
    *,
    max_steps: int,
    micro_max: int | None,
    train_size: int,
    explicit: bool,
) -> dict[int, Split]:
    """Effective batch size -> split, for the searched sizes.

    ``sizes`` are the batch sizes that fit; ``micro_max`` the largest micro-batch that fits
    (``--batch-size-max``, later the probe's maximum; default the largest of ``sizes``). With
    ``max_steps > 1`` and powers of two (no explicit ``--batch-sizes``), the list goes on doubling up
    to ``micro_max * max_steps`` samples, never past the training set.
    """
    limit = int(micro_max or max(sizes))
    effective = sorted(set(int(s) for s in sizes))
    if max_steps > 1 and not explicit:
        b = effective[-1] * 2
        while b <= limit * max_steps and b <= train_size:
            effective.append(b)
            b *= 2
    return {b: split(b, limit, max_steps) for b in effective}
