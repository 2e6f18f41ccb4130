"""Device facts: choosing the device, synchronising it, measuring peak memory, the environment."""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
from dataclasses import dataclass
from typing import Any

import torch

from batchtune.errors import UsageError

log = logging.getLogger(__name__)


def resolve_device(spec: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device must exist here."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"--device {spec!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: CUDA is not available on this machine; use --device auto or cpu")
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s); use cuda:0"
                f"..cuda:{torch.cuda.device_count() - 1}"
            )
        return torch.device("cuda", index)
    if device.type == "mps" and not _mps_available():
        raise UsageError(f"--device {spec}: MPS is not available on this machine; use --device auto or cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {spec!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return device


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return cpu_model()


def device_memory(device: torch.device) -> int | None:
    """Total memory of ``device`` in bytes (physical RAM for CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class PeakMemory:
    """Peak memory of one measured stretch of work, in bytes."""

    peak: int  # CUDA: max_memory_allocated; CPU: peak resident set size of the process
    reserved: int | None  # CUDA: max_memory_reserved; None elsewhere
    baseline: int  # allocated (CUDA) or resident (CPU) memory when tracking started
    kind: str  # "cuda-allocated", "mps-allocated" or "cpu-rss"


class MemoryTracker:
    """Measures the peak memory of a stretch of work so that one trial's peak never carries into the next.

    CUDA: the caching allocator's peak statistics are reset at :meth:`start`. CPU (Linux): the
    kernel's peak-RSS counter (VmHWM) is reset by writing 5 to /proc/self/clear_refs after
    returning freed heap to the system with malloc_trim; elsewhere a sampling thread is used.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._baseline = 0
        self._sampler: _RssSampler | None = None

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
        elif self.device.type == "mps":
            self._baseline = torch.mps.current_allocated_memory()
        else:
            _trim_heap()
            if _reset_hwm():
                self._baseline = _read_status("VmRSS") or 0
            else:
                self._sampler = _RssSampler()
                self._baseline = self._sampler.current()
                self._sampler.begin()

    def stop(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return PeakMemory(
                peak=int(torch.cuda.max_memory_allocated(self.device)),
                reserved=int(torch.cuda.max_memory_reserved(self.device)),
                baseline=int(self._baseline),
                kind="cuda-allocated",
            )
        if self.device.type == "mps":
            # MPS has no peak counter: the driver's allocation after the work is the best available figure.
            return PeakMemory(int(torch.mps.driver_allocated_memory()), None, int(self._baseline), "mps-allocated")
        if self._sampler is not None:
            peak = self._sampler.end()
            self._sampler = None
        else:
            peak = _read_status("VmHWM") or 0
        return PeakMemory(int(peak), None, int(self._baseline), "cpu-rss")


def _trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _read_status("VmHWM") is not None
    except OSError:
        return False


def _read_status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class _RssSampler:
    """Fallback peak-RSS measurement for systems without /proc/self/clear_refs (macOS)."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self._peak = 0
        self._stop = False
        self._thread: Any = None

    def current(self) -> int:
        return int(self._proc.memory_info().rss)

    def begin(self) -> None:
        import threading
        import time

        self._peak = self.current()

        def loop() -> None:
            while not self._stop:
                self._peak = max(self._peak, self.current())
                time.sleep(0.005)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def end(self) -> int:
        self._stop = True
        if self._thread is not None:
            self._thread.join()
        return max(self._peak, self.current())


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15 minute load averages (runnable processes), or None where the OS has none."""
    try:
        one, five, fifteen = os.getloadavg()
    except (AttributeError, OSError):
        return None
    return one, five, fifteen


def default_threads(workers: int) -> int:
    """CPU threads per trial: the cores that other work leaves idle, split between the workers.

    torch's default, one thread per core, collapses when other processes keep the cores busy: its
    threads wait at every parallel region for the slowest one, which the scheduler has parked (on a
    shared 2-core machine one trial ran 23x slower with 2 threads than with 1). So the cores the
    1-minute load average leaves idle count, at least one per worker.
    """
    cores = available_cores()
    load = load_average()
    idle = cores if load is None else max(1, min(cores, round(cores - load[0])))
    return max(1, idle // max(1, workers))


def busy_machine(threads: int | None = None) -> str | None:
    """A warning when the load average is above the cores: trials then compete for them."""
    load = load_average()
    cores = available_cores()
    if load is None or load[0] <= cores:
        return None
    given = f"trials get {threads} CPU thread(s) each; " if threads else ""
    return (f"this machine is busier than its cores (load average {load[0]:.2f} on {cores} cores): {given}"
            "throughput and timings will be slow and noisy; run when it is idle, or pass --threads 1")


def environment(device: torch.device, threads: int | None = None) -> dict[str, Any]:
    """The facts a bug report or a baseline needs."""
    import optuna

    from batchtune import __version__

    env: dict[str, Any] = {
        "device": str(device),
        "device_name": device_name(device),
        "device_memory_bytes": device_memory(device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cores_available": available_cores(),
        "load_average": list(load_average() or ()) or None,
        "threads": threads if threads is not None else torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "optuna": optuna.__version__,
        "batchtune": __version__,
        "executable": sys.executable,
    }
    return env
