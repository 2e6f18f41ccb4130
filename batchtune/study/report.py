"""Rendering a search result: report.md, trials.csv, summary.json and plots under reports/<study>/."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from batchtune.errors import OutputError
from batchtune.files import ensure_dir, write_json, write_text
from batchtune.study.lr_range import WINDOW_ABOVE, WINDOW_BELOW
from batchtune.units import format_bytes


def _fmt(value: Any, kind: str = "g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if kind == "bytes":
        return format_bytes(value)
    if kind == "int":
        return f"{int(value):,}"
    if kind == "rate":
        return f"{float(value):,.0f}"
    if kind == "pct":
        return f"{float(value):.1%}"
    return f"{float(value):.4g}"


def trial_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_none_"
    view = pd.DataFrame(
        {
            "trial": frame["trial"].astype(int),
            "batch": frame["batch_size"].astype(int),
            "lr": frame["lr"].map(lambda v: f"{v:.3g}"),
            "norm": frame["norm"],
            "metric": frame["metric"].map(_fmt),
            "samples/s": frame["throughput"].map(lambda v: _fmt(v, "rate")),
            "IQR/median": (
                (frame["throughput_q75"] - frame["throughput_q25"]) / frame["throughput"]
            ).map(lambda v: _fmt(v, "pct")),
            "peak memory": frame["peak_memory_bytes"].map(lambda v: _fmt(v, "bytes")),
        }
    )
    if "accumulate" in frame and (frame["accumulate"].fillna(1).astype(int) > 1).any():
        view.insert(2, "micro x steps", [_micro(m, a) for m, a in zip(frame["micro_batch"], frame["accumulate"])])
    return view.to_markdown(index=False)


def _micro(micro: Any, steps: Any) -> str:
    steps = 1 if steps is None or pd.isna(steps) else int(steps)
    return f"{int(micro)} x {steps}" if steps > 1 else "-"


def lr_rule_section(result: Any) -> list[str]:
    """The learning rate to use at each batch size, from the recommended trial's base LR."""
    from batchtune.study import lr_rule

    rec = result.recommendation
    space = result.summary.get("search_space") or {}
    rule = space.get("lr_rule", "none")
    if space.get("objective") == "metric" and rule == "none":
        return []  # the LR windows section says how the LR scales, as measured
    lines = ["## Learning rate by batch size", ""]
    if rec is None or not rec.lr_table:
        lines += [f"The search used {lr_rule.describe(rule)}; pass `--lr-rule linear` or `sqrt` for a table "
                  "of learning rates that transfer across batch sizes.", ""]
        return lines
    warm = result.summary.get("warmup_epochs")
    lines += [
        f"The search sampled a base learning rate at batch {rec.lr_reference_batch} and scaled it to each trial's "
        f"batch size by {lr_rule.describe(rule)}. From the recommended trial's base LR {rec.base_lr:.3g}, use:",
        "",
        pd.DataFrame(
            {
                "batch size": [r["batch_size"] for r in rec.lr_table],
                "learning rate": [f"{r['lr']:.3g}" for r in rec.lr_table],
                "x base": [f"{r['factor']:.3g}" for r in rec.lr_table],
            }
        ).to_markdown(index=False),
        "",
    ]
    if warm:
        lines += [f"Every trial warmed its learning rate up linearly over the first {warm:.3g} epochs; keep a "
                  "warm-up when you train with a scaled-up learning rate (Goyal et al. 2017 use 5 epochs).", ""]
    return lines


def target_section(result: Any) -> list[str]:
    """Samples and time each trial needed to reach --target; pruned trials and misses too."""
    space = result.summary.get("search_space") or {}
    target = space.get("target")
    trials = result.trials
    if target is None or trials.empty:
        return []
    objective = space.get("objective", "pareto")
    rows = trials.sort_values("time_to_target", na_position="last")
    outcome = [
        "reached" if bool(r) is True and s == "ok" else ("pruned" if s == "pruned" else ("missed" if s == "ok" else s))
        for r, s in zip(rows["reached_target"], rows["status"])
    ]
    view = pd.DataFrame(
        {
            "trial": rows["trial"].astype(int),
            "batch": rows["batch_size"].astype(int),
            "lr": rows["lr"].map(lambda v: f"{v:.3g}"),
            "norm": rows["norm"],
            "outcome": outcome,
            "samples to target": rows["samples_to_target"].map(lambda v: _fmt(v, "int")),
            "time to target (s)": rows["time_to_target"].map(_fmt),
            "samples/s": rows["throughput"].map(lambda v: _fmt(v, "rate")),
        }
    )
    lines = ["## Time to target", ""]
    if objective == "time-to-target":
        lines += [
            f"Objective: the estimated training time to first reach a validation metric of {target:g} (minimised). "
            "Each trial stopped as soon as it reached the target; successive halving pruned trials whose learning "
            "curve fell behind at a rung. Trials that never reached it rank behind every one that did.",
            "",
        ]
    else:
        lines += [f"Samples and estimated training time each trial needed to first reach a validation metric of {target:g}.", ""]
    lines += [
        view.to_markdown(index=False),
        "",
        "*time to target* = samples seen at the first evaluation that reached the target / the trial's median "
        "throughput: training time only, resolved to the evaluation interval (--eval-every).",
        "",
    ]
    return lines


def failures_table(frame: pd.DataFrame) -> str:
    bad = frame[(frame["status"] != "ok") | (~frame["feasible"].astype(bool))]
    if bad.empty:
        return "_none: every trial trained, fit the memory budget and stayed finite._"
    view = pd.DataFrame(
        {
            "trial": bad["trial"].astype(int),
            "batch": bad["batch_size"].astype(int),
            "lr": bad["lr"].map(lambda v: f"{v:.3g}"),
            "norm": bad["norm"],
            "status": [s if s != "ok" else "over budget" for s in bad["status"]],
            "reason": bad["reason"].fillna("").map(lambda r: str(r).replace("|", "/")[:160]),
        }
    )
    return view.to_markdown(index=False)


def norm_table(frame: pd.DataFrame, mode: str) -> str:
    if frame.empty:
        return "_none_"
    ok = frame[frame["status"] == "ok"]
    rows = []
    for norm, group in frame.groupby("norm"):
        good = ok[ok["norm"] == norm]
        best = (good["metric"].max() if mode == "max" else good["metric"].min()) if len(good) else None
        rows.append(
            {
                "norm": norm,
                "trials": len(group),
                "ok": len(good),
                "best metric": _fmt(best),
                "median metric": _fmt(good["metric"].median() if len(good) else None),
                "median samples/s": _fmt(good["throughput"].median() if len(good) else None, "rate"),
                "median peak memory": _fmt(good["peak_memory_bytes"].median() if len(good) else None, "bytes"),
            }
        )
    return pd.DataFrame(rows).to_markdown(index=False)


def measured_section(s: dict[str, Any]) -> list[str]:
    """How the default search spent its budget and what it measured: the evidence behind the recommendation."""
    lines: list[str] = []
    warnings = s.get("warnings") or []
    if warnings:
        lines += ["## Warnings: where this answer is weak", ""] + [f"- {w}" for w in warnings] + [""]
    candidates = s.get("candidates") or []
    if candidates:
        from batchtune.study.candidates import retrained

        lines += [
            "## Candidates re-trained on fresh seeds",
            "",
            "The best trials were picked for their one seed, which over-states what they give; each candidate was "
            "re-trained on seeds no trial used, and the recommendation states their mean.",
            "",
        ] if retrained(candidates) else [
            "## Candidates, not re-trained",
            "",
            "--rerun-seeds 0: each figure is its trial's own seed, picked because it scored best, so it over-states "
            "what re-training the configuration gives.",
            "",
        ]
        picked = (s.get("recommendation") or {}).get("trial")
        lines += [
            pd.DataFrame([{
                "trial": f"{c['trial']} (recommended)" if c["trial"] == picked else c["trial"],
                "batch": c["params"]["batch_size"], "lr": f"{c['params']['lr']:.3g}",
                "norm": c["params"]["norm"], "re-trained as": c["why"], "trial's seed": _fmt(c["trial_metric"]),
                "fresh seeds": ", ".join(_fmt(m) if m is not None else "failed" for m in c.get("metrics") or []),
                "mean": _fmt(c.get("mean")), "± (half range)": _fmt(c.get("spread")),
            } for c in candidates]).to_markdown(index=False),
            "",
        ]
    cells = [c for c in s.get("cells") or []]
    if cells:
        lines += [
            "## Speed and memory per cell",
            "",
            "Measured before the trials, in interleaved rounds with a calibration workload before every step, so "
            "the machine's drift cancels: samples/s at the median reference time. The recommendation calls two "
            "cells' speeds different only when the 95% bootstrap interval of their ratio clears a 2% tie band.",
            "",
            pd.DataFrame([{
                "batch": c["batch_size"], "norm": c["norm"], "precision": c["precision"],
                "samples/s": _fmt(c.get("throughput"), "rate"), "peak memory": _fmt(c.get("peak_memory_bytes"), "bytes"),
                "searched": "yes" if c.get("fits") else f"no: {c.get('error') or c.get('over_limit')}"[:80],
            } for c in cells]).to_markdown(index=False),
            "",
        ]
    lr = s.get("lr_range")
    if lr and lr.get("bounds"):
        bounds = lr["bounds"]
        exp = bounds.get("exponent")
        se = bounds.get("exponent_se")
        scaling = (f"On this task the LR at the range test's loss minimum scales as batch^{exp:.2f}"
                   + (f" (± {se:.2f} standard error)" if se is not None else "")
                   + " (linear scaling would be 1, square-root 0.5)." if exp is not None else
                   "Too few range tests gave a signal to fit how the LR scales with the batch size.")
        ends = bounds.get("at_ramp_end") or []
        if ends:
            scaling += (f" At {', '.join(ends)} (batch/norm) the training loss was still falling at the ramp's last LR: "
                        "the loss minimum lies beyond the tested range, so those windows may sit below the best LR (pass "
                        "--lr-min/--lr-max to search higher) and those tests are left out of the scaling fit.")
        lines += [
            "## Learning-rate windows (LR range test)",
            "",
            f"Each cell's LR was sampled log-uniformly in a window measured by an LR range test (Smith 2017, "
            f"sec. 3.3; {lr.get('steps')} steps, LR growing exponentially): from 1/{WINDOW_BELOW:g} of the LR where "
            f"the smoothed training loss was lowest up to {_times(WINDOW_ABOVE)}that LR; untested batch sizes are "
            "interpolated in log-log. " + scaling,
            "",
            pd.DataFrame([{"cell (batch/norm)": k, "low": f"{w[0]:.3g}", "high": f"{w[1]:.3g}"}
                          for k, w in bounds.get("windows", {}).items()]).to_markdown(index=False) if bounds.get("windows")
            else "_no range test gave a signal: a default window was searched_",
            "",
        ]
    compute = s.get("compute")
    if compute:
        rows = [{"phase": k, "trial-equivalents": f"{v:.2f}"} for k, v in (compute.get("spent_trial_equivalents") or {}).items()]
        lines += [
            "## Compute spent",
            "",
            f"Budget: {compute['trial_equivalents']:g} trial-equivalents (one = {compute['trial_samples']:,} training "
            f"samples, a full-length trial); spent {compute.get('total_trial_equivalents', 0):.2f}. Trials pruned by "
            "successive halving (Li et al. 2018) cost what they trained.",
            "",
            pd.DataFrame(rows).to_markdown(index=False) if rows else "_nothing spent_",
            "",
        ]
        cut = {k: v for k, v in (compute.get("interrupted_trial_equivalents") or {}).items() if v}
        if cut:
            lines += ["Included above: measurements that a Ctrl-C cut short and the resumed search measured again ("
                      + ", ".join(f"{k} {v:.2f}" for k, v in cut.items()) + " trial-equivalents; a measurement in "
                      "progress at the interrupt is not counted).", ""]
        left = compute.get("left_out") or {}
        if left:
            lines += ["Batch sizes not searched:", ""] + [f"- {b}: {why}" for b, why in left.items()] + [""]
    return lines


def environment_table(env: dict[str, Any]) -> str:
    rows = [{"": k, "value": (format_bytes(v) if k.endswith("_bytes") and v else v)} for k, v in env.items()]
    return pd.DataFrame(rows).to_markdown(index=False)


def render_markdown(result: Any, plots: dict[str, Path], out_dir: Path) -> str:
    s = result.summary
    trials = result.trials
    mode = s.get("metric_mode", "max")
    rec = result.recommendation
    env = s.get("environment", {})
    counts = ", ".join(f"{v} {k}" for k, v in sorted(s.get("status_counts", {}).items()))
    lines = [
        f"# batchtune report: {result.study_name}",
        "",
        f"Task `{s.get('task')}` on **{env.get('device_name', env.get('device', '?'))}** (`{env.get('device')}`), "
        f"{s['n_trials']} trials ({counts or 'none'}), metric: {'higher' if mode == 'max' else 'lower'} is better. "
        f"Each trial trained a fresh, seeded model for "
        + (
            f"{s['budget']['epochs']:g} epochs"
            if s["budget"].get("epochs")
            else f"{s['budget'].get('budget_samples')} samples"
        )
        + f". Study: `{s.get('storage')}`.",
        "",
        "## Recommendation",
        "",
    ]
    if rec is None:
        lines += ["No trial finished feasibly, so there is nothing to recommend. See the failures below.", ""]
    else:
        p = rec.params
        lines += [
            f"**batch size {p['batch_size']}, learning rate {p['lr']:.3g}, {p['norm']} normalization**"
            + (f", {p['precision']}" if "precision" in p else "")
            + (f" (micro-batches of {p['micro_batch']}, {p['accumulate']} accumulation steps)" if "accumulate" in p else "")
            + f": metric {rec.metric:.4g}, {rec.throughput_text}, {format_bytes(rec.peak_memory_bytes)} peak memory (trial {rec.trial})"
            + (f", {rec.time_to_target:.3g} s to the target." if rec.time_to_target is not None else "."),
            "",
            rec.reason,
            "",
        ]
        if rec.lr_advice:
            lines += [f"Learning rate at another batch size: {rec.lr_advice}", ""]
    lines += lr_rule_section(result) + target_section(result)
    if s.get("norm_note"):
        lines += [f"Normalization: {s['norm_note']}.", ""]
    measured = (s.get("search_space") or {}).get("objective") == "metric"
    if measured:
        lines += measured_section(s)
    else:
        lines += [
            "## Pareto front",
            "",
            "Trials that no other trial beats on all three of metric, throughput and peak memory.",
            "",
            trial_table(result.pareto),
            "",
        ]
    lines += [
        "## Top trials by metric (one seed each)",
        "",
        trial_table(_top(trials, mode)),
        "",
        "## By normalization",
        "",
        norm_table(trials, mode),
        "",
        "## Failed, pruned, infeasible and diverged trials",
        "",
        failures_table(trials) if not trials.empty else "_none_",
        "",
    ]
    extra = s.get("probe")
    if extra:
        from batchtune.probing.report import probe_section

        lines += ["## Probe", "", probe_section(extra, out_dir), ""]
    for key in ("doctor", "noise"):  # sections rendered when measured (batchtune.doctor.report, noise_report)
        section = s.get(key)
        if section and section.get("markdown"):
            lines += [str(section["markdown"]), ""]
    if plots:
        lines += ["## Plots", ""]
        for name, path in plots.items():
            lines += [f"![{name}]({path.relative_to(out_dir).as_posix()})", ""]
    lines += [
        "## Environment",
        "",
        environment_table(env),
        "",
        "## How to read this report",
        "",
        "- *samples/s* is the median of training throughput over synchronised timing windows after "
        "warm-up steps; *IQR/median* shows how noisy it was (10% or more is noisy).",
        "- *peak memory* is `torch.cuda.max_memory_allocated` on CUDA and the peak resident memory of "
        "the trial's process on CPU (reset between trials).",
        ("- The recommendation re-trains the best few configurations on fresh seeds, keeps those whose mean is "
         f"within the tolerance ({rec.tolerance.describe() if rec else 'n/a'}) of the best mean by more than the "
         "gap's standard error, and takes the fastest cell among them only when it is faster beyond the timing "
         "noise." if measured else
         "- The recommendation takes the Pareto-front trials whose metric is within the tolerance "
         f"({rec.tolerance.describe() if rec else 'n/a'}) of the best, then the fastest; throughputs within 2% "
         "are a tie, broken by lower peak memory."),
        "",
        f"Regenerate this report: `batchtune report --study {result.study_name} --storage {s.get('storage')}`",
        "",
    ]
    return "\n".join(lines)


def _top(trials: pd.DataFrame, mode: str, n: int = 10) -> pd.DataFrame:
    ok = trials[trials["status"] == "ok"].dropna(subset=["metric"])
    return ok.sort_values("metric", ascending=(mode == "min")).head(n)


def write_search_report(result: Any, out_dir: Path, *, plots: bool = True) -> dict[str, Path]:
    """Write report.md, trials.csv, summary.json and the plots; returns what was written."""
    ensure_dir(out_dir)
    paths: dict[str, Path] = {}
    plot_paths: dict[str, Path] = {}
    if plots:
        from batchtune.study.plots import search_plots

        try:
            rec = result.recommendation
            rec_trial = rec.trial if rec else None
            rec_cell = (int(rec.params["batch_size"]), str(rec.params["norm"])) if rec else None
            plot_paths = search_plots(result.trials, result.curves, out_dir / "plots", rec_trial,
                                      cells=result.summary.get("cells"), rec_cell=rec_cell, summary=result.summary)
        except OSError as exc:
            raise OutputError(f"cannot write plots under {out_dir}: {exc.strerror}; free disk space or pass another --output") from None
    csv = result.trials.drop(columns=[], errors="ignore").to_csv(index=False)
    paths["csv"] = write_text(out_dir / "trials.csv", csv)
    paths["json"] = write_json(out_dir / "summary.json", result.summary)
    paths["markdown"] = write_text(out_dir / "report.md", render_markdown(result, plot_paths, out_dir))
    paths.update({f"plot:{k}": v for k, v in plot_paths.items()})
    return paths


def summary_json(result: Any) -> str:
    return json.dumps(result.summary, indent=2, allow_nan=False)


def _times(factor: float) -> str:
    """"half of ", "twice ", "3x ": a multiple of the loss minimum's LR in words, before "that LR"."""
    return {0.5: "half of ", 1.0: "", 2.0: "twice "}.get(factor, f"{factor:g}x ")
