"""The task contract: loading the user's task file, checking it, and swapping its normalization.

- ``contract``: load_task, the Task value, the dry run, calling the user's functions.
- ``norm``: converting the BatchNorm layers of a freshly built model.
- ``template``: the file ``batchtune init`` writes.
"""

from __future__ import annotations

from batchtune._lazy import attach

__all__ = ["Task", "convert_norm", "dry_run", "load_task"]

__getattr__, __dir__ = attach(__name__, {
    "Task": "batchtune.task.contract",
    "convert_norm": "batchtune.task.norm",
    "dry_run": "batchtune.task.contract",
    "load_task": "batchtune.task.contract",
})
