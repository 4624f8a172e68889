"""Durations and time ranges shared by every command: ``5s``, ``10m``, ``1h``, ``2d``; naive UTC times."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pandas as pd

from fleetscore.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d|w)\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, name: str = "duration") -> timedelta:
    """``"5s"`` -> ``timedelta(seconds=5)``. Units: ms, s, m (or min), h, d, w. Must be positive."""
    match = _DURATION.match(str(text))
    if not match:
        raise ConfigError(f"{name}: expected a duration such as 5s, 10m, 1h or 2d, got {text!r}")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ConfigError(f"{name}: must be positive, got {text!r}")
    return timedelta(seconds=seconds)


_ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}(:\d{2}(:\d{2}(\.\d{1,9})?)?)?)?(Z|[+-]\d{2}(:?\d{2})?)?$")


def parse_time_option(text: str, name: str = "time") -> datetime:
    """An ISO-8601 time (``2018-08-29``, ``2018-08-29T01:00``, ``...Z``) as naive UTC. Anything else,
    ambiguous dates such as ``05/01/2026`` included, is refused."""
    if not _ISO_TIME.match(str(text).strip()):
        raise ConfigError(f"{name}: not an ISO 8601 time: {text!r} (e.g. 2018-08-29 or 2018-08-29T01:00:00)")
    try:
        ts = pd.Timestamp(str(text).strip())
    except (ValueError, TypeError, OverflowError) as exc:
        raise ConfigError(f"{name}: not a time: {text!r} (use ISO 8601, e.g. 2018-08-29T01:00:00)") from exc
    if ts is pd.NaT:
        raise ConfigError(f"{name}: not a time: {text!r}")
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    result: datetime = ts.to_pydatetime()
    return result


def utcnow() -> datetime:
    """The current time as naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


def resolve_range(
    start: str | None, end: str | None, last: str | None, now: datetime | None = None
) -> tuple[datetime | None, datetime | None]:
    """Turn ``--start/--end`` or ``--last`` into ``[start, end)``; ``(None, None)`` means all data.

    ``--last D`` is the span D that ends at ``--end`` if given, else now (UTC).
    """
    if last is not None and start is not None:
        raise ConfigError("give either --start/--end or --last, not both")
    end_ts = parse_time_option(end, "--end") if end else None
    if last is not None:
        end_ts = end_ts or (now or utcnow())
        return end_ts - parse_duration(last, "--last"), end_ts
    start_ts = parse_time_option(start, "--start") if start else None
    if start_ts and end_ts and start_ts >= end_ts:
        raise ConfigError(f"--start {start} is not before --end {end}")
    return start_ts, end_ts
