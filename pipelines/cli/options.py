"""Options that several commands share."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def time_range_options(func: F) -> F:
    """Add ``--start``, ``--end`` and ``--last`` (see :func:`ingestion.timeutil.resolve_range`)."""
    func = click.option("--last", default=None, metavar="DURATION",
                        help="The span that ends at --end (default: now), e.g. 1h, 6h, 2d.")(func)
    func = click.option("--end", default=None, metavar="TIME", help="End of the range (exclusive), ISO 8601.")(func)
    func = click.option("--start", default=None, metavar="TIME", help="Start of the range, ISO 8601.")(func)
    return func


def json_option(func: F) -> F:
    """Add ``--json``: the command's result as one JSON object on stdout instead of its lines."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print the result as one JSON object instead of lines.")(func)


def echo_json(result: Any) -> None:
    """Print ``result`` as indented JSON (times and paths as strings)."""
    import json

    click.echo(json.dumps(result, indent=2, default=str))


def devices_option(func: F) -> F:
    """Add ``--devices D1,D2`` (repeatable, comma-separated; ``\\,`` is a comma inside an id)."""
    return click.option("--devices", multiple=True, metavar="IDS",
                        help="Only these devices (comma-separated, repeatable; write a comma inside an id "
                             "as \\, and a backslash as \\\\).")(func)


def split_ids(values: tuple[str, ...]) -> list[str] | None:
    """``("1,2", "3")`` -> ``["1", "2", "3"]``; ``"a\\,b"`` -> ``["a,b"]`` (``\\\\`` is a backslash);
    nothing given -> ``None`` (all)."""
    ids: list[str] = []
    for value in values:
        current, escaped = [], False
        for char in value:
            if escaped:
                current.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == ",":
                ids.append("".join(current))
                current = []
            else:
                current.append(char)
        ids.append("".join(current) + ("\\" if escaped else ""))
    kept = [i.strip() for i in ids if i.strip()]
    return kept or None


def time_range(start: str | None, end: str | None, last: str | None) -> tuple[datetime | None, datetime | None]:
    """Resolve the range options (import kept light: pandas loads only when a command runs)."""
    from fleetscore.ingestion.timeutil import resolve_range

    return resolve_range(start, end, last)
