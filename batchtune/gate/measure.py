"""Measuring one fixed training configuration for the CI gate (``batchtune bench``).

The measurement runs in worker processes (``batchtune.trial.process.TrialRunner``), never in the caller,
following torch.utils.benchmark's discipline: burn-in steps before timing, the device synchronised
at the edge of every timing window, median and IQR over many samples, a warning when IQR/median
>= 10%, and the thread count pinned (and restored) around the work and recorded in the result.

Repeats are interleaved across ``processes`` children, as asv does (``processes=2`` and
interleaved rounds in asv's runner): process-level effects such as memory layout and slow drift of
the machine's load are spread over both processes instead of sitting in one block of samples.
Each repeat builds a fresh model, so the comparison's bootstrap sees the spread between repeats.

The decision clock is synchronised wall time, what the user pays for: a host stall (a sleep, a
lock, a device synchronisation, a data loader that starves the model) costs wall time and no CPU
time. The CPU time of every step is kept beside it as a diagnostic (the comparison says when the two
disagree: waiting appeared or vanished).

On a CPU, every timed step is preceded by one run of a fixed reference workload owned by batchtune
(:func:`_reference_workload`, a small convolutional network's forward and backward pass), timed by
both clocks. The speed of a shared machine drifts by +-20% within minutes (busy SMT siblings,
neighbouring VMs, other processes taking the core); the reference run a few milliseconds before a
step is slowed alike, so the comparison decides on step time / reference time, in which that drift
cancels. In an interleaved comparison the two versions' repeats alternate too (ABBA), so a load
change that outlasts a repeat (about a second) hits both sides, and the decision pairs them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from batchtune.errors import TaskError, UsageError
from batchtune.files import sha256_file
from batchtune.gate.baseline import (
    FINGERPRINT_FIELDS,
    INT_BOUNDS,
    MAX_EPOCHS,
    MAX_THREADS,
    NOTED_FIELDS,
    BenchRun,
)
from batchtune.task.choices import AS_BUILT, NORM_CHOICES, PRECISIONS
from batchtune.trial.timing import NOISY_REL_IQR
from batchtune.units import check_seed

log = logging.getLogger(__name__)

CLOCKS = ("auto", "cpu", "wall")
# The reference workload's name, stored in the run's config: a run calibrated with another workload
# is not comparable (exit 3). Change the name whenever _reference_workload changes.
CALIBRATION = "conv3-16-16x16-b16/v1"


@dataclass(frozen=True)
class BenchConfig:
    """What ``batchtune bench`` measures and how hard. Options mirror the CLI flags one to one."""

    task_path: str
    batch_size: int
    lr: float = 0.05
    norm: str | None = None  # None: the task's first NORMS entry, else "batch"
    precision: str = "fp32"
    device: str = "auto"
    threads: int = 1  # torch.utils.benchmark.Timer also defaults to one thread: fewer neighbours to fight
    clock: str = "auto"  # auto: synchronised wall time (what the user pays for); cpu: process CPU time
    repeat: int = 10
    steps: int = 40
    warmup: int = 10
    processes: int = 2
    epochs: float | None = None  # convergence check: train this long from a fixed seed, record the metric
    seed: int = 0
    timeout: float = 900.0  # seconds per call into a worker
    env: tuple[tuple[str, str], ...] = ()  # extra environment of the workers, e.g. (("PYTHONPATH", "../main"),)

    def validated(self) -> BenchConfig:
        """Check every value; raise :class:`UsageError` naming the flag and the fix."""
        if self.batch_size < 1:
            raise UsageError(f"--batch-size {self.batch_size} must be a positive integer")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise UsageError(f"--lr {self.lr:g} must be a positive learning rate such as 0.05")
        if self.norm is not None and not self.norm.strip():
            raise UsageError("--norm is empty; give batch, group, layer, none or a name your build_model accepts")
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision {self.precision!r} is unknown; choose from {', '.join(PRECISIONS)}")
        if self.threads < 1:
            raise UsageError(f"--threads {self.threads} must be at least 1")
        if self.clock not in CLOCKS:
            raise UsageError(f"--clock {self.clock!r} is unknown; choose from {', '.join(CLOCKS)}")
        if self.repeat < 2:
            raise UsageError(f"--repeat {self.repeat} must be at least 2 (the significance test compares repeats)")
        if self.steps < 3:
            raise UsageError(f"--steps {self.steps} must be at least 3 timed steps per repeat")
        if self.warmup < 0:
            raise UsageError(f"--warmup {self.warmup} must be zero or more steps")
        if self.processes < 1:
            raise UsageError(f"--processes {self.processes} must be at least 1")
        if self.epochs is not None and (not math.isfinite(self.epochs) or self.epochs <= 0):
            raise UsageError(f"--epochs {self.epochs:g} must be a positive number of epochs (fractions allowed)")
        # The bounds a saved baseline is read back with (a file beyond them is refused as malformed).
        for key in ("batch_size", "repeat", "steps", "warmup", "processes"):
            high = INT_BOUNDS[key][1]
            if getattr(self, key) > high:
                raise UsageError(f"--{key.replace('_', '-')} {getattr(self, key)} is above the most batchtune measures, {high}; lower it")
        if self.epochs is not None and self.epochs > MAX_EPOCHS:
            raise UsageError(f"--epochs {self.epochs:g} is above the most batchtune measures, {MAX_EPOCHS:g}; lower it")
        if self.threads > MAX_THREADS:
            raise UsageError(f"--threads {self.threads} is above the most batchtune measures, {MAX_THREADS}; lower it")
        if not math.isfinite(self.timeout) or self.timeout <= 0:
            raise UsageError(f"--timeout {self.timeout:g} must be a positive number of seconds")
        check_seed(self.seed)
        return replace(self)


@dataclass(frozen=True)
class _Plan:
    """What one worker call measures; crosses the process boundary as a dict."""

    batch_size: int
    lr: float
    norm: str
    precision: str
    device: str
    threads: int
    seed: int
    warmup: int
    steps: int
    calibrate: bool


# ------------------------------------------------------------------------------------ coordinator


def task_sha256(path: str | Path) -> str:
    """SHA-256 of the task file's bytes: part of the fingerprint."""
    return sha256_file(path)


def resolve_clock(clock: str, device_type: str, threads: int) -> str:
    """``auto`` is synchronised wall time on every device.

    Process CPU time cannot see time spent waiting (a sleep, a lock, a device synchronisation, a
    data loader that starves the model), and a slowdown of that kind is one the user pays for (issue
    15: a 1 ms stall was caught in 1 of 5 comparisons by CPU time). The noise wall time picks up from
    a shared machine is what the per-step calibration and the inconclusive verdict are for.
    ``cpu`` stays available on request; the CPU time is recorded either way.
    """
    del device_type, threads  # kept in the signature: callers pass what a clock choice may depend on
    return "wall" if clock == "auto" else clock


def prepare(config: BenchConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check the task and return the run's (config, fingerprint) without measuring anything.

    ``batchtune bench --compare`` uses it to refuse a mismatched comparison before spending time.
    """
    from batchtune.task.contract import load_task
    from batchtune.trial.device import environment, resolve_device

    cfg = config.validated()
    task = load_task(cfg.task_path)
    device = resolve_device(cfg.device)
    norm = cfg.norm or (task.file_norms[0] if task.file_norms else "batch")
    if not task.takes_norm:
        from batchtune.task.contract import build_model
        from batchtune.task.norm import count_batchnorm

        if count_batchnorm(build_model(task, AS_BUILT)) == 0:  # nothing to convert: the model runs as built
            if norm not in ("batch", AS_BUILT):
                raise UsageError(
                    f"--norm {norm!r}: {cfg.task_path} has no BatchNorm layer to convert and build_model takes no "
                    "`norm`, so the model runs as built; drop --norm"
                )
            norm = AS_BUILT
    if not task.takes_norm and norm not in NORM_CHOICES + (AS_BUILT,):
        raise UsageError(
            f"--norm {norm!r}: {cfg.task_path} has no `norm` argument, so BatchNorm is converted; "
            f"choose from {', '.join(NORM_CHOICES)}"
        )
    env = environment(device, threads=cfg.threads)
    run_config = {
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "norm": norm,
        "precision": cfg.precision,
        "device": device.type,
        "clock": resolve_clock(cfg.clock, device.type, cfg.threads),
        "epochs": cfg.epochs,
        "seed": cfg.seed,
        "repeat": cfg.repeat,
        "steps": cfg.steps,
        "warmup": cfg.warmup,
        "processes": cfg.processes,
        "device_index": str(device),
        "metric_mode": task.metric_mode,
        "calibration": CALIBRATION if device.type == "cpu" else None,
    }
    fingerprint = {key: env.get(key) for key in FINGERPRINT_FIELDS + NOTED_FIELDS if key in env}
    fingerprint["precision"] = cfg.precision
    fingerprint["task_sha256"] = task_sha256(cfg.task_path)
    return run_config, fingerprint


def run_bench(
    config: BenchConfig,
    *,
    on_repeat: Callable[[int, int, float], None] | None = None,
    more: Callable[[BenchRun], int] | None = None,
    time_limit: float | None = None,
) -> BenchRun:
    """Measure ``config``: FLOPs, ``repeat`` timed repeats over ``processes`` workers, and the metric.

    Args:
        config: what to measure.
        on_repeat: called after each repeat with (repeat number from 1, repeats planned, median
            seconds per step).
        more: asked after the planned repeats, and again after each further batch, how many more
            repeats the run needs (``bench --until-decided``: the decision's estimate); 0 stops.
        time_limit: seconds from the start after which no further repeat starts (with ``more``);
            a repeat is not started when the mean repeat so far would end past the limit.

    Raises:
        TaskError: the task cannot be loaded, or a repeat failed (OOM, divergence, an error in the
            task's code); the message carries the reason.
    """
    started = time.monotonic()
    session = _Session(config)
    try:
        session.start()
        first = time.monotonic()
        for r in range(session.cfg.repeat):
            median = session.repeat()
            if on_repeat is not None:
                on_repeat(r + 1, session.cfg.repeat, median)
        if more is not None:
            per_repeat = lambda: (time.monotonic() - first) / len(session.samples)  # noqa: E731
            while (extra := _allowed(more(session.result(final=False)), len(session.samples), per_repeat(),
                                     started, time_limit)) > 0:
                total = len(session.samples) + extra
                for _ in range(extra):
                    median = session.repeat()
                    if on_repeat is not None:
                        on_repeat(len(session.samples), total, median)
        session.convergence()
    finally:
        session.close()
    return session.result()


def _allowed(wanted: int, done: int, per_repeat: float, started: float, time_limit: float | None) -> int:
    """How many of ``wanted`` further repeats fit in the time limit and the repeat bound."""
    wanted = min(max(0, wanted), INT_BOUNDS["repeat"][1] - done)
    if wanted <= 0 or time_limit is None:
        return wanted
    left = time_limit - (time.monotonic() - started)
    fit = int(left // per_repeat) if per_repeat > 0 else wanted
    if fit < wanted:
        log.info("time limit: %d more repeats wanted, %d fit in %.0f s", wanted, max(fit, 0), max(left, 0.0))
    return max(0, min(wanted, fit))


def run_interleaved(
    current: BenchConfig,
    baseline: BenchConfig,
    *,
    on_repeat: Callable[[str, int, int, float], None] | None = None,
    more: Callable[[BenchRun, BenchRun], int] | None = None,
    time_limit: float | None = None,
) -> tuple[BenchRun, BenchRun]:
    """Measure two versions side by side, alternating their repeats (asv's ``continuous`` does the same).

    ``baseline`` is usually the same task file with another ``env`` (a PYTHONPATH that imports the
    main branch's code) or another task file. Both sides see the same interference from the rest of
    the machine, which a baseline file measured earlier cannot. ``more`` and ``time_limit`` work as
    in :func:`run_bench`, adding repeats to both sides (``more`` gets the baseline and current runs).
    Returns (baseline run, current run).
    """
    if current.repeat != baseline.repeat:
        raise UsageError("both sides of an interleaved comparison need the same --repeat")
    started = time.monotonic()
    sides = {"baseline": _Session(baseline), "current": _Session(current)}
    # One token in both runs: the comparison then pairs repeat r of one side with repeat r of the other.
    token = uuid.uuid4().hex[:12]
    for session in sides.values():
        session.run_config["interleave_id"] = token

    def pair(total: int) -> None:
        r = len(sides["current"].samples)
        # ABBA ordering: neither side always runs first after the other one's repeat.
        order = ("baseline", "current") if r % 2 == 0 else ("current", "baseline")
        for name in order:
            median = sides[name].repeat()
            if on_repeat is not None:
                on_repeat(name, r + 1, total, median)

    try:
        for session in sides.values():
            session.start()
        first = time.monotonic()
        for _ in range(current.repeat):
            pair(current.repeat)
        if more is not None:
            done = lambda: len(sides["current"].samples)  # noqa: E731
            while (extra := _allowed(
                more(sides["baseline"].result(final=False), sides["current"].result(final=False)),
                done(), (time.monotonic() - first) / done(), started, time_limit,
            )) > 0:
                total = done() + extra
                for _ in range(extra):
                    pair(total)
        for session in sides.values():
            session.convergence()
    finally:
        for session in sides.values():
            session.close()
    return sides["baseline"].result(), sides["current"].result()


def _by_clock(timings: dict[str, list[float]], clock: str) -> list[float]:
    """The decision clock's seconds per step: CPU time, or wall time less the run-queue delay."""
    if clock == "cpu":
        return timings["cpu"]
    return [round(max(w - d, 1e-9), 9) for w, d in zip(timings["wall"], timings["delay"])]


class _Session:
    """The worker processes and the samples of one measured configuration."""

    def __init__(self, config: BenchConfig) -> None:
        from batchtune.trial.process import TrialRunner

        self.cfg = config.validated()
        self.run_config, self.fingerprint = prepare(self.cfg)
        self.plan = _Plan(
            batch_size=self.cfg.batch_size,
            lr=self.cfg.lr,
            norm=self.run_config["norm"],
            precision=self.cfg.precision,
            device=self.run_config["device_index"],
            threads=self.cfg.threads,
            seed=self.cfg.seed,
            warmup=self.cfg.warmup,
            steps=self.cfg.steps,
            calibrate=self.run_config["calibration"] is not None,
        )
        env = {"OMP_NUM_THREADS": str(self.cfg.threads), "MKL_NUM_THREADS": str(self.cfg.threads)}
        env.update(dict(self.cfg.env))
        task_path = str(Path(self.cfg.task_path).resolve())
        count = min(self.cfg.processes, self.cfg.repeat)
        self.runners = [TrialRunner(task_path, env=env) for _ in range(count)]
        self.warnings: list[str] = []
        self.samples: list[list[float]] = []
        self.calibration: list[list[float]] | None = [] if self.plan.calibrate else None
        self.cpu_calibration: list[list[float]] | None = [] if self.plan.calibrate else None
        self.wall: list[list[float]] = []
        self.cpu: list[list[float]] = []
        self.memory: list[int] = []
        self.where: list[int] = []
        self.kind = ""
        self.flops: float | None = None
        self.metric: float | None = None

    def start(self) -> None:
        for runner in self.runners:
            runner.start()  # the children import torch side by side
        counted = self.runners[0].call_task("batchtune.gate.measure:count_flops", {"plan": asdict(self.plan)}, timeout=self.cfg.timeout)
        if "error" in counted:
            self.warnings.append(f"FLOPs not counted: {counted['error']}")
        else:
            self.flops = counted["flops_per_sample"]

    def repeat(self) -> float:
        """One more repeat in the next process; returns its median seconds per step."""
        r = len(self.samples)
        slot = r % len(self.runners)
        out = self.runners[slot].call_task("batchtune.gate.measure:measure_repeat", {"plan": asdict(self.plan)}, timeout=self.cfg.timeout)
        if "error" in out:
            raise TaskError(f"{self.cfg.task_path}: bench repeat {r + 1} failed: {out['error']}")
        clock = self.run_config["clock"]
        self.samples.append(_by_clock(out, clock))
        if self.calibration is not None and self.cpu_calibration is not None:
            self.calibration.append(_by_clock(out["calibration"], clock))
            self.cpu_calibration.append(out["calibration"]["cpu"])
        self.wall.append(out["wall"])
        self.cpu.append(out["cpu"])
        self.memory.append(int(out["peak_memory_bytes"]))
        self.where.append(slot)
        self.kind = out["memory_kind"]
        return sorted(self.samples[-1])[len(self.samples[-1]) // 2]

    def convergence(self) -> None:
        """With ``epochs``: train from the fixed seed with the search's training code; keep the metric."""
        from batchtune.trial.train import TrialSpec

        cfg = self.cfg
        if cfg.epochs is None:
            return
        spec = TrialSpec(
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            norm=self.plan.norm,
            device=self.plan.device,
            seed=cfg.seed,
            epochs=cfg.epochs,
            precision=cfg.precision,
            threads=cfg.threads,
        )
        result = self.runners[0].run(spec, timeout=cfg.timeout)
        if not result.ok or result.final_metric is None or not math.isfinite(result.final_metric):
            raise TaskError(
                f"{cfg.task_path}: the convergence run ({cfg.epochs:g} epochs) ended {result.status}: "
                f"{result.reason or f'the metric is {result.final_metric}; check metric() and --lr'}"
            )
        self.metric = float(result.final_metric)

    def close(self) -> None:
        for runner in self.runners:
            runner.close()

    def result(self, *, final: bool = True) -> BenchRun:
        """The run so far; ``final``: also check its spread and log the warnings (once, at the end)."""
        run = BenchRun(
            task=str(self.cfg.task_path),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            # The repeats measured, which --until-decided may have raised above the planned number.
            config={**self.run_config, "repeat": len(self.samples)},
            fingerprint=self.fingerprint,
            samples=list(self.samples),
            wall_samples=list(self.wall),
            calibration=None if self.calibration is None else list(self.calibration),
            cpu_samples=list(self.cpu),
            cpu_calibration=None if self.cpu_calibration is None else list(self.cpu_calibration),
            repeat_process=list(self.where),
            peak_memory_bytes=list(self.memory),
            memory_kind=self.kind,
            flops_per_sample=self.flops,
            metric=self.metric,
            metric_mode=self.run_config["metric_mode"],
            warnings=list(self.warnings),
        )
        if not final:
            return run
        # The figure the decision uses: step time / reference when calibrated.
        st = run.normalised_step_time or run.step_time
        if st.rel_iqr >= NOISY_REL_IQR:
            # torch.utils.benchmark's threshold for a noisy measurement.
            figure = "step time / reference" if run.calibration is not None else "step time"
            run.warnings.append(
                f"noisy measurement: the IQR of {figure} is {st.rel_iqr:.0%} of the median (>= {NOISY_REL_IQR:.0%}); "
                "close other programs, pin --threads, or raise --repeat"
            )
        for text in run.warnings:
            log.warning(text)
        return run


# ------------------------------------------------------------------------------ in the worker child


@contextlib.contextmanager
def _pinned_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set for the work and restored after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _autocast(device_type: str, precision: str) -> Any:
    import torch

    if precision == "fp32":
        return torch.autocast(device_type, enabled=False)
    return torch.autocast(device_type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _first_batch(task: Any, train_set: Any, plan: _Plan, device: Any) -> tuple[Any, Any]:
    import torch

    from batchtune.trial.train import to_device, train_batches

    n = len(train_set)
    if n < plan.batch_size:
        raise TaskError(f"--batch-size {plan.batch_size} is larger than the training set ({n} samples); lower it")
    batches = train_batches(train_set, plan.batch_size, torch.Generator().manual_seed(plan.seed), pin=False, task=task)
    inputs, target = next(batches)
    return to_device(inputs, device), to_device(target, device)


def count_flops(task: Any, train_set: Any, val_set: Any, *, plan: dict[str, Any]) -> dict[str, Any]:
    """FLOPs of one training step's forward and backward per sample (torch.utils.flop_counter).

    The counter adds up the analytic FLOPs of matmuls, convolutions and attention from their shapes,
    so the figure is the same on every device and a change means the model's work changed.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from batchtune.task.contract import build_model, forward
    from batchtune.trial.train import seed_everything

    p = _Plan(**plan)
    device = torch.device(p.device)
    with _pinned_threads(p.threads):
        seed_everything(p.seed)
        model = build_model(task, p.norm).to(device)
        model.train()
        inputs, target = _first_batch(task, train_set, p, device)
        with FlopCounterMode(display=False) as counter:
            with _autocast(device.type, p.precision):
                loss = task.loss_fn(forward(model, inputs, task.target_key), target)
            loss.backward()
        return {"flops_per_sample": counter.get_total_flops() / p.batch_size}


def measure_repeat(task: Any, train_set: Any, val_set: Any, *, plan: dict[str, Any]) -> dict[str, Any]:
    """One repeat: a fresh model, ``warmup`` untimed steps, then ``steps`` timed steps.

    Returns the per-step wall and CPU seconds of each timing window, the seconds of the reference
    run before each step (``calibration``, by both clocks; None when not calibrating) and the peak
    memory, or ``{"error": reason}`` for an OOM, a divergence or an error in the task's code.
    """
    import torch

    from batchtune.trial.device import MemoryTracker
    from batchtune.trial.oom import is_oom, oom_reason, release_memory

    p = _Plan(**plan)
    device = torch.device(p.device)
    with _pinned_threads(p.threads):
        tracker = MemoryTracker(device)
        tracker.start()
        failure: BaseException | None = None
        timings: dict[str, Any] = {}
        try:
            timings = _timed_steps(task, train_set, p, device)
        except Exception as exc:  # classified below, outside the except block
            failure = exc
        error: str | None = None
        if failure is not None:
            if is_oom(failure):
                error = f"out of memory at batch size {p.batch_size}: {oom_reason(failure)}"
            elif isinstance(failure, (TaskError, _Diverged)):
                error = str(failure)
            else:
                first = (str(failure).strip().splitlines() or [""])[0][:300]
                error = f"{type(failure).__name__}: {first}"
            failure = None
        # The traceback is gone, so the repeat's tensors can be freed before the peak is read.
        release_memory(device)
        peak = tracker.stop()
    if error is not None:
        return {"error": error}
    return {**timings, "peak_memory_bytes": peak.peak, "memory_kind": peak.kind}


class _Diverged(Exception):
    pass


def _reference_workload(device: Any) -> Callable[[], None]:
    """batchtune's fixed calibration workload: one forward and backward pass of a small CNN.

    Convolutions, a matmul and their gradients, as in a training step, so contention for the
    core's vector units, caches and memory bandwidth slows it as it slows the step; about 3 ms on
    one 2020s server core. Weights and inputs come from a private generator, and it is built before
    the user's model is seeded, so the model's initialisation is untouched. Runs in fp32, outside autocast.
    """
    import torch
    from torch import nn

    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 16 * 16, 10),
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in net.parameters():
            param.copy_(0.05 * torch.randn(param.shape, generator=g))
    net = net.to(device)
    inputs = torch.randn(16, 3, 16, 16, generator=g).to(device)
    target = torch.randint(0, 10, (16,), generator=g).to(device)

    def run() -> None:
        net.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=False):
            nn.functional.cross_entropy(net(inputs), target).backward()

    return run


def _timed_steps(task: Any, train_set: Any, p: _Plan, device: Any) -> dict[str, Any]:
    import torch

    from batchtune.task.contract import build_model, build_optimizer, forward
    from batchtune.trial.device import synchronize
    from batchtune.trial.train import longest_batch, seed_everything, to_device, train_batches

    n = len(train_set)
    if n < p.batch_size:
        raise TaskError(f"--batch-size {p.batch_size} is larger than the training set ({n} samples); lower it")
    reference = _reference_workload(device) if p.calibrate else None
    seed_everything(p.seed)
    model = build_model(task, p.norm).to(device)
    model.train()
    optimizer = build_optimizer(task, model, p.lr)
    scaler = torch.amp.GradScaler(device.type) if p.precision == "fp16" and device.type == "cuda" else None
    batches = train_batches(train_set, p.batch_size, torch.Generator().manual_seed(p.seed), pin=device.type == "cuda",
                            task=task)

    def step(batch: tuple[Any, Any] | None = None) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        inputs, target = batch if batch is not None else next(batches)
        inputs = to_device(inputs, device, non_blocking=True)
        target = to_device(target, device, non_blocking=True)
        with _autocast(device.type, p.precision):
            loss = task.loss_fn(forward(model, inputs, task.target_key), target)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return loss.detach()

    if reference is not None:
        for _ in range(5):  # the reference's own burn-in, kept apart from the model's warm-up steps
            reference()
    longest = longest_batch(train_set, p.batch_size, task)
    if longest is not None:  # variable-length data: the peak memory counts the batch of the longest items
        step(longest)
        del longest
    for _ in range(p.warmup):  # burn-in: lazy initialisation, allocator growth, caches (nanoGPT's bench.py)
        step()
    # A CPU is timed step by step; an accelerator in windows of several steps, because every
    # synchronisation stalls its queue (torch.utils.benchmark times blocks of `number` runs).
    window = 1 if device.type == "cpu" else max(1, min(10, p.steps // 10))
    wall: list[float] = []
    cpu: list[float] = []
    delay: list[float] = []
    ref_wall: list[float] = []
    ref_cpu: list[float] = []
    ref_delay: list[float] = []
    waited = _RunDelay()
    try:
        synchronize(device)
        for _ in range(math.ceil(p.steps / window)):
            if reference is not None:
                # Calibration right before the step: the same machine state, a few milliseconds apart.
                t0, c0, d0 = time.perf_counter(), time.process_time(), waited.seconds()
                reference()
                synchronize(device)
                t1, c1, d1 = time.perf_counter(), time.process_time(), waited.seconds()
                ref_wall.append(round(t1 - t0, 9))
                ref_cpu.append(round(max(c1 - c0, 1e-9), 9))
                ref_delay.append(round(min(max(d1 - d0, 0.0), t1 - t0), 9))
            t0, c0, d0 = time.perf_counter(), time.process_time(), waited.seconds()
            for _ in range(window):
                loss = step()
            synchronize(device)
            t1, c1, d1 = time.perf_counter(), time.process_time(), waited.seconds()
            wall.append(round((t1 - t0) / window, 9))
            cpu.append(round(max(c1 - c0, 1e-9) / window, 9))
            delay.append(round(min(max(d1 - d0, 0.0), t1 - t0) / window, 9))
            value = float(loss)
            if not math.isfinite(value):
                raise _Diverged(f"training loss became {value} during the timed steps; lower --lr")
    finally:
        waited.close()
    calibration = {"wall": ref_wall, "cpu": ref_cpu, "delay": ref_delay} if reference is not None else None
    return {"wall": wall, "cpu": cpu, "delay": delay, "calibration": calibration}


class _RunDelay:
    """Seconds this thread has spent runnable but waiting for a core (Linux schedstat; 0.0 elsewhere).

    /proc/thread-self/schedstat holds on-CPU time, run-queue wait and timeslices in nanoseconds
    (Documentation/scheduler/sched-stats.rst). The run-queue wait is the time other programs held the
    core: a shared machine's neighbours, not the step. A sleep, a lock, I/O or a device
    synchronisation blocks the thread instead, which is not counted there, so wall time less this
    delay keeps every wait the step itself causes. Read with pread on a descriptor opened once
    (about a microsecond); the descriptor stays bound to the thread that opened it.
    """

    def __init__(self) -> None:
        import os

        self._os = os
        try:
            self._fd: int | None = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
            self.seconds()
        except (OSError, ValueError, IndexError):
            self.close()

    def seconds(self) -> float:
        if self._fd is None:
            return 0.0
        return int(self._os.pread(self._fd, 128, 0).split()[1]) * 1e-9

    def close(self) -> None:
        if getattr(self, "_fd", None) is not None:
            self._os.close(self._fd)  # type: ignore[arg-type]
        self._fd = None
