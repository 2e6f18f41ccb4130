"""``batchtune env``: the versions, device and thread facts a bug report needs."""

from __future__ import annotations

import json

import click

from batchtune.cli.options import (
    handle_errors,
)
from batchtune.units import (
    format_bytes,
)


@click.command("env")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def command(device: str, as_json: bool) -> None:
    """Print the versions, device and thread facts a bug report needs."""
    from batchtune.trial.device import environment, resolve_device

    facts = environment(resolve_device(device))
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    width = max(len(k) for k in facts)
    for key, value in facts.items():
        if key.endswith("_bytes") and value:
            value = format_bytes(value)
        click.echo(f"{key:<{width}}  {value}")
