"""Rendering the CI gate: a decision or a single run as a markdown section (stdout and $GITHUB_STEP_SUMMARY)."""

from __future__ import annotations

from typing import Any

from batchtune.gate.baseline import BenchRun
from batchtune.gate.decision import (
    Decision,
    clock_label,
    flops_text,
    num,
    throughput_text,
)
from batchtune.task.choices import AS_BUILT
from batchtune.trial.timing import summarize
from batchtune.units import format_bytes


def render_markdown(decision: Decision) -> str:
    """The comparison as a GitHub-flavoured markdown section (stdout and $GITHUB_STEP_SUMMARY)."""
    from tabulate import tabulate

    lines = [f"### batchtune bench: {_headline(decision)}", ""]
    if decision.mismatches:
        lines.append(
            "The runs differ in what or where they measured:" if decision.refused else "Compared despite these differences:"
        )
        lines.append("")
        table = [[m.field, _short(m.baseline), _short(m.current)] for m in decision.mismatches]
        lines.append(tabulate(table, headers=["field", decision.baseline_name, decision.current_name], tablefmt="github"))
        lines.append("")
    if decision.refused:
        lines.append(
            "Comparison refused (exit 3): save a new baseline on this machine and configuration, "
            "or pass --allow-mismatch to compare anyway."
        )
        return "\n".join(lines) + "\n"
    table = [[r.figure, r.baseline, r.current, r.change, r.threshold, r.verdict] for r in decision.rows]
    lines.append(tabulate(table, headers=["figure", "baseline", "current", "change", "threshold", "verdict"], tablefmt="github"))
    if decision.notes:
        lines.append("")
        lines += [f"- {note}" for note in decision.notes]
    return "\n".join(lines) + "\n"


def _headline(decision: Decision) -> str:
    return {
        "mismatch": "NOT COMPARABLE (exit 3)",
        "regression": "REGRESSION (exit 1)",
        "inconclusive": "INCONCLUSIVE: too noisy to decide (exit 4)",
        "stale": "pass, baseline stale (exit 0)",
        "pass": "pass (exit 0)",
    }[decision.status]


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 24 else text[:12] + "..." + text[-8:]


def render_run(run: BenchRun) -> str:
    """One measurement on its own (``batchtune bench --save``), as a markdown section."""
    from tabulate import tabulate

    st, wall = run.step_time, run.wall_step_time
    rows = [["throughput (samples/s, " + clock_label(run) + ")", throughput_text(run.throughput.median, st.rel_iqr)]]
    if run.config.get("clock") != "wall":
        rows.append(["throughput (samples/s, wall time)", throughput_text(run.batch_size / wall.median, wall.rel_iqr)])
    elif run.cpu_samples is not None:
        cpu = summarize([t for rep in run.cpu_samples for t in rep])
        rows.append(["throughput (samples/s, CPU time)", throughput_text(run.batch_size / cpu.median, cpu.rel_iqr)])
    rows += [
        ["step time median", f"{st.median * 1e3:.3f} ms over {st.n} samples in {len(run.samples)} repeats"],
    ]
    normalised = run.normalised_step_time
    if run.calibration is not None and normalised is not None:
        reference = summarize([c for rep in run.calibration for c in rep])
        rows.append(["reference workload (calibration)", f"{reference.median * 1e3:.3f} ms median; step / reference "
                     f"median {normalised.median:.3f} (IQR {normalised.rel_iqr:.0%})"])
    rows += [
        ["peak memory", format_bytes(run.peak_memory) + f" ({run.memory_kind})"],
        ["FLOPs per sample (forward + backward)", flops_text(run.flops_per_sample)],
    ]
    if run.metric is not None:
        rows.append([f"validation metric after {run.config['epochs']:g} epochs", num(run.metric)])
    cfg = run.config
    head = (
        f"### batchtune bench: {run.task}\n\nbatch size {cfg['batch_size']}, lr {cfg['lr']:g}, {'as built' if cfg['norm'] == AS_BUILT else cfg['norm'] + ' norm'}, "
        f"{cfg['precision']}, {cfg['device']}, {run.fingerprint.get('threads')} thread(s), clock {cfg['clock']}\n"
    )
    body = tabulate(rows, headers=["figure", "value"], tablefmt="github")
    notes = "".join(f"\n- {w}" for w in run.warnings)
    return head + "\n" + body + ("\n" + notes if notes else "") + "\n"
