"""Placeholder: replaced by the owner of this command (see docs/architecture.md)."""

from __future__ import annotations

import click


@click.command(name="train")
def train() -> None:
    """Not built yet."""
    raise click.ClickException("not built yet")


@click.command(name="release")
def release() -> None:
    """Not built yet."""
    raise click.ClickException("not built yet")


@click.command(name="rollback")
def rollback() -> None:
    """Not built yet."""
    raise click.ClickException("not built yet")


@click.command(name="models")
def models() -> None:
    """Not built yet."""
    raise click.ClickException("not built yet")

