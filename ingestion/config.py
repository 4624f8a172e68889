"""Ingestion parameters (the ``[ingest]`` section of fleetscore.toml)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IngestConfig:
    """How readings become windows.

    ``window`` and ``allowed_lateness`` are durations such as ``5s``, ``1m``, ``2h``. ``batch_rows`` is
    about how many input lines are parsed at a time (memory stays flat in the input size).
    ``max_future`` is the horizon past the current time (UTC) beyond which a reading is quarantined as
    ``too_far_ahead`` (it never moves its series' watermark); ``max_line_bytes`` is the longest input
    line read (a longer one is quarantined as ``line_too_long`` without being held in memory).
    ``lock_timeout`` is how long a writer waits for a SQLite store's write lock, saying who holds it;
    ``commit_every`` is how often a long input is committed (others get the lock between its parts, and
    a rerun after a crash resumes after the last part committed).
    The Event Hubs source reads ``eventhub_connection_string`` (environment:
    ``FLEETSCORE_INGEST__EVENTHUB_CONNECTION_STRING``; masked by ``fleetscore config``).
    """

    window: str = "5s"
    allowed_lateness: str = "1h"
    max_bad_fraction: float = 0.01
    batch_rows: int = 200_000
    max_future: str = "1d"
    max_line_bytes: int = 1 << 20
    lock_timeout: str = "2m"
    commit_every: str = "10s"
    eventhub_name: str = ""
    eventhub_consumer_group: str = "$Default"
    eventhub_connection_string: str = ""
