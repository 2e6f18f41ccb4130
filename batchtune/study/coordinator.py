"""The coordinator: worker threads that claim a trial, run it in a worker process and record it.

Each local worker is a thread that owns one :class:`~batchtune.trial.process.TrialRunner`. Trials
are claimed from the study (so several processes and machines share one total), run with a
heartbeat, and recorded with as few storage round trips as Optuna allows (:mod:`batchtune.study.ledger`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchtune.study.config import SearchConfig
from batchtune.study.results import MEASURED_STATUSES, counts

if TYPE_CHECKING:
    from batchtune.study.plan import TrialPlan

log = logging.getLogger(__name__)


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
    budget_used: float | None = None  # share of the trials' compute budget spent (metric objective)


@dataclass(frozen=True)
class TrialUpdate:
    """A running trial, for a live display: just started (``samples`` 0), or evaluated (``metric``)."""

    number: int
    params: dict[str, Any]
    samples: int
    total_samples: int | None  # a full-length trial's samples, when the plan knows it
    metric: float | None = None


def owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_dead_local_trials(study: Any) -> int:
    """Fail and re-queue RUNNING trials whose coordinator on this host is gone (a kill -9).

    Heartbeats catch this on any machine after the grace period (:func:`reap_stale_trials`); on the
    same host the owner's pid says it at once, so a rerun right after a crash does not wait.
    """
    from optuna.trial import TrialState

    host = socket.gethostname()
    reaped = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get("worker") or {}
        if owner.get("host") != host or owner.get("pid") == os.getpid() or pid_alive(int(owner.get("pid", 0))):
            continue
        reaped += _interrupt(study, t._trial_id, "its coordinator process died")
    return reaped


def reap_stale_trials(study: Any) -> int:
    """Fail and re-queue RUNNING trials whose heartbeat stopped: their coordinator died, on any machine.

    Optuna's ``fail_stale_trials`` does this but stores no status or reason, and a finished trial
    takes no more attributes; here they are written before the trial is failed.
    """
    from optuna.storages._heartbeat import is_heartbeat_enabled

    storage = study._storage
    if not is_heartbeat_enabled(storage):
        return 0
    grace = getattr(getattr(storage, "_backend", storage), "grace_period", None)
    silent = f" for {grace} s" if grace else ""
    reaped = 0
    for trial_id in storage._get_stale_trial_ids(study._study_id):
        owner = storage.get_trial(trial_id).user_attrs.get("worker") or {}
        who = f" ({owner.get('host')}, pid {owner.get('pid')})" if owner else ""
        reaped += _interrupt(study, trial_id, f"its coordinator{who} sent no heartbeat{silent}")
    return reaped


def _interrupt(study: Any, trial_id: int, why: str) -> bool:
    """Record a dead coordinator's trial as "interrupted" with ``why``, fail it and retry it once."""
    import copy

    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
    try:
        trial = storage.get_trial(trial_id)
        retried = len(trial.system_attrs.get("retry_history", [])) < 1
        reason = f"{why}; {'retried with the same parameters' if retried else 'already retried once, not again'}"
        storage.set_trial_user_attr(trial_id, "status", "interrupted")
        storage.set_trial_user_attr(trial_id, "reason", reason)
        if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False  # its coordinator finished it, or another worker reaped it first
    # The retry starts clean: it inherits the user attributes, but not this trial's outcome.
    again = copy.deepcopy(storage.get_trial(trial_id))
    again.user_attrs = {k: v for k, v in again.user_attrs.items() if k not in ("status", "reason")}
    retry(study, again)
    return True


class Progress:
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


def gpu_ids(requested: str, device: Any) -> list[int]:
    """The GPUs workers spread over: all of them for ``auto``/``cuda``, the one named by ``cuda:N``."""
    if device.type != "cuda":
        return []
    import torch

    if (requested or "auto").strip().lower() in ("auto", "cuda"):
        return list(range(torch.cuda.device_count()))
    return [device.index or 0]


def make_runner(cfg: SearchConfig, device: Any, gpus: list[int], slot: int, threads: int) -> Any:
    """A worker process for ``slot``; on CUDA it is pinned to one GPU, round robin."""
    from batchtune.trial.process import TrialRunner

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


class WorkerPool:
    """The search's worker processes, one per slot, started when a phase first needs it and kept from phase
    to phase (speed, LR range tests, the trials, each climb step, the re-runs): the task file is imported,
    its datasets built and, on CUDA, a context made once per slot rather than once per phase. A worker
    that dies is replaced by its runner at the next trial. The search closes the pool when it ends."""

    def __init__(self, cfg: SearchConfig, device: Any, gpus: list[int], threads: int) -> None:
        self._make = lambda slot: make_runner(cfg, device, gpus, slot, threads)
        self._runners: list[Any] = []

    def take(self, count: int) -> list[Any]:
        """The runners of slots 0 .. count-1, made on first use."""
        while len(self._runners) < count:
            self._runners.append(self._make(len(self._runners)))
        return self._runners[:count]

    def close(self) -> None:
        for runner in self._runners:
            runner.close()


def run_workers(
    study: Any,
    cfg: SearchConfig,
    device: Any,
    plan: TrialPlan,
    norms: tuple[str, ...],
    *,
    workers: int,
    gpus: list[int],
    threads: int,
    progress: Progress,
    on_event: Callable[[TrialEvent], None] | None,
    on_update: Callable[[TrialUpdate], None] | None = None,
    pool: WorkerPool | None = None,
) -> tuple[bool, list[BaseException]]:
    """Run ``workers`` worker threads until the study has ``cfg.total_trials`` counted trials.

    Their processes come from ``pool`` and stay open for the next phase; without a pool they are made
    here and closed on return. Returns whether a Ctrl-C interrupted them, and the errors the threads raised.
    """
    stop = threading.Event()
    deadline = None if cfg.timeout is None else time.monotonic() + cfg.timeout
    runners = pool.take(workers) if pool is not None else [make_runner(cfg, device, gpus, i, threads)
                                                           for i in range(workers)]
    errors: list[BaseException] = []
    finished = [threading.Event() for _ in runners]

    def loop(runner: Any, slot: int) -> None:
        try:
            worker_loop(study, runner, cfg, device, plan, norms, threads, progress, stop, deadline, on_event,
                        on_update)
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)
            stop.set()
        finally:
            finished[slot].set()

    threads_ = [threading.Thread(target=loop, args=(r, i), daemon=True) for i, r in enumerate(runners)]
    interrupted = False
    try:
        for t in threads_:
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
        if pool is None:
            for r in runners:
                r.close()
    return interrupted, errors


def worker_loop(
    study: Any,
    runner: Any,
    cfg: SearchConfig,
    device: Any,
    plan: TrialPlan,
    norms: tuple[str, ...],
    threads: int,
    progress: Progress,
    stop: threading.Event,
    deadline: float | None,
    on_event: Callable[[TrialEvent], None] | None,
    on_update: Callable[[TrialUpdate], None] | None = None,
) -> None:
    from optuna.storages._heartbeat import get_heartbeat_thread
    from optuna.trial import TrialState

    space = trial_space(cfg, plan, norms)
    while not stop.is_set():
        if deadline is not None and time.monotonic() >= deadline:
            return
        tally = Tally(study.get_trials(deepcopy=False))
        progress.seen(tally.done)
        if tally.done >= cfg.total_trials or _budget_spent(tally, plan):
            return
        if tally.done + tally.running >= cfg.total_trials and not tally.waiting:
            # Others are running the last trials; wait in case one dies and is re-queued.
            time.sleep(1.0)
            reap_stale_trials(study)
            reap_dead_local_trials(study)
            continue
        trial = claim(study, cfg.total_trials, space, tally.trials, plan.start)
        if trial is None:
            continue
        spec, base_lr = trial_spec(trial.params, cfg, plan, runner.device, threads)
        if stop.is_set():
            trial.set_user_attr("status", "interrupted")
            trial.set_user_attr("reason", "interrupted (Ctrl-C) before the trial started")
            trial.tell(state=TrialState.FAIL)
            return
        watch = plan.watch(trial, spec.effective_batch_size)
        unfit = plan.unfit.get(f"{spec.effective_batch_size}/{spec.norm}/{spec.precision}")
        if unfit is not None:
            # The cell measurement already ran this cell: it does not fit, so the trial is not trained.
            from batchtune.trial.train import TrialResult

            result = TrialResult(status="oom", reason=f"not run: the speed and memory measurement found {unfit}")
            watch = None
        else:
            heartbeat = get_heartbeat_thread(trial.trial_id, study._storage)
            heartbeat.start()
            report, moved = _with_updates(watch, on_update, trial.number, spec, plan.trial_samples or None)
            try:
                result = runner.run(spec, timeout=cfg.trial_timeout, on_report=report, on_progress=moved)
            finally:
                heartbeat.join()
        if watch is not None:
            watch.settle(result)
        if stop.is_set() and result.status in ("failed", "timeout"):
            result.status, result.reason = "interrupted", "interrupted (Ctrl-C) before the trial finished"
        record(study, trial, result, spec, cfg, plan, base_lr, runner.label)
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
                    total=cfg.total_trials,
                    best_metric=best,
                    budget_used=_budget_used(tally, plan, result),
                )
            )


def _with_updates(
    watch: Any, on_update: Callable[[TrialUpdate], None] | None, number: int, spec: Any, total: int | None
) -> tuple[Any, Any]:
    """The worker's callbacks: at each evaluation ``watch`` (the pruner or the target), telling ``on_update``
    first; while it trains (about once a second), ``on_update`` alone."""
    if on_update is None:
        return watch, None
    params = {"batch_size": spec.effective_batch_size, "lr": spec.lr, "norm": spec.norm}
    batch = spec.effective_batch_size
    last: list[float | None] = [None]  # the latest evaluation, shown with the progress between evaluations
    on_update(TrialUpdate(number, params, 0, total))

    def report(step: int, value: float) -> bool:
        last[0] = value
        on_update(TrialUpdate(number, params, int(step) * batch, total, value))
        return bool(watch(step, value)) if watch is not None else False

    def moved(step: int, steps: int) -> None:
        on_update(TrialUpdate(number, params, int(step) * batch, int(steps) * batch, last[0]))

    return report, moved


def trial_space(cfg: SearchConfig, plan: TrialPlan, norms: tuple[str, ...]) -> dict[str, Any]:
    """The parameters the study's sampler chooses, with their distributions."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    space = {
        "batch_size": CategoricalDistribution(list(plan.sizes)),
        plan.lr_param: (FloatDistribution(0.0, 1.0) if plan.lr_bounds is not None
                        else FloatDistribution(float(cfg.lr_min or 1e-4), float(cfg.lr_max or 0.3), log=True)),
        "norm": CategoricalDistribution(list(norms)),
    }
    if len(cfg.precisions) > 1:
        space["precision"] = CategoricalDistribution(list(cfg.precisions))
    return space


def trial_spec(
    params: dict[str, Any], cfg: SearchConfig, plan: TrialPlan, device: Any, threads: int
) -> tuple[Any, float]:
    """What the worker runs for the sampled ``params``, and the base LR (before the LR rule)."""
    from batchtune.trial.train import TrialSpec

    batch_size = int(params["batch_size"])
    base_lr, lr = plan.lr_of(params, batch_size)
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


def _budget_used(tally: Tally, plan: TrialPlan, result: Any) -> float | None:
    if not plan.trial_budget:
        return None
    from batchtune.study.budget import spent_on_trials

    # Of the trials' and the climb's budget together, so the share shown runs on through the climb.
    return (spent_on_trials(tally.trials) + int(result.samples or 0)) / (plan.trial_budget + plan.climb_samples)


def _budget_spent(tally: Tally, plan: TrialPlan) -> bool:
    """The trials' share of the budget is used up, counting each running trial at its full length."""
    if plan.trial_budget is None:
        return False
    from batchtune.study.budget import spent_on_trials

    full = max(plan.trial_samples, 1)
    return spent_on_trials(tally.trials) + tally.running * full + full > plan.trial_budget + full // 2


class Tally:
    """What a read of the study says: trials that count towards the total, run, and wait."""

    def __init__(self, trials: list[Any]) -> None:
        from optuna.trial import TrialState

        self.trials = trials
        self.done = sum(counts(t) for t in trials)
        self.running = sum(t.state == TrialState.RUNNING for t in trials)
        self.waiting = sum(t.state == TrialState.WAITING for t in trials)


def claim(study: Any, total: int, space: dict[str, Any], trials: list[Any],
          design: tuple[dict[str, Any], ...] = ()) -> Any | None:
    """A new trial (a :class:`~batchtune.study.ledger.LeanTrial`), or None when the study already has its ``total``.

    ``trials`` is the study as read just before. The trials that count or run are ranked by number,
    which the storage hands out in order, and this one must be within the first ``total``; otherwise
    another worker asked at the same moment, and the trial is told FAIL with status "surplus", which
    does not count. When no trial was created since the read, the read is enough: the trials before
    this one that counted, ran or waited then are all that can count or run now.
    """
    from optuna.trial import TrialState

    from batchtune.study.ledger import LeanTrial

    trial = LeanTrial.claim(study, space, {"worker": owner()}, trials, design)
    before = [t for t in trials if t.number < trial.number]
    if trial.number == len(trials) and sum(counts(t) or t.state in (TrialState.RUNNING, TrialState.WAITING) for t in before) < total:
        return trial
    ranked = sorted(t.number for t in study.get_trials(deepcopy=False) if counts(t) or t.state == TrialState.RUNNING)
    if trial.number in ranked[:total]:
        return trial
    trial.set_user_attr("status", "surplus")
    trial.tell(state=TrialState.FAIL)
    return None


def record(
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
    # trip (a commit on RDB storage), and the coordinator's time per trial must stay small. The key
    # figures again, rounded, one per attribute for optuna-dashboard, go in the same transaction
    # (benchmarks/dashboard_attrs.py measures what they add).
    from batchtune.study.dashboard import readable_attrs

    trial.set_user_attrs({"result": data, **readable_attrs(data)})
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
