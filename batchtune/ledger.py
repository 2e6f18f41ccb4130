"""The coordinator's trials in the study, with as few storage round trips as Optuna allows.

On RDB storage (SQLite, PostgreSQL), ``Study.ask``, three ``suggest_*`` calls, ``set_constraint``
and ``Study.tell`` cost about 70 SQL statements a trial: the new trial is read back in full, each
``set_constraint`` reads every system attribute first, and ``tell`` reads the whole trial twice.
:class:`LeanTrial` does the same work through the storage's and the sampler's own interfaces
(``create_new_trial`` with a template, ``sample_relative``/``sample_independent``,
``set_trial_state_values``) and keeps the trial's state locally: about 40 statements
(``benchmarks/coordinator_overhead.py`` prints them). The study's sampler still decides every value.

The coordinator creates its trial first and then reads the study once: that read gives the trial's
number, the counts for the ``--trials`` total and the sampler's view of the study. A re-queued trial
(WAITING: enqueued, or the retry of a dead worker's trial) is taken with ``Study.ask``, the only
public way to claim it atomically; Optuna then suggests its stored parameters.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
)
from optuna.trial import FrozenTrial, TrialState


class LeanTrial:
    """A running trial of ``study``: suggest, set attributes and the constraint, tell.

    The methods batchtune uses of :class:`optuna.Trial`, with the same meaning; :meth:`optuna_trial`
    gives a full ``optuna.Trial`` where a pruner needs ``report``/``should_prune``.
    """

    def __init__(self, study: Any, frozen: FrozenTrial) -> None:
        self.study = study
        self.frozen = frozen
        self._relative: dict[str, Any] | None = None
        self._space: dict[str, BaseDistribution] = {}
        self._full: Any = None

    @property
    def number(self) -> int:
        return self.frozen.number

    @property
    def trial_id(self) -> int:
        return self.frozen._trial_id

    @classmethod
    def claim(cls, study: Any, user_attrs: dict[str, Any], *, take_waiting: bool) -> LeanTrial:
        """A new RUNNING trial with ``user_attrs``; :meth:`locate` must follow.

        With ``take_waiting`` (the study has WAITING trials: enqueued, or the retry of a dead
        worker's trial), one of them is taken with ``Study.ask`` instead, and Optuna suggests its
        fixed parameters.
        """
        if take_waiting:
            trial = study.ask()
            for key, value in user_attrs.items():
                trial.set_user_attr(key, value)
            lean = cls(study, _running(trial._trial_id, user_attrs))
            lean._full = trial
            return lean
        # One transaction for the trial and its attributes, and no read back.
        template = _running(-1, user_attrs)
        trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
        return cls(study, _running(trial_id, user_attrs))

    def locate(self, trials: Sequence[FrozenTrial]) -> bool:
        """Take this trial's number from ``trials``, the study read after :meth:`claim`; False if absent."""
        for t in trials:
            if t._trial_id == self.trial_id:
                self.frozen.number = t.number
                break
        else:
            return False
        # What Study.ask does: the sampler's per-thread view of the study is refreshed once a trial,
        # here with the trials just read (the sampler reads the running ones itself: constant liar).
        self.study._thread_local.cached_all_trials = list(trials)
        if self._full is None:
            self.study.sampler.before_trial(self.study, self.frozen)
        return True

    # Sampling, as optuna.Trial._suggest does it.
    def _relative_params(self) -> dict[str, Any]:
        if self._relative is None:
            sampler = self.study.sampler
            self._space = sampler.infer_relative_search_space(self.study, self.frozen)
            self._relative = sampler.sample_relative(self.study, self.frozen, self._space)
        return self._relative

    def _suggest(self, name: str, distribution: BaseDistribution) -> Any:
        if name in self.frozen.params:
            return self.frozen.params[name]
        if distribution.single():
            value = distribution.to_external_repr(distribution.to_internal_repr(_single_value(distribution)))
        else:
            relative = self._relative_params()
            value = relative.get(name) if name in self._space else None
            if value is None or not _contains(distribution, value):
                value = self.study.sampler.sample_independent(self.study, self.frozen, name, distribution)
        self.study._storage.set_trial_param(self.trial_id, name, distribution.to_internal_repr(value), distribution)
        self.frozen.params[name] = value
        self.frozen.distributions = {**self.frozen.distributions, name: distribution}
        return value

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        if self._full is not None:  # a re-queued trial: Optuna knows its fixed parameters
            return self._full.suggest_categorical(name, list(choices))
        return self._suggest(name, CategoricalDistribution(list(choices)))

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        if self._full is not None:
            return float(self._full.suggest_float(name, low, high, log=log))
        return float(self._suggest(name, FloatDistribution(low, high, log=log)))

    @property
    def params(self) -> dict[str, Any]:
        return dict(self._full.params if self._full is not None else self.frozen.params)

    # Recording.
    def set_user_attr(self, key: str, value: Any) -> None:
        self.study._storage.set_trial_user_attr(self.trial_id, key, value)
        self.frozen.user_attrs[key] = value

    def set_constraint(self, key: str, value: float) -> None:
        """Optuna's constraint (``<= 0`` feasible), stored where samplers and ``FrozenTrial.constraints`` read it."""
        before = set(self.frozen.system_attrs)
        self.frozen.set_constraint(key, float(value))
        for attr in set(self.frozen.system_attrs) - before:
            self.study._storage.set_trial_system_attr(self.trial_id, attr, self.frozen.system_attrs[attr])

    def optuna_trial(self) -> Any:
        """A full ``optuna.Trial`` for the same trial (for ``report``/``should_prune``)."""
        if self._full is None:
            self._full = optuna.Trial(self.study, self.trial_id)
        return self._full

    def report(self, value: float, step: int) -> None:
        self.optuna_trial().report(value, step)

    def should_prune(self) -> bool:
        return bool(self.optuna_trial().should_prune())

    def tell(self, values: Sequence[float] | None = None, *, state: TrialState = TrialState.COMPLETE) -> None:
        """Finish the trial: COMPLETE with ``values``, or FAIL/PRUNED without."""
        if state == TrialState.PRUNED:
            # Optuna stores the last reported value of a pruned trial; its own tell knows how.
            self.study.tell(self.number, state=TrialState.PRUNED)
            return
        vals = [float(v) for v in values] if values is not None and state == TrialState.COMPLETE else None
        try:
            self.study.sampler.after_trial(self.study, self.frozen, state, vals)
        finally:
            self.study._storage.set_trial_state_values(self.trial_id, state, vals)
            self.study._thread_local.cached_all_trials = None
            self.frozen.state = state


def _running(trial_id: int, user_attrs: dict[str, Any]) -> FrozenTrial:
    return FrozenTrial(
        number=-1,
        state=TrialState.RUNNING,
        value=None,
        datetime_start=datetime.datetime.now(),
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs=dict(user_attrs),
        system_attrs={},
        intermediate_values={},
        trial_id=trial_id,
    )


def _single_value(distribution: BaseDistribution) -> Any:
    if isinstance(distribution, CategoricalDistribution):
        return distribution.choices[0]
    return distribution.low  # type: ignore[attr-defined]


def _contains(distribution: BaseDistribution, value: Any) -> bool:
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False

