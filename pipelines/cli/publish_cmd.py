"""Placeholder: replaced by the owner of this command (see docs/architecture.md)."""

from __future__ import annotations

import click


@click.command(name="publish")
def publish() -> None:
    """Not built yet."""
    raise click.ClickException("not built yet")

