"""Running a search, phase by phase, and reading a stored study back into a result.

:func:`search` reads top to bottom as the phases a search goes through: load and check the task,
open the study, choose the batch sizes (the probe) and fix the plan, record the space and the
meta, run the batch doctor, recover the trials of dead coordinators, run the workers
(:mod:`batchtune.study.coordinator`), measure the noise scale, and write the report. Under the
default objective the plan comes from measurements (cells, LR windows), the first trials start at
the range test's suggested LR, the climb to faster cells follows the sampled trials
(:mod:`batchtune.study.climb`), and the candidates are re-trained on fresh seeds.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchtune.errors import BatchtuneError, UsageError
from batchtune.study.config import SearchConfig
from batchtune.study.dashboard import name_objectives
from batchtune.study.coordinator import (
    Progress,
    TrialEvent,
    TrialUpdate,
    WorkerPool,
    gpu_ids,
    reap_dead_local_trials,
    reap_stale_trials,
    run_workers,
    trial_spec,
)
from batchtune.study.results import status
from batchtune.study.resume import check_resume, fingerprint
from batchtune.study.storage import default_storage, open_study
from batchtune.units import redact_url

if TYPE_CHECKING:
    from batchtune.study.plan import TrialPlan
    from batchtune.task.contract import Task

log = logging.getLogger(__name__)

SPACE_KEY = "batchtune_space"
META_KEY = "batchtune_meta"


@dataclass
class SearchResult:
    """A finished (or interrupted) search: tables from the study, the recommendation, files written."""

    study_name: str
    storage: str  # password redacted
    trials: Any  # pandas.DataFrame, one row per counted trial
    curves: Any  # pandas.DataFrame, learning curves in long form
    recommendation: Any  # batchtune.study.recommend.Recommendation | None
    pareto: Any  # pandas.DataFrame
    summary: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)
    interrupted: bool = False


def search(
    config: SearchConfig,
    *,
    on_event: Callable[[TrialEvent], None] | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
    write_report: bool = True,
    on_update: Callable[[TrialUpdate], None] | None = None,
) -> SearchResult:
    """Run (or resume) a study and write its report. See the README for every option.

    ``on_phase`` is called with a line announcing each phase before it starts (the CLI prints it);
    ``on_update`` when a trial starts and at each of its evaluations (the CLI's live display).

    Returns the :class:`SearchResult`; raises :class:`BatchtuneError` subclasses for bad input.
    KeyboardInterrupt marks the running trials interrupted, writes the report of what finished,
    and returns a result with ``interrupted=True``.
    """
    cfg = config.validated()
    with quiet_optuna():
        return _search(cfg, on_event, on_start, on_phase, write_report, on_update)


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's info logs and experimental-API warnings are noise in batchtune's output."""
    import optuna

    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # We record heartbeats ourselves around each ask/tell trial (see coordinator.worker_loop).
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            yield
    finally:
        optuna.logging.set_verbosity(previous)


@dataclass(frozen=True)
class _Setup:
    """What the first phase learns about the task and the machine, before the study opens."""

    task: Task
    device: Any  # torch.device
    norms: tuple[str, ...]
    norm_note: str
    train_size: int
    val_size: int
    sizes: tuple[int, ...]
    family: str  # the optimizer family: "sgd" or "adaptive"
    gpus: list[int]
    workers: int
    threads: int
    url: str  # the storage URL, password included
    left_out: dict[int, str]  # batch sizes the budget cannot judge, and why
    chance: float | None  # the majority class's share of the validation set (default accuracy metric only)


def _search(
    cfg: SearchConfig,
    on_event: Callable[[TrialEvent], None] | None,
    on_start: Callable[[dict[str, Any]], None] | None,
    on_phase: Callable[[str], None] | None,
    write_report: bool,
    on_update: Callable[[TrialUpdate], None] | None = None,
) -> SearchResult:
    out_dir = Path(cfg.output_dir) / cfg.study_name if write_report else None
    say = on_phase or (lambda line: log.info("%s", line))
    say(f"loading and dry-running {cfg.task_path}")
    setup = _load_and_check(cfg, out_dir)
    if cfg.objective == "metric" and cfg.eval_every is None and cfg.budget_samples is not None:
        # As config.validated does for --epochs: evaluate at the rungs of successive halving (1/9 of a trial).
        cfg = replace(cfg, eval_every=max(0.25, min(1.0, cfg.budget_samples / setup.train_size / 9)))
    study = open_study(cfg, _directions(cfg, setup.task.metric_mode))
    check_resume(study, fingerprint(cfg, metric_mode=setup.task.metric_mode, optimizer_family=setup.family))
    # One worker process per slot for every phase: the first measures speed and LR windows, then runs
    # trials, climb steps and re-runs (no idle process beside the trials holding memory or, on CUDA, a
    # second context on the GPU they measure; the task's datasets are built once).
    pool = WorkerPool(cfg, setup.device, setup.gpus, setup.threads)
    try:
        if cfg.objective == "metric":
            plan, spend, warnings = _measure_before_trials(study, cfg, setup, pool.take(1)[0], say)
        else:
            say("probing which batch sizes fit" if cfg.probe else "planning the trials")
            plan, spend, warnings = _plan_sizes(study, cfg, setup, out_dir), None, []
        _record_space_and_meta(study, cfg, setup, plan)
        name_objectives(study, plan.objective)
        doctor = None
        if cfg.doctor:
            from batchtune.doctor.report import doctor_for_search

            say("running the batch doctor")
            doctor = doctor_for_search(str(setup.task.path), plan.sizes, setup.norms, setup.device, cfg.seed)
            study.set_user_attr("doctor", doctor)
        _recover_dead_trials(study)
        if on_start:
            on_start({"study": cfg.study_name, "storage": redact_url(setup.url), "device": str(setup.device),
                      "norms": setup.norms, "batch_sizes": plan.sizes, "norm_note": setup.norm_note,
                      "workers": setup.workers, "lr_rule": plan.rule, "lr_reference_batch": plan.reference,
                      "objective": plan.objective, "left_out": setup.left_out, "trial_budget": plan.trial_budget,
                      "trial_samples": plan.trial_samples, "doctor": doctor})
        if spend is not None:
            plan = replace(plan, start=_start_design(cfg, setup, plan))
        interrupted = _run_trials(study, cfg, setup, plan, on_event, on_update, pool)
        if spend is not None and not interrupted:
            interrupted = _climb(study, cfg, setup, plan, on_event, say, on_update, pool)
            if not interrupted and plan.climb_samples and plan.trial_budget is not None:
                # What the climb left unspent goes back to the sampler (its trials count the climb's).
                rest = replace(plan, trial_budget=plan.trial_budget + plan.climb_samples, climb_samples=0)
                interrupted = _run_trials(study, cfg, setup, rest, on_event, on_update, pool)
        if spend is not None and not interrupted:
            try:
                _rerun_and_account(study, cfg, setup, plan, pool.take(1)[0], spend, warnings, say)
            except KeyboardInterrupt:  # Ctrl-C in the re-runs: the report of what finished, as in the trials
                interrupted = True
        if spend is not None and interrupted:
            _record_spend(study, spend)
    finally:
        pool.close()
    result = load_result(study, setup.url, cfg)
    if cfg.noise and not interrupted:
        from batchtune.noise.report import noise_for_search

        say("measuring the gradient noise scale")
        study.set_user_attr("noise", noise_for_search(
            result, cfg, setup.device, Path(cfg.output_dir) / cfg.study_name, train_size=setup.train_size,
            family=setup.family,
        ))
        result = load_result(study, setup.url, cfg)
    result.interrupted = interrupted
    if out_dir is not None:
        from batchtune.study.report import write_search_report

        result.paths = write_search_report(result, out_dir, plots=cfg.plots)
    return result


def _directions(cfg: SearchConfig, metric_mode: str) -> list[str]:
    """The study's objectives: the metric alone (default), the time to target, or metric, throughput and memory."""
    direction = "maximize" if metric_mode == "max" else "minimize"
    if cfg.objective == "metric":
        return [direction]
    if cfg.objective == "time-to-target":
        return ["minimize"]
    return [direction, "maximize", "minimize"]


def _load_and_check(cfg: SearchConfig, out_dir: Path | None) -> _Setup:
    """Phase 1: load the task file, dry-run it, and fix the device, norms, sizes and workers."""
    from batchtune.task.contract import (
        dry_run,
        load_task,
        optimizer_family,
        search_norms,
    )
    from batchtune.trial.device import default_threads, resolve_device

    task = load_task(cfg.task_path)
    if out_dir is not None:
        from batchtune.files import ensure_dir

        ensure_dir(out_dir)  # fail now, not after hours of trials
    device = resolve_device(cfg.device)
    norms, norm_note = search_norms(task, cfg.norms)
    train_set, val_set = dry_run(task, norms)
    train_size = len(train_set)
    del train_set  # the workers build their own; only the validation labels are read here
    val_size = len(val_set)
    sizes = batch_size_choices(cfg, train_size)
    left_out: dict[int, str] = {}
    if cfg.objective == "metric" and cfg.batch_sizes is None:
        from batchtune.study.budget import judgeable_sizes, trial_samples

        sizes, left_out = judgeable_sizes(sizes, trial_samples(cfg.epochs, cfg.budget_samples, train_size))
    family = optimizer_family(task)
    trial_plan(cfg, sizes, train_size, family, task.metric_mode)  # bad plan options fail before the study opens
    gpus = gpu_ids(cfg.device, device)
    workers = cfg.workers if cfg.workers is not None else max(1, len(gpus))
    return _Setup(
        task=task, device=device, norms=norms, norm_note=norm_note, train_size=train_size, val_size=val_size,
        sizes=sizes, family=family, gpus=gpus, workers=workers,
        threads=cfg.threads or default_threads(workers),
        url=cfg.storage or default_storage(cfg.study_name, cfg.studies_dir),
        left_out=left_out, chance=None if task.custom_metric else majority_share(val_set, task.target_key, task.collate_fn),
    )


def _plan_sizes(study: Any, cfg: SearchConfig, setup: _Setup, out_dir: Path | None) -> TrialPlan:
    """Phase 2: the probe keeps the sizes that fit, then the LR rule, accumulation and pruner are fixed."""
    sizes, micro_max = setup.sizes, None
    if cfg.probe:
        from batchtune.probing.measure import probe_for_search

        # Only sizes that fit with headroom are searched; the probe is stored in (and reused from) the study.
        fitting = probe_for_search(study, cfg, sizes=sizes, norms=setup.norms, device=str(setup.device),
                                   threads=setup.threads, out_dir=out_dir)
        # The probed maximum is the micro-batch limit: with --accumulate, powers of two go on doubling
        # past it, and explicit --batch-sizes above it are accumulated.
        micro_max = min(max(fitting), cfg.batch_size_max or max(fitting))
        sizes = sizes if cfg.accumulate > 1 and cfg.batch_sizes is not None else fitting
    plan = trial_plan(cfg, sizes, setup.train_size, setup.family, setup.task.metric_mode, micro_max=micro_max)
    if plan.objective == "time-to-target":
        from batchtune.study.target import first_rung_samples, make_pruner

        budget = cfg.budget_samples or (cfg.epochs or 1.0) * setup.train_size
        study.pruner = make_pruner(first_rung_samples(plan.sizes, setup.train_size, cfg.eval_every, budget))
    return plan


def _measure_before_trials(
    study: Any, cfg: SearchConfig, setup: _Setup, runner: Any, say: Callable[[str], None]
) -> tuple[TrialPlan, Any, list[str]]:
    """Phase 2 of the default search: each cell's speed and memory, then each cell's LR window, then the budget."""
    from batchtune.study import measured
    from batchtune.study.budget import Budget, Spend, trial_samples
    from batchtune.trial.device import device_memory

    full = trial_samples(cfg.epochs, cfg.budget_samples, setup.train_size)
    assert cfg.budget is not None
    budget = Budget(trial_equivalents=cfg.budget, trial_samples=full)
    spend = Spend(budget)
    measured.add_interrupted(study, spend)  # measurements a Ctrl-C cut short: trained on, so spent
    warnings: list[str] = []
    limit = cfg.memory_budget or (device_memory(setup.device) if setup.device.type != "cpu" else None)
    cells = None
    sizes = setup.sizes
    if cfg.probe:
        cells = measured.measure_speed(study, runner, cfg, sizes=sizes, norms=setup.norms, device=runner.device,
                                       threads=setup.threads, budget=budget, limit_bytes=limit, warnings=warnings,
                                       on_phase=say)
    if cells is not None:
        spend.add("speed", cells.samples)
        fitting = {c.batch_size for c in cells.fitting()}
        dropped = [b for b in sizes if b not in fitting]
        for b in dropped:
            why = "; ".join(f"{c.norm}: {c.error or c.over_limit}" for c in cells.cells.values() if c.batch_size == b)
            setup.left_out[b] = f"does not fit ({why})"
        sizes = tuple(b for b in sizes if b in fitting)
        if not sizes:
            raise UsageError(
                f"none of the batch sizes {', '.join(map(str, setup.sizes))} runs on {setup.device} "
                f"({'; '.join(setup.left_out[b] for b in setup.sizes)}); pass smaller --batch-sizes, a larger "
                "--memory-budget or a smaller --headroom"
            )
    plan = trial_plan(cfg, sizes, setup.train_size, setup.family, setup.task.metric_mode)
    if cfg.measured_lr:
        bounds, lr_samples = measured.measure_lr_windows(
            study, runner, cfg, sizes=plan.sizes, norms=setup.norms, device=runner.device, threads=setup.threads,
            family=setup.family, budget=budget, warnings=warnings, on_phase=say,
        )
        spend.add("lr_range", lr_samples)
        plan = replace(plan, lr_bounds=bounds)
    count, seeds = measured.reserve_reruns(cfg, budget)
    race = measured.reserve_race(budget, count, seeds)
    climb_samples = measured.reserve_climb(budget)
    reserved = (count * seeds + race) * full + climb_samples
    from batchtune.study.pruning import KEEP, BatchStratifiedHalving

    # Rungs at 1/9 and 1/3 of a trial (reduction factor 3), each trial against its own batch size; the best half
    # goes on (the short-horizon bias of the LR: batchtune.study.pruning).
    study.pruner = BatchStratifiedHalving(max(1, full // 9), max_resource=full * 8 // 9, keep=KEEP)
    unfit = {c.key: str(c.error or c.over_limit) for c in cells.cells.values() if not c.fits} if cells is not None else {}
    plan = replace(plan, trial_budget=measured.trial_budget(budget, spend, reserved, warnings), trial_samples=full,
                   unfit=unfit, climb_samples=climb_samples)
    interrupted = {p: round(budget.equivalents(v), 3)
                   for p, v in (study.user_attrs.get(measured.INTERRUPTED_KEY) or {}).items()}
    study.set_user_attr("budget", {**spend.to_dict(), "reserved_reruns": {"candidates": count, "seeds": seeds,
                                                                            "race": race},
                                   "left_out": {str(b): why for b, why in setup.left_out.items()},
                                   "interrupted_trial_equivalents": interrupted})
    return plan, spend, warnings


def _rerun_and_account(
    study: Any, cfg: SearchConfig, setup: _Setup, plan: TrialPlan, runner: Any, spend: Any, warnings: list[str],
    say: Callable[[str], None],
) -> None:
    """Phase 6 of the default search: re-train the candidates on fresh seeds, then record the budget and warnings."""
    from batchtune.study import measured
    from batchtune.study.cells import CellTable
    from batchtune.study.results import trials_frame

    trials = trials_frame(study)
    mode = setup.task.metric_mode
    tol, limit = _tolerance(trials, cfg, mode)
    close = 2 * limit  # the candidates: the best single seed is biased up, so twice the tolerance below it
    stored_cells = study.user_attrs.get("cells")
    cells = CellTable.from_dict(stored_cells) if stored_cells else None
    count, seeds = measured.reserve_reruns(cfg, spend.budget)
    race = measured.reserve_race(spend.budget, count, seeds)

    fixed = replace(plan, lr_bounds=None, rule="none")  # the candidate's LR as it is, no window or rule

    def spec_for(c: Any, seed: int) -> Any:
        params = {"batch_size": c.batch_size, "norm": c.norm, "precision": c.precision, "lr": c.lr}
        return trial_spec(params, replace(cfg, seed=seed), fixed, runner.device, setup.threads)[0]

    candidates = measured.rerun_candidates(study, runner, cfg, trials=trials, cells=cells, mode=mode, count=count,
                                           seeds=seeds, spec_for=spec_for, close=close, on_phase=say, race=race,
                                           tolerance=tol)
    spend.add("reruns", sum(c.samples for c in candidates))
    bounds = plan.lr_bounds
    warnings += measured.weak_answer_warnings(trials, candidates, mode=mode, tolerance=tol, chance=setup.chance,
                                              bounds=bounds, rerun_seeds_=seeds)
    _record_spend(study, spend)
    study.set_user_attr("warnings", warnings)


def _record_spend(study: Any, spend: Any) -> None:
    """Store what each phase spent, the trials and the climb counted from the study's own trials (also when the
    search stopped before its re-runs, whose report would otherwise count no trials)."""
    from batchtune.study import climb
    from batchtune.study.budget import spent_on_trials

    stored = dict(study.user_attrs.get("budget") or {})
    everything = study.get_trials(deepcopy=False)
    climbed = climb.spent(everything)
    if climbed:
        spend.spent["climb"] = climbed
    stored.update(spend.to_dict(trials_samples=spent_on_trials(everything) - climbed))
    study.set_user_attr("budget", stored)


def _tolerance(trials: Any, cfg: SearchConfig, mode: str) -> tuple[Any, float]:
    """The tolerance, and its allowed gap at the best trial's metric (0 without finished trials)."""
    from batchtune.study.recommend import default_tolerance

    ok = trials[trials["status"] == "ok"]["metric"].dropna() if not trials.empty else trials
    tol = cfg.tolerance or default_tolerance(ok, mode) if len(ok) else cfg.tolerance
    best = float(ok.max() if mode == "max" else ok.min()) if len(ok) else 0.0
    return tol, (tol.limit(best) if tol is not None else 0.0)


def _start_design(cfg: SearchConfig, setup: _Setup, plan: TrialPlan) -> tuple[dict[str, Any], ...]:
    """Phase 5a of the default search: the first trials, one per norm at the LR the range test suggests and,
    when the trials' budget holds two full trials per norm, one per norm half a decade lower
    (:func:`batchtune.study.lr_range.start_design`); the workers take them before the sampler draws
    (:meth:`batchtune.study.ledger.LeanTrial.claim`), each once however many workers share the study."""
    from batchtune.study.lr_range import start_design

    if plan.lr_bounds is None:
        return ()
    bracket = plan.trial_budget is None or plan.trial_budget >= 2 * len(setup.norms) * plan.trial_samples
    points = []
    for params in start_design(plan.lr_bounds, plan.sizes, setup.norms, bracket=bracket):
        if len(cfg.precisions) > 1:
            params["precision"] = cfg.precisions[0]
        if f"{params['batch_size']}/{params['norm']}/{params.get('precision', cfg.precisions[0])}" not in plan.unfit:
            points.append(params)
    return tuple(points)


def _climb(study: Any, cfg: SearchConfig, setup: _Setup, plan: TrialPlan,
           on_event: Callable[[TrialEvent], None] | None, say: Callable[[str], None],
           on_update: Callable[[TrialUpdate], None] | None = None, pool: WorkerPool | None = None) -> bool:
    """Phase 5b of the default search: one trial at a time at the next faster neighbour of the trials close
    to the best (:mod:`batchtune.study.climb`), within the climb's share of the budget; returns whether
    Ctrl-C stopped it."""
    from batchtune.study import climb
    from batchtune.study.cells import CellTable
    from batchtune.study.results import counts, trials_frame

    full = max(plan.trial_samples, 1)
    announced = False
    while True:
        everything = study.get_trials(deepcopy=False)
        if climb.spent(everything) + full > plan.climb_samples + full // 2:
            return False
        counted = sum(counts(t) for t in everything)
        if counted >= cfg.total_trials:
            return False
        frame = trials_frame(study)
        _, close = _tolerance(frame, cfg, setup.task.metric_mode)
        stored = study.user_attrs.get("cells")
        step = climb.next_step(frame, CellTable.from_dict(stored) if stored else None, sizes=plan.sizes,
                               norms=setup.norms, precisions=cfg.precisions, lr_param=plan.lr_param,
                               mode=setup.task.metric_mode, close=close, unfit=frozenset(plan.unfit),
                               bounds=plan.lr_bounds)
        if step is None:
            return False
        if not announced:
            say("climbing to faster cells: trials at faster neighbours of the best (a larger batch at the same LR, "
                "then at the same position in its LR window)")
            announced = True
        # Another coordinator of the study may have reached the same neighbour (it read the same trials):
        # wait for the result of the trial it runs, or run the one it queued, instead of a second copy. (A
        # finished copy that failed, e.g. interrupted, is not counted by the step and is queued again.)
        if _matching(study, step.params, "RUNNING"):
            try:
                _wait_for(study, step.params)
            except KeyboardInterrupt:
                return True
            continue
        if not _matching(study, step.params, "WAITING"):
            study.enqueue_trial(step.params, user_attrs={"origin": climb.ORIGIN, "climb": step.why})
        # One trial (the queued one); the budget shown is the trials' and the climb's together.
        budget = None if plan.trial_budget is None else plan.trial_budget + plan.climb_samples
        # One worker: two threads of this process asking for one queued trial race in Optuna's storage.
        if _run_trials(study, replace(cfg, trials=counted + 1), replace(setup, workers=1),
                       replace(plan, trial_budget=budget, climb_samples=0), on_event, on_update, pool):
            return True
        if sum(counts(t) for t in study.get_trials(deepcopy=False)) <= counted:
            return False  # the queued trial did not run (the time limit or the budget): the climb ends here


def _same_params(trial: Any, params: dict[str, Any]) -> bool:
    """Whether ``trial`` has (or was queued with) ``params`` (a climb step's, computed alike by every coordinator)."""
    have = trial.system_attrs.get("fixed_params", trial.params)
    return have.keys() == params.keys() and all(
        math.isclose(float(have[k]), float(v), rel_tol=1e-9) if isinstance(v, (int, float)) else have[k] == v
        for k, v in params.items())


def _matching(study: Any, params: dict[str, Any], state: str) -> bool:
    """Whether a trial in ``state`` (WAITING or RUNNING) has ``params``."""
    from optuna.trial import TrialState

    return any(_same_params(t, params) for t in study.get_trials(deepcopy=False, states=(TrialState[state],)))


def _wait_for(study: Any, params: dict[str, Any], poll: float = 1.0) -> None:
    """Until no trial with ``params`` is running (another coordinator's climb step). A running trial whose
    coordinator died is failed and re-queued meanwhile (:func:`_recover_dead_trials`), which ends the wait:
    the caller then finds it queued and runs it."""
    import time

    while _matching(study, params, "RUNNING"):
        time.sleep(poll)
        _recover_dead_trials(study)


def majority_share(dataset: Any, target_key: str | None = None, collate: Any = None) -> float | None:
    """The share of the most frequent class among the targets (the accuracy of always guessing it), or None
    when the targets are not integer class labels. Targets are read as the batch doctor reads them
    (``item[target_key]`` of dict items and Hugging Face columns, else ``item[1]``; a few seconds at most)."""
    import numpy as np

    from batchtune.doctor.checks import read_labels

    labels = read_labels(dataset, target_key=target_key, collate=collate)
    if labels is None or labels.kind != "class":
        return None
    return float(np.bincount(labels.values.clip(min=0)).max()) / len(labels.values)


def _record_space_and_meta(study: Any, cfg: SearchConfig, setup: _Setup, plan: TrialPlan) -> None:
    """Phase 3: store the search space (a resume must match it) and what the report needs to know."""
    from batchtune.trial.device import environment

    space = {
        "batch_sizes": list(plan.sizes),
        "lr": [cfg.lr_min, cfg.lr_max],
        "norms": list(setup.norms),
        "precisions": list(cfg.precisions),
        "objective": plan.objective,
        "accumulate": cfg.accumulate,
        "micro_batch_max": max(s.micro for s in plan.splits.values()) if cfg.accumulate > 1 else None,
        "lr_rule": plan.rule,
        "lr_reference_batch": plan.reference,
        "target": plan.target,
    }
    _check_space(study, space)
    task = setup.task
    meta = {
        "task": str(task.path),
        "metric_mode": task.metric_mode,
        "metric_is_default": not task.custom_metric,
        "optimizer_family": setup.family,
        "norm_note": setup.norm_note,
        "train_size": setup.train_size,
        "val_size": setup.val_size,
        "epochs": cfg.epochs,
        "budget_samples": cfg.budget_samples,
        "seed": cfg.seed,
        "memory_budget": cfg.memory_budget,
        "current_batch_size": cfg.current_batch_size,
        "environment": environment(setup.device, threads=setup.threads),
        "objectives": {"time-to-target": ["time_to_target"], "metric": ["metric"]}.get(
            plan.objective, ["metric", "throughput", "peak_memory_bytes"]),
        "objective": plan.objective,
        "target": plan.target,
        "lr_rule": plan.rule,
        "lr_reference_batch": plan.reference,
        "warmup_epochs": plan.warmup_epochs,
        "accumulate": cfg.accumulate,
    }
    study.set_user_attr(META_KEY, meta)


def _recover_dead_trials(study: Any) -> None:
    """Phase 4: trials whose heartbeat stopped, or whose coordinator on this host died, are failed and retried."""
    reap_stale_trials(study)
    reap_dead_local_trials(study)


def _run_trials(
    study: Any, cfg: SearchConfig, setup: _Setup, plan: TrialPlan, on_event: Callable[[TrialEvent], None] | None,
    on_update: Callable[[TrialUpdate], None] | None = None, pool: WorkerPool | None = None,
) -> bool:
    """Phase 5: the workers run trials until the study has its total; returns whether Ctrl-C stopped them."""
    progress = Progress(cfg.total_trials, setup.task.metric_mode)
    for t in study.get_trials(deepcopy=False):
        if status(t) == "ok":
            progress.update(t.user_attrs["result"].get("final_metric"))
    interrupted, errors = run_workers(
        study, cfg, setup.device, plan, setup.norms, workers=setup.workers, gpus=setup.gpus, threads=setup.threads,
        progress=progress, on_event=on_event, on_update=on_update, pool=pool,
    )
    if errors and not interrupted:
        err = errors[0]
        if isinstance(err, BatchtuneError):
            raise err
        import sqlalchemy.exc

        if isinstance(err, sqlalchemy.exc.SQLAlchemyError):
            from batchtune.study.storage import storage_error

            raise storage_error(setup.url, err)
        raise err
    return interrupted


def trial_plan(
    cfg: SearchConfig, sizes: tuple[int, ...], train_size: int, family: str, mode: str, micro_max: int | None = None
) -> TrialPlan:
    """The LR rule, accumulation splits and objective of this study (batchtune.study.plan).

    ``micro_max`` is the largest micro-batch that fits (the probe's); without it, the largest
    searched size, or --batch-size-max with explicit --batch-sizes.
    """
    from batchtune.study import lr_rule
    from batchtune.study.accumulate import plan as accumulation_plan
    from batchtune.study.plan import TrialPlan

    if micro_max is None:
        micro_max = max(sizes) if cfg.batch_sizes is None else (cfg.batch_size_max or max(sizes))
    splits = accumulation_plan(
        sizes, max_steps=cfg.accumulate, micro_max=micro_max, train_size=train_size, explicit=cfg.batch_sizes is not None
    )
    rule = lr_rule.resolve_rule(cfg.lr_rule or "auto", family)
    reference = None if rule == "none" else lr_rule.reference_batch(cfg.lr_reference_batch, tuple(splits))
    trial_epochs = cfg.epochs if cfg.budget_samples is None else cfg.budget_samples / train_size
    warmup = cfg.warmup_epochs if cfg.warmup_epochs is not None else lr_rule.default_warmup_epochs(rule, trial_epochs or 1.0)
    if warmup and trial_epochs and warmup >= trial_epochs:
        raise UsageError(
            f"--warmup-epochs {warmup:g} is not shorter than a trial ({trial_epochs:g} epochs); lower it or raise the budget"
        )
    return TrialPlan(
        splits=splits, rule=rule, reference=reference, warmup_epochs=float(warmup), objective=cfg.objective,
        target=cfg.target, mode=mode,
    )


def batch_size_choices(cfg: SearchConfig, train_size: int) -> tuple[int, ...]:
    """Powers of two from --batch-size-min up to --batch-size-max (default: the training set size, capped at 1024)."""
    if cfg.batch_sizes is not None:
        too_big = [b for b in cfg.batch_sizes if b > train_size]
        if too_big:
            raise UsageError(
                f"--batch-sizes {too_big[0]} is larger than the training set ({train_size} samples); "
                "drop it or use a larger dataset"
            )
        return tuple(sorted(set(cfg.batch_sizes)))
    upper = min(cfg.batch_size_max or 1024, train_size)
    if cfg.batch_size_min > upper:
        raise UsageError(
            f"--batch-size-min {cfg.batch_size_min} is larger than the training set ({train_size} samples); lower it"
        )
    sizes = []
    b = 1
    while b <= upper:
        if b >= cfg.batch_size_min:
            sizes.append(b)
        b *= 2
    if not sizes:
        sizes = [cfg.batch_size_min]
    return tuple(sizes)


# What a study stored before a key existed: it sampled the LR directly, with no target.
_SPACE_DEFAULTS: dict[str, Any] = {"lr_rule": "none", "lr_reference_batch": None, "target": None, "micro_batch_max": None}


def _check_space(study: Any, space: dict[str, Any]) -> None:
    stored = study.user_attrs.get(SPACE_KEY)
    if stored is None:
        study.set_user_attr(SPACE_KEY, space)
        return
    for key in ("batch_sizes", "norms", "precisions", "objective", "accumulate", "lr_rule", "lr_reference_batch",
                "target", "micro_batch_max"):
        if stored.get(key, _SPACE_DEFAULTS.get(key)) != space.get(key):
            raise UsageError(
                f"study {study.study_name!r} was created with {key} {stored.get(key)}, not {space.get(key)}; "
                "run with the same options to resume it, or pass a new --study name"
            )


def load_result(study: Any, url: str, cfg: SearchConfig | None = None) -> SearchResult:
    """Tables, Pareto front and recommendation of a stored study."""
    from batchtune.study.recommend import (
        pareto_front,
        recommend,
        recommend_time_to_target,
        with_lr_table,
    )
    from batchtune.study.results import curves_frame, trials_frame
    from batchtune.study.summary import build_summary

    meta = study.user_attrs.get(META_KEY) or {}
    trials = trials_frame(study)
    curves = curves_frame(study)
    mode = meta.get("metric_mode", "max")
    tolerance = cfg.tolerance if cfg is not None else None
    current = cfg.current_batch_size if cfg is not None and cfg.current_batch_size else meta.get("current_batch_size")
    front = pareto_front(trials, mode)
    space = study.user_attrs.get(SPACE_KEY) or {}
    rule = space.get("lr_rule", "none")
    # LR advice follows the rule the study searched with; without one, the optimizer family's.
    family = {"linear": "sgd", "sqrt": "adaptive"}.get(rule, meta.get("optimizer_family", "sgd"))
    if space.get("objective") == "metric":
        rec = _recommend_measured(study, trials, mode, tolerance, current, family)
        front = front.iloc[0:0]  # one objective: speed and memory come from the cells, not a trial front
    elif space.get("objective") == "time-to-target":
        rec = recommend_time_to_target(
            trials, mode=mode, target=float(space["target"]), current_batch_size=current, optimizer_family=family
        )
    else:
        rec = recommend(trials, mode=mode, tolerance=tolerance, current_batch_size=current, optimizer_family=family)
    if rec is not None and space.get("objective") != "metric":
        sizes = list(space.get("batch_sizes") or []) + ([current] if current else [])
        rec = with_lr_table(rec, trials, rule=rule, reference=space.get("lr_reference_batch"), sizes=sizes)
    result = SearchResult(
        study_name=study.study_name,
        storage=redact_url(url),
        trials=trials,
        curves=curves,
        recommendation=rec,
        pareto=front,
        summary={},
    )
    result.summary = build_summary(result, meta, study)
    return result


def _recommend_measured(study: Any, trials: Any, mode: str, tolerance: Any, current: int | None, family: str) -> Any:
    """The default search's recommendation: from the re-run candidates and the cells' speed."""
    from batchtune.study.candidates import Candidate
    from batchtune.study.cells import CellTable
    from batchtune.study.recommend import recommend_measured

    candidates = [Candidate.from_dict(c) for c in study.user_attrs.get("candidates") or []]
    stored = study.user_attrs.get("cells")
    cells = CellTable.from_dict(stored) if stored else None
    if candidates:
        return recommend_measured(candidates, cells, trials, mode=mode, tolerance=tolerance, current_batch_size=current,
                                  optimizer_family=family)
    # Stopped before the re-runs (Ctrl-C in the trials): a provisional answer from the trials' own seeds, said so.
    from batchtune.study.measured import provisional_candidates

    seed = int((study.user_attrs.get(META_KEY) or {}).get("seed") or 0)
    rec = recommend_measured(provisional_candidates(trials, cells, mode=mode, tolerance=tolerance, seed=seed), cells,
                             trials, mode=mode, tolerance=tolerance, current_batch_size=current, optimizer_family=family)
    if rec is None:
        return None
    return replace(rec, reason=(
        "Provisional: the search stopped before re-training its candidates on fresh seeds, so each figure is one "
        "trial's own seed, the best of many and biased up; run the same command again to finish it. " + rec.reason))
