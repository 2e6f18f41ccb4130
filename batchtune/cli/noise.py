"""``batchtune noise``: the gradient noise scale and goodput."""

from __future__ import annotations

import json
from pathlib import Path

import click

from batchtune.cli.options import (
    handle_errors,
    int_list,
    name_option,
    seed_option,
)


@click.command("noise")
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
@click.option("--batch-sizes", callback=int_list, default=None, help="Goodput candidates [default: powers of two from --batch-small].")
@click.option("--throughput-steps", type=int, default=20, show_default=True, help="Timed steps per candidate batch size.")
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", type=int, callback=seed_option, default=0, show_default=True)
@click.option("--threads", type=int, default=None, help="CPU threads for the measurements.")
@click.option("--output", "output_dir", default="reports", show_default=True, help="Folder for reports.")
@click.option("--name", callback=name_option, default=None, help="Report folder name under --output [default: the task file's stem].")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plot.")
@click.option("--json", "as_json", is_flag=True, help="Print noise.json to stdout instead of the summary.")
@click.option("--batchnorm-stats", "bn_stats", type=click.Choice(["batch", "running"]), default="batch", show_default=True,
              help="BatchNorm while measuring: batch statistics as in training, or precise running statistics, frozen (per-sample gradients independent).")
@handle_errors
def command(task: str, norm: str | None, lr: float | None, batch_small: int, batch_big: int, steps: int,
          burst_epochs: float, burst_until_loss: float | None, burst_until_metric: float | None, curvature: bool, repeats: int,
          batch_sizes: tuple[int, ...] | None, throughput_steps: int, device: str, seed: int, threads: int | None,
          output_dir: str, name: str | None, no_plots: bool, as_json: bool, bn_stats: str) -> None:
    """Measure the gradient noise scale of TASK and the batch size that maximises goodput."""
    from batchtune.noise.measure import NoiseConfig, run_noise
    from batchtune.noise.report import noise_lines, write_noise_report
    from batchtune.study.summary import _clean

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


