"""Thresholds of the data-checks suite (the ``[data_checks]`` section of fleetscore.toml)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CheckConfig:
    """Thresholds of the expectation suite. Owned by ``data_checks``; see docs/data-checks.md."""

    # per-sensor expected value range; sensors not listed fall back to default_range
    sensor_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    default_range: tuple[float, float] = (-1e9, 1e9)
    max_age: str = "1h"
    min_completeness: float = 0.5
    max_gap: str = "30m"
    volume_band: float = 0.5
