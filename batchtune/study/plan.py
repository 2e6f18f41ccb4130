"""How one Optuna trial becomes a training run: the LR rule, the accumulation split and the target.

The search asks Optuna for a batch size and a (base) learning rate; :class:`TrialPlan` turns them
into the actual LR, micro-batch and accumulation steps, watches the learning curve for the target
and the pruner, and says what to record and what to tell the study.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from batchtune.study import lr_rule
from batchtune.study import target as tt
from batchtune.study.accumulate import Split


@dataclass(frozen=True)
class TrialPlan:
    """Everything the search decides once per study and applies to every trial."""

    splits: dict[int, Split]
    rule: str  # linear | sqrt | none (resolved)
    reference: int | None  # the batch size of the base LR; None under rule "none"
    warmup_epochs: float
    objective: str  # metric | pareto | time-to-target
    target: float | None
    mode: str  # max | min
    lr_bounds: Any = None  # batchtune.study.lr_range.LrBounds: each cell's measured LR window
    trial_budget: int | None = None  # samples the trials may train on in total (metric objective)
    trial_samples: int = 0  # training samples of one full-length trial
    climb_samples: int = 0  # samples kept for the climb to faster cells after the sampled trials (batchtune.study.climb)
    start: tuple[dict[str, Any], ...] = ()  # the first trials' parameters, before the sampler draws (lr_range.start_design)
    unfit: dict[str, str] = field(default_factory=dict)  # "batch/norm/precision" -> why the cell is not searched

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(self.splits)

    @property
    def lr_param(self) -> str:
        """The Optuna parameter name: ``base_lr`` under a rule, so a stored study says what it sampled;
        ``lr_position`` (0 to 1 across the cell's measured window) under the LR range test."""
        if self.lr_bounds is not None:
            return "lr_position"
        return "lr" if self.rule == "none" else "base_lr"

    def lr_of(self, params: dict[str, Any], batch_size: int) -> tuple[float, float]:
        """(base LR, actual LR) of the sampled ``params`` at effective ``batch_size``."""
        if self.lr_bounds is not None:
            lr = self.lr_bounds.lr(batch_size, str(params["norm"]), float(params[self.lr_param]))
            return lr, lr
        return self.learning_rates(float(params[self.lr_param]), batch_size)

    def learning_rates(self, base_lr: float, batch_size: int) -> tuple[float, float]:
        """(base LR, actual LR) of a trial at effective ``batch_size``."""
        if self.rule == "none" or self.reference is None:
            return base_lr, base_lr
        return base_lr, lr_rule.scaled_lr(base_lr, self.rule, batch_size, self.reference)

    def watch(self, trial: Any, effective_batch: int) -> CurveWatch | MetricWatch | None:
        """A report callback for the worker: successive halving on the metric, or the time to target."""
        if self.objective == "metric":
            return MetricWatch(trial=trial, batch=effective_batch)
        if self.objective != "time-to-target" or self.target is None:
            return None
        return CurveWatch(trial=trial, batch=effective_batch, target=self.target, mode=self.mode)

    def trial_attrs(self, base_lr: float, result: Any) -> dict[str, Any]:
        """User attributes this plan adds to a trial."""
        attrs: dict[str, Any] = {"base_lr": base_lr, "lr_rule": self.rule, "lr_reference_batch": self.reference}
        if self.target is not None:
            out = tt.outcome(result.curve, self.target, self.mode, result.throughput)
            attrs.update(reached_target=out.reached, samples_to_target=out.samples, time_to_target=out.seconds)
        return attrs

    def objective_values(self, result: Any) -> list[float] | None:
        """The single objective value under metric and time-to-target; None under pareto (the caller's three)."""
        if self.objective == "metric":
            return [result.final_metric]
        if self.objective != "time-to-target" or self.target is None:
            return None
        out = tt.outcome(result.curve, self.target, self.mode, result.throughput)
        return [out.objective(result.final_metric, self.target)]

    def miss_reason(self, result: Any) -> str | None:
        if self.target is None or tt.samples_to_target(result.curve, self.target, self.mode) is not None:
            return None
        best = result.best_metric
        return (
            f"did not reach the target {self.target:g} within the trial's budget"
            + (f" (best {best:.4g})" if best is not None and math.isfinite(best) else "")
        )


@dataclass
class CurveWatch:
    """Called by the worker at each evaluation: stops the trial at the target, or when pruned.

    The value goes to Optuna's pruner as ``trial.report(value, samples seen)`` (negated for
    higher-is-better metrics, since the study minimises time); ``should_prune`` is asked even when
    the target is reached, so that fast trials also set the bar at each rung.
    """

    trial: Any
    batch: int
    target: float
    mode: str
    reached_at: int | None = None
    pruned_at: int | None = None
    pruned_metric: float | None = None

    def __call__(self, step: int, value: float) -> bool:
        samples = int(step) * self.batch
        self.trial.report(tt.intermediate_value(value, self.mode), samples)
        hit = tt.reached(value, self.target, self.mode)
        prune = self.trial.should_prune()
        if hit:
            self.reached_at = samples
            return True
        if prune:
            self.pruned_at, self.pruned_metric = samples, value
            return True
        return False

    def settle(self, result: Any) -> None:
        """Turn the worker's "pruned" (any early stop) into what happened: target reached, or pruned."""
        if result.status != "pruned":
            return
        if self.reached_at is not None:
            result.status, result.reason = "ok", None
        elif self.pruned_at is not None:
            result.reason = (
                f"pruned by successive halving at {self.pruned_at:,} samples: metric {self.pruned_metric:.4g} was not "
                f"among the best 1/{tt.REDUCTION_FACTOR} of the trials at that point, and short of the target {self.target:g}"
            )


@dataclass
class MetricWatch:
    """Successive halving on the validation metric (Li et al. 2018): the worker calls it at each evaluation.

    The metric goes to Optuna's pruner as ``trial.report(value, samples seen)`` in the study's own
    direction; a trial that is not in the best half of its batch size's trials at a rung stops there
    (:mod:`batchtune.study.pruning`), and its samples are what it cost the budget.
    """

    trial: Any
    batch: int
    pruned_at: int | None = None
    pruned_metric: float | None = None

    def __call__(self, step: int, value: float) -> bool:
        samples = int(step) * self.batch
        self.trial.report(value, samples)
        if self.trial.should_prune():
            self.pruned_at, self.pruned_metric = samples, value
            return True
        return False

    def settle(self, result: Any) -> None:
        if result.status == "pruned" and self.pruned_at is not None:
            from batchtune.study.pruning import KEEP

            result.reason = (
                f"pruned by successive halving at {self.pruned_at:,} samples: metric {self.pruned_metric:.4g} was not "
                f"among the best 1/{KEEP} of the trials of its batch size at that point"
            )
