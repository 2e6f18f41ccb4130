"""``batchtune report``: regenerate a search report from the stored study."""

from __future__ import annotations

from typing import Any

import click

from batchtune.cli.options import (
    handle_errors,
    tolerance_option,
)
from batchtune.cli.search import render_result


@click.command("report")
@click.option("--study", required=True, help="Study name.")
@click.option("--storage", default=None, help="Optuna storage URL [default: sqlite:///studies/<study>.db].")
@click.option("--output", "output_dir", default="reports", show_default=True)
@click.option("--tolerance", callback=tolerance_option, default=None)
@click.option("--current-batch-size", type=int, default=None)
@click.option("--no-plots", is_flag=True)
@click.option("--json", "as_json", is_flag=True, help="Print summary.json to stdout.")
@handle_errors
def command(study: str, storage: str | None, output_dir: str, tolerance: Any, current_batch_size: int | None,
           no_plots: bool, as_json: bool) -> None:
    """Regenerate the report of a stored study (from any machine that reaches its storage)."""
    from batchtune.api import report as make_report

    result = make_report(
        study=study, storage=storage, output_dir=output_dir, tolerance=tolerance,
        current_batch_size=current_batch_size, plots=not no_plots,
    )
    render_result(result, as_json)


