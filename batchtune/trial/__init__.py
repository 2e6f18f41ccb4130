"""Running one trial: the training loop, timing, memory, devices, OOM, and the worker process.

- ``train``: TrialSpec in, TrialResult out (run_trial).
- ``process``: the worker process every command runs the user's code in (TrialRunner, call_in_child).
- ``timing``: median and IQR of timing samples.
- ``device``: choosing and synchronising the device, peak memory, the environment fingerprint.
- ``oom``: out-of-memory classification on every backend.
"""

from __future__ import annotations

from batchtune._lazy import attach

__all__ = ["Stats", "TrialResult", "TrialRunner", "TrialSpec", "call_in_child", "run_trial", "summarize"]

__getattr__, __dir__ = attach(__name__, {
    "Stats": "batchtune.trial.timing",
    "TrialResult": "batchtune.trial.train",
    "TrialRunner": "batchtune.trial.process",
    "TrialSpec": "batchtune.trial.train",
    "call_in_child": "batchtune.trial.process",
    "run_trial": "batchtune.trial.train",
    "summarize": "batchtune.trial.timing",
})
