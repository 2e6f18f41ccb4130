"""PNG plots of a search (matplotlib, headless): which configuration, and what it costs.

Every plot marks the recommendation with a hollow black star (the point under it stays visible) and
its near-equals (candidates within the tolerance of the best) with hollow black circles, and uses one
colour per normalization, the same in the probe's plots (:func:`norm_colour`). The metric axes start
where the decision is: around the cells' best results and the tolerance band, not at the worst
outlier: at most ten tolerances from the best (trials off the axis are counted at its edge), widened
when needed so the recommendation and every candidate stay on it (a regression error's 1% tolerance
is far under its seed spread). Speed and memory axes start at zero, so a 10% difference looks like 10%.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

# Okabe & Ito (2008) colour-blind-safe palette, one colour per normalization in every plot.
_NORM_COLOURS = {"batch": "#0072B2", "group": "#E69F00", "layer": "#009E73", "none": "#CC79A7"}
_OTHER = ("#56B4E9", "#D55E00", "#F0E442", "#999999")
REC_STYLE = {"marker": "*", "s": 420, "facecolors": "none", "edgecolors": "black", "linewidths": 1.6, "zorder": 6}
NEAR_STYLE = {"marker": "o", "s": 170, "facecolors": "none", "edgecolors": "black", "linewidths": 1.1, "zorder": 6}


def norm_colour(norm: str) -> str:
    """The colour of ``norm`` in every batchtune plot."""
    if norm in _NORM_COLOURS:
        return _NORM_COLOURS[norm]
    return _OTHER[sum(map(ord, str(norm))) % len(_OTHER)]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _highlights(summary: dict[str, Any], trials: pd.DataFrame) -> tuple[set[tuple[int, str]], set[int], Any]:
    """The near-equal cells and trials of the recommendation, and the tolerance band (low, high) or None.

    Near-equal: a re-run candidate whose fresh-seed mean is within the tolerance of the best
    candidate's (default search), or an ok trial within the tolerance of the best trial (other objectives).
    """
    rec = summary.get("recommendation") or {}
    tol = rec.get("tolerance") or {}
    best = rec.get("best_metric")
    mode = summary.get("metric_mode", "max")
    if best is None or not tol:
        return set(), set(), None
    gap = tol["value"] if tol.get("kind") == "absolute" else tol["value"] * abs(best)
    band = (best - gap, best) if mode == "max" else (best, best + gap)

    def near(v: Any) -> bool:
        return v is not None and pd.notna(v) and band[0] <= float(v) <= band[1]

    cands = summary.get("candidates") or []
    if cands:
        picked = [c for c in cands if near(c.get("mean")) and c.get("trial") != rec.get("trial")]
        return ({(int(c["params"]["batch_size"]), str(c["params"]["norm"])) for c in picked},
                {int(c["trial"]) for c in picked}, band)
    ok = trials[(trials["status"] == "ok") & trials["metric"].map(near)] if not trials.empty else trials
    picked_trials = {int(t) for t in ok["trial"] if int(t) != rec.get("trial")}
    return {(int(b), str(n)) for b, n in zip(ok["batch_size"], ok["norm"])}, picked_trials, band


def _focus_limits(values: list[float], band: Any, mode: str, keep: Sequence[float] = ()) -> tuple[float, float] | None:
    """Y limits around the values that decide (cells' best results) and the band, widened to show every value
    of ``keep`` (the recommendation and the candidates: never off the axis)."""
    vals = [float(v) for v in values if v is not None and pd.notna(v)]
    if band is not None:
        vals += list(band)
    if not vals:
        return None
    low, high = min(vals), max(vals)
    width = max(high - low, 1e-9)
    if band is not None:
        # Between 3 and 10 tolerances: the band never fills the axis, and cells far from the best (out of
        # the running) do not squeeze it into a sliver; they are counted on the edge instead.
        gap = band[1] - band[0]
        width = min(max(width, 3 * gap), 10 * gap)
    pad = 0.15 * width
    limits = (high - width - pad, high + pad) if mode == "max" else (low - pad, low + width + pad)
    shown = [float(v) for v in keep if v is not None and pd.notna(v)]
    if not shown:
        return limits
    # A relative tolerance far under the seed noise (1% of a regression error) would otherwise leave the
    # recommendation itself off the axis.
    lo, hi = min(limits[0], min(shown)), max(limits[1], max(shown))
    extra = 0.05 * (hi - lo)
    return (lo - extra if lo < limits[0] else lo, hi + extra if hi > limits[1] else hi)


def _clip_note(ax: Any, values: pd.Series, limits: tuple[float, float], colour_of: Any, xs: pd.Series) -> None:
    """Points outside ``limits``: drawn as triangles on the edge, with a count of how many and how far."""
    low, high = limits
    below = values < low
    above = values > high
    for mask, edge, marker in ((below, low, "v"), (above, high, "^")):
        if not mask.any():
            continue
        ax.scatter(xs[mask], [edge] * int(mask.sum()), marker=marker, s=30, clip_on=False, zorder=4,
                   c=[colour_of(i) for i in values[mask].index], alpha=0.8)
        worst = values[mask].min() if edge == low else values[mask].max()
        ax.annotate(f"{int(mask.sum())} trial(s) off the axis (to {worst:.3g})", xy=(0.01, 0.02 if edge == low else 0.94),
                    xycoords="axes fraction", fontsize=7, color="dimgray")


def _finish(plt: Any, fig: Any, ax: Any, out: Path, name: str, title: str, ylabel: str) -> Path:
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = out / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _legend_marks(ax: Any, norms: list[str], near: bool) -> None:
    for norm in norms:
        ax.plot([], [], "o-", color=norm_colour(norm), label=f"{norm} norm")
    ax.scatter([], [], **{**REC_STYLE, "s": 160}, label="recommended")
    if near:
        ax.scatter([], [], **{**NEAR_STYLE, "s": 80}, label="within tolerance of the best")


def _metric_plot(plt: Any, ok: pd.DataFrame, summary: dict[str, Any], rec_trial: int | None, near_cells: set,
                 band: Any, out: Path) -> Path:
    """Every ok trial (dots), each cell's best (line), and the candidates' fresh-seed mean ± spread."""
    mode = summary.get("metric_mode", "max")
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    norms = sorted(ok["norm"].astype(str).unique())
    decide: list[float] = []
    keep: list[float] = []  # on the axis whatever the tolerance: the candidates and the recommendation
    lines = []
    for norm in norms:
        g = ok[ok["norm"] == norm]
        colour = norm_colour(norm)
        ax.scatter(g["batch_size"], g["metric"], s=14, color=colour, alpha=0.45)
        best = g.groupby("batch_size")["metric"].max() if mode == "max" else g.groupby("batch_size")["metric"].min()
        lines.append((best, colour))
        decide += list(best.values)
    cands = summary.get("candidates") or []
    shown = False
    for c in cands:
        if c.get("mean") is None:
            continue
        b, n = int(c["params"]["batch_size"]), str(c["params"]["norm"])
        spread = c.get("spread") or 0.0
        ax.errorbar([b * 1.06], [c["mean"]], yerr=[[spread], [spread]], fmt="D", ms=5, color=norm_colour(n),
                    mec="black", mew=0.6, capsize=3, zorder=5, label=None if shown else "candidate: fresh-seed mean ± spread")
        shown = True
        decide.append(c["mean"])
        keep += [c["mean"] - spread, c["mean"] + spread]
    # The recommendation's metric is its candidate's fresh-seed mean when there are candidates (drawn
    # beside the cell, at 1.06x), else its trial's own.
    at = 1.06 if cands else 1.0
    rec = summary.get("recommendation") or {}
    if rec:
        ax.scatter([rec["params"]["batch_size"] * at], [rec["metric"]], **REC_STYLE)
        keep.append(rec["metric"])
    for b, n in near_cells:
        vals = [c["mean"] for c in cands if (int(c["params"]["batch_size"]), str(c["params"]["norm"])) == (b, n)
                and c.get("mean") is not None]
        if not vals:
            row = ok[(ok["batch_size"] == b) & (ok["norm"] == n)]["metric"]
            vals = [row.max() if mode == "max" else row.min()] if len(row) else []
        if vals:
            ax.scatter([b * at], [vals[0]], **NEAR_STYLE)
    if band is not None:
        ax.axhspan(band[0], band[1], color="gray", alpha=0.12,
                   label=f"tolerance {'below' if mode == 'max' else 'above'} the best")
    limits = _focus_limits(decide, band, mode, keep)
    for best, colour in lines:
        # A cell whose best is off the axis breaks its norm's line (its trials are marked on the edge),
        # instead of a segment diving to it through the cells that decide.
        shown_best = best.where(best.between(*limits)) if limits is not None else best
        ax.plot(shown_best.index, shown_best.values, "-", color=colour, alpha=0.9, linewidth=1.5)
    if limits is not None:
        ax.set_ylim(*limits)
        _clip_note(ax, ok["metric"], limits, lambda i: norm_colour(str(ok.loc[i, "norm"])), ok["batch_size"])
    _legend_marks(ax, norms, bool(near_cells))
    return _finish(plt, fig, ax, out, "metric_vs_batch_size",
                   "Search: validation metric per trial (dots), best per cell (line)", "validation metric")


def _cells_plot(plt: Any, cells: list[dict[str, Any]], value: str, rec: Any, near_cells: set, out: Path,
                name: str, title: str, ylabel: str, scale: float = 1.0) -> Path:
    """Each cell's calibrated throughput (range over its interleaved rounds as the bar) or peak memory."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    norms = sorted({str(c["norm"]) for c in cells if c.get(value)})
    top = 0.0
    for norm in norms:
        own = sorted((c for c in cells if c["norm"] == norm and c.get(value)), key=lambda c: c["batch_size"])
        x = [c["batch_size"] for c in own]
        y = [c[value] / scale for c in own]
        top = max(top, max(y))
        if value == "throughput":
            rounds = [[r / scale for r in (c.get("throughput_rounds") or [c[value]])] for c in own]
            err = [[max(0.0, v - min(r)) for v, r in zip(y, rounds)], [max(0.0, max(r) - v) for v, r in zip(y, rounds)]]
            ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=3, color=norm_colour(norm))
        else:
            ax.plot(x, y, "o-", ms=4, color=norm_colour(norm))
        for b, v in zip(x, y):
            if rec is not None and (b, norm) == rec:
                ax.scatter([b], [v], **REC_STYLE)
            elif (b, norm) in near_cells:
                ax.scatter([b], [v], **NEAR_STYLE)
    ax.set_ylim(0, top * 1.12 if top else 1)
    _legend_marks(ax, norms, bool(near_cells))
    return _finish(plt, fig, ax, out, name, title, ylabel)


def _trials_plot(plt: Any, ok: pd.DataFrame, column: str, rec_trial: int | None, near_trials: set[int], out: Path,
                 name: str, title: str, ylabel: str, scale: float = 1.0) -> Path:
    """Without cells (other objectives): each trial's figure, the median per cell with its IQR as the bar."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    norms = sorted(ok["norm"].astype(str).unique())
    for norm in norms:
        g = ok[ok["norm"] == norm]
        colour = norm_colour(norm)
        ax.scatter(g["batch_size"], g[column] / scale, s=14, color=colour, alpha=0.45)
        q = g.groupby("batch_size")[column].quantile([0.25, 0.5, 0.75]).unstack() / scale
        ax.errorbar(q.index, q[0.5], yerr=[q[0.5] - q[0.25], q[0.75] - q[0.5]], fmt="o-", ms=4, capsize=3,
                    color=colour)
    for trial, style in [(rec_trial, REC_STYLE)] + [(t, NEAR_STYLE) for t in sorted(near_trials)]:
        row = ok[ok["trial"] == trial]
        if trial is not None and len(row):
            ax.scatter(row["batch_size"], row[column] / scale, **style)
    ax.set_ylim(0, float(ok[column].max()) / scale * 1.12)
    _legend_marks(ax, norms, bool(near_trials))
    return _finish(plt, fig, ax, out, name, title, ylabel)


def _curves_plot(plt: Any, curves: pd.DataFrame, summary: dict[str, Any], rec_trial: int | None,
                 near_trials: set[int], band: Any, out: Path) -> Path:
    """Each trial's validation metric over the samples it saw, in its norm's colour; the recommended trial bold."""
    mode = summary.get("metric_mode", "max")
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    finals, rec_final = [], []
    for trial, group in curves.groupby("trial"):
        g = group.sort_values("samples")
        colour = norm_colour(str(g["norm"].iloc[0]))
        if trial == rec_trial:
            rec_final = [g["val_metric"].iloc[-1]]
            ax.plot(g["samples"], g["val_metric"], color="black", linewidth=4.2, zorder=4)
            ax.plot(g["samples"], g["val_metric"], color=colour, linewidth=2.4, zorder=5, marker=".")
            label = f"trial {trial}: b{int(g['batch_size'].iloc[0])} {g['norm'].iloc[0]}, lr {g['lr'].iloc[0]:.3g}"
            ax.annotate(label, xy=(g["samples"].iloc[-1], g["val_metric"].iloc[-1]), xytext=(-6, -14),
                        textcoords="offset points", ha="right", fontsize=7, fontweight="bold", zorder=7,
                        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.85})
        elif trial in near_trials:
            ax.plot(g["samples"], g["val_metric"], color=colour, linewidth=1.6, linestyle="--", zorder=3)
        else:
            ax.plot(g["samples"], g["val_metric"], color=colour, linewidth=0.8, alpha=0.35)
        finals.append(g["val_metric"].iloc[-1])
    ends = pd.Series(finals).dropna()
    decide = sorted(ends, reverse=(mode == "max"))[: max(3, len(ends) // 2)]  # the better half of the trials
    seen = curves["val_metric"].dropna()
    best_seen = [seen.max() if mode == "max" else seen.min()] if len(seen) else []
    # The axis label promises the better half's final values: they are kept on it even when the tolerance is
    # far under their spread (a regression error's 1%), as is the recommended trial's.
    limits = _focus_limits(list(decide) + best_seen, band, mode, keep=list(decide) + rec_final)
    visible = curves
    if limits is not None:
        ax.set_ylim(*limits)
        by_trial = curves.groupby("trial")["val_metric"]
        off = (by_trial.max() < limits[0]) if mode == "max" else (by_trial.min() > limits[1])
        hidden = int(off.sum())
        if hidden:
            ax.annotate(f"{hidden} trial(s) entirely off the axis", xy=(0.01, 0.02), xycoords="axes fraction",
                        fontsize=7, color="dimgray")
        visible = curves[~curves["trial"].isin(off[off].index)]
    norms = sorted(visible["norm"].astype(str).unique())  # a norm with every curve off the axis is not listed
    for norm in norms:
        ax.plot([], [], color=norm_colour(norm), label=f"{norm} norm")
    ax.plot([], [], color="black", linewidth=3, label="recommended trial")
    if near_trials:
        ax.plot([], [], color="gray", linestyle="--", label="within tolerance of the best")
    ax.set_xlabel("training samples seen")
    ax.set_ylabel("validation metric" + (" (axis: the better half's final values)" if limits else ""))
    ax.set_title("Search: learning curves, one line per trial", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = out / "learning_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def search_plots(trials: pd.DataFrame, curves: pd.DataFrame, out: Path, rec_trial: int | None,
                 cells: list[dict[str, Any]] | None = None, rec_cell: tuple[int, str] | None = None,
                 summary: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write the four plots of a search report; returns name -> path.

    With ``cells`` (the default search's speed measurement), throughput and memory come from them, not
    from the trials, whose figures were timed one at a time on a machine whose speed drifts.
    ``summary`` (summary.json) gives the recommendation's tolerance and the re-run candidates.
    """
    plt = _plt()
    out.mkdir(parents=True, exist_ok=True)
    summary = summary or {}
    ok = trials[trials["status"] == "ok"].dropna(subset=["throughput"]) if not trials.empty else trials
    paths: dict[str, Path] = {}
    if ok.empty:
        return paths
    near_cells, near_trials, band = _highlights(summary, trials)
    paths["metric"] = _metric_plot(plt, ok, summary, rec_trial, near_cells, band, out)
    measured = [c for c in cells or [] if c.get("throughput")]
    if measured:
        paths["throughput"] = _cells_plot(
            plt, measured, "throughput", rec_cell, near_cells, out, "throughput_vs_batch_size",
            "Search: throughput per cell (interleaved rounds; bar: min to max)", "training samples/s")
        paths["memory"] = _cells_plot(
            plt, [c for c in measured if c.get("peak_memory_bytes")], "peak_memory_bytes", rec_cell, near_cells, out,
            "memory_vs_batch_size", "Search: peak memory per cell", "peak memory (MiB)", scale=2**20)
    else:
        paths["throughput"] = _trials_plot(
            plt, ok, "throughput", rec_trial, near_trials, out, "throughput_vs_batch_size",
            "Search: throughput per trial (dots), median and IQR per cell", "training samples/s")
        paths["memory"] = _trials_plot(
            plt, ok.dropna(subset=["peak_memory_bytes"]), "peak_memory_bytes", rec_trial, near_trials, out,
            "memory_vs_batch_size", "Search: peak memory per trial, median and IQR per cell", "peak memory (MiB)",
            scale=2**20)
    if not curves.empty:
        paths["curves"] = _curves_plot(plt, curves, summary, rec_trial, near_trials, band, out)
    return paths
