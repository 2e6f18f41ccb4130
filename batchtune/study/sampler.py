"""The study's sampler: Optuna's TPE, with its random state a function of (--seed, trial number).

``TPESampler(seed=--seed)`` in every process replays the same random start-up draws, so a resume,
a second process or a second machine on the same study ran copies of the first trials. Here the
random state is set before each trial's draws from the seed and the number the trial will get:

- one process with a fixed ``--seed`` draws the same configurations run after run;
- a resume goes on with new draws (trial 2 of a resumed study draws what trial 2 would have);
- two workers that read the study at the same moment draw alike for the same number; the one whose
  trial got a later number notices the copy and draws again (:meth:`LeanTrial.claim`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
from optuna.samplers import TPESampler


class TrialSeededTPESampler(TPESampler):
    """A :class:`~optuna.samplers.TPESampler` whose draws for trial ``n`` depend on (seed, n), not on
    what this process drew before."""

    def __init__(self, *, seed: int, **kwargs: Any) -> None:
        super().__init__(seed=seed, **kwargs)
        self._base_seed = seed
        # The worker threads of one coordinator share the sampler: one trial's draws at a time.
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def drawing(self, number: int) -> Iterator[None]:
        """Hold the sampler for the draws of the trial that will be number ``number``."""
        with self._lock:
            tpe, independent = trial_seeds(self._base_seed, number)
            # Both random states of TPE: its own (after the start-up trials) and its RandomSampler's.
            self._rng.rng.seed(tpe)
            self._random_sampler._rng.rng.seed(independent)
            yield


def trial_seeds(seed: int, number: int) -> tuple[int, int]:
    """Two independent 32-bit seeds for trial ``number`` of a study searched with ``seed``."""
    words = np.random.SeedSequence([seed, number]).generate_state(2)
    return int(words[0]), int(words[1])


def make_sampler(*, seed: int, trials: int) -> TrialSeededTPESampler:
    """The sampler of every batchtune study (multivariate TPE over batch size, LR, norm, precision)."""
    return TrialSeededTPESampler(
        seed=seed,
        multivariate=True,
        group=False,
        # A handful of random trials first; the default (10) is half of a typical 20-trial budget.
        n_startup_trials=max(4, min(10, trials // 3)),
    )
