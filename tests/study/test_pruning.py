"""Successive halving within a batch size: a large batch is not pruned for having taken fewer steps."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution

from batchtune.study.pruning import BatchStratifiedHalving

DIST = {"batch_size": CategoricalDistribution([16, 128])}


def add(study, batch, curve, state=optuna.trial.TrialState.COMPLETE):
    trial = optuna.trial.create_trial(params={"batch_size": batch}, distributions=DIST, intermediate_values=curve,
                                      value=list(curve.values())[-1] if state == optuna.trial.TrialState.COMPLETE else None,
                                      state=state)
    study.add_trial(trial)


def frozen(batch, curve):
    return optuna.trial.create_trial(params={"batch_size": batch}, distributions=DIST, intermediate_values=curve,
                                     state=optuna.trial.TrialState.RUNNING)


def test_trials_are_compared_only_with_their_own_batch_size():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    pruner = BatchStratifiedHalving(min_resource=100)
    # Small batches are far ahead at 100 samples (more steps taken).
    for v in (0.90, 0.88, 0.86):
        add(study, 16, {100: v, 300: v + 0.05})
    # The first large-batch trials go on: fewer than 2 of their batch size to compare with.
    assert not pruner.prune(study, frozen(128, {100: 0.40}))
    add(study, 128, {100: 0.40, 300: 0.9})
    add(study, 128, {100: 0.50, 300: 0.9})
    # Against its own batch size, 0.55 is the best at the rung: it goes on, although far below batch 16.
    assert not pruner.prune(study, frozen(128, {100: 0.55}))
    # 0.30 is not in the best third of batch 128 at the first rung: pruned.
    assert pruner.prune(study, frozen(128, {100: 0.30}))
    # Judged only where a report crosses a rung: between rungs nothing happens.
    assert not pruner.prune(study, frozen(128, {100: 0.55, 200: 0.01}))
    assert pruner.prune(study, frozen(16, {100: 0.70}))
    assert pruner.prune(study, frozen(16, {100: 0.95, 300: 0.5}))  # the second rung, last of four
    assert pruner.prune(study, frozen(16, {100: float("nan")}))


def test_minimising_keeps_the_lowest():
    study = optuna.create_study(direction="minimize")
    for v in (1.0, 2.0, 3.0):
        add(study, 16, {10: v})
    pruner = BatchStratifiedHalving(min_resource=10)
    assert not pruner.prune(study, frozen(16, {10: 0.5}))
    assert pruner.prune(study, frozen(16, {10: 2.5}))


def test_no_rung_at_the_full_length_of_a_trial():
    study = optuna.create_study(direction="maximize")
    for v in (0.9, 0.8, 0.7):
        add(study, 16, {100: v, 300: v, 900: v})
    # Rungs would fall at 100, 300 and 900 samples; 900 is the trial's full length: it trained in full.
    pruner = BatchStratifiedHalving(min_resource=100, max_resource=800)
    assert not pruner.prune(study, frozen(16, {100: 0.95, 300: 0.95, 900: 0.1}))
    assert BatchStratifiedHalving(min_resource=100).prune(study, frozen(16, {100: 0.95, 300: 0.95, 900: 0.1}))


def test_keeping_the_best_half_judges_from_the_second_trial_and_prunes_fewer():
    """The default search keeps the best half (``keep=2``) at rungs spaced by 3: a lower LR that is behind
    early is pruned only when at least half its batch size's trials are ahead of it."""
    study = optuna.create_study(direction="maximize")
    half = BatchStratifiedHalving(min_resource=100, keep=2, max_resource=800)
    third = BatchStratifiedHalving(min_resource=100, max_resource=800)
    add(study, 16, {100: 0.90, 300: 0.95, 900: 0.96})
    # One trial to compare with is enough for halves: behind it, pruned; a third needs two.
    assert half.prune(study, frozen(16, {100: 0.80}))
    assert not third.prune(study, frozen(16, {100: 0.80}))
    add(study, 16, {100: 0.85, 300: 0.93, 900: 0.97})
    add(study, 16, {100: 0.70, 300: 0.80, 900: 0.80})
    # Second of four at the first rung: in the best half, not in the best third.
    assert not half.prune(study, frozen(16, {100: 0.88}))
    assert third.prune(study, frozen(16, {100: 0.88}))
    assert half.prune(study, frozen(16, {100: 0.75}))
    # The rungs stay at 1/9 and 1/3 (spaced by the reduction factor 3), not at 2x steps.
    assert half.rung_crossed([100, 200]) is None and half.rung_crossed([200, 300]) == 1
