"""Learning-rate transfer across batch sizes: the scaling rules, the reference batch and the warm-up.

The search samples a *base* learning rate at a reference batch size and scales it to each trial's
(effective) batch size, so that one good base LR is good at every batch size and the sampler does
not have to relearn the LR for each size.

- linear: lr(B) = base * B / B_ref, with a linear warm-up (Goyal et al. 2017, "Accurate, Large
  Minibatch SGD: Training ImageNet in 1 Hour", section 2). For SGD.
- sqrt: lr(B) = base * sqrt(B / B_ref) (Malladi et al. 2022, "On the SDEs and Scaling Rules for
  Adaptive Gradient Algorithms"; Hoffer et al. 2017 for SGD). For Adam-type optimizers.
- none: the LR is sampled as is at every batch size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from batchtune.errors import UsageError

RULES = ("linear", "sqrt", "none")

# Goyal et al. 2017 take lr 0.1 at batch 256 as the reference of the linear rule; batch 256 is
# also where most published LRs are quoted, so a base LR reads like the LRs users already know.
DEFAULT_REFERENCE_BATCH = 256

# Goyal et al. 2017 warm up for 5 of 90 epochs (5.6%); a trial is much shorter than a full run,
# so the warm-up is the same fraction of the trial's budget.
DEFAULT_WARMUP_FRACTION = 0.05


def resolve_rule(rule: str, family: str) -> str:
    """``auto`` becomes ``linear`` for SGD-type and ``sqrt`` for adaptive optimizers (see module doc)."""
    if rule == "auto":
        return "linear" if family == "sgd" else "sqrt"
    if rule not in RULES:
        raise UsageError(f"--lr-rule {rule!r} is not a rule; choose from auto, {', '.join(RULES)}")
    return rule


def factor(rule: str, batch: int, reference: int) -> float:
    """What the base LR (at batch ``reference``) is multiplied by at batch ``batch``."""
    ratio = batch / reference
    if rule == "linear":
        return ratio
    if rule == "sqrt":
        return math.sqrt(ratio)
    return 1.0


def scaled_lr(base_lr: float, rule: str, batch: int, reference: int) -> float:
    return base_lr * factor(rule, batch, reference)


def reference_batch(requested: int | None, sizes: Sequence[int]) -> int:
    """The batch size at which the base LR is sampled.

    ``requested`` (``--lr-reference-batch``) is used as given; by default 256, clipped into the
    searched range so that the base LR is an LR some trial actually trains with near the middle of
    typical ranges, and never extrapolated from outside the range.
    """
    if requested is not None:
        return int(requested)
    return int(min(max(DEFAULT_REFERENCE_BATCH, min(sizes)), max(sizes)))


def default_warmup_epochs(rule: str, trial_epochs: float) -> float:
    """Warm-up epochs when ``--warmup-epochs`` is not given: 5% of the trial's budget for linear, else 0."""
    return DEFAULT_WARMUP_FRACTION * trial_epochs if rule == "linear" else 0.0


@dataclass(frozen=True)
class LrRow:
    """One row of the report's "learning rate by batch size" table."""

    batch_size: int
    lr: float
    factor: float


def lr_table(base_lr: float, rule: str, reference: int, sizes: Iterable[int]) -> list[LrRow]:
    """The LR to use at each batch size under ``rule``, from a base LR at ``reference``."""
    return [
        LrRow(batch_size=int(b), lr=scaled_lr(base_lr, rule, int(b), reference), factor=factor(rule, int(b), reference))
        for b in sorted(set(int(s) for s in sizes))
    ]


def describe(rule: str) -> str:
    """The rule with its source, for reports."""
    if rule == "linear":
        return "linear scaling, lr = base x B / B_ref, with linear warm-up (Goyal et al. 2017)"
    if rule == "sqrt":
        return "square-root scaling, lr = base x sqrt(B / B_ref) (Malladi et al. 2022)"
    return "no scaling: each trial's learning rate was sampled directly"
