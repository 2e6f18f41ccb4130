"""What a study looks like in optuna-dashboard: named objectives and readable trial attributes.

The measurements of a trial are one user attribute, ``result`` (a JSON object that the report reads);
the dashboard shows it as a single string that runs off the screen. So the figures a user compares
are also stored as separate, rounded attributes, and the objectives carry names instead of
"Objective 0". The learning curve is already there: under ``--objective metric`` every evaluation
is reported to the pruner as ``trial.report(validation metric, samples seen)``
(:class:`batchtune.study.plan.MetricWatch`), which the dashboard plots as intermediate values.
"""

from __future__ import annotations

import math
from typing import Any

# The objectives' names, as the study's directions list them (batchtune.study.run._directions).
OBJECTIVE_NAMES = {
    "metric": ["validation metric"],
    "time-to-target": ["seconds to target"],
    "pareto": ["validation metric", "samples/s", "peak memory (bytes)"],
}


def name_objectives(study: Any, objective: str) -> None:
    """Name the study's objectives (one study attribute; written once, when the names change)."""
    names = OBJECTIVE_NAMES[objective]
    if study.metric_names != names:
        study.set_metric_names(names)


def _round(value: Any, digits: int) -> float | None:
    """``value`` to ``digits`` significant digits; None when missing or not finite."""
    if value is None:
        return None
    x = float(value)
    if not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def readable_attrs(data: dict[str, Any]) -> dict[str, Any]:
    """The key figures of a trial's ``result`` attribute, rounded for reading, under plain names.

    ``lr`` is the learning rate the trial trained with (the sampled parameter may be a position in
    the measured LR window, or a base LR before the LR rule).
    """
    mib = data.get("peak_memory_bytes")
    attrs = {
        # Not "status"/"reason": those names mark a trial that never ran (batchtune.study.results.status).
        "outcome": data.get("status"),
        "lr": _round(data.get("lr"), 3),
        "val_metric": _round(data.get("final_metric"), 4),
        "samples_per_s": None if not data.get("throughput") else round(float(data["throughput"])),
        "peak_memory_MiB": None if not mib else round(float(mib) / 2**20, 1),
        "train_seconds": _round(data.get("wall_time"), 3),
    }
    return {k: v for k, v in attrs.items() if v is not None}
