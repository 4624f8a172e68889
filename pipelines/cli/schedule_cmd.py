"""Placeholder: replaced by the owner of this command (see docs/architecture.md)."""

from __future__ import annotations

import click


@click.command(name="schedule")
def schedule() -> None:
    """Not built yet."""
    raise click.ClickException("not built yet")


@click.command(name="scheduler")
def scheduler() -> None:
    """Not built yet."""
    raise click.ClickException("not built yet")

