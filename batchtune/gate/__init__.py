"""The CI regression gate (``batchtune bench``): measure, store a baseline, decide.

- ``measure``: run_bench and run_interleaved, the calibrated step-time measurement.
- ``baseline``: BenchRun and its JSON file.
- ``decision``: the verdict per figure, its exit code and its rendering.
"""

from __future__ import annotations

from batchtune._lazy import attach

__all__ = ["BenchConfig", "BenchRun", "Decision", "Thresholds", "decide", "load_run", "run_bench", "save_run"]

__getattr__, __dir__ = attach(__name__, {
    "BenchConfig": "batchtune.gate.measure",
    "BenchRun": "batchtune.gate.baseline",
    "Decision": "batchtune.gate.decision",
    "Thresholds": "batchtune.gate.decision",
    "decide": "batchtune.gate.decision",
    "load_run": "batchtune.gate.baseline",
    "run_bench": "batchtune.gate.measure",
    "save_run": "batchtune.gate.baseline",
})
