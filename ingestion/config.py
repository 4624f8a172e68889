"""Ingestion parameters (the ``[ingest]`` section of fleetscore.toml)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IngestConfig:
    """How readings become windows.

    ``window`` and ``allowed_lateness`` are durations such as ``5s``, ``1m``, ``2h``.
    """

    window: str = "5s"
    allowed_lateness: str = "1h"
    max_bad_fraction: float = 0.01
    batch_rows: int = 200_000
