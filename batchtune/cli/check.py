"""``batchtune check``: the batch doctor."""

from __future__ import annotations

import json
import sys

import click

from batchtune.cli.options import (
    handle_errors,
    seed_option,
    stdout_to_stderr,
)


@click.command("check")
@click.argument("task", type=click.Path(dir_okay=False, path_type=str))
@click.option("--batch-size", type=int, default=None, help="Batch size to check [default: 32, or the training set size if smaller].")
@click.option("--norm", default=None, help="Normalization of the model [default: the first the search would try].")
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", type=int, callback=seed_option, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@handle_errors
def command(task: str, batch_size: int | None, norm: str | None, device: str, seed: int, as_json: bool) -> None:
    """Check TASK's batches for pitfalls (the batch doctor). Exits 1 when a finding is an error."""
    from batchtune.doctor.report import diagnose_isolated, doctor_lines
    from batchtune.task.contract import dry_run, load_task, search_norms

    if batch_size is not None and batch_size < 1:
        raise click.BadParameter(f"{batch_size} must be a positive batch size, e.g. 32", param_hint="--batch-size")
    # The contract's dry run first, as `search` does: a task whose loss fails is broken, not "no errors".
    with stdout_to_stderr(as_json):
        loaded = load_task(task)
        norms = search_norms(loaded, [norm] if norm else None)[0]
        dry_run(loaded, norms)
        diagnosis = diagnose_isolated(task=task, batch_sizes=[batch_size] if batch_size else None, norm=norms[0],
                                      device=device, seed=seed)
    if as_json:
        click.echo(json.dumps(diagnosis.to_dict(), indent=2))
    else:
        for line in doctor_lines(diagnosis):
            click.echo(line)
    sys.exit(diagnosis.exit_code)
