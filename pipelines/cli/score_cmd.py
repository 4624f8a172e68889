"""Placeholder: replaced by the owner of this command (see docs/architecture.md)."""

from __future__ import annotations

import click


@click.command(name="score")
def score() -> None:
    """Not built yet."""
    raise click.ClickException("not built yet")


@click.command(name="runs")
def runs() -> None:
    """Not built yet."""
    raise click.ClickException("not built yet")


@click.command(name="report")
def report() -> None:
    """Not built yet."""
    raise click.ClickException("not built yet")

