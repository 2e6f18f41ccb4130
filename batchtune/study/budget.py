"""The compute budget of a search: what one trial costs, which batch sizes it can judge, what each phase spent.

The unit is the *trial-equivalent*: the training samples of one full-budget trial (``--epochs`` x
training-set size, or ``--budget-samples``). Every phase counts the samples it trained on (forward
and backward), so a probe step, an LR range-test step, a timed speed step and a trial step cost the
same per sample; evaluation passes (forward only) are not counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# A trial that takes fewer optimizer steps than this cannot be judged against the others: SGD has
# barely left its initialisation, and the comparison measures the step count, not the batch size.
# 50 steps is the shortest run in which every bundled example gets past its initial plateau at a
# tuned LR; the report names the sizes this leaves out.
MIN_STEPS = 50

# The phases in the order a search runs them; summary.json ("compute") and the report list them so.
PHASES = ("speed", "lr_range", "trials", "climb", "reruns")


@dataclass(frozen=True)
class Budget:
    """The total budget in trial-equivalents, and the samples one trial-equivalent is."""

    trial_equivalents: float
    trial_samples: int  # training samples of one full-budget trial

    @property
    def samples(self) -> int:
        return int(self.trial_equivalents * self.trial_samples)

    def equivalents(self, samples: float) -> float:
        return samples / self.trial_samples


def trial_samples(epochs: float | None, budget_samples: int | None, train_size: int) -> int:
    """Training samples of one full-budget trial."""
    if budget_samples is not None:
        return int(budget_samples)
    return max(1, int(round((epochs or 1.0) * train_size)))


def judgeable_sizes(sizes: tuple[int, ...], samples_per_trial: int) -> tuple[tuple[int, ...], dict[int, str]]:
    """The sizes that give a trial at least :data:`MIN_STEPS` optimizer steps, and why each other one is left out."""
    kept, left_out = [], {}
    for b in sizes:
        steps = samples_per_trial // b
        if steps >= MIN_STEPS:
            kept.append(b)
        else:
            left_out[b] = (
                f"{steps} optimizer steps per trial (fewer than {MIN_STEPS}): too few to judge it within the budget; "
                "raise --epochs, or pass --batch-sizes to search it anyway"
            )
    if not kept:  # even the smallest is short: keep it, the report says so
        kept.append(min(sizes))
        left_out.pop(min(sizes), None)
    return tuple(kept), left_out


@dataclass
class Spend:
    """Samples trained per phase so far; kept in the study (user attribute ``budget``) and read back."""

    budget: Budget
    spent: dict[str, int] = field(default_factory=dict)

    def add(self, phase: str, samples: int) -> None:
        self.spent[phase] = self.spent.get(phase, 0) + int(samples)

    @property
    def total(self) -> int:
        return sum(self.spent.values())

    def left(self) -> int:
        return self.budget.samples - self.total

    def to_dict(self, trials_samples: int | None = None) -> dict[str, Any]:
        spent = dict(self.spent)
        if trials_samples is not None:
            spent["trials"] = int(trials_samples)
        te = self.budget.equivalents
        return {
            "trial_equivalents": self.budget.trial_equivalents,
            "trial_samples": self.budget.trial_samples,
            "spent_samples": {p: spent.get(p, 0) for p in PHASES if p in spent},
            "spent_trial_equivalents": {p: round(te(spent[p]), 3) for p in PHASES if p in spent},
            "total_trial_equivalents": round(te(sum(spent.values())), 3),
        }


def spent_on_trials(trials: list[Any]) -> int:
    """Samples the study's trials trained on (finished, pruned and failed ones alike), from their results."""
    total = 0
    for t in trials:
        result: Mapping[str, Any] = t.user_attrs.get("result") or {}
        total += int(result.get("samples") or 0)
    return total
