"""batchtune: batch size, learning rate and normalization tuning for PyTorch, measured on your hardware.

The public API is imported lazily so that ``batchtune --help`` does not pay for torch and optuna.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "BaselineError",
    "BatchtuneError",
    "BenchConfig",
    "BenchRun",
    "Decision",
    "Thresholds",
    "OutputError",
    "ProbeConfig",
    "ProbeResult",
    "SearchConfig",
    "SearchResult",
    "StorageError",
    "TaskError",
    "Tolerance",
    "UsageError",
    "NoiseConfig",
    "diagnose",
    "decide",
    "load_run",
    "load_task",
    "probe",
    "report",
    "run_noise",
    "run_bench",
    "save_run",
    "search",
    "__version__",
]

_LAZY = {
    "BaselineError": "batchtune.errors",
    "BenchConfig": "batchtune.gate.measure",
    "run_bench": "batchtune.gate.measure",
    "BenchRun": "batchtune.gate.baseline",
    "load_run": "batchtune.gate.baseline",
    "save_run": "batchtune.gate.baseline",
    "Decision": "batchtune.gate.decision",
    "Thresholds": "batchtune.gate.decision",
    "decide": "batchtune.gate.decision",
    "BatchtuneError": "batchtune.errors",
    "OutputError": "batchtune.errors",
    "StorageError": "batchtune.errors",
    "TaskError": "batchtune.errors",
    "UsageError": "batchtune.errors",
    "SearchConfig": "batchtune.study.config",
    "Tolerance": "batchtune.study.config",
    "SearchResult": "batchtune.study.run",
    "search": "batchtune.api",
    "probe": "batchtune.api",
    "ProbeConfig": "batchtune.probing.measure",
    "ProbeResult": "batchtune.probing.result",
    "report": "batchtune.api",
    "load_task": "batchtune.task.contract",
    "NoiseConfig": "batchtune.noise.measure",
    "run_noise": "batchtune.noise.measure",
    "diagnose": "batchtune.doctor.checks",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'batchtune' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
