"""Rendering the batch doctor's findings: terminal lines and a markdown section."""

from __future__ import annotations

from typing import Any

from batchtune.doctor.checks import Diagnosis

_MARK = {"error": "ERROR", "warning": "WARN ", "info": "info "}


def doctor_lines(diagnosis: Diagnosis) -> list[str]:
    """One block per finding for the terminal, worst first, then a one-line verdict."""
    d = diagnosis
    lines = [f"batch doctor: {d.task} ({d.train_size} training samples, batch size "
             f"{', '.join(map(str, d.batch_sizes))}, {d.norm} norm)"]
    for f in d.findings:
        lines.append(f"{_MARK[f.severity]} [{f.check}] {f.message}")
        if f.fix and f.fix != "none needed":
            lines.append(f"       fix: {f.fix}")
    lines.append(verdict(d))
    return lines


def verdict(d: Diagnosis) -> str:
    e, w = len(d.errors), len(d.warnings)
    if e:
        return f"{e} error(s), {w} warning(s): fix the errors before training (exit code 1)"
    if w:
        return f"no errors, {w} warning(s)"
    return "no errors or warnings"


def doctor_markdown(d: Diagnosis | dict[str, Any], heading: str = "##") -> str:
    """The "Batch doctor" report section, from a Diagnosis or its ``to_dict()`` (the study user attr)."""
    import pandas as pd

    data = d.to_dict() if isinstance(d, Diagnosis) else d
    findings = data.get("findings", [])
    lines = [
        f"{heading} Batch doctor",
        "",
        f"Checked before the trials at batch size(s) {', '.join(map(str, data.get('batch_sizes', [])))} "
        f"({data.get('norm')} norm, {data.get('train_size')} training samples), with the sampling batchtune trains "
        "with (shuffled every epoch, drop_last). Run `batchtune check` for the same checks alone.",
        "",
    ]
    if not findings:
        return "\n".join(lines + ["_no findings_", ""])
    rows = [
        {"severity": f["severity"], "check": f["check"], "finding": str(f["message"]).replace("|", "/"),
         "fix": str(f["fix"]).replace("|", "/")}
        for f in findings
    ]
    lines += [pd.DataFrame(rows).to_markdown(index=False), ""]
    return "\n".join(lines)


def diagnose_isolated(**kwargs: Any) -> Diagnosis:
    """:func:`batchtune.doctor.checks.diagnose` in a child process: the checks run the user's model and data
    loader, so a crash, a kernel kill or a hang there must not take the caller down."""
    from batchtune.doctor.checks import diagnose
    from batchtune.trial.process import call_in_child

    return call_in_child(diagnose, kwargs, timeout=kwargs.pop("timeout", 600.0), what="the batch doctor")


def doctor_for_search(task_path: str, sizes: Any, norms: Any, device: Any, seed: int) -> dict[str, Any]:
    """Run the doctor over the search's batch sizes; the payload for study user attr ``doctor``."""
    import logging
    from dataclasses import asdict

    from batchtune.doctor.checks import Finding
    from batchtune.errors import TaskError

    log = logging.getLogger(__name__)
    # BatchNorm is checked whenever the search tries it: that is where small batches hurt.
    norm = "batch" if "batch" in norms else norms[0]
    try:
        d = diagnose_isolated(task=task_path, batch_sizes=tuple(sizes), norm=norm, other_norms=tuple(norms),
                              device=str(device), seed=seed)
    except TaskError:
        raise
    except Exception as exc:  # the checks failing is a finding; the trials decide about the task
        finding = Finding("doctor", "warning", f"the batch doctor could not finish: {exc}",
                          "run `batchtune check` on the task file to see the failure")
        log.info("batch doctor: %s", finding.message)
        data = {"task": task_path, "batch_sizes": list(sizes), "norm": norm, "train_size": None,
                "counts": {"error": 0, "warning": 1, "info": 0}, "exit_code": 0, "findings": [asdict(finding)]}
        return {**data, "markdown": doctor_markdown(data)}
    # Logged at info: the CLI shows the findings themselves (study user attribute "doctor"), and the report lists them.
    for f in d.errors + d.warnings:
        log.info("batch doctor %s [%s]: %s", f.severity, f.check, f.message)
    return {**d.to_dict(), "markdown": doctor_markdown(d)}
