"""The CLI's one progress bar: rich, on standard error, only when it is a terminal and not ``--quiet``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from fleetscore.progress import ProgressCallback


@contextmanager
def progress_bar(label: str, *, in_bytes: bool = False) -> Iterator[ProgressCallback | None]:
    """Yield a :data:`ProgressCallback` that draws a bar labelled ``label`` (done/total as a count, or
    as bytes with ``in_bytes``) when standard error is a terminal; yield ``None`` otherwise, so that
    piped or logged output carries no control characters, or with ``--quiet``."""
    import click

    from fleetscore.pipelines.cli import CliState

    ctx = click.get_current_context(silent=True)
    state = ctx.find_object(CliState) if ctx is not None else None
    if not sys.stderr.isatty() or (state is not None and state.quiet):
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (DownloadColumn(), TimeRemainingColumn()) if in_bytes else (MofNCompleteColumn(), TimeElapsedColumn())
    with Progress("[progress.description]{task.description}", BarColumn(), *columns,
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        yield update
