"""Thresholds of the data-checks suite (the ``[data_checks]`` section of fleetscore.toml)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CheckConfig:
    """Thresholds of the expectation suite. Owned by ``data_checks``; see docs/data-checks.md.

    Fleet-level checks (schema, nulls in key columns, uniqueness, emptiness, freshness, volume) stop
    the pipeline; series-level checks (completeness, gaps, stuck, non-finite, out of range) exclude one
    ``(device, sensor)`` series; warnings only report.
    """

    # per-sensor expected value range; sensors not listed use a learned range
    # (``fleetscore validate --learn-ranges``) or else default_range
    sensor_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    default_range: tuple[float, float] = (-1e9, 1e9)
    # freshness: the newest window is at most this old relative to the END of the checked range
    max_age: str = "1h"
    # completeness: a series has at least this share of the expected windows in the range ...
    min_completeness: float = 0.5
    # ... where "expected" is the fleet's median windows per series ("fleet", for sensors that do
    # not report every window) or the range length divided by the window ("grid")
    completeness_basis: str = "fleet"
    # the longest gap between consecutive windows of a series (and to the fleet's first/last window)
    max_gap: str = "30m"
    # volume: the row count stays within (1 -/+ volume_band) x the median count of the
    # volume_history previous ranges of the same length
    volume_band: float = 0.5
    volume_history: int = 3
    # a series with more than this share of its windows out of range is excluded; fewer is a warning
    max_out_of_range: float = 0.5
    # learned ranges: the observed [min, max] of each sensor widened by this share of its span per side
    learn_margin: float = 0.1
