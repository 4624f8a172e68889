"""Scoring parameters (the ``[scoring]`` section of fleetscore.toml)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScoringConfig:
    """How scoring runs are split, where they write, when they fail, and how the scheduler behaves.

    ``max_failed_fraction`` is the share of series (a failed shard counts all its series) that may fail
    before the whole run fails. ``storage_account`` / ``storage_connection_string`` are passed to adlfs
    for ``az://`` storage URLs; left empty, adlfs reads ``AZURE_STORAGE_CONNECTION_STRING`` or uses
    ``DefaultAzureCredential`` with ``AZURE_STORAGE_ACCOUNT_NAME``.
    """

    shards: int = 0  # 0: one per worker, more for big fleets (at most shard_series series per shard)
    shard_series: int = 10_000
    max_failed_fraction: float = 0.05
    release: str = "champion"
    csv: bool = False
    log_to_mlflow: bool = True
    experiment: str = "fleetscore-scoring"
    storage_account: str = ""
    storage_connection_string: str = ""
    lock_ttl: str = "10m"  # a scheduler lock not renewed for this long is taken over
    poll: str = "30s"  # how often an idle scheduler looks for due windows
    max_attempts: int = 3  # a window that failed this many times is given up
