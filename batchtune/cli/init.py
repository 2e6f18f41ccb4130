"""``batchtune init``: write a task-file template."""

from __future__ import annotations

from pathlib import Path

import click

from batchtune.cli.options import (
    Failure,
    handle_errors,
)


@click.command("init")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@handle_errors
def command(path: Path, force: bool) -> None:
    """Write a commented task-file template to PATH."""
    from batchtune.task.template import TEMPLATE

    if path.exists() and not force:
        raise Failure(f"{path} already exists; pass another path or --force to overwrite it", 2)
    if path.suffix != ".py":
        raise Failure(f"{path}: a task file must end in .py", 2)
    if not path.parent.is_dir():
        raise Failure(f"cannot write {path}: the folder {path.parent} does not exist; create it first or pass another path", 2)
    try:
        path.write_text(TEMPLATE, encoding="utf-8")
    except OSError as exc:
        raise Failure(f"cannot write {path}: {exc.strerror}; pass a writable path", 1) from None
    click.echo(f"wrote {path}; fill in build_model, train_dataset and val_dataset, then run `batchtune search {path}`")
