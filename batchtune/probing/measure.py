"""The probe: which batch sizes fit this device, how fast each one trains, and where speed stops growing.

For each normalization and precision it measures training steps at doubling batch sizes until one
does not fit (out of memory, over ``--memory-budget``) or the training set / ``--batch-size-max`` is
reached, then bisects between the last fit and the first failure down to ``--granularity``. Each size
runs in a worker process (:class:`batchtune.trial.process.TrialRunner`), so a kernel OOM kill costs one point,
not the command. Result values live in :mod:`batchtune.probing.result`, rendering in
:mod:`batchtune.probing.report`.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from batchtune.errors import UsageError
from batchtune.probing.result import (
    ProbeCurve,
    ProbePoint,
    ProbeResult,
    ProbeSettings,
    fit_memory_model,
    knee,
    largest_fit,
    recommended_max,
)
from batchtune.study.config import check_batch_range, check_plain_name
from batchtune.task.choices import PRECISIONS
from batchtune.trial.timing import NOISY_REL_IQR
from batchtune.units import format_bytes

log = logging.getLogger(__name__)

# Target spread of step times: stop timing a size once IQR/median is below this (torch.utils.benchmark
# calls 10% noisy; half of that keeps neighbouring sizes apart).
TARGET_REL_IQR = 0.05
# Learning rate of the probe's optimizer: the probe measures speed and memory, not learning, so any
# small value that keeps the loss finite does.
_PROBE_LR = 1e-3


@dataclass(frozen=True)
class ProbeConfig:
    """Everything ``batchtune probe`` needs. Options mirror the CLI flags one to one."""

    task_path: str
    norms: tuple[str, ...] | None = None
    precisions: tuple[str, ...] = ("fp32",)
    device: str = "auto"
    memory_budget: int | None = None
    headroom: float = 0.10
    knee: float = 0.05
    granularity: int | None = None  # None: 8 on a GPU, 1 elsewhere
    batch_size_min: int = 8
    batch_size_max: int | None = None
    peak_flops: float | None = None
    threads: int | None = None
    warmup_steps: int = 2  # each includes the optimizer step; steps after the first stop at the time cap
    time_cap: float = 0.5  # seconds of timed steps per size, at most
    min_timed_steps: int = 5
    max_timed_steps: int = 100
    size_timeout: float = 600.0  # a size that has not finished by then is killed and counts as failed
    seed: int = 0
    name: str | None = None
    output_dir: str = "reports"
    plots: bool = True
    matmul_seconds: float = 0.3

    @property
    def report_name(self) -> str:
        return self.name or Path(self.task_path).stem

    def validated(self) -> ProbeConfig:
        """Check every value; return a copy."""
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown or not self.precisions:
            raise UsageError(
                f"--precision: unknown precision {unknown[0] if unknown else '(none)'!r}; choose from {', '.join(PRECISIONS)}"
            )
        if not 0 <= self.headroom < 1:
            raise UsageError(f"--headroom {self.headroom:.0%} must be at least 0% and below 100%")
        if not 0 <= self.knee < 1:
            raise UsageError(f"--knee {self.knee:.0%} must be at least 0% and below 100%")
        if self.granularity is not None and self.granularity < 1:
            raise UsageError(f"--granularity {self.granularity} must be at least 1")
        check_batch_range(self.batch_size_min, self.batch_size_max)
        check_plain_name(self.report_name, option="--name")
        if self.memory_budget is not None and self.memory_budget <= 0:
            raise UsageError("--memory-budget must be larger than zero, e.g. 6GiB")
        if self.peak_flops is not None and (not math.isfinite(self.peak_flops) or self.peak_flops <= 0):
            raise UsageError(f"--peak-flops {self.peak_flops:g} must be a positive number of FLOP/s, e.g. 312e12")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads {self.threads} must be at least 1")
        if self.warmup_steps < 1:
            raise UsageError(f"--warmup-steps {self.warmup_steps} must be at least 1 (it includes the optimizer step)")
        if self.time_cap <= 0:
            raise UsageError(f"--time-cap {self.time_cap:g} must be a positive number of seconds")
        if self.min_timed_steps < 3 or self.max_timed_steps < self.min_timed_steps:
            raise UsageError("timed steps: the minimum must be at least 3 and at most the maximum")
        return replace(self, precisions=tuple(dict.fromkeys(self.precisions)))


# ---------------------------------------------------------------------------------- the size search


class SizeSearch:
    """Doubling from ``low`` until a size fails or ``ceiling`` is reached, then bisection to ``granularity``.

    Sizes measured: at most ceil(log2(first_fail / low)) + 1 while doubling, then ceil(log2(gap /
    granularity)) while bisecting, gap being the distance between the last fit and the first failure.
    Ask :meth:`next_size`, measure it, tell :meth:`record`; ``None`` means done. ``fit`` is then the
    largest size that fits and ``fail`` the smallest measured size that does not (None if none failed).
    """

    def __init__(self, low: int, ceiling: int, granularity: int = 1) -> None:
        if not 1 <= low <= ceiling or granularity < 1:
            raise ValueError(f"need 1 <= low ({low}) <= ceiling ({ceiling}) and granularity ({granularity}) >= 1")
        self.low, self.ceiling, self.granularity = low, ceiling, granularity
        self.fit: int | None = None
        self.fail: int | None = None
        self.measured: list[int] = []
        self._pending: int | None = low

    def next_size(self) -> int | None:
        return self._pending

    def record(self, size: int, fits: bool) -> None:
        if size != self._pending:
            raise ValueError(f"record({size}) but the search asked for {self._pending}")
        self.measured.append(size)
        if fits:
            self.fit = size
        else:
            self.fail = size
        self._pending = self._choose()

    def _choose(self) -> int | None:
        if self.fit is None:
            return None  # the smallest size does not fit: nothing below it is searched
        if self.fail is None:
            if self.fit >= self.ceiling:
                return None
            return min(self.fit * 2, self.ceiling)
        if self.fail - self.fit <= self.granularity:
            return None
        g = self.granularity
        # The midpoint rounded down to a multiple of the granularity, strictly inside (fit, fail).
        mid = (self.fit + self.fail) // 2 // g * g
        if mid <= self.fit:
            mid = (self.fit // g + 1) * g
        return mid if mid < self.fail else None


def size_bound(largest: int, low: int, gap: int, granularity: int) -> int:
    """The issue's bound on measured sizes: ceil(log2(max/min)) + ceil(log2(gap/granularity)) + 1."""
    doubling = math.ceil(math.log2(largest / low)) if largest > low else 0
    bisect = math.ceil(math.log2(gap / granularity)) if gap > granularity else 0
    return doubling + bisect + 1


# ------------------------------------------------------------------------- measuring (in the worker)


def _autocast(device: Any, precision: str) -> Any:
    """The same autocast as a trial (batchtune.trial.train): bf16/fp16 autocast, fp32 left alone."""
    import torch

    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _allocated(device: Any) -> int | None:
    """Memory the allocator still holds for tensors; None on the CPU, where RSS keeps freed heap pages."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    if device.type == "mps":
        return int(torch.mps.current_allocated_memory())
    return None


def measure_size(
    context: Any,
    *,
    norm: str,
    precision: str,
    batch_size: int,
    device: str,
    seed: int = 0,
    warmup_steps: int = 2,
    time_cap: float = 1.0,
    min_steps: int = 5,
    max_steps: int = 100,
    target_rel_iqr: float = TARGET_REL_IQR,
    threads: int | None = None,
    count_flops: bool = False,
) -> dict[str, Any]:
    """Measure one batch size in the worker: warm-up, timed steps, one evaluation pass, peak memory.

    Never raises for OOM or the user's errors: they come back as ``status`` and ``reason``.
    """
    import torch

    from batchtune.errors import TaskError
    from batchtune.trial.device import MemoryTracker
    from batchtune.trial.oom import is_oom, oom_reason, release_memory

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    task = context.task
    train_set, val_set = context.datasets
    # Everything alive now (torch, the task, the datasets) outlives this size: freezing it keeps the
    # full collection in release_memory from walking ~10^5 long-lived objects (~0.2 s) at every size.
    gc.freeze()
    out: dict[str, Any] = {"status": "ok", "reason": None, "batch_size": batch_size}
    trackers = {"train": MemoryTracker(dev), "eval": MemoryTracker(dev)}
    stopped: dict[str, Any] = {}
    start = time.perf_counter()
    failure: BaseException | None = None
    trackers["train"].start()
    try:
        _measure(task, train_set, val_set, dev, norm, precision, batch_size, seed, warmup_steps, time_cap,
                 min_steps, max_steps, target_rel_iqr, count_flops, trackers, stopped, out)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - classified below, outside the except block
        failure = exc
    if failure is not None:
        if is_oom(failure):
            out["status"], out["reason"] = "oom", oom_reason(failure)
        elif isinstance(failure, TaskError):
            out["status"], out["reason"] = "failed", str(failure)
        else:
            first = (str(failure).strip().splitlines() or [""])[0][:300]
            out["status"], out["reason"] = "failed", f"{type(failure).__name__}: {first}"
        failure = None
    # The traceback is gone, so the model, optimizer state and activations can be freed now.
    release_memory(dev)
    for name in ("train", "eval"):
        if name not in stopped and (name == "train" or "eval_started" in out):
            stopped[name] = trackers[name].stop()
    train_peak, eval_peak = stopped.get("train"), stopped.get("eval")
    out.pop("eval_started", None)
    out["train_peak_bytes"] = train_peak.peak if train_peak else None
    out["eval_peak_bytes"] = eval_peak.peak if eval_peak else None
    peaks = [p.peak for p in (train_peak, eval_peak) if p is not None]
    out["peak_memory_bytes"] = max(peaks) if peaks else None
    reserved = [p.reserved for p in (train_peak, eval_peak) if p is not None and p.reserved is not None]
    out["reserved_bytes"] = max(reserved) if reserved else None
    out["baseline_memory_bytes"] = train_peak.baseline if train_peak else None
    out["memory_kind"] = train_peak.kind if train_peak else None
    out["memory_after_bytes"] = _allocated(dev)
    out["wall_time"] = time.perf_counter() - start
    return out


def _measure(
    task: Any,
    train_set: Any,
    val_set: Any,
    dev: Any,
    norm: str,
    precision: str,
    batch_size: int,
    seed: int,
    warmup_steps: int,
    time_cap: float,
    min_steps: int,
    max_steps: int,
    target_rel_iqr: float,
    count_flops: bool,
    trackers: dict[str, Any],
    stopped: dict[str, Any],
    out: dict[str, Any],
) -> None:
    import torch

    from batchtune.probing.flops import count_training_flops
    from batchtune.task.contract import build_model, build_optimizer, forward
    from batchtune.trial.device import synchronize
    from batchtune.trial.timing import summarize
    from batchtune.trial.train import (
        eval_batches,
        longest_batch,
        seed_everything,
        to_device,
        train_batches,
    )

    seed_everything(seed)
    model = build_model(task, norm).to(dev)
    model.train()
    optimizer = build_optimizer(task, model, _PROBE_LR)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" and dev.type == "cuda" else None
    batches = train_batches(train_set, batch_size, torch.Generator().manual_seed(seed), pin=dev.type == "cuda", task=task)

    def forward_backward(batch: tuple[Any, Any] | None = None) -> None:
        inputs, target = batch if batch is not None else next(batches)
        inputs = to_device(inputs, dev, non_blocking=True)
        target = to_device(target, dev, non_blocking=True)
        with _autocast(dev, precision):
            loss = task.loss_fn(forward(model, inputs, task.target_key), target)
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()

    def step(batch: tuple[Any, Any] | None = None) -> None:
        optimizer.zero_grad(set_to_none=True)
        forward_backward(batch)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

    # Warm-up: the first step creates the optimizer state and fills the allocator's caches; later ones
    # are skipped once warm-up has used the time cap, so the largest sizes do not pay for it twice.
    warm_start = time.perf_counter()
    # Variable-length data: the first step trains on the longest items, so a size fits only if the batch
    # that needs most memory does (random batches seldom hold them; a trial meets them sooner or later).
    longest = longest_batch(train_set, batch_size, task)
    out["longest_batch"] = longest is not None
    if longest is not None:
        step(longest)
        synchronize(dev)
        del longest
    for _ in range(warmup_steps):
        step()
        synchronize(dev)
        if time.perf_counter() - warm_start >= time_cap:
            break
    times: list[float] = []
    began = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        step()
        synchronize(dev)
        times.append(time.perf_counter() - t0)
        n = len(times)
        if n >= max_steps:
            break
        if n >= min_steps and summarize(times).rel_iqr < target_rel_iqr:
            break
        if n >= 3 and time.perf_counter() - began >= time_cap:
            break
    stats = summarize(times)
    out["step_time_median"] = stats.median
    out["step_time_iqr"] = stats.iqr
    out["timed_steps"] = stats.n
    out["throughput"] = batch_size / stats.median
    stopped["train"] = trackers["train"].stop()

    # One evaluation pass at the same batch size: its peak can exceed training's (no activations are
    # freed early in some models, and eval-only branches run). A validation set smaller than the batch
    # is topped up with a training batch so the pass really has ``batch_size`` samples.
    out["eval_started"] = True
    trackers["eval"].start()
    if len(val_set) >= batch_size:
        inputs, target = next(eval_batches(val_set, batch_size, task))
    else:
        inputs, target = next(batches)
    model.eval()
    with torch.no_grad(), _autocast(dev, precision):
        task.loss_fn(forward(model, to_device(inputs, dev), task.target_key), to_device(target, dev))
    synchronize(dev)
    stopped["eval"] = trackers["eval"].stop()
    model.train()
    del inputs, target

    if count_flops:
        optimizer.zero_grad(set_to_none=True)
        out["flops_per_sample"] = count_training_flops(forward_backward) / batch_size
        optimizer.zero_grad(set_to_none=True)


def matmul_peak(context: Any, *, device: str, precision: str, threads: int | None = None, seconds: float = 0.3) -> float:
    """Measured matmul FLOP/s in the worker (see :func:`batchtune.probing.flops.measure_matmul_peak`)."""
    import torch

    from batchtune.probing.flops import measure_matmul_peak

    if threads:
        torch.set_num_threads(threads)
    return measure_matmul_peak(torch.device(device), precision, seconds=seconds)


# ------------------------------------------------------------------------------ the orchestration

PointCallback = Callable[[str, str, ProbePoint], None]


def probe(
    config: ProbeConfig,
    *,
    on_point: PointCallback | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None,
    runner: Any = None,
) -> ProbeResult:
    """Probe every normalization and precision of ``config``; see the module docstring.

    ``runner`` is a :class:`~batchtune.trial.process.TrialRunner` of the same task to measure in (the caller
    closes it); by default the probe starts its own worker and closes it at the end.
    Raises :class:`~batchtune.errors.BatchtuneError` subclasses for bad input; out-of-memory and
    failures at a batch size are results (points that do not fit), not exceptions.
    """
    from batchtune.probing.flops import FLOPS_NOTE, device_peak
    from batchtune.task.contract import dry_run, load_task, search_norms
    from batchtune.trial.device import default_threads, device_memory, environment, resolve_device
    from batchtune.trial.process import TrialRunner

    cfg = config.validated()
    started = time.perf_counter()
    task = load_task(cfg.task_path)
    device = resolve_device(cfg.device)
    norms, norm_note = search_norms(task, cfg.norms)
    train_size = len(dry_run(task, norms)[0])
    ceiling = min(cfg.batch_size_max or train_size, train_size)
    if cfg.batch_size_min > ceiling:
        raise UsageError(
            f"--batch-size-min {cfg.batch_size_min} is larger than the training set ({train_size} samples); lower it"
        )
    granularity = cfg.granularity or (8 if device.type in ("cuda", "mps") else 1)
    # torch's default, a thread per core, stalls at every parallel region when other programs hold a core
    # (100-200x slower steps seen on a shared 2-core machine): the cores the load average leaves idle.
    threads = cfg.threads or default_threads(1)
    env = environment(device, threads=threads)
    limit: int | None = cfg.memory_budget
    limit_source = "--memory-budget"
    if limit is None:
        limit, limit_source = device_memory(device), "device memory"
    settings = ProbeSettings(
        norms=tuple(norms),
        precisions=cfg.precisions,
        device=str(device),
        memory_budget_bytes=cfg.memory_budget,
        headroom=cfg.headroom,
        knee=cfg.knee,
        granularity=granularity,
        batch_size_min=cfg.batch_size_min,
        batch_size_max=cfg.batch_size_max,
        limit_bytes=limit,
        limit_source=limit_source,
        peak_flops=cfg.peak_flops,
        warmup_steps=cfg.warmup_steps,
        time_cap_s=cfg.time_cap,
        target_rel_iqr=TARGET_REL_IQR,
    )
    if on_start:
        on_start({"device": str(device), "norms": norms, "precisions": cfg.precisions, "ceiling": ceiling,
                  "granularity": granularity, "limit_bytes": limit, "limit_source": limit_source})
    notes = [f"Normalization: {norm_note}."]
    if device.type == "cpu":
        notes.append(
            "On the CPU, peak memory is the peak resident set size of the measuring process (torch and the "
            "datasets included), reset before each size; a --memory-budget is enforced against it."
        )
    own_runner = runner is None
    if own_runner:
        runner = TrialRunner(str(task.path), env={"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    curves: list[ProbeCurve] = []
    longest: set[int] = set()  # sizes whose first step trained on the longest items (variable-length data)
    try:
        for precision in cfg.precisions:
            ceiling_flops = runner.call(
                "batchtune.probing.measure:matmul_peak", timeout=cfg.size_timeout, device=str(device), precision=precision,
                threads=threads, seconds=cfg.matmul_seconds,
            )
            matmul = float(ceiling_flops.value) if ceiling_flops.ok else None
            if not ceiling_flops.ok:
                notes.append(f"The {precision} matmul ceiling could not be measured: {ceiling_flops.reason}.")
            peak = device_peak(env.get("device_name", ""), precision, cfg.peak_flops)
            for norm in norms:
                curves.append(
                    _probe_curve(runner, cfg, settings, norm, precision, str(device), ceiling, granularity,
                                 threads, matmul, peak.flops, peak.source, on_point, longest)
                )
    finally:
        if own_runner:
            runner.close()
    if longest:
        notes.append(
            "The training items differ in size (variable-length data): each size's first step trained on the "
            "largest items, so a size fits only if the batch that needs the most memory does."
        )
    noisy = [(c.label, p.batch_size, p.step_time_iqr / p.step_time_median) for c in curves for p in c.points
             if p.fits and p.step_time_iqr is not None and p.step_time_median
             and p.step_time_iqr / p.step_time_median >= NOISY_REL_IQR]
    if noisy:
        worst = max(noisy, key=lambda n: n[2])
        notes.append(
            f"Noisy timing at {len(noisy)} size(s) (IQR/median >= {NOISY_REL_IQR:.0%}; worst {worst[2]:.0%} at "
            f"{worst[0]} batch {worst[1]}): their throughput, and a knee read from it, are uncertain; run when the "
            "machine is idle, pass --threads 1, or raise --time-cap."
        )
    over = sorted({c.label for c in curves for p in c.points if (p.matmul_utilisation or 0) > 1})
    if over:
        notes.append(
            f"{', '.join(over)}: the model beat the measured matmul ceiling (over 100%): the square matmuls "
            "of the ceiling run slower than the model's shapes here, or the device was busy while the "
            "ceiling was measured. Read that column as relative between sizes."
        )
    return ProbeResult(
        task=str(task.path),
        name=cfg.report_name,
        settings=settings,
        curves=tuple(curves),
        environment=env,
        wall_time_s=time.perf_counter() - started,
        flops_note=FLOPS_NOTE,
        created=time.time(),
        train_size=train_size,
        notes=tuple(notes),
    )


def _probe_curve(
    runner: Any,
    cfg: ProbeConfig,
    settings: ProbeSettings,
    norm: str,
    precision: str,
    device: str,
    ceiling: int,
    granularity: int,
    threads: int,
    matmul: float | None,
    peak_flops: float | None,
    peak_source: str,
    on_point: PointCallback | None,
    longest: set[int],
) -> ProbeCurve:
    search = SizeSearch(cfg.batch_size_min, ceiling, granularity)
    points: list[ProbePoint] = []
    flops: float | None = None
    while (size := search.next_size()) is not None:
        outcome = runner.call(
            "batchtune.probing.measure:measure_size",
            timeout=cfg.size_timeout,
            norm=norm,
            precision=precision,
            batch_size=size,
            device=device,
            seed=cfg.seed,
            warmup_steps=cfg.warmup_steps,
            time_cap=cfg.time_cap,
            min_steps=cfg.min_timed_steps,
            max_steps=cfg.max_timed_steps,
            threads=threads,
            count_flops=flops is None,
        )
        point = _to_point(outcome, size, settings.memory_budget_bytes, len(points) + 1)
        if outcome.ok and outcome.value.get("longest_batch"):
            longest.add(size)
        if outcome.ok and outcome.value.get("flops_per_sample"):
            flops = float(outcome.value["flops_per_sample"])
        search.record(size, point.fits)
        points.append(point)
        log.info("probe %s/%s batch %d: %s", norm, precision, size, point.status)
        if on_point is not None:
            on_point(norm, precision, _with_flops(point, flops, peak_flops, matmul))
    points = [_with_flops(p, flops, peak_flops, matmul) for p in points]
    points.sort(key=lambda p: p.batch_size)
    largest = largest_fit(points)
    return ProbeCurve(
        norm=norm,
        precision=precision,
        points=tuple(points),
        largest_fit=largest,
        recommended_max=recommended_max(points, settings.limit_bytes, cfg.headroom, largest),
        knee=knee(points, cfg.knee, largest),
        stop_reason=_stop_reason(search, points, ceiling, cfg),
        memory_model=fit_memory_model(points, settings.limit_bytes),
        flops_per_sample=flops,
        peak_flops=peak_flops,
        peak_flops_source=peak_source,
        matmul_peak_flops=matmul,
    )


def _to_point(outcome: Any, size: int, budget: int | None, order: int) -> ProbePoint:
    if not outcome.ok:
        # The worker died (a kernel OOM kill), hung, or the call itself failed: the size does not fit.
        status = "killed" if outcome.status == "failed" else outcome.status
        return ProbePoint(batch_size=size, fits=False, status=status, reason=outcome.reason, order=order)
    v = dict(outcome.value)
    status, reason = v["status"], v["reason"]
    peak = v.get("peak_memory_bytes")
    if status == "ok" and budget is not None and peak is not None and peak > budget:
        status = "over-budget"
        reason = f"peak memory {format_bytes(peak)} is above the --memory-budget {format_bytes(budget)}"
    return ProbePoint(
        batch_size=size,
        fits=status == "ok",
        status=status,
        reason=reason,
        throughput=v.get("throughput") if status in ("ok", "over-budget") else None,
        step_time_median=v.get("step_time_median"),
        step_time_iqr=v.get("step_time_iqr"),
        timed_steps=int(v.get("timed_steps") or 0),
        peak_memory_bytes=peak,
        train_peak_bytes=v.get("train_peak_bytes"),
        eval_peak_bytes=v.get("eval_peak_bytes"),
        reserved_bytes=v.get("reserved_bytes"),
        baseline_memory_bytes=v.get("baseline_memory_bytes"),
        memory_after_bytes=v.get("memory_after_bytes"),
        memory_kind=v.get("memory_kind"),
        order=order,
        wall_time=float(v.get("wall_time") or 0.0),
    )


def _with_flops(point: ProbePoint, flops: float | None, peak: float | None, matmul: float | None) -> ProbePoint:
    if flops is None or not point.throughput:
        return point
    achieved = flops * point.throughput
    return replace(
        point,
        achieved_flops=achieved,
        mfu=achieved / peak if peak else None,
        matmul_utilisation=achieved / matmul if matmul else None,
    )


def _stop_reason(search: SizeSearch, points: list[ProbePoint], ceiling: int, cfg: ProbeConfig) -> str:
    if search.fit is None:
        first = points[0]
        return f"the smallest size, {first.batch_size}, does not fit: {first.reason}"
    if search.fail is None:
        if cfg.batch_size_max is not None and ceiling == cfg.batch_size_max:
            return f"reached --batch-size-max {ceiling}"
        return f"reached the training set size ({ceiling} samples)"
    failing = next(p for p in points if p.batch_size == search.fail)
    return (
        f"{search.fail} does not fit ({failing.status}: {failing.reason}); bisected between {search.fit} and "
        f"{search.fail} to a gap of {search.fail - search.fit} (granularity {search.granularity})"
    )


# --------------------------------------------------------------------------- used by the search


def search_cache_key(cfg: Any, norms: tuple[str, ...], sizes: tuple[int, ...], device: str) -> dict[str, Any]:
    """What a stored probe must match to be reused by a search."""
    return {
        "norms": list(norms),
        "precisions": list(cfg.precisions),
        "memory_budget": cfg.memory_budget,
        "headroom": cfg.headroom,
        "device": device,
        "batch_size_min": min(sizes),
        "batch_size_max": max(sizes),
    }


def probe_for_search(
    study: Any,
    cfg: Any,
    *,
    sizes: tuple[int, ...],
    norms: tuple[str, ...],
    device: str,
    threads: int | None,
    out_dir: Path | None,
) -> tuple[int, ...]:
    """The batch sizes of ``sizes`` that fit the budget with headroom, from a probe stored in the study.

    The probe runs once per study and options (study user attribute ``"probe"``, which summary.json
    and report.md show); a rerun with the same norms, precisions, budget, headroom and device reuses it.
    A size is kept when it is at most the largest recommended maximum over the probe's curves.
    """
    key = search_cache_key(cfg, norms, sizes, device)
    stored = study.user_attrs.get("probe")
    if stored and stored.get("key") == key:
        result = ProbeResult.from_dict(stored)
        log.info("reusing the probe stored in study %s", study.study_name)
    else:
        pcfg = ProbeConfig(
            task_path=cfg.task_path,
            norms=norms,
            precisions=tuple(cfg.precisions),
            device=device,
            memory_budget=cfg.memory_budget,
            headroom=cfg.headroom,
            batch_size_min=min(sizes),
            batch_size_max=max(sizes),
            threads=threads,
            seed=cfg.seed,
            name=cfg.study_name,
        )
        result = probe(pcfg)
    allowed = [c.recommended_max for c in result.curves if c.recommended_max is not None]
    kept = tuple(s for s in sizes if allowed and s <= max(allowed))
    from batchtune.probing.report import write_probe_report

    # Written and stored before any refusal below, so the report shows why nothing fits.
    if out_dir is not None:
        # In its own folder: `batchtune probe` writes probe.md and probe.json in reports/<name>/, which is
        # also where a search of the same task writes its report.
        write_probe_report(result, out_dir / "probe", plots=cfg.plots)
    stored = dict(_compact(result.to_dict()), key=key, allowed_batch_sizes=list(kept))
    study.set_user_attr("probe", stored)
    if not kept:
        why = "; ".join(f"{c.label}: {c.stop_reason}" for c in result.curves if c.recommended_max is None)
        raise UsageError(
            f"none of the batch sizes {', '.join(map(str, sizes))} fits the memory limit with {cfg.headroom:.0%} "
            f"headroom ({why or f'the recommended maximum is {max(allowed)}'}); pass smaller sizes, a larger "
            "--memory-budget or a smaller --headroom, or --no-probe to run the trials anyway"
        )
    if len(kept) < len(sizes):
        log.warning(
            "the probe leaves out batch sizes %s: above the recommended maximum %d (peak under %.0f%% of the %s)",
            ",".join(str(s) for s in sizes if s not in kept), max(allowed), 100 * (1 - cfg.headroom),
            result.settings.limit_source,
        )
    return kept


def _compact(value: Any) -> Any:
    """probe.json made smaller for a study attribute (MySQL's TEXT holds 64 KiB): nulls dropped from
    dicts, floats rounded to 6 significant digits. :meth:`ProbeResult.from_dict` reads it back."""
    if isinstance(value, dict):
        return {k: _compact(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_compact(v) for v in value]
    if isinstance(value, float) and value and math.isfinite(value):
        return float(f"{value:.6g}")
    return value
