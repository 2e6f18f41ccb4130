"""``batchtune probe``: what fits, and where speed stops growing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from batchtune.cli.options import (
    echo_wrapped,
    flops_option,
    fraction_option,
    handle_errors,
    seed_option,
    size_option,
    stdout_to_stderr,
    str_list,
    wrap_width,
)
from batchtune.units import (
    format_bytes,
)


@click.command("probe")
@click.argument("task", type=click.Path(dir_okay=False, path_type=str))
@click.option("--norms", callback=str_list, default=None, help="Normalization choices to probe, e.g. batch,group [default: all the task allows].")
@click.option("--precision", "precisions", callback=str_list, default="fp32", show_default=True, help="Comma-separated fp32,bf16,fp16; each is its own curve (autocast).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--memory-budget", callback=size_option, default=None, help="Peak memory limit, e.g. 6GiB; sizes above it do not fit.")
@click.option("--headroom", callback=fraction_option, default="10%", show_default=True, help="Recommended maximum: peak under (1 - headroom) of the budget or device memory.")
@click.option("--knee", callback=fraction_option, default="5%", show_default=True, help="Knee: smallest size within this of the best throughput.")
@click.option("--granularity", type=int, default=None, help="Bisect down to this gap [default: 8 on a GPU, 1 elsewhere].")
@click.option("--batch-size-min", type=int, default=8, show_default=True, help="First size; the probe doubles from it.")
@click.option("--batch-size-max", type=int, default=None, help="Largest size to try [default: the training set size].")
@click.option("--peak-flops", callback=flops_option, default=None, help="Peak FLOP/s for MFU, e.g. 312T [default: the datasheet table].")
@click.option("--threads", type=int, default=None, help="CPU threads [default: the cores the load average leaves idle].")
@click.option("--time-cap", type=float, default=0.5, show_default=True, help="Seconds of timed steps per size, at most.")
@click.option("--seed", type=int, callback=seed_option, default=0, show_default=True)
@click.option("--output", "output_dir", default="reports", show_default=True, help="Folder for reports.")
@click.option("--name", default=None, help="Report folder name [default: the task file's stem].")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@click.option("--json", "as_json", is_flag=True, help="Print probe.json to stdout instead of the table.")
@handle_errors
def command(task: str, output_dir: str, no_plots: bool, as_json: bool, **opts: Any) -> None:
    """Measure which batch sizes fit TASK on this device, how fast each trains, and where speed stops growing."""
    from batchtune.probing.measure import ProbeConfig
    from batchtune.probing.measure import probe as run_probe
    from batchtune.probing.report import terminal_table, write_probe_report

    config = ProbeConfig(task_path=task, output_dir=output_dir, plots=not no_plots, **opts)
    from batchtune.trial.device import busy_machine

    if busy := busy_machine(config.threads):
        echo_wrapped(f"warning: {busy}", err=True)

    def on_start(info: dict[str, Any]) -> None:
        echo_wrapped(
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

    with stdout_to_stderr(as_json):
        result = run_probe(config, on_point=on_point, on_start=on_start)
        paths = write_probe_report(result, Path(output_dir) / config.report_name, plots=not no_plots)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    click.echo("")
    click.echo(terminal_table(result, width=wrap_width()))
    for note in result.notes:
        if note.startswith(("Noisy timing", "The training items differ")):
            echo_wrapped(f"note: {note}")
    click.echo("")
    for name, path in paths.items():
        if not name.startswith("plot:"):
            click.echo(f"wrote {path}")
    if any(n.startswith("plot:") for n in paths):
        click.echo(f"wrote plots under {Path(output_dir) / config.report_name / 'plots'}")
