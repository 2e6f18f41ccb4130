"""The coordinator's trials in the study, with as few storage round trips as Optuna allows.

On RDB storage (SQLite, PostgreSQL) every storage call is a transaction, and ``Study.ask``, three
``suggest_*`` calls, ``set_user_attr``, ``set_constraint`` and ``Study.tell`` cost about 70 SQL
statements in 12 transactions a trial: the new trial is read back in full, each suggest is its own
transaction, ``set_constraint`` reads every system attribute first, and ``tell`` reads the whole
trial twice. :class:`LeanTrial` does the same work through the storage's and the sampler's own
interfaces and keeps the trial's state locally:

1. the caller reads the study (``Study.get_trials``): the counts towards ``--trials`` and the
   sampler's view of the study;
2. :meth:`LeanTrial.claim` samples the whole configuration with the study's TPE sampler (relative
   sampling, with independent sampling for what it leaves out, as ``optuna.Trial`` does) and creates
   the trial with its parameters and attributes in one transaction (``create_new_trial`` with a
   template);
3. the trial's number comes from the storage's cache, and the count from step 1 unless other
   workers created trials in between (then the study is read again). The sampler's random state
   was set for that expected number (:mod:`batchtune.study.sampler`); when another worker took the
   number with the same configuration, this copy is told FAIL as "duplicate" and the draw is made again;
4. the measurements go in one user attribute, with their key figures as readable attributes for
   optuna-dashboard in the same transaction (:meth:`LeanTrial.set_user_attrs`), and
   :meth:`LeanTrial.tell` stores the state and values (``set_trial_state_values``).

About 45 statements in 5 transactions (33 without the 6 readable attributes, which add 12 statements
to the transaction that stores the measurements), against about 70 in 12 (``benchmarks/coordinator_overhead.py``
prints both; ``benchmarks/dashboard_attrs.py`` the readable attributes' share). The sampler is the study's own TPE, fed the same trials as through ``Study.ask``.
Because the parameters are stored with the trial, TPE's constant liar (other workers treat running
trials as bad) reads them directly and needs no copy in the system attributes. A re-queued trial (WAITING:
enqueued, or the retry of a dead worker's trial) is taken with ``Study.ask``, the only public way to
claim it atomically, and Optuna suggests its stored parameters.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
)
from optuna.samplers import TPESampler
from optuna.trial import FrozenTrial, TrialState


class LeanTrial:
    """A running trial of ``study``: its parameters, attributes, constraint, report and tell.

    The parts of :class:`optuna.Trial` batchtune uses, with the same meaning; :meth:`optuna_trial`
    gives a full ``optuna.Trial`` where a pruner needs ``report``/``should_prune``.
    """

    def __init__(self, study: Any, frozen: FrozenTrial, full: Any = None) -> None:
        self.study = study
        self.frozen = frozen
        self._full = full

    @property
    def number(self) -> int:
        return self.frozen.number

    @property
    def trial_id(self) -> int:
        return self.frozen._trial_id

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.frozen.params)

    @classmethod
    def claim(
        cls,
        study: Any,
        space: Mapping[str, BaseDistribution],
        user_attrs: dict[str, Any],
        trials: Sequence[FrozenTrial],
        design: Sequence[dict[str, Any]] = (),
    ) -> LeanTrial:
        """A new RUNNING trial with parameters for ``space`` and ``user_attrs``.

        ``trials`` is the study as read just before. When it has WAITING trials, one of them is taken
        instead, with its own parameters. Otherwise the first point of ``design`` that no trial of the
        study has yet is taken (user attribute ``origin: start``), and only then does the sampler draw:
        two workers that take the same point at the same moment are told apart like two equal draws.
        """
        if any(t.state == TrialState.WAITING for t in trials):
            trial = study.ask()
            for key, value in user_attrs.items():
                trial.set_user_attr(key, value)
            for name, distribution in space.items():
                _suggest(trial, name, distribution)
            frozen = _running(trial._trial_id, user_attrs)
            frozen.number = trial.number
            frozen.params, frozen.distributions = dict(trial.params), dict(trial.distributions)
            return cls(study, frozen, full=trial)
        # What Study.ask does: the sampler's per-thread view of the study is refreshed once a trial,
        # here with the trials just read (the sampler reads the running ones itself: constant liar).
        study._thread_local.cached_all_trials = list(trials)
        expected = len(trials)  # the number this trial gets unless another worker creates one first
        taken = [t.params for t in trials]
        point = next((dict(p) for p in design if dict(p) not in taken), None)
        if point is not None:
            user_attrs = {**user_attrs, "origin": "start"}
        template = _running(-1, user_attrs)
        if point is not None:
            params = point
        else:
            with _drawing(study.sampler, expected):
                params = _sample(study, template, space)
        template.params, template.distributions = params, {name: space[name] for name in params}
        trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
        frozen = _running(trial_id, user_attrs)
        frozen.number = _number(study._storage, study._study_id, trial_id, expected)
        frozen.params, frozen.distributions = dict(params), dict(template.distributions)
        if frozen.number != expected and _drawn_before(study, params, expected, frozen.number):
            # Another worker read the same study at the same moment and drew the same configuration
            # (batchtune.study.sampler): this copy never runs, and the draw is made again.
            copy = cls(study, frozen)
            copy.set_user_attr("status", "duplicate")
            copy.set_user_attr("reason", f"another worker drew the same configuration as trial {expected}; drawn again")
            copy.tell(state=TrialState.FAIL)
            return cls.claim(study, space, {k: v for k, v in user_attrs.items() if k != "origin"},
                             study.get_trials(deepcopy=False), design)
        return cls(study, frozen)

    def set_user_attr(self, key: str, value: Any) -> None:
        self.study._storage.set_trial_user_attr(self.trial_id, key, value)
        self.frozen.user_attrs[key] = value

    def set_user_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Several user attributes in one transaction on RDB storage (Optuna's public API takes one each).

        Through the RDB storage's own upsert (``_set_trial_attr_without_commit``, as ``set_trial_user_attr``
        does for one), inside one session; on other storages, one call per attribute.
        """
        storage = self.study._storage
        backend = getattr(storage, "_backend", storage)  # Optuna wraps RDB storage in a cache that passes these on
        if isinstance(backend, optuna.storages.RDBStorage):
            from optuna.storages._rdb import models
            from optuna.storages._rdb.storage import _create_scoped_session

            with _create_scoped_session(backend.scoped_session, True) as session:
                for key, value in attrs.items():
                    backend._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, self.trial_id,
                                                           key, value)
        else:
            for key, value in attrs.items():
                storage.set_trial_user_attr(self.trial_id, key, value)
        self.frozen.user_attrs.update(attrs)

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


def _sample(study: Any, template: FrozenTrial, space: Mapping[str, BaseDistribution]) -> dict[str, Any]:
    """Every parameter of ``space``, as ``optuna.Trial._suggest`` would pick them one by one."""
    sampler = study.sampler
    if not isinstance(sampler, TPESampler) or sampler._group:
        raise TypeError("batchtune's coordinator samples with a TPESampler(group=False)")
    sampler.before_trial(study, template)
    relative_space = sampler.infer_relative_search_space(study, template)
    # TPESampler.sample_relative is this plus, under constant liar, a copy of the values in the
    # trial's system attributes for other workers; here the values are stored as the trial's
    # parameters when it is created, where constant liar reads them first.
    relative = sampler._sample_relative(study, template, relative_space) if relative_space else {}
    params: dict[str, Any] = {}
    for name, distribution in space.items():
        if distribution.single():
            params[name] = _single_value(distribution)
        elif name in relative and name in relative_space and _contains(distribution, relative[name]):
            params[name] = relative[name]
        else:
            params[name] = sampler.sample_independent(study, template, name, distribution)
        template.params[name] = params[name]
        template.distributions = {**template.distributions, name: distribution}
    return params


def _drawing(sampler: Any, number: int) -> Any:
    """The sampler held and seeded for trial ``number`` (batchtune.study.sampler), if it is batchtune's."""
    drawing = getattr(sampler, "drawing", None)
    return drawing(number) if drawing is not None else contextlib.nullcontext()


def _drawn_before(study: Any, params: dict[str, Any], first: int, number: int) -> bool:
    """Whether a trial numbered ``first`` up to ``number`` (exclusive) has exactly ``params``."""
    return any(first <= t.number < number and t.params == params for t in study.get_trials(deepcopy=False))


def _number(storage: Any, study_id: int, trial_id: int, first: int) -> int:
    """The number the storage gave ``trial_id``: ``first`` (the count of trials read before it was
    created) unless other workers created trials since. Optuna's cached storage answers from memory
    for its own new trial, and with one short query for each other one.
    """
    number = first
    while True:
        try:
            if storage.get_trial_id_from_study_id_trial_number(study_id, number) == trial_id:
                return number
        except KeyError:
            raise RuntimeError(f"trial {trial_id} is missing from its study; is another program deleting trials?") from None
        number += 1


def _suggest(trial: Any, name: str, distribution: BaseDistribution) -> Any:
    """``trial.suggest_*`` for ``distribution`` (an optuna.Trial: Optuna knows re-queued values)."""
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, list(distribution.choices))
    if isinstance(distribution, FloatDistribution):
        return trial.suggest_float(name, distribution.low, distribution.high, log=distribution.log)
    raise TypeError(f"no suggest method for {distribution!r}")


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

