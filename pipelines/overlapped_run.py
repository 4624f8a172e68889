"""The overlapped run: a new run whose shards read and score while the data-checks gate runs.

:func:`score_during_gate` is the way ``fleetscore score`` takes for a new run of a window (no
incomplete run to resume): the shards start with the run's folder but no plan and write only once the
plan (``_run.json``) is written, when the gate passed and the run is no duplicate.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from typing import Any

from fleetscore.data_checks import series_stats_in_sql
from fleetscore.ingestion.timeutil import utcnow
from fleetscore.pipelines.adapters import storage_for
from fleetscore.pipelines.executor_kinds import Executor, LocalExecutor, seconds
from fleetscore.pipelines.executors import ShardFailure, default_workers, run_shards
from fleetscore.pipelines.remote_run import HEARTBEAT, Heartbeat, for_executor
from fleetscore.pipelines.run_finalize import ScoringResult, finalize_run, note
from fleetscore.pipelines.run_planning import (
    RunSetup,
    build_plan,
    committed_location,
    excluded_ids_of,
    excluded_of,
    find_duplicate,
    fingerprint,
    gate_verdict,
    planned_incomplete,
    record_skipped,
    setup_run,
    shard_task,
    write_plan,
)
from fleetscore.pipelines.settings import Settings
from fleetscore.pipelines.shard_metrics import complete_from_shards, metrics_path
from fleetscore.progress import ProgressCallback
from fleetscore.scoring import writer
from fleetscore.scoring.contracts import ABORT, PLAN
from fleetscore.scoring.shard import score_shard
from fleetscore.scoring.storage import Storage

log = logging.getLogger("fleetscore.pipelines.scoring_pipeline")  # one logger for the whole run's messages


def score_during_gate(  # noqa: PLR0915  the overlapped run's steps in order: gate, plan, shards, finalize
    settings: Settings,
    start: datetime | None,
    end: datetime | None,
    *,
    release: str | None,
    devices: Sequence[str] | None,
    executor: Executor,
    shards: int | None,
    force: bool,
    csv: bool | None,
    on_progress: ProgressCallback | None,
    part_delay: float,
    started: float,
) -> ScoringResult | None:
    """A new run whose shards read and score WHILE the gate runs, and write only once it passed.

    The shards start as soon as the release is resolved, with the run's folder but no plan: each one
    reads and scores its devices, then waits for the plan (``_run.json``), which this process writes
    only when the gate passed and the run is no duplicate, and leaves out the series the gate excluded.
    If the gate fails or the run is a duplicate, ``_abort.json`` tells the shards to write nothing and
    the run's folder is removed. So no part holds an excluded series and nothing is published on data
    that failed the gate. Returns None (the caller takes the sequential way) when an incomplete run of
    the window may have to be resumed.
    """
    storage = storage_for(settings)
    w_start = start
    if w_start is not None and planned_incomplete(storage, w_start) and not force:
        return None  # maybe resumable: decided on the whole plan, after the gate
    setup = setup_run(settings, start, end, release, devices, False, None, fleet_checks_only=True)
    if planned_incomplete(storage, setup.start) and not force:
        _stop_gate(setup)
        return None
    provisional = build_plan(settings, setup, None, "", shards, csv, executor)
    prefix = writer.run_prefix(setup.start, setup.run_id)
    n_shards = provisional.n_shards
    local = isinstance(executor, LocalExecutor)
    # the shards that start at once compute the gate's series metrics from their rows (a shard queued
    # behind them could not: its turn comes only after the plan); the others' series are checked in SQL
    # (on a cluster: its capacity; the first shards are submitted with the highest priority)
    at_once = min(n_shards, settings.workers or default_workers() if local else executor.capacity())
    beat_timeout = seconds(settings.scoring.heartbeat_timeout, "scoring.heartbeat_timeout")
    # remote shards follow the client's heartbeat: a killed client never holds their workers for long
    waits: dict[str, Any] = {"wait_for": f"{prefix}/{PLAN}", "parent_pid": os.getpid() if local else 0,
                             "heartbeat": "" if local else f"{prefix}/{HEARTBEAT}", "heartbeat_timeout": beat_timeout,
                             "plan_timeout": seconds(settings.scoring.plan_timeout, "scoring.plan_timeout")}
    tasks = [(task,) for task in for_executor(
        [replace(shard_task(settings, provisional, i, None, part_delay), **waits,
                 metrics_to=metrics_path(prefix, i) if i < at_once else "") for i in range(n_shards)],
        executor, setup.bundle)]
    heartbeat = None if local else Heartbeat(storage, prefix, every=max(0.2, beat_timeout / 6))
    if on_progress is not None:
        on_progress(0, n_shards)
    t0 = time.perf_counter()
    finished: dict[int, Any] = {}
    queued = [device for devices in provisional.shards[at_once:] for device in devices]
    pool = ThreadPoolExecutor(2)
    scoring = pool.submit(run_shards, score_shard, tasks, executor=executor.name, workers=settings.workers,
                          on_progress=on_progress, on_result=lambda r: finished.__setitem__(r.shard, r),
                          timeout=seconds(settings.scoring.shard_timeout, "scoring.shard_timeout"))
    # the queued shards' series: the gate's SQL query, beside the first shards and the fleet checks
    others = pool.submit(series_stats_in_sql, settings.database_url, setup.start, setup.end, settings.data_checks,
                         keep=queued, window=setup.window, devices=setup.device_filter) if queued else None
    pool.shutdown(wait=False)
    try:
        report = gate_verdict(setup, lambda pending: complete_from_shards(
            pending, storage, prefix, provisional.shards, range(at_once), finished, scoring, others,
            timeout=seconds(settings.scoring.metrics_timeout, "scoring.metrics_timeout")))
        data_hash = fingerprint(setup, report)
        duplicate = find_duplicate(settings, storage, setup.start, setup.end, setup.version, data_hash,
                                          setup.device_filter)
        if duplicate and not force:
            _stop_beating(heartbeat)
            _abort(storage, prefix, scoring)
            record_skipped(setup, data_hash, str(duplicate["run_id"]))
            return ScoringResult(setup.run_id, "skipped", setup.start, setup.end, setup.version,
                                 duplicate_of=str(duplicate["run_id"]),
                                 location=committed_location(settings, str(duplicate["run_id"])))
    except BaseException:
        _stop_beating(heartbeat)
        _abort(storage, prefix, scoring)
        raise
    plan = replace(provisional, data_hash=data_hash, validation_id=report.id, excluded=excluded_of(report),
                   excluded_ids=excluded_ids_of(report))
    recorded = False
    try:  # a store or storage error here must still release the waiting shards (else they wait for good)
        setup.runs.start(setup.run_id, setup.start, setup.end, setup.release_ref, setup.now,
                         release_version=setup.version, data_hash=data_hash, validation_id=report.id,
                         shards_total=n_shards, shards_done=0, location=storage.display(prefix))
        recorded = True
        write_plan(storage, prefix, plan, report)  # the shards' signal to write
    except BaseException as exc:
        _abort(storage, prefix, scoring)
        if recorded:
            with contextlib.suppress(Exception):
                setup.runs.update(setup.run_id, status="failed", error=f"plan not written: {exc}"[:500])
        raise
    finally:
        _stop_beating(heartbeat)
    note(setup.journal, "run %s: %d devices in %d shards -> %s (scored during the gate)", setup.run_id,
         sum(len(d) for d in plan.shards), n_shards, storage.display(prefix))
    results = scoring.result()
    failures = {r.shard: r.error for r in results if isinstance(r, ShardFailure)}
    setup.timings["score"] = time.perf_counter() - t0
    return finalize_run(settings, setup.run_id, plan, shard_failures=failures, timings=setup.timings,
                        started=started, journal=setup.journal, force=force)


def _stop_beating(heartbeat: Heartbeat | None) -> None:
    if heartbeat is not None:
        heartbeat.close()


def _abort(storage: Storage, prefix: str, scoring: Any) -> None:
    """Tell the waiting shards to write nothing, wait for them, and remove the run's folder."""
    writer.write_json(storage, f"{prefix}/{ABORT}", {"aborted_at": utcnow().isoformat()})
    try:
        scoring.result()
    finally:
        storage.remove_tree(prefix)


def _stop_gate(setup: RunSetup) -> None:
    if setup.gate is not None and not setup.gate.cancel():
        try:
            setup.gate.result()
        except Exception as exc:  # noqa: BLE001 - its outcome is not used; the sequential way reruns it
            log.debug("gate of an abandoned plan: %s", exc)
