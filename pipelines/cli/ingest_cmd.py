"""Placeholder: replaced by the owner of this command (see docs/architecture.md)."""

from __future__ import annotations

import click


@click.command(name="ingest")
def ingest() -> None:
    """Not built yet."""
    raise click.ClickException("not built yet")


@click.command(name="simulate")
def simulate() -> None:
    """Not built yet."""
    raise click.ClickException("not built yet")

