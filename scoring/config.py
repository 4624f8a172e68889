"""Scoring parameters (the ``[scoring]`` section of fleetscore.toml)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScoringConfig:
    """How scoring runs are split, where they write, when they fail, and how the scheduler behaves.

    ``max_failed_fraction`` is the share of series (a failed shard counts all its series) that may fail
    before the whole run fails. ``storage_account`` / ``storage_connection_string`` are passed to adlfs
    for ``az://`` storage URLs; left empty, adlfs reads ``AZURE_STORAGE_CONNECTION_STRING`` or uses
    ``DefaultAzureCredential`` with ``AZURE_STORAGE_ACCOUNT_NAME``. ``storage_timeout`` bounds each call
    to the storage service: past it, one line saying the service did not answer.
    """

    shards: int = 0  # 0: from the fleet: at most series_per_shard series a shard, at least one per worker
    series_per_shard: int = 10_000
    max_failed_fraction: float = 0.05
    release: str = "champion"
    csv: bool = False
    log_to_mlflow: bool = True
    experiment: str = "fleetscore-scoring"
    storage_account: str = ""
    storage_connection_string: str = ""
    storage_timeout: str = "60s"  # the deadline of each call to blob storage (and of a request's retries)
    lock_ttl: str = "10m"  # a scheduler lock not renewed for this long is taken over
    poll: str = "30s"  # how often an idle scheduler looks for due windows
    max_attempts: int = 3  # a window that failed this many times is given up
    # a shard waiting for its run's plan stops (writing nothing) when the run's heartbeat has not moved
    # for this long (its client died) or when the plan has not come after plan_timeout
    heartbeat_timeout: str = "60s"
    plan_timeout: str = "2h"
    metrics_timeout: str = "10m"  # the gate waits this long for the first shards' series metrics, then uses SQL
    shard_timeout: str = "6h"  # the client gives up on (and cancels) shards still running after this
