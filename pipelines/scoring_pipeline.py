"""The scoring pipeline: gate -> release -> plan -> shards in parallel -> manifest -> run records.

:func:`score_window` is what ``fleetscore score`` and the scheduler call. A new run of a window is
scored while the gate runs (:mod:`pipelines.overlapped_run`); a run that may resume an incomplete one,
or one without the gate, takes the sequential way here: :func:`~pipelines.run_planning.prepare_run`
(gate, release, plan or resume), the shards on the executor, then
:func:`~pipelines.run_finalize.finalize_run` (one commit to the predictions table, the manifest, run
records). The Azure ML pipeline runs
the same three steps on separate nodes (:mod:`pipelines.azureml_steps`).

A run killed before its commit leaves only its run folder, which no table reader sees; running the same
command again finds that plan and completes it (only the shards without a part are scored).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime

from fleetscore.pipelines.executor_kinds import executor_for, seconds
from fleetscore.pipelines.executors import ShardFailure, run_shards
from fleetscore.pipelines.overlapped_run import score_during_gate
from fleetscore.pipelines.remote_run import for_executor
from fleetscore.pipelines.run_finalize import ScoringResult, finalize_run
from fleetscore.pipelines.run_planning import committed_location, prepare_run, shard_task
from fleetscore.pipelines.run_recovery import reconcile_runs
from fleetscore.pipelines.settings import Settings
from fleetscore.progress import ProgressCallback
from fleetscore.scoring.shard import load_bundle, score_shard


def score_window(
    settings: Settings,
    start: datetime | None,
    end: datetime | None,
    *,
    release: str | None = None,
    devices: Sequence[str] | None = None,
    executor: str | None = None,
    shards: int | None = None,
    force: bool = False,
    csv: bool | None = None,
    skip_validation: bool = False,
    on_progress: ProgressCallback | None = None,
    part_delay: float = 0.0,
) -> ScoringResult:
    """Score ``[start, end)`` with a release (default ``settings.scoring.release``) into storage.

    ``start``/``end`` ``None`` mean the stored data's whole range. Raises :class:`ValidationFailed`
    when the gate fails at fleet level and :class:`ScoringError` when more than
    ``max_failed_fraction`` of the series fail (the run is then recorded as failed, with no manifest).
    """
    t_start = time.perf_counter()
    executor = executor or settings.executor
    kind = executor_for(settings, executor)
    kind.check_settings(settings)  # before anything runs: a setting the workers cannot use is refused
    reconcile_runs(settings)  # runs left `running` by a dead process: done from their manifest, or abandoned
    if not skip_validation:
        overlapped = score_during_gate(settings, start, end, release=release, devices=devices, executor=kind,
                                       shards=shards, force=force, csv=csv, on_progress=on_progress,
                                       part_delay=part_delay, started=t_start)
        if overlapped is not None:
            return overlapped
    prepared = prepare_run(settings, start, end, release=release, devices=devices, shards=shards,
                           force=force, csv=csv, skip_validation=skip_validation, executor=kind)
    plan = prepared.plan
    w_start, w_end = prepared.start, prepared.end
    if plan is None:
        return ScoringResult(prepared.run_id, "skipped", w_start, w_end, prepared.release_version,
                             duplicate_of=prepared.duplicate_of,
                             location=committed_location(settings, prepared.duplicate_of))
    total = plan.n_shards
    already = total - len(prepared.todo)
    if on_progress is not None:
        on_progress(already, total)
    progress = (lambda done, _n: on_progress(already + done, total)) if on_progress else None
    t0 = time.perf_counter()
    # remote workers get no secret, and only their own shard's models
    tasks = [(task,) for task in for_executor([shard_task(settings, plan, i, None, part_delay) for i in prepared.todo],
                                              kind, load_bundle(prepared.bundle_dir))]
    results = run_shards(score_shard, tasks, executor=executor, workers=settings.workers, on_progress=progress,
                         timeout=seconds(settings.scoring.shard_timeout, "scoring.shard_timeout"))
    failures = {prepared.todo[r.shard]: r.error for r in results if isinstance(r, ShardFailure)}
    prepared.timings["score"] = time.perf_counter() - t0
    return finalize_run(settings, prepared.run_id, plan, shard_failures=failures, timings=prepared.timings,
                        started=t_start, resumed=prepared.resumed, journal=prepared.journal, force=force)
