"""The batch doctor (``batchtune check``): batches that misrepresent the data or upset BatchNorm.

- ``checks``: diagnose() and each check.
- ``report``: terminal lines and the markdown section; running the doctor in a worker.
"""

from __future__ import annotations

from batchtune._lazy import attach

__all__ = ["Diagnosis", "Finding", "diagnose"]

__getattr__, __dir__ = attach(__name__, {
    "Diagnosis": "batchtune.doctor.checks",
    "Finding": "batchtune.doctor.checks",
    "diagnose": "batchtune.doctor.checks",
})
