"""summary.json: the stable, documented machine-readable result of a search (schema 1)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

SCHEMA = 1


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def unrecommended_reasons(trials: Any, *, most: int = 3) -> str:
    """Why nothing is recommended, counted: ``2 failed (ValueError: boom), 1 oom (out of memory ...)``.

    ``trials`` is the table of counted trials (batchtune.study.results.trials_frame); each distinct
    outcome and reason (its first clause, abridged) is counted, the most frequent first.
    """
    if trials.empty:
        return "no trial finished"
    tally = Counter(_outcome(row) for _, row in trials.iterrows())
    parts = [f"{n} {status}" + (f" ({reason})" if reason else "") for (status, reason), n in tally.most_common(most)]
    rest = sum(n for _, n in tally.most_common()[most:])
    return ", ".join(parts + ([f"{rest} more"] if rest else []))


def _outcome(row: Any) -> tuple[str, str]:
    if row["status"] == "ok" and not row.get("feasible", True):
        return "over --memory-budget", ""  # the reason only says by how much
    return str(row["status"]), _abridged(row["reason"])


def _abridged(reason: Any, width: int = 60) -> str:
    if not isinstance(reason, str) or not reason.strip():
        return ""
    first = reason.split("; ")[0].strip()
    return first if len(first) <= width else first[: width - 3] + "..."


def _point(row: Any) -> dict[str, Any]:
    return {
        "trial": int(row["trial"]),
        "params": {"batch_size": int(row["batch_size"]), "lr": float(row["lr"]), "norm": row["norm"]},
        "metric": row["metric"],
        "throughput": row["throughput"],
        "peak_memory_bytes": row["peak_memory_bytes"],
    }


def build_summary(result: Any, meta: dict[str, Any], study: Any) -> dict[str, Any]:
    trials = result.trials
    rec = result.recommendation
    status_counts = trials["status"].value_counts().to_dict() if not trials.empty else {}
    summary = {
        "schema": SCHEMA,
        "study": result.study_name,
        "storage": result.storage,
        "n_trials": int(len(trials)),
        "status_counts": status_counts,
        "metric_mode": meta.get("metric_mode", "max"),
        "recommendation": rec.to_dict() if rec is not None else None,
        "pareto": [_point(r) for _, r in result.pareto.iterrows()],
        "search_space": study.user_attrs.get("batchtune_space"),
        "task": meta.get("task"),
        "norm_note": meta.get("norm_note"),
        "budget": {"epochs": meta.get("epochs"), "budget_samples": meta.get("budget_samples")},
        "warmup_epochs": meta.get("warmup_epochs"),
        "memory_budget_bytes": meta.get("memory_budget"),
        "environment": meta.get("environment", {}),
    }
    if "budget" in study.user_attrs:  # the compute budget; "budget" above is the per-trial budget (schema 1)
        summary["compute"] = study.user_attrs["budget"]
    for key in ("probe", "noise", "doctor", "candidates", "warnings"):
        if key in study.user_attrs:
            summary[key] = study.user_attrs[key]
    if "lr_range" in study.user_attrs:
        stored = study.user_attrs["lr_range"]
        summary["lr_range"] = {"bounds": stored.get("bounds"), "steps": stored.get("steps"),
                               "tests": [{k: t.get(k) for k in ("batch_size", "norm", "lr_at_min", "error")}
                                         for t in stored.get("tests") or []]}
    if "cells" in study.user_attrs:
        from batchtune.study.cells import Cell

        cells = [Cell.from_dict(c) for c in study.user_attrs["cells"].get("cells") or []]
        summary["cells"] = [{**{k: v for k, v in c.to_dict().items() if k != "ratios"},
                             "throughput_rounds": c.round_throughputs()} for c in cells]
    return _clean(summary)
