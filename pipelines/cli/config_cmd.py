"""``fleetscore config``: show the resolved settings."""

from __future__ import annotations

import json

import click

from fleetscore.pipelines.cli import CliState


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of TOML-like lines.")
@click.pass_obj
def config(state: CliState, as_json: bool) -> None:
    """Print the resolved settings (flags > FLEETSCORE_* environment > fleetscore.toml > defaults),
    secrets masked."""
    data = state.settings().as_dict(mask_secrets=True)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    sections = {k: v for k, v in data.items() if isinstance(v, dict)}
    for key, value in data.items():
        if key not in sections:
            click.echo(f"{key} = {json.dumps(value)}")
    for name, values in sections.items():
        click.echo(f"\n[{name}]")
        for key, value in values.items():
            click.echo(f"{key} = {json.dumps(value)}")
