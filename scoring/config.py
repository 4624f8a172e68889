"""Scoring parameters (the ``[scoring]`` section of fleetscore.toml)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScoringConfig:
    """How scoring runs are split and when they fail."""

    shards: int = 0  # 0: one shard per worker
    max_failed_fraction: float = 0.0
