"""Reading a stored study back into tables. The Optuna study is the one source of truth."""

from __future__ import annotations

from typing import Any

import pandas as pd

# A trial counts towards --trials once batchtune measured it, whatever the outcome. Trials of a
# coordinator that died (no status) are retried instead; "surplus" and "interrupted" do not count.
MEASURED_STATUSES = ("ok", "oom", "over-budget", "diverged", "failed", "timeout", "pruned")

TRIAL_COLUMNS = [
    "trial",
    "state",
    "status",
    "batch_size",
    "lr",
    "norm",
    "precision",
    "accumulate",
    "micro_batch",
    "base_lr",
    "metric",
    "best_metric",
    "val_loss",
    "throughput",
    "throughput_q25",
    "throughput_q75",
    "step_time_median",
    "step_time_iqr",
    "peak_memory_bytes",
    "peak_reserved_bytes",
    "memory_kind",
    "feasible",
    "samples",
    "steps",
    "threads",
    "wall_time",
    "train_time",
    "eval_time",
    "reached_target",
    "samples_to_target",
    "time_to_target",
    "lr_position",
    "reason",
]


def counts(trial: Any) -> bool:
    """True when ``trial`` (a FrozenTrial) counts towards the study's requested total."""
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and status(trial) in MEASURED_STATUSES


def status(trial: Any) -> str | None:
    """A trial's batchtune status.

    A measured trial carries it inside its one "result" attribute; a trial that never ran (surplus,
    interrupted before it started) or whose coordinator died carries "status" and "reason" attributes
    instead. Never both.
    """
    attrs = trial.user_attrs
    return attrs.get("status") or (attrs.get("result") or {}).get("status")


def measurements(trial: Any) -> dict[str, Any]:
    """A trial's measurements (user attribute "result") with its status and reason."""
    attrs = trial.user_attrs
    result = attrs.get("result") or {}
    return {**result, "status": status(trial), "reason": attrs.get("reason", result.get("reason"))}


def trials_frame(study: Any) -> pd.DataFrame:
    """One row per counted trial, every measurement a column (see README, trials.csv)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if not counts(t):
            continue
        a = measurements(t)
        # Optuna 5 keeps constraints as {name: value}; a value <= 0 is feasible.
        feasible = a.get("status") == "ok" and all(c <= 0 for c in t.constraints.values())
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "status": a.get("status"),
                "batch_size": a.get("effective_batch_size", t.params.get("batch_size")),
                "lr": t.params.get("lr", a.get("lr")),
                "norm": t.params.get("norm", a.get("norm")),
                "precision": t.params.get("precision", a.get("precision", "fp32")),
                "accumulate": a.get("accumulate", 1),
                "micro_batch": a.get("micro_batch", t.params.get("batch_size")),
                "base_lr": t.params.get("base_lr", a.get("base_lr", t.params.get("lr"))),
                "metric": a.get("final_metric"),
                "best_metric": a.get("best_metric"),
                "val_loss": a.get("final_val_loss"),
                "throughput": a.get("throughput"),
                "throughput_q25": a.get("throughput_q25"),
                "throughput_q75": a.get("throughput_q75"),
                "step_time_median": a.get("step_time_median"),
                "step_time_iqr": a.get("step_time_iqr"),
                "peak_memory_bytes": a.get("peak_memory_bytes"),
                "peak_reserved_bytes": a.get("peak_reserved_bytes"),
                "memory_kind": a.get("memory_kind"),
                "feasible": feasible,
                "samples": a.get("samples"),
                "steps": a.get("steps"),
                "threads": a.get("threads"),
                "wall_time": a.get("wall_time"),
                "train_time": a.get("train_time"),
                "eval_time": a.get("eval_time"),
                "reached_target": a.get("reached_target"),
                "samples_to_target": a.get("samples_to_target"),
                "time_to_target": a.get("time_to_target"),
                "lr_position": t.params.get("lr_position"),
                "reason": a.get("reason"),
            }
        )
    frame = pd.DataFrame(rows, columns=TRIAL_COLUMNS)
    return frame.sort_values("trial").reset_index(drop=True)


def curves_frame(study: Any) -> pd.DataFrame:
    """Learning curves in long form: one row per (trial, evaluation point)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if not counts(t):
            continue
        a = measurements(t)
        for point in a.get("curve") or []:
            rows.append(
                {
                    "trial": t.number,
                    "batch_size": a.get("effective_batch_size", t.params.get("batch_size")),
                    "norm": t.params.get("norm"),
                    "lr": a.get("lr", t.params.get("lr")),
                    **point,
                }
            )
    return pd.DataFrame(rows)
