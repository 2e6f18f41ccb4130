"""Rendering a probe: the terminal table, probe.md, probe.json and the PNG plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tabulate import tabulate

from batchtune.errors import OutputError
from batchtune.files import ensure_dir, write_json, write_text
from batchtune.probing.result import ProbeCurve, ProbeResult
from batchtune.units import format_bytes


def _num(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return format(value, spec)


def _flops(value: float | None) -> str:
    if not value:
        return ""
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g} FLOP"


def _utilisation(curve: ProbeCurve) -> tuple[str, str]:
    """Which utilisation the tables show: against the peak when known, else the measured matmul ceiling."""
    if curve.peak_flops:
        return "mfu", "MFU"
    return "matmul_utilisation", "% of matmul"


def _ran(point: Any) -> bool:
    return point.status in ("ok", "over-budget")


def marks(curve: ProbeCurve, batch_size: int) -> str:
    out = []
    if batch_size == curve.largest_fit:
        out.append("largest fit")
    if batch_size == curve.recommended_max:
        out.append("recommended max")
    if batch_size == curve.knee:
        out.append("knee")
    return ", ".join(out)


def curve_rows(curve: ProbeCurve) -> list[dict[str, str]]:
    attr, label = _utilisation(curve)
    rows = []
    for p in curve.points:
        util = getattr(p, attr)
        rows.append(
            {
                "batch": str(p.batch_size),
                "samples/s": _num(p.throughput, ",.0f"),
                "step ms (median)": _num(p.step_time_median * 1e3 if p.step_time_median else None, ".3g"),
                "IQR ms": _num(p.step_time_iqr * 1e3 if p.step_time_iqr is not None else None, ".2g"),
                # A size that failed part-way has no meaningful peak; probe.json keeps what was seen.
                "peak memory": format_bytes(p.peak_memory_bytes) if _ran(p) and p.peak_memory_bytes else "",
                label: f"{100 * util:.3g}%" if util is not None else "",
                "fits": "yes" if p.fits else p.status,
                "": marks(curve, p.batch_size),
            }
        )
    return rows


def terminal_table(result: ProbeResult, width: int = 79) -> str:
    """The per-curve tables the CLI prints, headed by the largest fit, recommended maximum and knee, narrow
    enough for an 80-column terminal: the head line is wrapped to ``width`` and the marks column is left to
    it, with shorter column names than probe.md's."""
    import textwrap

    short = {"step ms (median)": "step ms", "peak memory": "peak mem"}
    blocks = []
    for c in result.curves:
        head = (
            f"{c.norm} / {c.precision}: largest fit {c.largest_fit or '-'}, recommended max "
            f"{c.recommended_max or '-'}, knee {c.knee or '-'} ({c.measured_sizes} sizes measured; {c.stop_reason})"
        )
        rows = [{short.get(k, k): v for k, v in row.items() if k} for row in curve_rows(c)]
        blocks.append(textwrap.fill(head, width=width, subsequent_indent="  ") + "\n"
                      + tabulate(rows, headers="keys", tablefmt="simple", disable_numparse=True))
    return "\n\n".join(blocks)


def summary_rows(result: ProbeResult) -> list[dict[str, str]]:
    rows = []
    for c in result.curves:
        best = max((p.throughput for p in c.points if p.fits and p.throughput), default=None)
        m = c.memory_model
        rows.append(
            {
                "norm": c.norm,
                "precision": c.precision,
                "largest fit": str(c.largest_fit or "-"),
                "recommended max": str(c.recommended_max or "-"),
                "knee": str(c.knee or "-"),
                "best samples/s": _num(best, ",.0f"),
                "memory per sample": format_bytes(m.per_sample_bytes) if m else "",
                "fixed memory": format_bytes(m.fixed_bytes) if m else "",
                "predicted max": str(m.predicted_max) if m and m.predicted_max is not None else "",
                "FLOPs/sample": _flops(c.flops_per_sample),
                "sizes measured": str(c.measured_sizes),
            }
        )
    return rows


def render_markdown(result: ProbeResult, plots: dict[str, Path], out_dir: Path | None, *, level: int = 2) -> str:
    """probe.md. ``level`` is the heading level of its sections: 3 nests them under a search report's "## Probe"."""
    top = "#" * level
    sub = "#" * (level + 1)
    standalone = level <= 2
    s = result.settings
    env = result.environment
    budget = (
        f"memory budget {format_bytes(s.memory_budget_bytes)}"
        if s.memory_budget_bytes
        else f"no memory budget (limit: {s.limit_source}, {format_bytes(s.limit_bytes)})"
    )
    lines = []
    if standalone:
        lines += [f"# batchtune probe: {result.name}", ""]
    lines += [
        (
            f"Task `{result.task}` on **{env.get('device_name', s.device)}** (`{s.device}`), precisions "
            f"{', '.join(s.precisions)}, {budget}, headroom {s.headroom:.0%}, knee {s.knee:.0%}, granularity "
            f"{s.granularity}. {sum(c.measured_sizes for c in result.curves)} sizes measured in "
            f"{result.wall_time_s:.1f} s; every size in the tables below was run, none is extrapolated."
        ),
        "",
        f"{top} Summary",
        "",
        tabulate(summary_rows(result), headers="keys", tablefmt="github", disable_numparse=True),
        "",
    ]
    for c in result.curves:
        lines += [f"{top} {c.norm} / {c.precision}", "", f"Stopped: {c.stop_reason}.", ""]
        lines += [tabulate(curve_rows(c), headers="keys", tablefmt="github", disable_numparse=True), ""]
        m = c.memory_model
        if m is not None:
            r2 = f", R² {m.r2:.3f}" if m.r2 is not None else ""
            predicted = (
                f"; it predicts a maximum of {m.predicted_max} under the {s.limit_source} "
                f"({format_bytes(m.limit_bytes)}), measured: {c.largest_fit or 'none'}"
                if m.predicted_max is not None
                else ""
            )
            lines += [
                (
                    f"Memory model: peak = {format_bytes(m.fixed_bytes)} + {format_bytes(m.per_sample_bytes)} "
                    f"x batch (least squares over {m.n_points} sizes{r2}){predicted}."
                ),
                "",
            ]
        fails = [p for p in c.points if not p.fits]
        if fails:
            lines += [f"{sub} Sizes that did not fit", ""]
            lines += [f"- {p.batch_size}: {p.status}: {(p.reason or '').replace('|', '/')}" for p in fails]
            lines += [""]
    lines += [f"{top} FLOPs and utilisation", ""]
    seen = set()
    for c in result.curves:
        if c.precision in seen:
            continue
        seen.add(c.precision)
        peak = f"{_flops(c.peak_flops)}/s ({c.peak_flops_source})" if c.peak_flops else c.peak_flops_source
        lines.append(
            f"- {c.precision}: peak {peak}; measured matmul ceiling "
            f"{_flops(c.matmul_peak_flops) + '/s' if c.matmul_peak_flops else 'not measured'}."
        )
    lines += [
        "",
        "MFU is achieved FLOP/s (counted FLOPs per sample x samples/s) over the peak; where the peak is "
        "unknown the tables show the share of the measured matmul ceiling instead. " + result.flops_note,
        "",
    ]
    if result.notes:
        lines += [f"{top} Notes", ""] + [f"- {n}" for n in result.notes] + [""]
    if plots and out_dir is not None:
        lines += [f"{top} Plots", ""]
        for name, path in plots.items():
            lines += [f"![{name}]({path.relative_to(out_dir).as_posix()})", ""]
    if standalone:
        lines += [
            f"{top} Environment",
            "",
            tabulate(
                [{"": k, "value": format_bytes(v) if k.endswith("_bytes") and v else v} for k, v in env.items()],
                headers="keys",
                tablefmt="github",
                disable_numparse=True,
            ),
            "",
        ]
    lines += [
        f"{top} How to read this",
        "",
        (
            "- *largest fit*: the largest size that trained, evaluated and stayed under the memory budget; "
            "the next size up that was measured did not."
        ),
        (
            f"- *recommended max*: the largest measured size whose peak stays under {1 - s.headroom:.0%} of "
            f"the limit ({s.limit_source}), leaving room for fragmentation, longer inputs and other processes."
        ),
        (
            f"- *knee*: the smallest size within {s.knee:.0%} of the best throughput; bigger sizes buy "
            "memory use, not speed."
        ),
        (
            "- *samples/s* is the batch size over the median of synchronised step times, each step including "
            f"the optimizer update, after {s.warmup_steps} warm-up steps; timing stops once IQR/median is "
            f"under {s.target_rel_iqr:.0%} or after {s.time_cap_s:g} s."
        ),
        (
            "- *peak memory* is the larger of the training and evaluation peaks: "
            "`torch.cuda.max_memory_allocated` on CUDA (reserved memory is in probe.json), the process's peak "
            "resident memory on the CPU."
        ),
        "",
    ]
    return "\n".join(lines)


def probe_section(data: dict[str, Any], out_dir: Path) -> str:
    """The "Probe" section of a search's report.md, from the probe stored in the study (summary["probe"])."""
    if "curves" not in data:
        return str(data.get("markdown", ""))
    result = ProbeResult.from_dict(data)
    names = ("throughput", "memory", "utilisation")
    plots = {n: out_dir / "probe" / "plots" / f"probe_{n}_vs_batch_size.png" for n in names}
    return render_markdown(result, {n: p for n, p in plots.items() if p.exists()}, out_dir, level=3)


# ------------------------------------------------------------------------------------------ plots


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mark(ax: Any, curve: ProbeCurve, y: Any, color: Any) -> None:
    """Hollow markers, drawn large and on top, so the point under each stays visible."""
    for size, marker, area in ((curve.knee, "o", 110), (curve.recommended_max, "*", 300), (curve.largest_fit, "s", 150)):
        p = curve.point(size)
        if p is None or y(p) is None:
            continue
        ax.scatter([p.batch_size], [y(p)], marker=marker, s=area, facecolors="none", edgecolors=color, linewidths=1.4,
                   zorder=5)


def _colour(curve: ProbeCurve, precisions: int) -> tuple[Any, str]:
    """The norm's colour (the same as in the search's plots) and a line style per precision."""
    from batchtune.study.plots import norm_colour

    styles = {"fp32": "-", "bf16": "--", "fp16": ":"}
    return norm_colour(curve.norm), styles.get(curve.precision, "-.") if precisions > 1 else "-"


def probe_plots(result: ProbeResult, out: Path) -> dict[str, Path]:
    """Throughput, peak memory (with the fitted line and the budget) and achieved FLOP/s vs batch size."""
    plt = _plt()
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    s = result.settings
    if not any(p.fits for c in result.curves for p in c.points):
        return paths
    precisions = len({c.precision for c in result.curves})

    def finish(fig: Any, ax: Any, name: str, ylabel: str, title: str) -> None:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(bottom=0)  # from zero: a 10% difference looks like 10%
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"probe_{name}_vs_batch_size.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths[name] = path

    def marker_legend(ax: Any) -> None:
        ax.scatter([], [], marker="o", s=60, facecolors="none", edgecolors="gray", label="knee")
        ax.scatter([], [], marker="*", s=120, facecolors="none", edgecolors="gray", label="recommended max")
        ax.scatter([], [], marker="s", s=60, facecolors="none", edgecolors="gray", label="largest fit")

    # Throughput.
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for c in result.curves:
        ok = [p for p in c.points if p.fits and p.throughput]
        if not ok:
            continue
        colour, style = _colour(c, precisions)
        ax.plot([p.batch_size for p in ok], [p.throughput for p in ok], style, marker=".", color=colour, label=c.label)
        _mark(ax, c, lambda p: p.throughput, colour)
    marker_legend(ax)
    finish(fig, ax, "throughput", "training samples/s", "Probe: training throughput vs batch size")

    # Peak memory, the fitted line, the budget and the headroom line.
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    mib = 2**20
    top = 0.0
    for c in result.curves:
        ran = [(p, float(p.peak_memory_bytes)) for p in c.points if p.peak_memory_bytes and _ran(p)]
        if not ran:
            continue
        colour, style = _colour(c, precisions)
        ax.plot([p.batch_size for p, _ in ran], [m / mib for _, m in ran], ".", markersize=8, color=colour,
                label=c.label)
        _mark(ax, c, lambda p: p.peak_memory_bytes / mib if p.peak_memory_bytes else None, colour)
        top = max(top, max(m for _, m in ran))
        over = [(p, m) for p, m in ran if not p.fits]
        if over:
            ax.scatter([p.batch_size for p, _ in over], [m / mib for _, m in over], marker="x", color=colour,
                       zorder=5)
        model = c.memory_model
        if model is not None:
            import numpy as np

            xs = np.geomspace(min(p.batch_size for p, _ in ran), max(p.batch_size for p, _ in ran), 50)
            ax.plot(xs, [model.predict(x) / mib for x in xs], "--", color=colour, alpha=0.7,
                    label=f"{c.label} fit: {format_bytes(model.fixed_bytes)} + {format_bytes(model.per_sample_bytes)}/sample")
    if s.limit_bytes and (s.memory_budget_bytes or s.limit_bytes <= 2 * top):
        ax.axhline(s.limit_bytes / mib, color="red", linewidth=1, label=f"{s.limit_source} {format_bytes(s.limit_bytes)}")
        ax.axhline((1 - s.headroom) * s.limit_bytes / mib, color="red", linestyle=":", linewidth=1,
                   label=f"with {s.headroom:.0%} headroom")
    marker_legend(ax)
    finish(fig, ax, "memory", "peak memory (MiB)", "Probe: peak memory vs batch size")

    # Achieved FLOP/s, with the denominators of MFU and of the matmul share as labelled lines: a
    # percentage alone hides which one it is (and a measured "ceiling" can sit below the model).
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    drew = False
    refs: dict[str, float] = {}
    for c in result.curves:
        ok = [p for p in c.points if p.fits and p.achieved_flops]
        if not ok:
            continue
        colour, style = _colour(c, precisions)
        ax.plot([p.batch_size for p in ok], [(p.achieved_flops or 0.0) / 1e9 for p in ok], style, marker=".", color=colour,
                label=c.label)
        drew = True
        if c.peak_flops:
            refs[f"{c.precision} peak FLOP/s ({c.peak_flops_source}): {_flops(c.peak_flops)}/s"] = c.peak_flops
        if c.matmul_peak_flops:
            refs[f"{c.precision} matmul ceiling (measured): {_flops(c.matmul_peak_flops)}/s"] = c.matmul_peak_flops
    if drew:
        top = max(p.achieved_flops or 0 for c in result.curves for p in c.points)
        for (label, value), style in zip(sorted(refs.items(), key=lambda kv: kv[1]), ("-.", ":", "--", "-")):
            if value <= 5 * top:  # a datasheet peak 100x above the model would flatten the curves
                ax.axhline(value / 1e9, color="dimgray", linestyle=style, linewidth=1, label=label)
        finish(fig, ax, "utilisation", "achieved GFLOP/s (forward + backward)",
               "Probe: achieved FLOP/s vs batch size (lines: the denominators)")
    else:
        plt.close(fig)
    return paths


def write_probe_report(result: ProbeResult, out_dir: Path, *, plots: bool = True) -> dict[str, Path]:
    """Write probe.md, probe.json and the plots under ``out_dir``; returns what was written."""
    ensure_dir(out_dir)
    paths: dict[str, Path] = {}
    plot_paths: dict[str, Path] = {}
    if plots:
        try:
            plot_paths = probe_plots(result, out_dir / "plots")
        except OSError as exc:
            raise OutputError(f"cannot write plots under {out_dir}: {exc.strerror}; free disk space or pass another --output") from None
    paths["json"] = write_json(out_dir / "probe.json", result.to_dict())
    paths["markdown"] = write_text(out_dir / "probe.md", render_markdown(result, plot_paths, out_dir))
    paths.update({f"plot:{k}": v for k, v in plot_paths.items()})
    return paths
