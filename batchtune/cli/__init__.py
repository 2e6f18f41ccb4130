"""The command line: the ``batchtune`` group, with one module per command (or command group).

Each command parses, calls one library function and renders the result; ``options`` holds what
they share.

Heavy modules (torch, optuna, pandas, matplotlib) are imported inside the commands, so that
``batchtune --help`` answers at once; tests/cli/test_cli.py holds this to an allowlist.
"""

from __future__ import annotations

import logging

import click

from batchtune import __version__
from batchtune.cli import check, env, gate, init, noise, probe, report, search

__all__ = ["cli", "main"]


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


for _module in (search, probe, report, noise, check, init, env):
    cli.add_command(_module.command)
cli.add_command(gate.bench_command)
cli.add_command(gate.compare_command)


def main() -> None:
    cli(prog_name="batchtune")


if __name__ == "__main__":
    main()
