"""PNG plots of a search (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _by_norm(ax: Any, frame: pd.DataFrame, y: str, scale: float = 1.0) -> None:
    for norm, group in frame.groupby("norm"):
        g = group.sort_values("batch_size")
        ax.scatter(g["batch_size"], g[y] / scale, label=str(norm), alpha=0.8)
        med = g.groupby("batch_size")[y].median() / scale
        ax.plot(med.index, med.values, alpha=0.5)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.grid(True, alpha=0.3)
    ax.legend(title="norm", fontsize=8)


def _cells_throughput(ax: Any, cells: list[dict[str, Any]], rec: tuple[int, str] | None) -> None:
    """Each cell's calibrated samples/s, with the range over its interleaved rounds as the bar."""
    for norm in sorted({c["norm"] for c in cells}):
        own = sorted((c for c in cells if c["norm"] == norm and c.get("throughput")), key=lambda c: c["batch_size"])
        if not own:
            continue
        x = [c["batch_size"] for c in own]
        y = [c["throughput"] for c in own]
        low = [max(0.0, v - min(c.get("throughput_rounds") or [v])) for v, c in zip(y, own)]
        high = [max(0.0, max(c.get("throughput_rounds") or [v]) - v) for v, c in zip(y, own)]
        ax.errorbar(x, y, yerr=[low, high], marker="o", capsize=3, alpha=0.85, label=str(norm))
        if rec is not None and rec[1] == norm and rec[0] in x:
            ax.scatter([rec[0]], [y[x.index(rec[0])]], marker="*", s=260, color="black", zorder=5, label="recommended")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.grid(True, alpha=0.3)
    ax.legend(title="norm", fontsize=8)


def search_plots(trials: pd.DataFrame, curves: pd.DataFrame, out: Path, rec_trial: int | None,
                 cells: list[dict[str, Any]] | None = None, rec_cell: tuple[int, str] | None = None) -> dict[str, Path]:
    """Write the four plots of a search report; returns name -> path.

    With ``cells`` (the default search's speed measurement), throughput comes from them, not from
    the trials, whose figures were timed one at a time on a machine whose speed drifts.
    """
    plt = _plt()
    out.mkdir(parents=True, exist_ok=True)
    ok = trials[trials["status"] == "ok"].dropna(subset=["throughput"])
    paths: dict[str, Path] = {}
    if ok.empty:
        return paths
    specs = [
        ("throughput", "throughput", "samples/s", "Training throughput vs batch size", 1.0),
        ("memory", "peak_memory_bytes", "peak memory (MiB)", "Peak memory vs batch size", 2**20),
        ("metric", "metric", "validation metric", "Validation metric vs batch size", 1.0),
    ]
    for name, column, label, title, scale in specs:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        if name == "throughput" and cells:
            _cells_throughput(ax, cells, rec_cell)
            ax.set_ylabel(label)
            ax.set_title("Throughput per cell (interleaved, calibrated; bars: range over rounds)", fontsize=10)
            fig.tight_layout()
            path = out / f"{name}_vs_batch_size.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths[name] = path
            continue
        _by_norm(ax, ok, column, scale)
        if rec_trial is not None and rec_trial in set(ok["trial"]):
            r = ok[ok["trial"] == rec_trial].iloc[0]
            ax.scatter([r["batch_size"]], [r[column] / scale], marker="*", s=260, color="black", zorder=5,
                       label="recommended")
            ax.legend(fontsize=8)
        ax.set_ylabel(label)
        ax.set_title(title)
        fig.tight_layout()
        path = out / f"{name}_vs_batch_size.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths[name] = path
    if not curves.empty:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for trial, group in curves.groupby("trial"):
            g = group.sort_values("samples")
            style = {"linewidth": 2.5, "color": "black"} if trial == rec_trial else {"alpha": 0.45}
            ax.plot(g["samples"], g["val_metric"], marker=".", **style)
        ax.set_xlabel("training samples seen")
        ax.set_ylabel("validation metric")
        ax.set_title("Learning curves (recommended trial in black)")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        path = out / "learning_curves.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths["curves"] = path
    return paths
