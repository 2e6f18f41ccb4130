"""Successive halving that compares a trial only with trials of its own batch size.

Successive halving (Li et al. 2018, the inner loop of Hyperband) stops a trial at a rung when its
metric is not among the best 1/reduction_factor of the trials that reached the rung. Across batch
sizes that comparison is unfair: at equal samples seen, a batch of 16 has taken 8x the optimizer
steps of a batch of 128 and is ahead early, whatever either reaches at the end (steps, not samples,
drive progress below the critical batch size; McCandlish et al. 2018). Measured on the digits MLP,
plain halving pruned every batch-128 trial at the first rung (about 7 optimizer steps) although
batch 128 is within a point of the best at the end. So a trial is compared at each rung only with
trials of the same batch size, which reached the rung after the same number of steps.

The default search keeps the best half at each rung, not Hyperband's best third, at rungs of 1/9 and 1/3
of a trial. Early in training a higher LR is usually ahead while a lower one may end better (the
short-horizon bias, Wu et al. 2018): on the tiny transformer at batch 16, the LR that ends best is last of
three at the first rung. Replayed on whole learning curves of the bundled examples and the held-out task
(``benchmarks/pruning_bias.py``: 2 batch sizes each, a search's trials drawn at random until 2.5 to 8
trials' worth of compute per batch size is spent), keeping the best half picked a configuration closer to
the best in 8 of 8 (task, batch size) pairs at a budget of 2.5 trials, 7 of 8 at 4 and 5 of 8 at 8, by
up to 0.98 points on the held-out task; at 8 the MLP and the small-batch CNN lost up to 0.10 points. The
search_quality runs of the digits examples and the held-out task spent 2 to 7 trials per batch size.
A trial is judged from the second of its batch size at a rung (one peer). Waiting for two, as the best
third does, was worse in 8 of 8 pairs at 2.5 trials and 7 of 8 at 4: the compute it saves buys more
trials. The exception is the tiny transformer at batch 16, 0.16 points better when waiting. When the first
two trials are a start bracket near the best LR, the higher first (``--bracket``), sparing the start
trials from pruning is better in 3 and 4 of the 8 pairs and worse in the others: on the transformer's batch 16
by 1.3 points, on the held-out task's batch 16 worse by 0.5-0.65. Not shipped: on a task with several
norms it would train 2 start trials per norm in full, a cost the replay (one norm's pair) does not see.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState


# The default search's pruner keeps the best half of a batch size's trials at each rung (module docstring).
KEEP = 2


class BatchStratifiedHalving(optuna.pruners.BasePruner):
    """Rungs at ``min_resource * reduction_factor**k`` of the reported step (samples seen).

    At the first report at or past a rung, a trial goes on when fewer than ``keep - 1`` trials of its
    batch size have reached the rung (nothing to compare with yet), or when its value is among the best
    ``1/keep`` of them and itself. ``keep`` is ``reduction_factor`` unless given (plain halving ties the
    two; the default search spaces its rungs by 3 and keeps the best half, see the module docstring).
    """

    def __init__(self, min_resource: int, reduction_factor: int = 3, key: str = "batch_size",
                 max_resource: int | None = None, keep: int | None = None) -> None:
        self.min_resource = max(1, int(min_resource))
        self.reduction_factor = reduction_factor
        self.keep = keep or reduction_factor
        self.key = key
        self.max_resource = max_resource  # a trial's full length: no rung there (it has trained in full)

    def rung_crossed(self, steps: list[int]) -> int | None:
        """The rung that the last of ``steps`` (sorted) reached first, or None."""
        if not steps:
            return None
        last, before = steps[-1], steps[-2] if len(steps) > 1 else -1
        crossed = None
        k = 0
        while self.min_resource * self.reduction_factor**k <= last:
            boundary = self.min_resource * self.reduction_factor**k
            if self.max_resource is not None and boundary >= self.max_resource:
                break
            if boundary > before:
                crossed = k
            k += 1
        return crossed

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        steps = sorted(trial.intermediate_values)
        rung = self.rung_crossed(steps)
        if rung is None:
            return False
        value = trial.intermediate_values[steps[-1]]
        if not math.isfinite(value):
            return True
        boundary = self.min_resource * self.reduction_factor**rung
        peers = []
        for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)):
            if other.number == trial.number or other.params.get(self.key) != trial.params.get(self.key):
                continue
            at = _value_at(other, boundary)
            if at is not None:
                peers.append(at)
        if len(peers) < self.keep - 1:
            return False
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        ranked = sorted(peers + [value], reverse=maximize)
        keep = max(1, len(ranked) // self.keep)
        cutoff = ranked[keep - 1]
        return value < cutoff if maximize else value > cutoff


def _value_at(trial: Any, boundary: int) -> float | None:
    """The value a trial reported first at or past ``boundary`` samples, if it got there and it is finite."""
    for step in sorted(trial.intermediate_values):
        if step >= boundary:
            value = trial.intermediate_values[step]
            return value if math.isfinite(value) else None
    return None
