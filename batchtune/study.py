"""Running and reading the Optuna study of a search: one trial per worker process, ask and tell."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchtune.config import SearchConfig
from batchtune.errors import BatchtuneError, StorageError, UsageError
from batchtune.results import MEASURED_STATUSES, counts, status
from batchtune.units import redact_url

if TYPE_CHECKING:
    from batchtune.plan import TrialPlan

log = logging.getLogger(__name__)

SPACE_KEY = "batchtune_space"
META_KEY = "batchtune_meta"


@dataclass(frozen=True)
class TrialEvent:
    """What the CLI shows after each trial."""

    number: int
    status: str
    params: dict[str, Any]
    metric: float | None
    throughput: float | None
    peak_memory_bytes: int | None
    reason: str | None
    done: int
    total: int
    best_metric: float | None


@dataclass
class SearchResult:
    """A finished (or interrupted) search: tables from the study, the recommendation, files written."""

    study_name: str
    storage: str  # password redacted
    trials: Any  # pandas.DataFrame, one row per counted trial
    curves: Any  # pandas.DataFrame, learning curves in long form
    recommendation: Any  # batchtune.recommend.Recommendation | None
    pareto: Any  # pandas.DataFrame
    summary: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)
    interrupted: bool = False


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


def open_study(cfg: SearchConfig, directions: list[Any], *, create: bool = True, pruner: Any = None) -> Any:
    import optuna
    import sqlalchemy.exc

    from batchtune.storage import default_storage, open_storage, storage_error

    url = cfg.storage or default_storage(cfg.study_name, cfg.studies_dir)
    storage = open_storage(url, heartbeat_interval=cfg.heartbeat_interval, grace_period=cfg.heartbeat_grace)
    sampler = optuna.samplers.TPESampler(
        seed=cfg.seed,
        multivariate=True,
        group=False,
        # A handful of random trials first; the default (10) is half of a typical 20-trial budget.
        n_startup_trials=max(4, min(10, cfg.trials // 3)),
    )
    try:
        if create:
            return optuna.create_study(
                study_name=cfg.study_name,
                storage=storage,
                sampler=sampler,
                pruner=pruner,
                directions=directions,
                load_if_exists=True,
            )
        return optuna.load_study(study_name=cfg.study_name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        raise StorageError(
            f"no study named {cfg.study_name!r} in {redact_url(url)}; run `batchtune search` first or pass --study"
        ) from None
    except ValueError as exc:
        raise UsageError(
            f"study {cfg.study_name!r} in {redact_url(url)} exists with other objectives ({exc}); pass a new --study name"
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise storage_error(url, exc) from None


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


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_dead_local_trials(study: Any) -> int:
    """Fail and re-queue RUNNING trials whose coordinator on this host is gone (a kill -9).

    Heartbeats catch this on any machine after the grace period; on the same host the owner's pid
    says it at once, so a rerun right after a crash does not wait.
    """
    import optuna
    from optuna.trial import TrialState

    host = socket.gethostname()
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
    reaped = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get("worker") or {}
        if owner.get("host") != host or owner.get("pid") == os.getpid() or _pid_alive(int(owner.get("pid", 0))):
            continue
        try:
            study._storage.set_trial_user_attr(t._trial_id, "status", "interrupted")
            study._storage.set_trial_user_attr(t._trial_id, "reason", "its coordinator process died; retried")
            if study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                retry(study, study._storage.get_trial(t._trial_id))
                reaped += 1
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return reaped


class _Progress:
    def __init__(self, total: int, mode: str) -> None:
        self.total = total
        self.mode = mode
        self.best: float | None = None
        self.done = 0
        self.lock = threading.Lock()

    def seen(self, done: int) -> None:
        """The study had ``done`` counted trials at the last read (other workers' included)."""
        with self.lock:
            self.done = max(self.done, done)

    def finished(self, trial_status: str) -> int:
        """One of this machine's trials was recorded; how many count now, as far as we know."""
        with self.lock:
            self.done += trial_status in MEASURED_STATUSES
            return self.done

    def update(self, value: float | None) -> float | None:
        with self.lock:
            if value is not None:
                if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
                    self.best = value
            return self.best


def search(
    config: SearchConfig,
    *,
    on_event: Callable[[TrialEvent], None] | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None,
    write_report: bool = True,
) -> SearchResult:
    """Run (or resume) a study and write its report. See the README for every option.

    Returns the :class:`SearchResult`; raises :class:`BatchtuneError` subclasses for bad input.
    KeyboardInterrupt marks the running trials interrupted, writes the report of what finished,
    and returns a result with ``interrupted=True``.
    """
    cfg = config.validated()
    with quiet_optuna():
        return _search(cfg, on_event, on_start, write_report)


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's info logs and experimental-API warnings are noise in batchtune's output."""
    import optuna

    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # We record heartbeats ourselves around each ask/tell trial (see _worker_loop).
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            yield
    finally:
        optuna.logging.set_verbosity(previous)


def _search(
    cfg: SearchConfig,
    on_event: Callable[[TrialEvent], None] | None,
    on_start: Callable[[dict[str, Any]], None] | None,
    write_report: bool,
) -> SearchResult:
    import optuna

    from batchtune.device import environment, resolve_device
    from batchtune.storage import default_storage
    from batchtune.task import (
        dry_run,
        load_task,
        make_dataset,
        optimizer_family,
        search_norms,
    )

    task = load_task(cfg.task_path)
    if write_report:
        from batchtune.files import ensure_dir

        ensure_dir(Path(cfg.output_dir) / cfg.study_name)  # fail now, not after hours of trials
    device = resolve_device(cfg.device)
    norms, norm_note = search_norms(task, cfg.norms)
    dry_run(task, norms)
    train_size = len(make_dataset(task, "train"))
    val_size = len(make_dataset(task, "val"))
    sizes = batch_size_choices(cfg, train_size)
    family = optimizer_family(task)
    _trial_plan(cfg, sizes, train_size, family, task.metric_mode)  # bad plan options fail before the study opens

    gpus = _gpu_ids(cfg.device, device)
    workers = cfg.workers if cfg.workers is not None else max(1, len(gpus))
    cpu_threads = cfg.threads or max(1, (os.cpu_count() or 1) // workers)
    env = environment(device, threads=cpu_threads)
    direction = "maximize" if task.metric_mode == "max" else "minimize"
    study = open_study(cfg, ["minimize"] if cfg.objective == "time-to-target" else [direction, "maximize", "minimize"])
    micro_max = None
    if cfg.probe:
        from batchtune.probing import probe_for_search

        # Only sizes that fit with headroom are searched; the probe is stored in (and reused from) the study.
        fitting = probe_for_search(study, cfg, sizes=sizes, norms=norms, device=str(device), threads=cpu_threads,
                                   out_dir=Path(cfg.output_dir) / cfg.study_name if write_report else None)
        # The probed maximum is the micro-batch limit: with --accumulate, powers of two go on doubling
        # past it, and explicit --batch-sizes above it are accumulated.
        micro_max = min(max(fitting), cfg.batch_size_max or max(fitting))
        sizes = sizes if cfg.accumulate > 1 and cfg.batch_sizes is not None else fitting
    plan = _trial_plan(cfg, sizes, train_size, family, task.metric_mode, micro_max=micro_max)
    sizes = plan.sizes
    if plan.objective == "time-to-target":
        from batchtune.target import first_rung_samples, make_pruner

        study.pruner = make_pruner(
            first_rung_samples(sizes, train_size, cfg.eval_every, cfg.budget_samples or (cfg.epochs or 1.0) * train_size)
        )
    space = {
        "batch_sizes": list(sizes),
        "lr": [cfg.lr_min, cfg.lr_max],
        "norms": list(norms),
        "precisions": list(cfg.precisions),
        "objective": plan.objective,
        "accumulate": cfg.accumulate,
        "micro_batch_max": max(s.micro for s in plan.splits.values()) if cfg.accumulate > 1 else None,
        "lr_rule": plan.rule,
        "lr_reference_batch": plan.reference,
        "target": plan.target,
    }
    _check_space(study, space)
    meta = {
        "task": str(task.path),
        "metric_mode": task.metric_mode,
        "metric_is_default": not task.custom_metric,
        "optimizer_family": family,
        "norm_note": norm_note,
        "train_size": train_size,
        "val_size": val_size,
        "epochs": cfg.epochs,
        "budget_samples": cfg.budget_samples,
        "seed": cfg.seed,
        "memory_budget": cfg.memory_budget,
        "current_batch_size": cfg.current_batch_size,
        "environment": env,
        "objectives": ["time_to_target"] if plan.objective == "time-to-target" else ["metric", "throughput", "peak_memory_bytes"],
        "objective": plan.objective,
        "target": plan.target,
        "lr_rule": plan.rule,
        "lr_reference_batch": plan.reference,
        "warmup_epochs": plan.warmup_epochs,
        "accumulate": cfg.accumulate,
    }
    study.set_user_attr(META_KEY, meta)
    if cfg.doctor:
        from batchtune.doctor_report import doctor_for_search

        study.set_user_attr("doctor", doctor_for_search(str(task.path), sizes, norms, device, cfg.seed))
    optuna.storages.fail_stale_trials(study)
    reap_dead_local_trials(study)
    url = cfg.storage or default_storage(cfg.study_name, cfg.studies_dir)
    if on_start:
        on_start({"study": cfg.study_name, "storage": redact_url(url), "device": str(device), "norms": norms,
                  "batch_sizes": sizes, "norm_note": norm_note, "workers": workers, "lr_rule": plan.rule,
                  "lr_reference_batch": plan.reference, "objective": plan.objective})

    progress = _Progress(cfg.trials, task.metric_mode)
    for t in study.get_trials(deepcopy=False):
        if status(t) == "ok":
            progress.update(t.user_attrs["result"].get("final_metric"))
    stop = threading.Event()
    deadline = None if cfg.timeout is None else time.monotonic() + cfg.timeout
    runners = [_make_runner(cfg, device, gpus, i, cpu_threads) for i in range(workers)]
    errors: list[BaseException] = []

    finished = [threading.Event() for _ in runners]

    def loop(runner: Any, slot: int) -> None:
        try:
            _worker_loop(study, runner, cfg, device, plan, norms, cpu_threads, progress, stop, deadline, on_event)
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)
            stop.set()
        finally:
            finished[slot].set()

    threads = [threading.Thread(target=loop, args=(r, i), daemon=True) for i, r in enumerate(runners)]
    interrupted = False
    try:
        for t in threads:
            t.start()
        # Wait on events, not Thread.join: a Ctrl-C that lands inside join() can leave CPython 3.11
        # believing the thread has stopped while it still runs (the interrupted trial would go unrecorded).
        while not all(e.is_set() for e in finished):
            time.sleep(0.1)
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
        for r in runners:
            r.interrupt()
        for e in finished:
            e.wait(timeout=30)
    finally:
        for r in runners:
            r.close()
    if errors and not interrupted:
        err = errors[0]
        if isinstance(err, BatchtuneError):
            raise err
        import sqlalchemy.exc

        if isinstance(err, sqlalchemy.exc.SQLAlchemyError):
            from batchtune.storage import storage_error

            raise storage_error(url, err)
        raise err
    result = load_result(study, url, cfg)
    if cfg.noise and not interrupted:
        from batchtune.noise_report import noise_for_search

        study.set_user_attr("noise", noise_for_search(
            result, cfg, device, Path(cfg.output_dir) / cfg.study_name, train_size=train_size, family=family
        ))
        result = load_result(study, url, cfg)
    result.interrupted = interrupted
    if write_report:
        from batchtune.reporting import write_search_report

        result.paths = write_search_report(result, Path(cfg.output_dir) / cfg.study_name, plots=cfg.plots)
    return result


def _gpu_ids(requested: str, device: Any) -> list[int]:
    """The GPUs workers spread over: all of them for ``auto``/``cuda``, the one named by ``cuda:N``."""
    if device.type != "cuda":
        return []
    import torch

    if (requested or "auto").strip().lower() in ("auto", "cuda"):
        return list(range(torch.cuda.device_count()))
    return [device.index or 0]


def _trial_plan(
    cfg: SearchConfig, sizes: tuple[int, ...], train_size: int, family: str, mode: str, micro_max: int | None = None
) -> TrialPlan:
    """The LR rule, accumulation splits and objective of this study (batchtune.plan).

    ``micro_max`` is the largest micro-batch that fits (the probe's); without it, the largest
    searched size, or --batch-size-max with explicit --batch-sizes.
    """
    from batchtune import lr_rule
    from batchtune.accumulate import plan as accumulation_plan
    from batchtune.plan import TrialPlan

    if micro_max is None:
        micro_max = max(sizes) if cfg.batch_sizes is None else (cfg.batch_size_max or max(sizes))
    splits = accumulation_plan(
        sizes, max_steps=cfg.accumulate, micro_max=micro_max, train_size=train_size, explicit=cfg.batch_sizes is not None
    )
    rule = lr_rule.resolve_rule(cfg.lr_rule, family)
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


def _make_runner(cfg: SearchConfig, device: Any, gpus: list[int], slot: int, threads: int) -> Any:
    """A worker process for ``slot``; on CUDA it is pinned to one GPU, round robin."""
    from batchtune.worker import TrialRunner

    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    trial_device = str(device)
    if gpus:
        # The child sees only its GPU, as cuda:0, so nothing it does touches the other GPUs.
        env["CUDA_VISIBLE_DEVICES"] = str(gpus[slot % len(gpus)])
        trial_device = "cuda:0"
    runner = TrialRunner(str(Path(cfg.task_path).resolve()), env=env)
    runner.device = trial_device
    runner.label = f"cuda:{gpus[slot % len(gpus)]}" if gpus else str(device)
    return runner


def _worker_loop(
    study: Any,
    runner: Any,
    cfg: SearchConfig,
    device: Any,
    plan: TrialPlan,
    norms: tuple[str, ...],
    threads: int,
    progress: _Progress,
    stop: threading.Event,
    deadline: float | None,
    on_event: Callable[[TrialEvent], None] | None,
) -> None:
    import optuna
    from optuna.storages._heartbeat import get_heartbeat_thread
    from optuna.trial import TrialState

    space = _space(cfg, plan, norms)
    while not stop.is_set():
        if deadline is not None and time.monotonic() >= deadline:
            return
        tally = _Tally(study.get_trials(deepcopy=False))
        progress.seen(tally.done)
        if tally.done >= cfg.trials:
            return
        if tally.done + tally.running >= cfg.trials and not tally.waiting:
            # Others are running the last trials; wait in case one dies and is re-queued.
            time.sleep(1.0)
            optuna.storages.fail_stale_trials(study)
            reap_dead_local_trials(study)
            continue
        trial = _claim(study, cfg.trials, space, tally.trials)
        if trial is None:
            continue
        spec, base_lr = _trial_spec(trial.params, cfg, plan, runner.device, threads)
        if stop.is_set():
            trial.set_user_attr("status", "interrupted")
            trial.set_user_attr("reason", "interrupted (Ctrl-C) before the trial started")
            trial.tell(state=TrialState.FAIL)
            return
        watch = plan.watch(trial, spec.effective_batch_size)
        heartbeat = get_heartbeat_thread(trial.trial_id, study._storage)
        heartbeat.start()
        try:
            result = runner.run(spec, timeout=cfg.trial_timeout, on_report=watch)
        finally:
            heartbeat.join()
        if watch is not None:
            watch.settle(result)
        if stop.is_set() and result.status in ("failed", "timeout"):
            result.status, result.reason = "interrupted", "interrupted (Ctrl-C) before the trial finished"
        _record(study, trial, result, spec, cfg, plan, base_lr, runner.label)
        best = progress.update(result.final_metric if result.status == "ok" else None)
        if on_event is not None:
            on_event(
                TrialEvent(
                    number=trial.number,
                    status=result.status,
                    params={"batch_size": spec.effective_batch_size, "lr": spec.lr, "norm": spec.norm,
                            "precision": spec.precision, "micro_batch": spec.batch_size, "accumulate": spec.accumulate},
                    metric=result.final_metric,
                    throughput=result.throughput,
                    peak_memory_bytes=result.peak_memory_bytes,
                    reason=result.reason,
                    done=progress.finished(result.status),
                    total=cfg.trials,
                    best_metric=best,
                )
            )


def _space(cfg: SearchConfig, plan: TrialPlan, norms: tuple[str, ...]) -> dict[str, Any]:
    """The parameters the study's sampler chooses, with their distributions."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    space = {
        "batch_size": CategoricalDistribution(list(plan.sizes)),
        plan.lr_param: FloatDistribution(cfg.lr_min, cfg.lr_max, log=True),
        "norm": CategoricalDistribution(list(norms)),
    }
    if len(cfg.precisions) > 1:
        space["precision"] = CategoricalDistribution(list(cfg.precisions))
    return space


def _trial_spec(
    params: dict[str, Any], cfg: SearchConfig, plan: TrialPlan, device: Any, threads: int
) -> tuple[Any, float]:
    """What the worker runs for the sampled ``params``, and the base LR (before the LR rule)."""
    from batchtune.train import TrialSpec

    batch_size = int(params["batch_size"])
    base_lr, lr = plan.learning_rates(params[plan.lr_param], batch_size)
    split = plan.splits[batch_size]
    spec = TrialSpec(
        batch_size=split.micro,
        lr=float(lr),
        norm=str(params["norm"]),
        device=device,
        seed=cfg.seed,
        epochs=cfg.epochs if cfg.budget_samples is None else None,
        budget_samples=cfg.budget_samples,
        eval_every=cfg.eval_every,
        precision=str(params.get("precision", cfg.precisions[0])),
        threads=threads,
        lr_warmup_epochs=plan.warmup_epochs,
        accumulate=split.steps,
    )
    return spec, base_lr


class _Tally:
    """What a read of the study says: trials that count towards the total, run, and wait."""

    def __init__(self, trials: list[Any]) -> None:
        from optuna.trial import TrialState

        self.trials = trials
        self.done = sum(counts(t) for t in trials)
        self.running = sum(t.state == TrialState.RUNNING for t in trials)
        self.waiting = sum(t.state == TrialState.WAITING for t in trials)


def _claim(study: Any, total: int, space: dict[str, Any], trials: list[Any]) -> Any | None:
    """A new trial (a :class:`~batchtune.ledger.LeanTrial`), or None when the study already has its ``total``.

    ``trials`` is the study as read just before. The trials that count or run are ranked by number,
    which the storage hands out in order, and this one must be within the first ``total``; otherwise
    another worker asked at the same moment, and the trial is told FAIL with status "surplus", which
    does not count. When no trial was created since the read, the read is enough: the trials before
    this one that counted, ran or waited then are all that can count or run now.
    """
    from optuna.trial import TrialState

    from batchtune.ledger import LeanTrial

    trial = LeanTrial.claim(study, space, {"worker": _owner()}, trials)
    before = [t for t in trials if t.number < trial.number]
    if trial.number == len(trials) and sum(counts(t) or t.state in (TrialState.RUNNING, TrialState.WAITING) for t in before) < total:
        return trial
    ranked = sorted(t.number for t in study.get_trials(deepcopy=False) if counts(t) or t.state == TrialState.RUNNING)
    if trial.number in ranked[:total]:
        return trial
    trial.set_user_attr("status", "surplus")
    trial.tell(state=TrialState.FAIL)
    return None


def _record(
    study: Any, trial: Any, result: Any, spec: Any, cfg: SearchConfig, plan: TrialPlan, base_lr: float,
    device_label: str = "",
) -> None:
    import math

    from optuna.trial import TrialState

    data = result.to_dict()
    data["effective_batch_size"] = spec.effective_batch_size
    data["accumulate"] = spec.accumulate
    data["micro_batch"] = spec.batch_size
    data["precision"] = spec.precision
    data["device"] = device_label
    data["lr"] = spec.lr
    data["lr_warmup_epochs"] = spec.lr_warmup_epochs
    data.update(plan.trial_attrs(base_lr, result))
    if result.status == "ok" and data["reason"] is None:
        data["reason"] = plan.miss_reason(result)
    data["step_times"] = data["step_times"][:2000]
    metric_ok = result.final_metric is not None and math.isfinite(result.final_metric)
    measured = result.status == "ok" and metric_ok and bool(result.throughput)
    over = None
    if measured and cfg.memory_budget is not None:
        over = (result.peak_memory_bytes - cfg.memory_budget) / cfg.memory_budget
        if over > 0:
            data["reason"] = f"peak memory above the --memory-budget by {over:.1%}"
    if result.status == "ok" and not measured:
        # Trained, but too short to time or evaluate: it cannot be compared with the others.
        data["status"] = "failed"
        data["reason"] = "the training budget was too short to time or evaluate; raise --epochs"
    # One attribute for the measurements, status and reason: each set_user_attr is a storage round
    # trip (a commit on RDB storage), and the coordinator's time per trial must stay small.
    trial.set_user_attr("result", data)
    if over is not None and over > 0:
        # Optuna treats a trial without constraints, or with values <= 0, as feasible, and its
        # samplers use only the positive values (the violation); storing the margin of a feasible
        # trial would cost a transaction and change nothing. The sampler learns the boundary.
        trial.set_constraint("memory", over)
    if measured:
        values = plan.objective_values(result)
        trial.tell(values or [result.final_metric, result.throughput, float(result.peak_memory_bytes or 0)])
        return
    if result.status == "pruned":
        trial.tell(state=TrialState.PRUNED)
        return
    if result.status == "oom":
        trial.set_constraint("memory", 1.0)
    trial.tell(state=TrialState.FAIL)


def load_result(study: Any, url: str, cfg: SearchConfig | None = None) -> SearchResult:
    """Tables, Pareto front and recommendation of a stored study."""
    from batchtune.recommend import (
        pareto_front,
        recommend,
        recommend_time_to_target,
        with_lr_table,
    )
    from batchtune.results import curves_frame, trials_frame
    from batchtune.summary import build_summary

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
    if space.get("objective") == "time-to-target":
        rec = recommend_time_to_target(
            trials, mode=mode, target=float(space["target"]), current_batch_size=current, optimizer_family=family
        )
    else:
        rec = recommend(trials, mode=mode, tolerance=tolerance, current_batch_size=current, optimizer_family=family)
    if rec is not None:
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

