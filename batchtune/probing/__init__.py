"""The probe: which batch sizes fit, how fast each trains, and where speed stops growing.

- ``measure``: probe() and the per-size measurement run in the worker.
- ``result``: ProbeResult and what follows from the points (largest fit, knee, memory model).
- ``report``: the terminal table, probe.md, probe.json and plots.
- ``flops``: FLOPs per step, device peaks, a measured matmul ceiling.
"""

from __future__ import annotations

from batchtune._lazy import attach

__all__ = ["ProbeConfig", "ProbeResult", "probe", "write_probe_report"]

__getattr__, __dir__ = attach(__name__, {
    "ProbeConfig": "batchtune.probing.measure",
    "ProbeResult": "batchtune.probing.result",
    "probe": "batchtune.probing.measure",
    "write_probe_report": "batchtune.probing.report",
})
