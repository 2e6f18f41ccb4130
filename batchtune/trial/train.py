"""Training and evaluating one configuration: a trial, measured."""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from batchtune.errors import TaskError
from batchtune.task.contract import (
    Task,
    build_model,
    build_optimizer,
    call_user,
    collate,
    collate_error,
    forward,
    split_batch,
)
from batchtune.trial.device import MemoryTracker, synchronize
from batchtune.trial.oom import is_oom, oom_reason, release_memory
from batchtune.trial.timing import summarize

# Reporter: called after each evaluation with (step, value); returns True when the trial should stop.
Reporter = Callable[[int, float], bool]
# Progress: called with (step, total steps) about once a second, for a live display; returns nothing.
Progress = Callable[[int, int], None]
PROGRESS_EVERY_S = 1.0


@dataclass(frozen=True)
class TrialSpec:
    """One configuration to train and measure."""

    batch_size: int
    lr: float
    norm: str
    device: str = "cpu"
    seed: int = 0
    epochs: float | None = 3.0
    budget_samples: int | None = None
    eval_every: float | None = None  # in epochs; None evaluates at the end of every epoch
    precision: str = "fp32"
    warmup_steps: int = 5  # burn-in steps left out of the timing (nanoGPT's bench.py does the same)
    threads: int | None = None
    lr_warmup_epochs: float = 0.0  # linear LR warm-up (Goyal et al. 2017)
    accumulate: int = 1  # micro-batches per optimizer step (effective batch = batch_size * accumulate)
    max_steps: int | None = None  # hard cap on optimizer steps (the probe and bench use it)
    evaluate: bool = True

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size * self.accumulate


@dataclass
class TrialResult:
    """Everything measured about one trial; stored as the Optuna trial's user attributes."""

    status: str  # ok | oom | diverged | failed | timeout | pruned
    reason: str | None = None
    throughput: float | None = None  # median samples/s over timing windows
    throughput_q25: float | None = None
    throughput_q75: float | None = None
    throughput_mean: float | None = None  # timed samples / timed seconds
    step_time_median: float | None = None
    step_time_iqr: float | None = None
    step_times: list[float] = field(default_factory=list)
    timing_windows: int = 0
    peak_memory_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    baseline_memory_bytes: int | None = None
    memory_kind: str | None = None
    final_metric: float | None = None
    best_metric: float | None = None
    final_val_loss: float | None = None
    curve: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    samples: int = 0
    threads: int | None = None
    wall_time: float = 0.0
    setup_time: float = 0.0
    train_time: float = 0.0
    eval_time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class _Diverged(Exception):
    pass


class _Stop(Exception):
    pass


def to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move a tensor, or tensors nested in tuples, lists and dicts, to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device, non_blocking) for v in obj)
    return obj


def batch_len(target: Any, fallback: int) -> int:
    if isinstance(target, torch.Tensor) and target.dim() > 0:
        return int(target.shape[0])
    return fallback


def _tensor_source(dataset: Dataset, task: Task | None = None) -> tuple[torch.Tensor, ...] | None:
    """The tensors of a TensorDataset, which can be batched by indexing instead of item by item."""
    if task is not None and task.collate_fn is not None:
        return None  # the task's collate_fn makes its batches
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return tuple(dataset.tensors)
    return None


def _loader(dataset: Dataset, task: Task | None, batch_size: int, **kwargs: Any) -> DataLoader:
    """A DataLoader with the task's collate_fn and DATALOADER settings; batchtune's own settings win."""
    options: dict[str, Any] = dict(task.loader_options) if task is not None else {}
    if "pin" in kwargs:
        options.setdefault("pin_memory", kwargs.pop("pin"))
    if not options.get("num_workers"):
        options.pop("persistent_workers", None)
        options.pop("prefetch_factor", None)
    elif "multiprocessing_context" not in options and sys.platform == "linux":
        # batchtune's worker was spawned, so its default start method is spawn, which would have to
        # pickle the task file's classes by a module name no other process can import. Fork, the
        # Linux default a script of the user's own would get, needs no pickling.
        options["multiprocessing_context"] = "fork"
    collate_fn = task.collate_fn if task is not None else None
    return DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn, **options, **kwargs)


def _batches(loader: DataLoader, task: Task | None, function: str) -> Iterator[tuple[Any, Any]]:
    """One pass over ``loader``, each batch split into (inputs, target); torch.stack's failure on
    inputs of different lengths becomes the one line that names the fix (a collate_fn)."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except RuntimeError as exc:
            if task is None:
                raise
            raise collate_error(task, function, exc) from None
        if task is None:
            yield batch[0], batch[1]
        else:
            yield split_batch(task, batch)


def train_batches(
    dataset: Dataset, batch_size: int, generator: torch.Generator, pin: bool, task: Task | None = None
) -> Iterator[tuple[Any, Any]]:
    """Shuffled batches with drop_last, epoch after epoch, forever.

    A TensorDataset is batched by indexing its tensors with a random permutation (the same batches
    a shuffled DataLoader would give, without collating item by item); anything else goes through a
    DataLoader, so random augmentations in ``__getitem__`` keep working. ``task`` brings its
    ``collate_fn``, ``TARGET_KEY`` and ``DATALOADER`` settings.
    """
    tensors = _tensor_source(dataset, task)
    n = len(dataset)  # type: ignore[arg-type]
    if tensors is not None:
        while True:
            perm = torch.randperm(n, generator=generator)
            for start in range(0, n - batch_size + 1, batch_size):
                idx = perm[start : start + batch_size]
                yield tensors[0][idx], tensors[1][idx]
    loader = _loader(dataset, task, batch_size, shuffle=True, drop_last=True, generator=generator, pin=pin)
    while True:
        yield from _batches(loader, task, "train_dataset()")


def eval_batches(dataset: Dataset, batch_size: int, task: Task | None = None) -> Iterator[tuple[Any, Any]]:
    tensors = _tensor_source(dataset, task)
    if tensors is not None:
        n = len(dataset)  # type: ignore[arg-type]
        for start in range(0, n, batch_size):
            yield tensors[0][start : start + batch_size], tensors[1][start : start + batch_size]
        return
    yield from _batches(_loader(dataset, task, batch_size, shuffle=False), task, "val_dataset()")


ITEM_SCAN_S = 2.0  # seconds spent measuring item sizes for the longest batch, per dataset
_ITEM_SIZES: dict[str, Any] = {}  # the last dataset measured and its item sizes


def item_size(value: Any) -> int:
    """How many elements an item (or part of one) holds: a tensor's or array's numel, a sequence's length
    (of numbers) or its parts' sum, a dict's values' sum; a string its length, a number 1."""
    if isinstance(value, torch.Tensor):
        return int(value.numel())
    if isinstance(value, np.ndarray):
        return int(value.size)
    if isinstance(value, Mapping):
        return sum(item_size(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, (int, float, bool)) for v in value):
            return len(value)
        return sum(item_size(v) for v in value)
    if isinstance(value, (str, bytes)):
        return len(value)
    return 1


def longest_batch(dataset: Dataset, batch_size: int, task: Task | None) -> tuple[Any, Any] | None:
    """The batch of the ``batch_size`` largest items (:func:`item_size`), collated as training collates them,
    or None when the items read are all of one size (nothing bigger than a random batch to fit).

    Variable-length data padded per batch needs most memory on the batch holding the longest items;
    a random batch seldom holds them, so a size that fits on random batches can run out of memory
    mid-trial. Only a ``collate_fn`` batches items of different sizes, so without one nothing is read;
    with one, items are read in index order for at most :data:`ITEM_SCAN_S` seconds (once per dataset
    and process) and the largest of those read make the batch.
    """
    if task is None or task.collate_fn is None:
        return None  # default_collate stacks items of one shape only (the dry run refuses others): no scan needed
    cached = _ITEM_SIZES.get("dataset")
    sizes: list[int] = _ITEM_SIZES["sizes"] if cached is dataset else []
    if cached is not dataset:
        start = time.perf_counter()
        for i in range(len(dataset)):  # type: ignore[arg-type]
            sizes.append(item_size(dataset[i]))
            if time.perf_counter() - start > ITEM_SCAN_S:
                break
        _ITEM_SIZES.update(dataset=dataset, sizes=sizes)
    if len(set(sizes)) < 2 or len(sizes) < batch_size:
        return None
    largest = sorted(range(len(sizes)), key=lambda i: -sizes[i])[:batch_size]
    items = [dataset[i] for i in largest]
    if task is None:
        from torch.utils.data import default_collate

        batch = default_collate(items)
        return batch[0], batch[1]
    return split_batch(task, collate(task, items, "train_dataset()"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(device: torch.device, precision: str) -> Any:
    if precision == "fp32":
        return contextlib.nullcontext()  # cheaper per step than a disabled autocast
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def evaluate(
    task: Task, model: torch.nn.Module, dataset: Dataset, spec: TrialSpec, device: torch.device
) -> tuple[float, float]:
    """Sample-weighted mean of the metric and of the loss over ``dataset``, at the trial's batch size and precision."""
    return evaluate_at(task, model, dataset, device, spec.batch_size, spec.precision)


def evaluate_at(
    task: Task, model: torch.nn.Module, dataset: Dataset, device: torch.device, batch_size: int, precision: str = "fp32"
) -> tuple[float, float]:
    """Sample-weighted mean of the metric and of the loss over ``dataset``; leaves the model in train mode."""
    model.eval()
    metric_sum = 0.0
    loss_sum = 0.0
    count = 0
    with torch.no_grad(), autocast(device, precision):
        for inputs, target in eval_batches(dataset, batch_size, task):
            inputs = to_device(inputs, device)
            target = to_device(target, device)
            output = forward(model, inputs, task.target_key)
            n = batch_len(target, batch_size)
            metric_sum += float(call_user(task, "metric(output, target)", task.metric, output, target)) * n
            loss_sum += float(task.loss_fn(output, target)) * n
            count += n
    model.train()
    return metric_sum / count, loss_sum / count


def run_trial(
    task: Task,
    spec: TrialSpec,
    train_set: Dataset,
    val_set: Dataset,
    report: Reporter | None = None,
    progress: Progress | None = None,
) -> TrialResult:
    """Train a fresh model for ``spec`` and measure it. Never raises for OOM, divergence or user errors."""
    start = time.perf_counter()
    device = torch.device(spec.device)
    result = TrialResult(status="ok")
    if spec.threads:
        torch.set_num_threads(spec.threads)
    result.threads = torch.get_num_threads()
    tracker = MemoryTracker(device)
    failure: BaseException | None = None
    tracker.start()
    try:
        _train(task, spec, train_set, val_set, device, result, report, start, progress)
    except _Diverged as exc:
        result.status, result.reason = "diverged", str(exc)
    except _Stop:
        result.status, result.reason = "pruned", "stopped early by the pruner"
    except BaseException as exc:  # classified below, outside the except block
        if isinstance(exc, KeyboardInterrupt):
            raise
        failure = exc
    if failure is not None:
        if is_oom(failure):
            result.status, result.reason = "oom", oom_reason(failure)
        elif isinstance(failure, TaskError):
            result.status, result.reason = "failed", str(failure)
        else:
            first = (str(failure).strip().splitlines() or [""])[0][:300]
            result.status, result.reason = "failed", f"{type(failure).__name__}: {first}"
        failure = None
    # The exception and its traceback are gone, so the trial's tensors can be freed now.
    release_memory(device)
    peak = tracker.stop()
    result.peak_memory_bytes = peak.peak
    result.peak_reserved_bytes = peak.reserved
    result.baseline_memory_bytes = peak.baseline
    result.memory_kind = peak.kind
    result.wall_time = time.perf_counter() - start
    return result


def _train(
    task: Task,
    spec: TrialSpec,
    train_set: Dataset,
    val_set: Dataset,
    device: torch.device,
    result: TrialResult,
    report: Reporter | None,
    start: float,
    progress: Progress | None = None,
) -> None:
    seed_everything(spec.seed)
    model = build_model(task, spec.norm).to(device)
    model.train()
    optimizer = build_optimizer(task, model, spec.lr)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    scaler = torch.amp.GradScaler(device.type) if spec.precision == "fp16" and device.type == "cuda" else None
    generator = torch.Generator().manual_seed(spec.seed)
    n_train = len(train_set)  # type: ignore[arg-type]
    micro = spec.batch_size
    steps_per_epoch = n_train // spec.effective_batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"batch size {spec.effective_batch_size} is larger than the training set ({n_train} samples)"
        )
    if spec.budget_samples is not None:
        total_steps = max(1, math.ceil(spec.budget_samples / spec.effective_batch_size))
    else:
        total_steps = max(1, round((spec.epochs or 1.0) * steps_per_epoch))
    if spec.max_steps is not None:
        total_steps = min(total_steps, spec.max_steps)
    eval_interval = max(1, round((spec.eval_every or 1.0) * steps_per_epoch))
    warmup_lr_steps = round(spec.lr_warmup_epochs * steps_per_epoch)
    timing_warmup = min(spec.warmup_steps, total_steps // 4)
    # On an asynchronous device, synchronise only every few steps so timing does not stall the queue.
    window = 1 if device.type == "cpu" else max(1, min(10, (total_steps - timing_warmup) // 10))
    batches = train_batches(train_set, micro, generator, pin=device.type == "cuda", task=task)
    result.setup_time = time.perf_counter() - start

    window_times: list[float] = []
    window_samples: list[int] = []
    since_eval_loss = torch.zeros((), device=device)
    since_eval_steps = 0
    best: float | None = None
    better = max if task.metric_mode == "max" else min
    train_time = 0.0
    eval_time = 0.0
    synchronize(device)
    window_start = time.perf_counter()
    in_window = 0
    told = window_start
    for step in range(1, total_steps + 1):
        if progress is not None and window_start - told >= PROGRESS_EVERY_S:
            # window_start is read at timing boundaries anyway: no extra clock read or sync per step.
            progress(step - 1, total_steps)
            told = window_start
        if warmup_lr_steps and step <= warmup_lr_steps:
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * step / warmup_lr_steps
        optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=device)
        for _ in range(spec.accumulate):
            inputs, target = next(batches)
            inputs = to_device(inputs, device, non_blocking=True)
            target = to_device(target, device, non_blocking=True)
            with autocast(device, spec.precision):
                output = forward(model, inputs, task.target_key)
                loss = task.loss_fn(output, target)
            if spec.accumulate > 1:
                loss = loss / spec.accumulate
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
            step_loss += loss.detach().float()
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        since_eval_loss += step_loss
        since_eval_steps += 1
        in_window += 1
        if in_window == window:
            synchronize(device)
            now = time.perf_counter()
            if not math.isfinite(float(step_loss)):
                raise _Diverged(f"training loss became {float(step_loss)} at step {step} (epoch {step / steps_per_epoch:.2f})")
            if step > timing_warmup:
                window_times.append(now - window_start)
                window_samples.append(window * spec.effective_batch_size)
                train_time += now - window_start
            window_start = now
            in_window = 0
        if spec.evaluate and (step % eval_interval == 0 or step == total_steps):
            synchronize(device)
            t_eval = time.perf_counter()
            train_loss = float(since_eval_loss) / max(1, since_eval_steps)
            if not math.isfinite(train_loss):
                raise _Diverged(f"training loss became {train_loss} before step {step} (epoch {step / steps_per_epoch:.2f})")
            value, val_loss = evaluate(task, model, val_set, spec, device)
            eval_time += time.perf_counter() - t_eval
            result.curve.append(
                {
                    "step": step,
                    "epoch": step / steps_per_epoch,
                    "samples": step * spec.effective_batch_size,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "val_metric": value,
                    "time": time.perf_counter() - start,
                }
            )
            result.final_metric, result.final_val_loss = value, val_loss
            if math.isfinite(value):
                best = value if best is None else better(best, value)
            result.best_metric = best
            since_eval_loss.zero_()
            since_eval_steps = 0
            if not math.isfinite(val_loss) and not math.isfinite(value):
                raise _Diverged(f"validation loss became {val_loss} at step {step}")
            if report is not None and report(step, value):
                result.steps = step
                result.samples = step * spec.effective_batch_size
                _finish_timing(result, window_times, window_samples, window, train_time, eval_time)
                raise _Stop()
            # Evaluation is not training: the next timing window starts after it.
            synchronize(device)
            window_start = time.perf_counter()
            in_window = 0
        result.steps = step
    result.samples = result.steps * spec.effective_batch_size
    _finish_timing(result, window_times, window_samples, window, train_time, eval_time)


def _finish_timing(
    result: TrialResult,
    times: list[float],
    samples: list[int],
    window: int,
    train_time: float,
    eval_time: float,
) -> None:
    result.train_time = train_time
    result.eval_time = eval_time
    result.timing_windows = len(times)
    if not times:
        return
    per_window = [s / t for s, t in zip(samples, times)]
    stats = summarize(per_window)
    result.throughput = stats.median
    result.throughput_q25 = stats.q25
    result.throughput_q75 = stats.q75
    result.throughput_mean = sum(samples) / sum(times)
    step_stats = summarize([t / window for t in times])
    result.step_time_median = step_stats.median
    result.step_time_iqr = step_stats.iqr
    result.step_times = [round(t / window, 7) for t in times]


def default_threads() -> int:
    return torch.get_num_threads() or os.cpu_count() or 1
