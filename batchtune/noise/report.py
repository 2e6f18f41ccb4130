"""Rendering a noise-scale measurement: markdown section, goodput plot, JSON payload."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from batchtune.noise.goodput import compare
from batchtune.noise.measure import NoiseReport

PLOT_NAME = "goodput_vs_batch_size.png"


def _g(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "unbounded"
    return f"{value:.3g}"


def phase_table(report: NoiseReport) -> str:
    import pandas as pd

    rows = [
        {
            "when": p.label,
            "train loss": f"{p.train_loss:.4g}" if p.train_loss is not None else "",
            "B_simple": _g(p.estimate.b_simple) if p.estimate.b_simple is not None else "not resolved",
            f"{p.estimate.confidence:.0%} band": f"{_g(p.estimate.low)} to {_g(p.estimate.high)}",
            "|G|^2": f"{p.estimate.grad_sq:.4g}",
            "tr(Sigma)": f"{p.estimate.trace_sigma:.4g}",
            **({
                "B_noise (Hessian)": _g(p.curvature.b_simple) if p.curvature.b_simple is not None else "not resolved",
                f"B_noise {p.curvature.confidence:.0%} band": f"{_g(p.curvature.low)} to {_g(p.curvature.high)}",
            } if p.curvature is not None else {}),
            "steps": p.estimate.steps,
        }
        for p in report.phases
    ]
    return pd.DataFrame(rows).to_markdown(index=False)


def goodput_table(report: NoiseReport) -> str:
    import pandas as pd

    c = report.goodput
    if c is None:
        return "_no throughput curve_"
    rows = []
    for b, t, e, g in zip(c.sizes, c.throughput, c.efficiency, c.goodput):
        marks = [m for m, hit in (("goodput best", b == c.best), ("knee", b == c.knee), ("search", b == report.recommended)) if hit]
        rows.append({"batch": b, "samples/s": f"{t:,.0f}", "efficiency": f"{e:.3f}", "goodput": f"{g:,.0f}", "": ", ".join(marks)})
    return pd.DataFrame(rows).to_markdown(index=False)


def noise_plot(report: NoiseReport, path: Path) -> Path | None:
    """Throughput, efficiency and goodput against batch size, one PNG."""
    c = report.goodput
    if c is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    ax.plot(c.sizes, c.throughput, marker="o", label="throughput (samples/s)")
    ax.plot(c.sizes, c.goodput, marker="s", label=f"goodput (batch-{c.reference}-equivalent samples/s)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("samples/s")
    ax.grid(True, alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(c.sizes, c.efficiency, color="tab:green", linestyle="--", marker=".", label="statistical efficiency")
    ax2.set_ylabel("efficiency")
    ax2.set_ylim(0, 1.05)
    ax.axvline(c.best, color="black", linestyle=":", label=f"goodput best ({c.best})")
    if c.knee is not None:
        ax.axvline(c.knee, color="tab:red", linestyle=":", alpha=0.7, label=f"hardware knee ({c.knee})")
    if report.recommended is not None:
        ax.axvline(report.recommended, color="tab:purple", linestyle="-.", alpha=0.7, label=f"search ({report.recommended})")
    lines = ax.get_legend_handles_labels()
    extra = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + extra[0], lines[1] + extra[1], fontsize=7, loc="best")
    ax.set_title(f"Goodput with B_noise = {_g(c.b_noise)}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def noise_markdown(report: NoiseReport, plot: str | None = None, heading: str = "##") -> str:
    """The report section: noise scale by phase, goodput table, agreement sentences, how to read."""
    lines = [
        f"{heading} Gradient noise scale and goodput",
        "",
        f"Simple noise scale B_simple = tr(Sigma)/|G|^2 (McCandlish et al. 2018) of a fresh `{report.norm}`-norm model, "
        f"from gradient norms at batch sizes {report.b_small} and {report.b_big} on the same parameters (appendix A "
        f"estimators, numerator and denominator averaged over steps separately, bootstrap band over steps). "
        f"The burst trained at batch {report.b_small}, lr {report.lr:.3g}."
        + (" With the curvature: B_noise = tr(H Sigma)/(G^T H G) (eq. 2.7), from the same gradients' quadratic forms in "
           "the Hessian of an independent batch (Hessian-vector products); goodput uses it." if report.final.curvature else ""),
        "",
        *(f"**Warning:** {w}." for w in report.warnings),
        *([""] if report.warnings else []),
        phase_table(report),
        "",
    ]
    repeats = repeats_sentence(report)
    if repeats:
        lines += [repeats + ".", ""]
    c = report.goodput
    if c is not None:
        lines += [
            f"Statistical efficiency E(B) = (B_noise + {c.reference}) / (B_noise + B) with B_noise = {_g(c.b_noise)} "
            f"({'the Hessian-weighted estimate' if report.final.curvature else 'B_simple'}, {report.final.label}; Pollux, Qiao et al. OSDI 2021); goodput = throughput x efficiency. "
            f"Throughput: {c.throughput_source}.",
            "",
            goodput_table(report),
            "",
            " ".join(compare(c, report.recommended)),
            "",
        ]
    for note in report.notes:
        lines += [f"Note: {note}.", ""]
    if plot:
        lines += [f"![goodput]({plot})", ""]
    lines += [
        "How to read: below B_noise, doubling the batch nearly halves the steps to a given loss; above it, the "
        "extra samples per step are mostly wasted (McCandlish et al. 2018, eq. 2.11). B_simple grows as the loss "
        "falls, so the value after the burst is the better guide for most of training (`--burst-until-loss` measures "
        "it at the loss you aim for). It is an estimate: measured at the target loss, the median of 3 seeds came within "
        "a factor of 2 of the critical batch measured from steps to that loss on three of batchtune's examples for "
        "B_noise with the Hessian (`--curvature`), on two of them for B_simple (2.4 times too large on the third; "
        "with accuracy targets each estimate came within 2x on two of the three); "
        "single measurements spread by a factor of 3 to 20 between seeds (benchmarks/noise_vs_steps.py; "
        "`batchtune noise --repeats 3` takes their median), and BatchNorm with batch statistics leaves it unresolved "
        "or too large. The hardware knee is the first batch size "
        "after which doubling the batch adds under 10% throughput.",
        "",
    ]
    return "\n".join(lines)


def noise_section(report: NoiseReport, out_dir: Path, *, plots: bool = True) -> dict[str, Any]:
    """The payload the search stores as study user attr ``noise`` (and summary.json copies).

    Writes the goodput plot under ``out_dir/plots`` and returns the numbers plus a ``markdown``
    section that report.md embeds.
    """
    rel = None
    if plots and report.goodput is not None:
        written = noise_plot(report, out_dir / "plots" / PLOT_NAME)
        if written is not None:
            rel = f"plots/{PLOT_NAME}"
    payload = report.to_dict()
    payload["markdown"] = noise_markdown(report, rel)
    return payload


def write_noise_report(report: NoiseReport, out_dir: Path, *, plots: bool = True) -> dict[str, Path]:
    """Write noise.md, noise.json and the goodput plot under ``out_dir``; returns what was written."""
    from batchtune.errors import OutputError
    from batchtune.files import ensure_dir, write_json, write_text

    ensure_dir(out_dir)
    paths: dict[str, Path] = {}
    rel = None
    if plots and report.goodput is not None:
        try:
            written = noise_plot(report, out_dir / "plots" / PLOT_NAME)
        except OSError as exc:
            raise OutputError(f"cannot write the plot under {out_dir}: {exc.strerror}; pass another --output") from None
        if written is not None:
            paths["plot"] = written
            rel = f"plots/{PLOT_NAME}"
    title = f"# batchtune noise: {Path(report.task).stem}\n\n"
    paths["markdown"] = write_text(out_dir / "noise.md", title + noise_markdown(report, rel))
    paths["json"] = write_json(out_dir / "noise.json", _clean(report.to_dict()))
    return paths


def _clean(value: Any) -> Any:
    from batchtune.study.summary import _clean as clean

    return clean(value)


def repeats_sentence(report: NoiseReport) -> str | None:
    """What the repeats measured, or None for a single measurement."""
    if not report.repeats:
        return None
    values = ", ".join(f"{_g(v) if v is not None else 'not resolved'} (seed {seed})" for seed, v in report.repeats)
    return (
        f"B_simple after the burst, over {len(report.repeats)} repeats: {values}. The phases shown are the "
        f"median repeat's (seed {report.seed}), and the goodput band spans all repeats"
    )


def noise_lines(report: NoiseReport) -> list[str]:
    """Terminal summary of a noise measurement (the warnings are separate: :attr:`NoiseReport.warnings`)."""
    lines = []
    for p in report.phases:
        e = p.estimate
        value = _g(e.b_simple) if e.b_simple is not None else "not resolved"
        lines.append(
            f"B_simple {p.label}: {value} ({e.confidence:.0%} band {_g(e.low)} to {_g(e.high)}; "
            f"|G|^2 {e.grad_sq:.3g}, tr(Sigma) {e.trace_sigma:.3g}, {e.steps} steps, loss {p.train_loss:.4g})"
        )
        if p.curvature is not None:
            h = p.curvature
            lines.append(
                f"B_noise {p.label}: {_g(h.b_simple) if h.b_simple is not None else 'not resolved'} "
                f"({h.confidence:.0%} band {_g(h.low)} to {_g(h.high)}; G^T H G {h.grad_sq:.3g}, tr(H Sigma) {h.trace_sigma:.3g})"
            )
    repeats = repeats_sentence(report)
    if repeats:
        lines.append(repeats + ".")
    c = report.goodput
    if c is not None:
        lines.append("")
        lines.append(goodput_table(report))
        lines.append("")
        lines.extend(compare(c, report.recommended))
    lines.extend(f"note: {n}" for n in report.notes)
    return lines


def noise_for_search(result: Any, cfg: Any, device: Any, out_dir: Path, *, train_size: int, family: str) -> dict[str, Any]:
    """Measure the noise scale after a search; the payload for study user attr ``noise``.

    Throughput comes from the search's own trials (median per batch size, of the recommended
    normalization when it has trials), so only the gradients are measured anew. The burst uses the
    recommended learning rate rescaled to the burst's batch size: linearly for SGD (Goyal et al. 2017),
    by the square root for Adam-type optimizers (Malladi et al. 2022).
    """
    from batchtune.noise.measure import NoiseConfig, run_noise

    trials = result.trials
    ok = trials[trials["status"] == "ok"].dropna(subset=["throughput"]) if not trials.empty else trials
    rec = result.recommendation
    norm = rec.params["norm"] if rec is not None else None
    source = "median of the search's trials per batch size (all norms)"
    if rec is not None:
        same = ok[ok["norm"] == norm]
        if set(same["batch_size"]) == set(ok["batch_size"]):
            ok, source = same, f"median of the search's {norm}-norm trials per batch size"
    throughput = {int(b): float(t) for b, t in ok.groupby("batch_size")["throughput"].median().items()} if len(ok) else {}
    sizes = tuple((result.summary.get("search_space") or {}).get("batch_sizes") or ()) or None
    if len(throughput) < 2:
        # Too few measured sizes for a curve: time every searched size (the probe's curve would do too).
        throughput, source = {}, "measured by batchtune noise at each searched batch size"
    b_big = min(128, train_size)
    b_small = max(1, min(16, b_big // 4))
    lr = None
    if rec is not None:
        power = 1.0 if family == "sgd" else 0.5
        lr = float(rec.params["lr"]) * (b_small / float(rec.params["batch_size"])) ** power
    # With --target, B_simple is measured where the burst reaches the target metric (it grows steeply near a
    # low loss), training at most twice the trials' epochs.
    until = {} if cfg.target is None else {"burst_until_metric": cfg.target, "burst_epochs": 2 * (cfg.epochs or 1.0)}
    config = NoiseConfig(
        task_path=cfg.task_path, norm=None if norm in (None, "as-built") else norm, lr=lr, b_small=b_small,
        b_big=b_big, batch_sizes=sizes, device=str(device), seed=cfg.seed, threads=cfg.threads, **until,
    )
    report = run_noise(
        config, throughput=throughput or None, throughput_source=source,
        recommended=int(rec.params["batch_size"]) if rec is not None else None,
    )
    return noise_section(report, out_dir, plots=cfg.plots)
