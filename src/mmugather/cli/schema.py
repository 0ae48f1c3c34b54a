"""`mmugather schema`: the JSON Schema of the scenario and sweep formats, from their pydantic models."""
from __future__ import annotations

import json

import click

from mmugather.cli.group import main


@main.command()
@click.argument("kind", type=click.Choice(("scenario", "sweep")))
@click.option("--markdown", is_flag=True, help="Print the reference tables of docs/scenarios.md or docs/sweeps.md "
                                               "instead.")
def schema(kind, markdown) -> None:
    """Print the JSON Schema of a scenario or sweep file (KIND). Save it and point a TOML file at it with a
    first line `#:schema ./scenario.schema.json`; taplo and the VS Code TOML extensions then validate the file
    as it is typed."""
    from mmugather.schema import json_schema, reference
    click.echo(reference(kind) if markdown else json.dumps(json_schema(kind), indent=1))
