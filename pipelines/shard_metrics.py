"""The gate's series checks on metrics the scoring shards compute from the rows they read.

In a run scored during the gate, the gate runs its fleet checks (``data_checks.run_fleet_validation``)
and the shards that start at once each write the per-series metrics of their rows
(``ingestion.series_metrics``) before they wait for the plan: the gate's own per-series query would
scan the same rows again. The series of the shards queued behind them are checked by the SQL query,
started at once beside them (``data_checks.series_stats_in_sql``). This module waits for the metrics,
checks in SQL the series of a shard that ended without writing them, and completes the report.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import pandas as pd

from fleetscore.data_checks import PendingValidation, ValidationReport, complete_validation
from fleetscore.scoring.contracts import SERIES_FOLDER
from fleetscore.scoring.storage import Storage

log = logging.getLogger(__name__)


def metrics_path(prefix: str, shard: int) -> str:
    """Where shard ``shard`` of the run at ``prefix`` writes its series metrics."""
    return f"{prefix}/{SERIES_FOLDER}/shard-{shard:05d}.parquet"


def complete_from_shards(pending: PendingValidation, storage: Storage, prefix: str,
                         devices_by_shard: Sequence[Sequence[str]], expected: Sequence[int],
                         finished: Mapping[int, Any], scoring: Future[Any],
                         others: Future[Any] | None = None) -> ValidationReport:
    """Complete ``pending`` once each shard in ``expected`` has written its metrics or ended without them.

    ``finished`` fills with the results of the shards that ended (a shard that wrote metrics only ends
    after the plan, so an early end is a failure); when ``scoring`` itself ends, no more metrics come.
    ``others`` gives the SQL stats of the shards not in ``expected``. The metrics files are removed after.
    """
    if not pending.report.fleet_ok:
        return complete_validation(pending, skipped="the fleet checks failed")
    waiting, got = set(expected), set()
    frames: list[pd.DataFrame] = []
    delay = 0.01
    while waiting:
        for shard in sorted(waiting):
            path = metrics_path(prefix, shard)
            if storage.exists(path):
                frames.append(pd.read_parquet(io.BytesIO(storage.read_bytes(path)), engine="pyarrow"))
                got.add(shard)
                waiting.discard(shard)
            elif shard in finished or scoring.done():
                log.warning("shard %d ended without its series metrics: its series are checked in SQL", shard)
                waiting.discard(shard)
        if waiting:
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)
    failed = [device for shard in expected if shard not in got for device in devices_by_shard[shard]]
    metrics = pd.concat(frames, ignore_index=True) if frames else None
    stats = others.result() if others is not None else None
    report = complete_validation(pending, stats, metrics=metrics, sql_devices=failed)
    storage.remove_tree(f"{prefix}/{SERIES_FOLDER}")
    return report
