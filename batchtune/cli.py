"""The command line. Each command parses, calls one library function and renders the result.

Heavy modules (torch, optuna, pandas, matplotlib) are imported inside the commands, so that
``batchtune --help`` answers at once; tests/test_cli_imports.py holds this to an allowlist.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from batchtune import __version__
from batchtune.errors import BatchtuneError
from batchtune.units import (
    format_bytes,
    parse_flops,
    parse_fraction,
    parse_size,
    redact_url,
)


class Failure(click.ClickException):
    """A library error shown as one line, exiting with the error's code (2 for bad input)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # per instance: 1 or 2


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool((click.get_current_context().find_root().obj or {}).get("debug"))
        try:
            return fn(*args, **kwargs)
        except BatchtuneError as exc:
            if debug:
                raise
            raise Failure(redact_url(str(exc)), exc.exit_code) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if debug:
                raise
            text = (str(exc).strip().splitlines() or [""])[0]
            raise Failure(
                redact_url(f"internal error: {type(exc).__name__}: {text} (run `batchtune --debug ...` for the traceback)"), 1
            ) from None

    return wrapper


def _int_list(ctx: Any, param: Any, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(int(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers such as 16,48,96") from None
    if not out or any(v < 1 for v in out):
        raise click.BadParameter(f"{value!r}: every batch size must be a positive integer, e.g. 16,48,96")
    return out


def _str_list(ctx: Any, param: Any, value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    out = tuple(v.strip() for v in value.split(",") if v.strip())
    if not out:
        raise click.BadParameter("give at least one value, comma-separated")
    return out


def _size(ctx: Any, param: Any, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value, option=param.opts[0])
    except BatchtuneError as exc:
        raise click.BadParameter(str(exc)) from None


def _fraction(ctx: Any, param: Any, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_fraction(value, option=param.opts[0])
    except BatchtuneError as exc:
        raise click.BadParameter(str(exc)) from None


def _flops(ctx: Any, param: Any, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_flops(value, option=param.opts[0])
    except BatchtuneError as exc:
        raise click.BadParameter(str(exc)) from None


def _tolerance(ctx: Any, param: Any, value: str | None) -> Any:
    if value is None:
        return None
    from batchtune.config import parse_tolerance

    try:
        return parse_tolerance(value)
    except BatchtuneError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="batchtune")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: int) -> None:
    """Find the batch size, learning rate and normalization that train your PyTorch model best on
    this hardware, and catch training-speed regressions in CI."""
    ctx.obj = {"debug": debug}
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


# ----------------------------------------------------------------------------------------- search


def _search_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--trials", type=int, default=20, show_default=True, help="Trials the study should have in total (a rerun adds the missing ones)."),
        click.option("--timeout", type=float, default=None, help="Stop starting new trials after this many seconds."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampler and of every trial's model and data order."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps."),
        click.option("--study", default=None, help="Study name [default: the task file's stem]."),
        click.option("--storage", default=None, help="Optuna storage URL [default: sqlite:///studies/<study>.db]."),
        click.option("--memory-budget", callback=_size, default=None, help="Peak memory limit, e.g. 6GiB; trials above it are infeasible."),
        click.option("--batch-size-min", type=int, default=8, show_default=True),
        click.option("--batch-size-max", type=int, default=None, help="[default: the training set size, at most 1024]"),
        click.option("--batch-sizes", callback=_int_list, default=None, help="Explicit list instead of powers of two, e.g. 16,48,96."),
        click.option("--lr-min", type=float, default=1e-4, show_default=True),
        click.option("--lr-max", type=float, default=0.3, show_default=True, help="LR range; under an --lr-rule, of the base LR at the reference batch."),
        click.option("--lr-rule", type=click.Choice(["auto", "linear", "sqrt", "none"]), default="auto", show_default=True,
                     help="Scale a base LR to each batch size: linear (SGD, Goyal et al. 2017), sqrt (Adam-type, Malladi et al. 2022); auto picks from the optimizer."),
        click.option("--lr-reference-batch", type=int, default=None, help="Batch size of the base LR [default: 256, clipped into the searched range]."),
        click.option("--warmup-epochs", type=float, default=None, help="Linear LR warm-up per trial [default: 5% of the trial under the linear rule, else 0]."),
        click.option("--objective", type=click.Choice(["pareto", "time-to-target"]), default="pareto", show_default=True,
                     help="pareto: metric, throughput and memory; time-to-target: least training time to reach --target, with pruning."),
        click.option("--target", type=float, default=None, help="Metric value whose time to reach each trial records, e.g. 0.95."),
        click.option("--accumulate", type=int, default=1, show_default=True,
                     help="Up to this many micro-batches per optimizer step: reaches batch sizes above the largest that fits (--batch-size-max)."),
        click.option("--norms", callback=_str_list, default=None, help="Restrict normalization choices, e.g. batch,group."),
        click.option("--precisions", callback=_str_list, default=None, help="Search precisions too: fp32,bf16,fp16."),
        click.option("--epochs", type=float, default=None, help="Training budget per trial in epochs (fractions allowed) [default: 3]."),
        click.option("--budget-samples", type=int, default=None, help="Training budget per trial in samples, instead of --epochs."),
        click.option("--eval-every", type=float, default=None, help="Evaluate every this many epochs [default: each epoch; a quarter epoch under --objective time-to-target]."),
        click.option("--trial-timeout", type=float, default=1800, show_default=True, help="Seconds before a hung trial is killed and recorded failed."),
        click.option("--tolerance", callback=_tolerance, default=None, help="How far from the best metric still counts: 0.5pp, 1% or 0.01 [default: 0.5pp for accuracy-like metrics, else 1%]."),
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
        click.option("--headroom", callback=_fraction, default="10%", show_default=True, help="Memory kept free: the probe allows sizes whose peak stays under (1 - headroom) of the budget or device memory."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@cli.command()
@click.argument("task", type=click.Path(dir_okay=False, path_type=str))
@_search_options
@handle_errors
def search(task: str, **opts: Any) -> None:
    """Search batch size, learning rate and normalization for TASK (a task file, see README)."""
    from batchtune.config import SearchConfig

    as_json = opts.pop("as_json")
    plots = not opts.pop("no_plots")
    if opts["epochs"] is not None and opts["budget_samples"] is not None:
        raise click.UsageError("give either --epochs or --budget-samples, not both")
    if opts["epochs"] is None:
        opts["epochs"] = None if opts["budget_samples"] is not None else 3.0
    opts["precisions"] = opts["precisions"] or ("fp32",)
    opts["probe"] = not opts.pop("no_probe")
    config = SearchConfig(task_path=task, plots=plots, **opts)
    _run_search(config, as_json)


def _run_search(config: Any, as_json: bool) -> None:
    from batchtune.study import search as run_search

    lock = threading.Lock()

    def on_start(info: dict[str, Any]) -> None:
        click.echo(
            f"study {info['study']} ({info['storage']}) on {info['device']}: batch sizes "
            f"{','.join(map(str, info['batch_sizes']))}; norms {','.join(info['norms'])}; "
            f"{info['workers']} worker(s)",
            err=True,
        )
        if info.get("lr_rule") not in (None, "none"):
            click.echo(f"lr rule {info['lr_rule']}: --lr-min/--lr-max bound the base lr at batch {info['lr_reference_batch']}", err=True)

    def on_event(ev: Any) -> None:
        width = 20
        filled = int(width * min(ev.done, ev.total) / max(1, ev.total))
        bar = "#" * filled + "-" * (width - filled)
        p = ev.params
        what = f"batch {p['batch_size']:>5} lr {p['lr']:.2e} {p['norm']:<8}"
        if p.get("accumulate", 1) > 1:
            what += f" ({p['micro_batch']}x{p['accumulate']})"
        if ev.status == "ok":
            detail = f"metric {ev.metric:.4f}  {ev.throughput:>10,.0f} samples/s  {format_bytes(ev.peak_memory_bytes):>10}"
        else:
            detail = f"{ev.status.upper()}: {(ev.reason or '')[:70]}"
        best = f"best {ev.best_metric:.4f}" if ev.best_metric is not None else "best -"
        with lock:
            click.echo(f"[{bar}] {ev.done:>3}/{ev.total}  #{ev.number:<3} {what} {detail}  | {best}", err=True)

    result = run_search(config, on_event=on_event, on_start=on_start)
    _render_result(result, as_json)
    if result.interrupted:
        click.echo("interrupted: the running trial was recorded as failed; the report covers what finished", err=True)
        sys.exit(130)


def _render_result(result: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result.summary, indent=2))
        return
    from batchtune.reporting import trial_table

    rec = result.recommendation
    click.echo("")
    if rec is None:
        click.echo("No trial finished feasibly; nothing to recommend (see the failures in the report).")
    else:
        p = rec.params
        micro = f" as {p['micro_batch']} x {p['accumulate']} accumulated micro-batches" if "accumulate" in p else ""
        ttt = f", {rec.time_to_target:.3g} s to target" if rec.time_to_target is not None else ""
        click.echo(
            f"Recommended: batch size {p['batch_size']}{micro}, lr {p['lr']:.3g}, {p['norm']} norm "
            f"(metric {rec.metric:.4g}, {rec.throughput:,.0f} samples/s, {format_bytes(rec.peak_memory_bytes)}{ttt})"
        )
        click.echo(rec.reason)
        if rec.lr_table:
            pairs = ", ".join(f"{r['batch_size']}: {r['lr']:.3g}" for r in rec.lr_table)
            click.echo(f"lr by batch size ({rec.lr_rule} rule, base {rec.base_lr:.3g} at batch {rec.lr_reference_batch}): {pairs}")
        if rec.lr_advice:
            click.echo(rec.lr_advice)
    click.echo("")
    click.echo("Pareto front:")
    click.echo(trial_table(result.pareto))
    click.echo("")
    for name, path in result.paths.items():
        if not name.startswith("plot:"):
            click.echo(f"wrote {path}")
    if any(n.startswith("plot:") for n in result.paths):
        plots = sorted({str(p.parent) for n, p in result.paths.items() if n.startswith("plot:")})
        click.echo(f"wrote plots under {', '.join(plots)}")


# ------------------------------------------------------------------------------------------ probe


@cli.command()
@click.argument("task", type=click.Path(dir_okay=False, path_type=str))
@click.option("--norms", callback=_str_list, default=None, help="Normalization choices to probe, e.g. batch,group [default: all the task allows].")
@click.option("--precision", "precisions", callback=_str_list, default="fp32", show_default=True, help="Comma-separated fp32,bf16,fp16; each is its own curve (autocast).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--memory-budget", callback=_size, default=None, help="Peak memory limit, e.g. 6GiB; sizes above it do not fit.")
@click.option("--headroom", callback=_fraction, default="10%", show_default=True, help="Recommended maximum: peak under (1 - headroom) of the budget or device memory.")
@click.option("--knee", callback=_fraction, default="5%", show_default=True, help="Knee: smallest size within this of the best throughput.")
@click.option("--granularity", type=int, default=None, help="Bisect down to this gap [default: 8 on a GPU, 1 elsewhere].")
@click.option("--batch-size-min", type=int, default=8, show_default=True, help="First size; the probe doubles from it.")
@click.option("--batch-size-max", type=int, default=None, help="Largest size to try [default: the training set size].")
@click.option("--peak-flops", callback=_flops, default=None, help="Peak FLOP/s for MFU, e.g. 312T [default: the datasheet table].")
@click.option("--threads", type=int, default=None, help="CPU threads [default: torch's default].")
@click.option("--time-cap", type=float, default=0.5, show_default=True, help="Seconds of timed steps per size, at most.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--output", "output_dir", default="reports", show_default=True, help="Folder for reports.")
@click.option("--name", default=None, help="Report folder name [default: the task file's stem].")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@click.option("--json", "as_json", is_flag=True, help="Print probe.json to stdout instead of the table.")
@handle_errors
def probe(task: str, output_dir: str, no_plots: bool, as_json: bool, **opts: Any) -> None:
    """Measure which batch sizes fit TASK on this device, how fast each trains, and where speed stops growing."""
    from batchtune.probe_report import terminal_table, write_probe_report
    from batchtune.probing import ProbeConfig
    from batchtune.probing import probe as run_probe

    config = ProbeConfig(task_path=task, output_dir=output_dir, plots=not no_plots, **opts)

    def on_start(info: dict[str, Any]) -> None:
        click.echo(
            f"probing {Path(task).name} on {info['device']}: norms {','.join(info['norms'])}; precisions "
            f"{','.join(info['precisions'])}; sizes {config.batch_size_min}..{info['ceiling']}, granularity "
            f"{info['granularity']}; limit {format_bytes(info['limit_bytes'])} ({info['limit_source']})",
            err=True,
        )

    def on_point(norm: str, precision: str, p: Any) -> None:
        what = f"{norm:<8} {precision:<5} batch {p.batch_size:>6}"
        if p.fits:
            detail = f"{p.throughput:>12,.0f} samples/s  {format_bytes(p.peak_memory_bytes):>10}"
        else:
            detail = f"does not fit: {p.status}: {(p.reason or '')[:80]}"
        click.echo(f"  {what}  {detail}", err=True)

    result = run_probe(config, on_point=on_point, on_start=on_start)
    paths = write_probe_report(result, Path(output_dir) / config.report_name, plots=not no_plots)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    click.echo("")
    click.echo(terminal_table(result))
    click.echo("")
    for name, path in paths.items():
        if not name.startswith("plot:"):
            click.echo(f"wrote {path}")
    if any(n.startswith("plot:") for n in paths):
        click.echo(f"wrote plots under {Path(output_dir) / config.report_name / 'plots'}")


# ----------------------------------------------------------------------------------------- report


@cli.command()
@click.option("--study", required=True, help="Study name.")
@click.option("--storage", default=None, help="Optuna storage URL [default: sqlite:///studies/<study>.db].")
@click.option("--output", "output_dir", default="reports", show_default=True)
@click.option("--tolerance", callback=_tolerance, default=None)
@click.option("--current-batch-size", type=int, default=None)
@click.option("--no-plots", is_flag=True)
@click.option("--json", "as_json", is_flag=True, help="Print summary.json to stdout.")
@handle_errors
def report(study: str, storage: str | None, output_dir: str, tolerance: Any, current_batch_size: int | None,
           no_plots: bool, as_json: bool) -> None:
    """Regenerate the report of a stored study (from any machine that reaches its storage)."""
    from batchtune.api import report as make_report

    result = make_report(
        study=study, storage=storage, output_dir=output_dir, tolerance=tolerance,
        current_batch_size=current_batch_size, plots=not no_plots,
    )
    _render_result(result, as_json)


# ------------------------------------------------------------------------------------ noise and check


@cli.command()
@click.argument("task", type=click.Path(dir_okay=False, path_type=str))
@click.option("--norm", default=None, help="Normalization of the model to measure [default: the first the search would try].")
@click.option("--lr", type=float, default=None, help="Learning rate of the training burst [default: 0.05 for SGD, 1e-3 for Adam-type].")
@click.option("--batch-small", type=int, default=16, show_default=True, help="The smaller of the two measured batch sizes (and the burst's batch).")
@click.option("--batch-big", type=int, default=128, show_default=True, help="The larger measured batch size.")
@click.option("--steps", type=int, default=30, show_default=True, help="Gradient measurements averaged per phase.")
@click.option("--burst-epochs", type=float, default=1.0, show_default=True, help="Training before the second measurement (0: at initialisation only).")
@click.option("--burst-until-loss", type=float, default=None,
              help="Stop the burst once the validation loss is at or below this, and measure there (--burst-epochs is then the cap).")
@click.option("--burst-until-metric", type=float, default=None,
              help="The same with the task's metric: stop once it is this or better (e.g. 0.97 accuracy).")
@click.option("--curvature", is_flag=True,
              help="Also estimate B_noise = tr(H Sigma)/(G^T H G) with Hessian-vector products (slower); goodput uses it.")
@click.option("--repeats", type=int, default=1, show_default=True,
              help="Measure at this many seeds and report the median; the goodput band spans them (3 is a good choice near a low loss).")
@click.option("--batch-sizes", callback=_int_list, default=None, help="Goodput candidates [default: powers of two from --batch-small].")
@click.option("--throughput-steps", type=int, default=20, show_default=True, help="Timed steps per candidate batch size.")
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None, help="CPU threads for the measurements.")
@click.option("--output", "output_dir", default="reports", show_default=True, help="Folder for reports.")
@click.option("--name", default=None, help="Report folder name under --output [default: the task file's stem].")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plot.")
@click.option("--json", "as_json", is_flag=True, help="Print noise.json to stdout instead of the summary.")
@click.option("--batchnorm-stats", "bn_stats", type=click.Choice(["batch", "running"]), default="batch", show_default=True,
              help="BatchNorm while measuring: batch statistics as in training, or precise running statistics, frozen (per-sample gradients independent).")
@handle_errors
def noise(task: str, norm: str | None, lr: float | None, batch_small: int, batch_big: int, steps: int,
          burst_epochs: float, burst_until_loss: float | None, burst_until_metric: float | None, curvature: bool, repeats: int,
          batch_sizes: tuple[int, ...] | None, throughput_steps: int, device: str, seed: int, threads: int | None,
          output_dir: str, name: str | None, no_plots: bool, as_json: bool, bn_stats: str) -> None:
    """Measure the gradient noise scale of TASK and the batch size that maximises goodput."""
    from batchtune.noise import NoiseConfig, run_noise
    from batchtune.noise_report import noise_lines, write_noise_report
    from batchtune.summary import _clean

    config = NoiseConfig(
        task_path=task, norm=norm, lr=lr, b_small=batch_small, b_big=batch_big, steps=steps,
        burst_epochs=burst_epochs, burst_until_loss=burst_until_loss,
        burst_until_metric=burst_until_metric, curvature=curvature, repeats=repeats, batch_sizes=batch_sizes,
        throughput_steps=throughput_steps, device=device, seed=seed, threads=threads, bn_stats=bn_stats,
    )
    result = run_noise(config)
    paths = write_noise_report(result, Path(output_dir) / (name or Path(task).stem), plots=not no_plots)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        click.echo(json.dumps(_clean(result.to_dict()), indent=2))
        return
    for line in noise_lines(result):
        click.echo(line)
    click.echo("")
    for path in paths.values():
        click.echo(f"wrote {path}")


# ------------------------------------------------------------------------------------ bench gate


def _metric_drop(ctx: Any, param: Any, value: str | None) -> Any:
    if value is None:
        return None
    from batchtune.config import parse_tolerance

    try:
        return parse_tolerance(value)
    except BatchtuneError as exc:
        raise click.BadParameter(str(exc).replace("--tolerance", "--max-metric-drop")) from None


def _gate_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--max-slowdown", callback=_fraction, default="5%", show_default=True,
                     help="Fail when a training step takes this much longer and the change is significant."),
        click.option("--max-memory-increase", callback=_fraction, default="3%", show_default=True,
                     help="Fail when peak memory grows by more than this."),
        click.option("--max-metric-drop", callback=_metric_drop, default="0.5%", show_default=True,
                     help="Fail when the metric after --epochs gets worse by more than this: 0.5% (relative), 0.5pp or 0.01."),
        click.option("--quantile", type=click.FloatRange(0.01, 0.99), default=0.5, show_default=True,
                     help="Quantile of the step times (on a CPU: step time / reference time) the speed decision compares."),
        click.option("--allow-mismatch", is_flag=True, help="Compare even when hardware, versions, task file or configuration differ (else exit 3)."),
        click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON instead of the markdown table."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _thresholds(max_slowdown: float, max_memory_increase: float, max_metric_drop: Any, quantile: float) -> Any:
    from batchtune.gate import Thresholds

    return Thresholds(max_slowdown=max_slowdown, max_memory_increase=max_memory_increase,
                      max_metric_drop=max_metric_drop, quantile=quantile)


def _emit_decision(decision: Any, as_json: bool) -> None:
    """Print the decision, append it to $GITHUB_STEP_SUMMARY when set, and exit with its code."""
    import os

    from batchtune.gate import render_markdown

    markdown = render_markdown(decision)
    click.echo(json.dumps(decision.to_dict(), indent=2) if as_json else markdown)
    _step_summary(markdown, os.environ.get("GITHUB_STEP_SUMMARY"))
    sys.exit(decision.exit_code)


def _step_summary(markdown: str, path: str | None) -> None:
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(markdown + "\n")
    except OSError as exc:
        click.echo(f"warning: cannot append to $GITHUB_STEP_SUMMARY ({path}): {exc.strerror}", err=True)


@cli.command()
@click.argument("task", type=click.Path(dir_okay=False, path_type=str))
@click.option("--batch-size", type=int, default=None, help="Batch size to check [default: 32, or the training set size if smaller].")
@click.option("--norm", default=None, help="Normalization of the model [default: the first the search would try].")
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@handle_errors
def check(task: str, batch_size: int | None, norm: str | None, device: str, seed: int, as_json: bool) -> None:
    """Check TASK's batches for pitfalls (the batch doctor). Exits 1 when a finding is an error."""
    from batchtune.doctor_report import diagnose_isolated, doctor_lines
    from batchtune.task import load_task

    if batch_size is not None and batch_size < 1:
        raise click.BadParameter(f"{batch_size} must be a positive batch size, e.g. 32", param_hint="--batch-size")
    load_task(task)  # a broken file is reported here, before a process starts
    diagnosis = diagnose_isolated(task=task, batch_sizes=[batch_size] if batch_size else None, norm=norm, device=device,
                                  seed=seed)
    if as_json:
        click.echo(json.dumps(diagnosis.to_dict(), indent=2))
    else:
        for line in doctor_lines(diagnosis):
            click.echo(line)
    sys.exit(diagnosis.exit_code)


@cli.command()
@click.argument("task", type=click.Path(dir_okay=False, path_type=str))
@click.option("--batch-size", type=int, default=None, help="Batch size to measure (required unless --compare gives it).")
@click.option("--lr", type=float, default=None, help="Learning rate [default: 0.05].")
@click.option("--norm", default=None, help="Normalization: batch, group, layer or none [default: the task's first NORMS, else batch].")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default=None, help="[default: fp32]")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--threads", type=int, default=None, help="CPU threads, pinned and recorded [default: 1].")
@click.option("--clock", type=click.Choice(["auto", "cpu", "wall"]), default=None,
              help="Step timer: cpu (process CPU time), wall, or auto: cpu on a CPU with one thread, else wall [default: auto].")
@click.option("--repeat", type=int, default=None, help="Repeats, each a fresh model in one of the worker processes [default: 10].")
@click.option("--steps", type=int, default=None, help="Timed steps per repeat [default: 40].")
@click.option("--warmup", type=int, default=None, help="Untimed burn-in steps per repeat [default: 10].")
@click.option("--processes", type=int, default=None, help="Worker processes the repeats alternate between [default: 2].")
@click.option("--epochs", type=float, default=None, help="Also train this many epochs from a fixed seed and record the validation metric.")
@click.option("--seed", type=int, default=None, help="Seed of the model and data order [default: 0].")
@click.option("--timeout", type=float, default=900, show_default=True, help="Seconds before a hung measurement is killed.")
@click.option("--save", "save_path", default=None, type=click.Path(dir_okay=False, path_type=str), help="Write the measurement to this JSON file (the baseline).")
@click.option("--compare", "compare_path", default=None, type=click.Path(dir_okay=False, path_type=str), help="Compare with this baseline file and exit 0 pass, 1 regression, 3 mismatch.")
@click.option("--against-task", default=None, type=click.Path(dir_okay=False, path_type=str),
              help="Measure this task file as the baseline, interleaved with TASK (default with --against-env: TASK).")
@click.option("--against-env", multiple=True, metavar="KEY=VALUE",
              help="Environment of the baseline's workers, e.g. PYTHONPATH=../main/src (repeatable); measures interleaved.")
@_gate_options
@handle_errors
def bench(task: str, save_path: str | None, compare_path: str | None, against_task: str | None,
          against_env: tuple[str, ...], max_slowdown: float, max_memory_increase: float,
          max_metric_drop: Any, quantile: float, allow_mismatch: bool, as_json: bool, **opts: Any) -> None:
    """Measure TASK at one fixed configuration; save it as a baseline or gate it against one.

    With --compare FILE the baseline is a saved run. With --against-task or --against-env the
    baseline version is measured now, its repeats interleaved with TASK's, so both see the same
    noise from the rest of the machine.

    Exit codes: 0 pass, 1 regression, 2 usage or task error, 3 the baseline is not comparable.
    """
    from dataclasses import replace

    from batchtune.baseline import load_run, save_run
    from batchtune.bench import BenchConfig, prepare, run_bench, run_interleaved
    from batchtune.gate import config_mismatches, decide, refuse, render_run

    interleaved = against_task is not None or bool(against_env)
    if interleaved and compare_path:
        raise click.UsageError("give either --compare FILE or --against-task/--against-env, not both")
    env_pairs = []
    for item in against_env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE, e.g. PYTHONPATH=../main/src", param_hint="--against-env")
        env_pairs.append((key, value))
    baseline = load_run(compare_path) if compare_path else None
    if baseline is not None:
        # The comparison measures the baseline's configuration; flags given here override it (and a
        # difference in what is measured then refuses the comparison, exit 3).
        cfg, fp = baseline.config, baseline.fingerprint
        for key in ("batch_size", "lr", "norm", "precision", "clock", "epochs", "seed", "repeat", "steps", "warmup", "processes"):
            if opts[key] is None:
                opts[key] = cfg.get(key)
        if opts["threads"] is None:
            opts["threads"] = fp.get("threads")
    if opts["batch_size"] is None:
        raise click.UsageError("--batch-size is required (or --compare a baseline, which gives it)")
    defaults: dict[str, Any] = {"lr": 0.05, "precision": "fp32", "threads": 1, "clock": "auto", "repeat": 10, "steps": 40,
                "warmup": 10, "processes": 2, "seed": 0}
    for key, value in defaults.items():
        if opts[key] is None:
            opts[key] = value
    config = BenchConfig(task_path=task, **opts).validated()

    if interleaved:
        other = replace(config, task_path=against_task or task, env=tuple(env_pairs)).validated()

        def on_side(side: str, done: int, total: int, median: float) -> None:
            click.echo(f"repeat {done}/{total} {side}: {median * 1e3:.3f} ms per step", err=True)

        base_run, current = run_interleaved(config, other, on_repeat=on_side)
        if save_path:
            save_run(current, save_path)
            click.echo(f"wrote {save_path}", err=True)
        thresholds = _thresholds(max_slowdown, max_memory_increase, max_metric_drop, quantile)
        decision = decide(base_run, current, thresholds, allow_mismatch=allow_mismatch, ignore=("task_sha256",),
                          baseline_name=f"{against_task or task} (interleaved)", current_name=task)
        _emit_decision(decision, as_json)

    if baseline is not None:
        run_config, fingerprint = prepare(config)
        found = config_mismatches(baseline, run_config, fingerprint)
        if found and not allow_mismatch:
            _emit_decision(refuse(found, baseline_name=str(compare_path), current_name=task), as_json)

    def on_repeat(done: int, total: int, median: float) -> None:
        click.echo(f"repeat {done}/{total}: {median * 1e3:.3f} ms per step", err=True)

    current = run_bench(config, on_repeat=on_repeat)
    if save_path:
        save_run(current, save_path)
        click.echo(f"wrote {save_path}", err=True)
    if baseline is None:
        click.echo(json.dumps(current.to_dict(), indent=2) if as_json else render_run(current))
        return
    thresholds = _thresholds(max_slowdown, max_memory_increase, max_metric_drop, quantile)
    decision = decide(baseline, current, thresholds, allow_mismatch=allow_mismatch,
                      baseline_name=str(compare_path), current_name=task)
    _emit_decision(decision, as_json)


@cli.command()
@click.argument("baseline_file", metavar="BASELINE", type=click.Path(dir_okay=False, path_type=str))
@click.argument("current_file", metavar="CURRENT", type=click.Path(dir_okay=False, path_type=str))
@_gate_options
@handle_errors
def compare(baseline_file: str, current_file: str, max_slowdown: float, max_memory_increase: float,
            max_metric_drop: Any, quantile: float, allow_mismatch: bool, as_json: bool) -> None:
    """Compare two saved bench runs without measuring (the same decision as bench --compare).

    Exit codes: 0 pass, 1 regression, 2 usage error or unreadable file, 3 not comparable.
    """
    from batchtune.baseline import load_run
    from batchtune.gate import decide

    baseline, current = load_run(baseline_file), load_run(current_file)
    thresholds = _thresholds(max_slowdown, max_memory_increase, max_metric_drop, quantile)
    decision = decide(baseline, current, thresholds, allow_mismatch=allow_mismatch,
                      baseline_name=baseline_file, current_name=current_file)
    _emit_decision(decision, as_json)


# ------------------------------------------------------------------------------------ init and env


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@handle_errors
def init(path: Path, force: bool) -> None:
    """Write a commented task-file template to PATH."""
    from batchtune.template import TEMPLATE

    if path.exists() and not force:
        raise Failure(f"{path} already exists; pass another path or --force to overwrite it", 2)
    if path.suffix != ".py":
        raise Failure(f"{path}: a task file must end in .py", 2)
    path.write_text(TEMPLATE, encoding="utf-8")
    click.echo(f"wrote {path}; fill in build_model, train_dataset and val_dataset, then run `batchtune search {path}`")


@cli.command()
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def env(device: str, as_json: bool) -> None:
    """Print the versions, device and thread facts a bug report needs."""
    from batchtune.device import environment, resolve_device

    facts = environment(resolve_device(device))
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    width = max(len(k) for k in facts)
    for key, value in facts.items():
        if key.endswith("_bytes") and value:
            value = format_bytes(value)
        click.echo(f"{key:<{width}}  {value}")


def main() -> None:
    cli(prog_name="batchtune")


if __name__ == "__main__":
    main()
