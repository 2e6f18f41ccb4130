"""What a study's trials mean, stored with the study, so that a resume cannot change it.

A rerun of ``batchtune search`` resumes the study: it may add trials, never change what a trial
measures. The study's fingerprint (the task file's SHA-256, its metric direction, the training
budget, the optimizer family, the precisions and the objective) is stored when the study is
created; a rerun that changes one of them is refused, naming the field, before anything is probed
or run. (The search space is checked after the probe, in ``batchtune.study.run``.)
"""

from __future__ import annotations

from typing import Any

from batchtune.errors import UsageError
from batchtune.files import sha256_file
from batchtune.study.config import SearchConfig

FINGERPRINT_KEY = "batchtune_fingerprint"
_QUOTED = ("metric_mode", "optimizer_family")

# field: (how the message names it, how to resume with the stored value)
_FIELDS: dict[str, tuple[str, str]] = {
    "task_sha256": ("another task file", "resume it with the task file it was created with"),
    "metric_mode": ("metric_mode '{}' (the task's METRIC_MODE)", "resume it with the task file it was created with"),
    "epochs": ("--epochs {}", "run with --epochs {} to resume it"),
    "budget_samples": ("--budget-samples {}", "run with --budget-samples {} to resume it"),
    "optimizer_family": ("optimizer family '{}' (the task's build_optimizer)", "resume it with the task file it was created with"),
    "precisions": ("--precisions {}", "run with --precisions {} to resume it"),
    "objective": ("--objective {}", "run with --objective {} to resume it"),
}


def fingerprint(cfg: SearchConfig, *, metric_mode: str, optimizer_family: str) -> dict[str, Any]:
    """What defines a trial's meaning in a study run with ``cfg`` on its task file."""
    return {
        "task_sha256": sha256_file(cfg.task_path),
        "metric_mode": metric_mode,
        "epochs": _epochs(cfg.epochs, cfg.budget_samples),
        "budget_samples": cfg.budget_samples,
        "optimizer_family": optimizer_family,
        "precisions": list(cfg.precisions),
        "objective": cfg.objective,
    }


def check_resume(study: Any, current: dict[str, Any]) -> None:
    """Store ``current`` in a new study; in a stored one, raise :class:`UsageError` if a field differs.

    A study stored before fingerprints existed is checked against what its meta and space recorded.
    """
    stored = study.user_attrs.get(FINGERPRINT_KEY)
    if stored is None:
        _compare(study.study_name, _from_meta(study.user_attrs), current)
        study.set_user_attr(FINGERPRINT_KEY, current)
        return
    _compare(study.study_name, stored, current)


def _compare(name: str, stored: dict[str, Any], current: dict[str, Any]) -> None:
    for key, (what, fix) in _FIELDS.items():
        if key not in stored or stored[key] == current[key]:
            continue
        if key == "task_sha256":
            was = f"{what} (sha256 {str(stored[key])[:12]}, this one is {current[key][:12]})"
        else:
            now = _show(current[key])
            was = f"{what.format(_show(stored[key]))}, not {repr(now) if key in _QUOTED else now}"
        raise UsageError(
            f"study {name!r} was created with {was}; {fix.format(_show(stored[key]))}, or pass a new --study name"
        )


def _from_meta(attrs: dict[str, Any]) -> dict[str, Any]:
    """The fields a study created before fingerprints recorded (none for a new study)."""
    meta, space = attrs.get("batchtune_meta") or {}, attrs.get("batchtune_space") or {}
    known: dict[str, Any] = {key: meta[key] for key in ("metric_mode", "optimizer_family", "budget_samples") if key in meta}
    if "epochs" in meta:
        known["epochs"] = _epochs(meta["epochs"], meta.get("budget_samples"))
    known.update({key: space[key] for key in ("precisions", "objective") if key in space})
    return known


def _epochs(epochs: float | None, budget_samples: int | None) -> float | None:
    # A budget in samples replaces --epochs (batchtune.study.coordinator.trial_spec).
    return epochs if budget_samples is None else None


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
