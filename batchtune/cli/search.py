"""``batchtune search``: the study over batch size, learning rate and normalization."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from batchtune.cli.options import (
    echo_wrapped,
    fraction_option,
    handle_errors,
    int_list,
    size_option,
    stdout_to_stderr,
    str_list,
    tolerance_option,
)
from batchtune.units import (
    format_bytes,
)


def _search_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--budget", type=float, default=None, help="Compute budget in trial-equivalents (full-length trials' worth of training), every phase counted [default: 30]."),
        click.option("--trials", type=int, default=None, help="Trials the study should have in total (a rerun adds the missing ones) [default: as many as --budget allows; 20 under --objective pareto or time-to-target]."),
        click.option("--timeout", type=float, default=None, help="Stop starting new trials after this many seconds."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampler and of every trial's model and data order."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps."),
        click.option("--study", default=None, help="Study name [default: the task file's stem]."),
        click.option("--storage", default=None, help="Optuna storage URL [default: sqlite:///studies/<study>.db]."),
        click.option("--memory-budget", callback=size_option, default=None, help="Peak memory limit, e.g. 6GiB; trials above it are infeasible."),
        click.option("--batch-size-min", type=int, default=8, show_default=True, help="Smallest batch size searched: powers of two from it up to --batch-size-max."),
        click.option("--batch-size-max", type=int, default=None, help="Largest batch size searched (sizes that do not fit in memory are dropped by the probe) [default: the training set size, at most 1024]."),
        click.option("--batch-sizes", callback=int_list, default=None, help="Explicit list instead of powers of two, e.g. 16,48,96."),
        click.option("--lr-min", type=float, default=None, help="Fixed LR range instead of the measured one (with --lr-max) [default: each cell's window from an LR range test; 1e-4 under --lr-rule or another objective]."),
        click.option("--lr-max", type=float, default=None, help="Upper end of a fixed LR range [default: measured; 0.3 under --lr-rule or another objective]; under an --lr-rule, of the base LR at the reference batch."),
        click.option("--lr-rule", type=click.Choice(["auto", "linear", "sqrt", "none"]), default=None,
                     help="Scale a base LR to each batch size: linear (SGD, Goyal et al. 2017), sqrt (Adam-type, Malladi et al. 2022); auto picks from the optimizer [default: none under --objective metric, auto otherwise]."),
        click.option("--lr-reference-batch", type=int, default=None, help="Batch size of the base LR [default: 256, clipped into the searched range]."),
        click.option("--warmup-epochs", type=float, default=None, help="Linear LR warm-up per trial [default: 5% of the trial under the linear rule, else 0]."),
        click.option("--objective", type=click.Choice(["metric", "pareto", "time-to-target"]), default="metric", show_default=True,
                     help="metric: the budgeted search (LR range tests, successive halving, re-runs; speed from the cells); pareto: metric, throughput and memory; time-to-target: least training time to reach --target."),
        click.option("--candidates", type=int, default=4, show_default=True, help="Configurations re-trained on fresh seeds before recommending (--objective metric)."),
        click.option("--rerun-seeds", type=int, default=2, show_default=True, help="Fresh seeds per candidate; 0 states one seed's best-of-many (--objective metric)."),
        click.option("--target", type=float, default=None, help="Metric value whose time to reach each trial records, e.g. 0.95."),
        click.option("--accumulate", type=int, default=1, show_default=True,
                     help="Up to this many micro-batches per optimizer step: reaches batch sizes above the largest that fits (--batch-size-max)."),
        click.option("--norms", callback=str_list, default=None, help="Restrict normalization choices, e.g. batch,group."),
        click.option("--precisions", callback=str_list, default=None, help="Search precisions too: fp32,bf16,fp16."),
        click.option("--epochs", type=float, default=None, help="Training budget per trial in epochs (fractions allowed) [default: 3]."),
        click.option("--budget-samples", type=int, default=None, help="Training budget per trial in samples, instead of --epochs."),
        click.option("--eval-every", type=float, default=None, help="Evaluate every this many epochs [default: each epoch; a quarter epoch under --objective time-to-target]."),
        click.option("--trial-timeout", type=float, default=1800, show_default=True, help="Seconds before a hung trial is killed; it is recorded with status timeout."),
        click.option("--tolerance", callback=tolerance_option, default=None, help="How far from the best metric still counts: 0.5pp, 1% or 0.01 [default: 1pp for a metric in [0, 1] where higher is better, else 1%]."),
        click.option("--current-batch-size", type=int, default=None, help="The batch size you train with now; the report says how to rescale your learning rate."),
        click.option("--threads", type=int, default=None, help="CPU threads per trial [default: cores / workers]."),
        click.option("--workers", type=int, default=None, help="Trials run at once on this machine [default: one per GPU on CUDA, else 1]."),
        click.option("--heartbeat-interval", type=int, default=10, show_default=True, help="Seconds between a running trial's heartbeats in the storage."),
        click.option("--heartbeat-grace", type=int, default=60, show_default=True, help="Seconds without a heartbeat before another worker fails a trial and retries it once."),
        click.option("--output", "output_dir", default="reports", show_default=True, help="Folder for reports."),
        click.option("--no-plots", is_flag=True, help="Skip the PNG plots."),
        click.option("--doctor/--no-doctor", default=True, show_default=True, help="Run the batch doctor first (see `batchtune check`)."),
        click.option("--noise", is_flag=True, help="Measure the gradient noise scale and goodput after the trials (see `batchtune noise`)."),
        click.option("--json", "as_json", is_flag=True, help="Print summary.json to stdout instead of the table."),
        click.option("--no-probe", is_flag=True, help="Skip the probe that drops batch sizes which do not fit (see `batchtune probe`)."),
        click.option("--headroom", callback=fraction_option, default="10%", show_default=True, help="Memory kept free: the probe allows sizes whose peak stays under (1 - headroom) of the budget or device memory."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.command("search")
@click.argument("task", type=click.Path(dir_okay=False, path_type=str))
@_search_options
@handle_errors
def command(task: str, **opts: Any) -> None:
    """Search batch size, learning rate and normalization for TASK (a task file, see README)."""
    from batchtune.study.config import SearchConfig

    as_json = opts.pop("as_json")
    plots = not opts.pop("no_plots")
    if opts["epochs"] is not None and opts["budget_samples"] is not None:
        raise click.UsageError("give either --epochs or --budget-samples, not both")
    if opts["epochs"] is None:
        opts["epochs"] = None if opts["budget_samples"] is not None else 3.0
    opts["precisions"] = opts["precisions"] or ("fp32",)
    opts["probe"] = not opts.pop("no_probe")
    min_source = click.get_current_context().get_parameter_source("batch_size_min")
    if opts["batch_sizes"] is not None and min_source is not click.core.ParameterSource.DEFAULT:
        raise click.UsageError("--batch-size-min does not apply with --batch-sizes (the list is searched as given); drop one of them")
    # Validated here so that bad input is one line, before any warning about the machine.
    config = SearchConfig(task_path=task, plots=plots, **opts).validated()
    from batchtune.trial.device import busy_machine

    if busy := busy_machine(config.threads):
        echo_wrapped(f"warning: {busy}", err=True)
    _run_search(config, as_json)


def _run_search(config: Any, as_json: bool) -> None:
    from batchtune.cli.live import make_display
    from batchtune.study.run import search as run_search

    display = make_display()

    def on_start(info: dict[str, Any]) -> None:
        if info.get("doctor"):
            display.findings(info["doctor"])
        display.note(
            f"study {info['study']} ({info['storage']}) on {info['device']}: batch sizes "
            f"{','.join(map(str, info['batch_sizes']))}; norms {','.join(info['norms'])}; "
            f"{info['workers']} worker(s)"
        )
        left_out = info.get("left_out") or {}
        short = [str(b) for b, why in left_out.items() if "optimizer steps per trial" in why]
        if short:
            display.note(f"batch sizes {', '.join(short)} left out: fewer than 50 optimizer steps per trial, too few "
                         "to judge within the budget; raise --epochs, or pass --batch-sizes to search them anyway")
        for size, why in left_out.items():
            if str(size) not in short:
                display.note(f"batch size {size} left out: {why}")
        if info.get("lr_rule") not in (None, "none"):
            display.note(f"lr rule {info['lr_rule']}: --lr-min/--lr-max bound the base lr at batch "
                         f"{info['lr_reference_batch']}")
        display.phase("running the trials (samples/s: each trial's own timing, a cross-check)")

    try:
        with stdout_to_stderr(as_json):
            result = run_search(config, on_event=display.trial_finished, on_start=on_start, on_phase=display.phase,
                                on_update=display.trial_update)
    finally:
        display.close()
    render_result(result, as_json)
    if result.interrupted:
        click.echo("interrupted: the running trial was recorded as failed; the report covers what finished", err=True)
        sys.exit(130)
    if result.recommendation is None:
        from batchtune.study.summary import unrecommended_reasons

        where = f"; every reason is in {result.paths['markdown']}" if "markdown" in result.paths else ""
        raise click.ClickException(f"no trial finished feasibly, nothing to recommend: {unrecommended_reasons(result.trials)}{where}")


def render_result(result: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result.summary, indent=2))
        return
    rec = result.recommendation
    click.echo("")
    if rec is None:
        click.echo("No trial finished feasibly; nothing to recommend (see the failures in the report).")
    else:
        p = rec.params
        micro = f" as {p['micro_batch']} x {p['accumulate']} accumulated micro-batches" if "accumulate" in p else ""
        ttt = f", {rec.time_to_target:.3g} s to target" if rec.time_to_target is not None else ""
        echo_wrapped(
            f"Recommended: batch size {p['batch_size']}{micro}, lr {p['lr']:.3g}, {p['norm']} norm "
            f"(metric {rec.metric:.4g}, {rec.throughput_text}, {format_bytes(rec.peak_memory_bytes)}{ttt})"
        )
        echo_wrapped(rec.reason)
        if rec.lr_table:
            pairs = ", ".join(f"{r['batch_size']}: {r['lr']:.3g}" for r in rec.lr_table)
            click.echo(f"lr by batch size ({rec.lr_rule} rule, base {rec.base_lr:.3g} at batch {rec.lr_reference_batch}): {pairs}")
        if rec.lr_advice:
            click.echo(rec.lr_advice)
    summary = result.summary
    for warning in summary.get("warnings") or []:
        echo_wrapped(f"warning: {warning}")
    if summary.get("candidates"):
        click.echo("")
        from batchtune.study.candidates import retrained

        if retrained(summary["candidates"]):
            click.echo("Candidates re-trained on fresh seeds (* recommended):")
        else:
            echo_wrapped("Candidates, not re-trained (--rerun-seeds 0: each figure is its trial's own seed; * recommended):")
        picked = (summary.get("recommendation") or {}).get("trial")
        for c in summary["candidates"]:
            q = c["params"]
            mean = f"{c['mean']:.4g}" if c.get("mean") is not None else "failed"
            spread = f" ± {c['spread']:.2g}" if c.get("spread") is not None else ""
            # Why it was re-trained: "best trial" ranks the trials' own seeds, not the fresh seeds' means.
            why = {"best trial": "best trial", "faster cell close to the best": "faster, near best",
                   "best of another cell": "other cell"}.get(c["why"], c["why"])
            mark = "*" if c["trial"] == picked else " "
            click.echo(f"{mark} trial {c['trial']:<3} b{q['batch_size']:<4} lr {q['lr']:<8.3g} {q['norm']:<6} {mean}{spread} "
                       f"(own seed {c['trial_metric']:.4g}; {why})")
    compute = summary.get("compute")
    if compute:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in compute.get("spent_trial_equivalents", {}).items())
        echo_wrapped(f"Compute: {compute.get('total_trial_equivalents', 0):.1f} of {compute['trial_equivalents']:g} "
                 f"trial-equivalents ({parts})")
    if not result.pareto.empty:
        from batchtune.cli.live import pareto_lines

        click.echo("")
        click.echo("Pareto front (the full table is in report.md):")
        for line in pareto_lines(result.pareto):
            click.echo(line)
    click.echo("")
    for name, path in result.paths.items():
        if not name.startswith("plot:"):
            click.echo(f"wrote {path}")
    if any(n.startswith("plot:") for n in result.paths):
        plots = sorted({str(p.parent) for n, p in result.paths.items() if n.startswith("plot:")})
        click.echo(f"wrote plots under {', '.join(plots)}")
