"""Search configuration: one frozen dataclass, validated once at the boundary."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

from batchtune.errors import UsageError
from batchtune.task.choices import AS_BUILT, NORM_CHOICES, PRECISIONS
from batchtune.units import check_seed

OBJECTIVES = ("metric", "pareto", "time-to-target")
# Each local worker is a thread with its own process; more than a few per core only oversubscribes
# the machine (and thousands of polling threads never finish). Scale out with more machines instead.
WORKERS_PER_CORE = 4
LR_RULES = ("auto", "linear", "sqrt", "none")
# The compute budget of the default search, in trial-equivalents (batchtune.study.budget): about
# 8% of an exhaustive grid of 6 batch sizes x 8 learning rates x 4 norms x 2 seeds.
DEFAULT_BUDGET = 30.0
# --trials under the other objectives (the default search is bounded by its budget instead).
DEFAULT_TRIALS = 20
UNBOUNDED_TRIALS = 100_000


@dataclass(frozen=True)
class Tolerance:
    """How far below the best metric a trial may be and still count as "as good".

    ``kind`` is ``"absolute"`` (metric units; 0.005 is 0.5 percentage points of accuracy) or
    ``"relative"`` (a fraction of the best value). ``None`` fields mean "choose from the metric".
    """

    value: float
    kind: str

    def limit(self, best: float) -> float:
        """The allowed gap below ``best``, in metric units."""
        return self.value if self.kind == "absolute" else self.value * abs(best)

    def describe(self) -> str:
        if self.kind == "relative":
            return f"{self.value:.2%} relative"
        return f"{self.value * 100:g} percentage points" if self.value < 1 else f"{self.value:g} (metric units)"


def parse_tolerance(text: str) -> Tolerance:
    """``0.5pp`` (percentage points), ``1%`` (relative) or ``0.01`` (metric units)."""
    raw = str(text).strip().lower()
    try:
        if raw.endswith("pp"):
            tol = Tolerance(float(raw[:-2]) / 100, "absolute")
        elif raw.endswith("%"):
            tol = Tolerance(float(raw[:-1]) / 100, "relative")
        else:
            tol = Tolerance(float(raw), "absolute")
    except ValueError:
        raise UsageError(f"--tolerance {text!r} is not a tolerance; write 0.5pp, 1% or 0.01") from None
    if not math.isfinite(tol.value) or tol.value < 0 or (tol.kind == "relative" and tol.value >= 1):
        raise UsageError(f"--tolerance {text!r} is out of range; use a value from 0 up to below 100%, e.g. 0.5pp or 1%")
    return tol


def check_plain_name(name: str, *, option: str = "--study") -> None:
    """A study or report name becomes a file (studies/NAME.db) and a folder (reports/NAME/): no path in it."""
    bad = [c for c in ("/", "\\", "\0") if c in name]
    if bad or name in ("", ".", ".."):
        why = f"it contains {bad[0]!r}" if bad else "it names a folder"
        raise UsageError(
            f"{option} {name!r} is not a plain name ({why}); pass a name such as my_sweep: it names "
            + ("studies/NAME.db and the report folder reports/NAME/" if option == "--study" else "the report folder reports/NAME/")
        )


def _positive_seconds(option: str, value: float | None) -> None:
    if value is not None and (not math.isfinite(value) or value <= 0):
        raise UsageError(f"{option} {value:g} must be a positive number of seconds")


def check_batch_range(batch_size_min: int, batch_size_max: int | None) -> None:
    """--batch-size-min and --batch-size-max, shared by search and probe."""
    if batch_size_min < 1:
        raise UsageError(f"--batch-size-min {batch_size_min} must be at least 1")
    if batch_size_max is not None and batch_size_max < batch_size_min:
        raise UsageError(
            f"--batch-size-min {batch_size_min} is above --batch-size-max {batch_size_max}; "
            "make the minimum the smaller one"
        )


def check_batch_list_alone(*, min_given: bool, max_given: bool, accumulate: int) -> None:
    """--batch-sizes is the whole list: a range beside it would be silently ignored.

    --batch-size-max keeps one meaning beside a list: under --accumulate it is the largest micro-batch.
    """
    if min_given:
        raise UsageError("--batch-size-min does not apply with --batch-sizes (the list is searched as given); drop one of them")
    if max_given and accumulate <= 1:
        raise UsageError(
            "--batch-size-max does not apply with --batch-sizes unless --accumulate N bounds the micro-batch with it; "
            "drop one of them"
        )


@dataclass(frozen=True)
class SearchConfig:
    """Everything ``batchtune search`` needs. Options mirror the CLI flags one to one."""

    task_path: str
    trials: int | None = None  # None: bounded by --budget (metric), or 20 (pareto, time-to-target)
    timeout: float | None = None
    seed: int = 0
    device: str = "auto"
    study: str | None = None
    storage: str | None = None
    memory_budget: int | None = None
    batch_size_min: int = 8
    batch_size_max: int | None = None
    batch_sizes: tuple[int, ...] | None = None
    lr_min: float | None = None  # None: measured by the LR range test (metric), or 1e-4 (other objectives)
    lr_max: float | None = None  # None: measured, or 0.3
    norms: tuple[str, ...] | None = None
    precisions: tuple[str, ...] = ("fp32",)
    epochs: float | None = 3.0
    budget_samples: int | None = None
    eval_every: float | None = None
    trial_timeout: float | None = 1800.0
    tolerance: Tolerance | None = None
    current_batch_size: int | None = None
    threads: int | None = None
    workers: int | None = None  # None: one per GPU on CUDA, else 1
    heartbeat_interval: int = 10
    heartbeat_grace: int = 60
    output_dir: str = "reports"
    studies_dir: str = "studies"
    probe: bool = True
    headroom: float = 0.10
    plots: bool = True
    lr_rule: str | None = None  # auto | linear | sqrt | none; None: none under metric (measured), auto otherwise
    lr_reference_batch: int | None = None  # default: 256 clipped into the searched range
    warmup_epochs: float | None = None  # default: 5% of the trial budget under linear, else 0
    objective: str = "metric"  # metric (budgeted, pruned, re-run) | pareto | time-to-target (batchtune.study.target)
    budget: float | None = None  # compute budget in trial-equivalents (metric objective); None: DEFAULT_BUDGET
    candidates: int = 4  # configurations re-trained on fresh seeds before recommending (metric objective)
    rerun_seeds: int = 2  # fresh seeds per candidate (0: no re-runs)
    target: float | None = None  # metric value for time to target
    accumulate: int = 1  # most gradient-accumulation steps per optimizer step (1: off)
    doctor: bool = True  # run the batch doctor before the trials (batchtune.doctor.checks)
    noise: bool = False  # measure the gradient noise scale and goodput after the trials (batchtune.noise.measure)

    @property
    def study_name(self) -> str:
        return self.study or Path(self.task_path).stem

    @property
    def total_trials(self) -> int:
        """The number of trials the study should have (filled in by :meth:`validated`)."""
        return self.trials if self.trials is not None else DEFAULT_TRIALS

    @property
    def measured_lr(self) -> bool:
        """The LR window of each cell comes from the LR range test (no --lr-min/--lr-max, no --lr-rule)."""
        return self.objective == "metric" and self.lr_min is None and self.lr_max is None and self.lr_rule in (None, "none")

    def validated(self) -> SearchConfig:
        """Check every value; return a copy with defaults filled in."""
        if self.objective not in OBJECTIVES:
            raise UsageError(f"--objective {self.objective!r} is not an objective; choose from {', '.join(OBJECTIVES)}")
        metric = self.objective == "metric"
        if self.trials is not None and self.trials < 1:
            raise UsageError(f"--trials {self.trials} must be at least 1")
        if self.budget is not None and not metric:
            raise UsageError(f"--budget is the compute budget of --objective metric, not of {self.objective}; drop it or use --trials")
        if self.budget is not None and not math.isfinite(self.budget):
            raise UsageError(f"--budget {self.budget:g} is not a number of trial-equivalents; pass a finite one, e.g. 30")
        if self.budget is not None and self.budget < 1:
            raise UsageError(f"--budget {self.budget:g} must be at least 1 trial-equivalent (one full-length trial)")
        if metric and self.accumulate > 1:
            raise UsageError(
                "--accumulate is not measured by the default search yet (its speed cells and LR tests run the whole "
                "batch); use it with --objective pareto"
            )
        if self.candidates < 1:
            raise UsageError(f"--candidates {self.candidates} must be at least 1")
        if self.rerun_seeds < 0:
            raise UsageError(f"--rerun-seeds {self.rerun_seeds} must be 0 (no re-runs) or more")
        for name, value in (("--lr-min", self.lr_min), ("--lr-max", self.lr_max)):
            if value is not None and (not math.isfinite(value) or value <= 0):
                raise UsageError(f"{name} {value:g} must be a positive learning rate such as 1e-3")
        if (self.lr_min is None) != (self.lr_max is None) and metric and self.lr_rule in (None, "none"):
            raise UsageError("give both --lr-min and --lr-max (a fixed LR range), or neither (the LR range test measures it)")
        measured = self.measured_lr
        return replace(
            self,
            trials=self.trials if self.trials is not None else (UNBOUNDED_TRIALS if metric else DEFAULT_TRIALS),
            budget=(self.budget if self.budget is not None else DEFAULT_BUDGET) if metric else None,
            lr_rule=self.lr_rule if self.lr_rule is not None else ("none" if metric else "auto"),
            # Under the measured LR the range stays None: each cell's window comes from its range test.
            lr_min=None if measured else (self.lr_min if self.lr_min is not None else 1e-4),
            lr_max=None if measured else (self.lr_max if self.lr_max is not None else 0.3),
        )._checked()

    def _checked(self) -> SearchConfig:
        """The checks of values that have defaults filled in."""
        _positive_seconds("--timeout", self.timeout)
        _positive_seconds("--trial-timeout", self.trial_timeout)
        check_seed(self.seed)
        check_plain_name(self.study if self.study is not None else self.study_name)
        check_batch_range(self.batch_size_min, self.batch_size_max)
        if self.batch_sizes is not None:
            if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
                raise UsageError("--batch-sizes must be a comma-separated list of positive integers, e.g. 16,48,96")
            check_batch_list_alone(
                min_given=self.batch_size_min != SearchConfig.batch_size_min,
                max_given=self.batch_size_max is not None,
                accumulate=self.accumulate,
            )
        for name, value in (("--lr-min", self.lr_min), ("--lr-max", self.lr_max)):
            if value is not None and (not math.isfinite(value) or value <= 0):
                raise UsageError(f"{name} {value:g} must be a positive learning rate such as 1e-3")
        if self.lr_min is not None and self.lr_max is not None and self.lr_min >= self.lr_max:
            raise UsageError(f"--lr-min {self.lr_min:g} must be below --lr-max {self.lr_max:g}")
        if self.norms is not None:
            unknown = [n for n in self.norms if n not in NORM_CHOICES + (AS_BUILT,)]
            if unknown:
                raise UsageError(f"--norms: unknown normalization {unknown[0]!r}; choose from {', '.join(NORM_CHOICES)}")
        unknown_p = [p for p in self.precisions if p not in PRECISIONS]
        if unknown_p or not self.precisions:
            raise UsageError(f"--precisions: unknown precision {unknown_p[:1] or ''}; choose from {', '.join(PRECISIONS)}")
        if self.epochs is not None and (not math.isfinite(self.epochs) or self.epochs <= 0):
            raise UsageError(f"--epochs {self.epochs:g} must be a positive number (fractions allowed)")
        if self.budget_samples is not None and self.budget_samples < 1:
            raise UsageError(f"--budget-samples {self.budget_samples} must be at least 1")
        if self.eval_every is not None and (not math.isfinite(self.eval_every) or self.eval_every <= 0):
            raise UsageError(f"--eval-every {self.eval_every:g} must be a positive number of epochs")
        if self.current_batch_size is not None and self.current_batch_size < 1:
            raise UsageError(f"--current-batch-size {self.current_batch_size} must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads {self.threads} must be at least 1")
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"--workers {self.workers} must be at least 1")
        cores = os.cpu_count() or 1
        if self.workers is not None and self.workers > WORKERS_PER_CORE * cores:
            raise UsageError(
                f"--workers {self.workers} is more than {WORKERS_PER_CORE} per CPU core ({cores} cores here); "
                f"use at most {WORKERS_PER_CORE * cores}, and more machines on one --storage to scale out"
            )
        if self.heartbeat_interval < 1 or self.heartbeat_grace <= self.heartbeat_interval:
            raise UsageError(
                f"--heartbeat-grace {self.heartbeat_grace} must be longer than --heartbeat-interval "
                f"{self.heartbeat_interval} (both whole seconds, interval at least 1)"
            )
        if not 0 <= self.headroom < 1:
            raise UsageError(f"--headroom {self.headroom:.0%} must be at least 0% and below 100%")
        if self.lr_rule not in LR_RULES:
            raise UsageError(f"--lr-rule {self.lr_rule!r} is not a rule; choose from {', '.join(LR_RULES)}")
        if self.lr_reference_batch is not None and self.lr_reference_batch < 1:
            raise UsageError(f"--lr-reference-batch {self.lr_reference_batch} must be a positive batch size such as 256")
        if self.warmup_epochs is not None and (not math.isfinite(self.warmup_epochs) or self.warmup_epochs < 0):
            raise UsageError(f"--warmup-epochs {self.warmup_epochs:g} must be 0 or a positive number of epochs")
        if self.warmup_epochs and self.epochs is not None and self.warmup_epochs >= self.epochs:
            raise UsageError(
                f"--warmup-epochs {self.warmup_epochs:g} is not shorter than the trial (--epochs {self.epochs:g}); "
                "lower it so the trial trains at its full learning rate"
            )
        if self.target is not None and not math.isfinite(self.target):
            raise UsageError(f"--target {self.target:g} must be a finite metric value such as 0.95")
        if self.objective == "time-to-target" and self.target is None:
            raise UsageError("--objective time-to-target needs --target METRIC_VALUE, e.g. --target 0.95")
        if self.accumulate < 1:
            raise UsageError(
                f"--accumulate {self.accumulate} must be at least 1 (the most micro-batches per optimizer step; 1 is off)"
            )
        if self.storage is not None:
            from batchtune.study.storage import check_url

            check_url(self.storage)
        if self.objective == "time-to-target" and self.eval_every is None:
            # Time to target and the pruner's rungs are resolved to evaluation points: a quarter epoch.
            return replace(self, eval_every=0.25)
        if self.objective == "metric" and self.eval_every is None and self.epochs is not None:
            # Successive halving judges trials at 1/9 and 1/3 of their budget (reduction factor 3):
            # evaluate that often, never more than every quarter epoch.
            return replace(self, eval_every=max(0.25, min(1.0, self.epochs / 9)))
        return replace(self)
