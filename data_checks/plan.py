"""What the fleet-level suite checks, resolved to values (kept apart from ``suite`` so that importing
the gate does not import Great Expectations)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

# checks of the range suite, in report order
RANGE_CHECKS = ("not_empty", "nulls", "unique", "freshness", "volume")


@dataclass(frozen=True)
class RangePlan:
    """The thresholds of the range suite, already resolved to values."""

    end: datetime | None
    max_age: timedelta
    volume_band: tuple[int, int] | None  # (min rows, max rows), or None without history
    volume_expected: float | None
    volume_detail: str  # what the band is based on, or why the volume check is skipped
    unique_enforced_by: str = ""  # the constraint that makes (device, sensor, ts) unique, if any
    not_null_enforced_by: str = ""  # the constraints that keep device, sensor, ts non-null, if any
