"""The three steps of a scoring run when Azure ML runs them on separate nodes (``fleetscore score-step``).

``plan`` runs the scoring pipeline's :func:`~pipelines.scoring_pipeline.prepare_run` (gate, release
resolved once, data fingerprint, duplicate detection, the run's plan written to storage) and writes one
small task file per shard still to score; Azure ML's parallel step fans those files out, one mini-batch
each, to ``shard``; ``finalize`` writes the manifest last through
:func:`~pipelines.scoring_pipeline.finalize_run`. The steps share nothing but storage and the task
files, so the release bundle is fetched again (by its exact version) on a node that does not have it.
No Azure SDK here: these run inside the image on the cluster, and in tests on this machine.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from fleetscore.errors import ScoringError
from fleetscore.ingestion.timeutil import utcnow
from fleetscore.pipelines.azureml_plan import ScheduleSpec, scheduled_window

log = logging.getLogger(__name__)

NOTHING_TO_DO = "nothing.json"


def plan_step(
    settings: Any,
    start: datetime | None,
    end: datetime | None,
    schedule: ScheduleSpec,
    out_dir: Path,
    *,
    release: str | None = None,
    devices: Sequence[str] | None = None,
    shards: int | None = None,
    force: bool = False,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Plan one run and write its task files into ``out_dir``; returns the run's summary.

    ``start``/``end`` ``None``: the latest window of ``schedule`` that is due at ``now`` (a scheduled
    run). A duplicate run, or a resumed run with every shard done, writes a single no-op task so the
    parallel step still has one mini-batch and ``finalize`` knows what happened. ``force`` scores a window
    again even when the same release already scored the same data (a new run beside the old one).
    """
    from fleetscore.pipelines.scoring_pipeline import prepare_run

    if start is None or end is None:
        start, end = scheduled_window(schedule, now or utcnow())
    prepared = prepare_run(settings, start, end, release=release, devices=devices, shards=shards, force=force)
    base = {"run_id": prepared.run_id, "start": prepared.plan["start"], "end": prepared.plan["end"],
            "release_version": prepared.plan["release_version"], "duplicate_of": prepared.duplicate_of,
            "timings": prepared.timings}
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [] if prepared.duplicate_of else prepared.todo
    for shard in todo:
        _write(out_dir / f"shard-{shard:05d}.json", {**base, "shard": shard})
    if not todo:
        _write(out_dir / NOTHING_TO_DO, {**base, "shard": None})
    log.info("run %s: %s .. %s, %d task(s) in %s", prepared.run_id, start, end, max(1, len(todo)), out_dir)
    return {**base, "tasks": len(todo)}


def read_task(path: Path) -> dict[str, Any]:
    """One task file written by :func:`plan_step`."""
    try:
        task: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ScoringError(f"{path}: not a scoring task file: {exc}") from exc
    missing = {"run_id", "start", "shard"} - set(task)
    if missing:
        raise ScoringError(f"{path}: not a scoring task file: no {sorted(missing)[0]}")
    return task


def shard_step(settings: Any, task: dict[str, Any]) -> dict[str, Any]:
    """Score the task's shard and write its part; a no-op task returns ``{"shard": None}``."""
    from fleetscore.pipelines.scoring_pipeline import shard_task
    from fleetscore.scoring.shard import score_shard

    if task["shard"] is None:
        return {"shard": None, "run_id": task["run_id"], "rows": 0}
    plan = _local_plan(settings, task)
    result: dict[str, Any] = score_shard(shard_task(settings, plan, int(task["shard"])))
    return result


def finalize_step(settings: Any, tasks_dir: Path) -> Any:
    """Write the run's manifest (or report the duplicate it was); returns a ``ScoringResult``."""
    from fleetscore.pipelines.scoring_pipeline import ScoringResult, finalize_run

    files = sorted(Path(tasks_dir).glob("*.json"))
    if not files:
        raise ScoringError(f"{tasks_dir}: no task files (did the plan step run?)")
    task = read_task(files[0])
    if task["duplicate_of"]:
        return ScoringResult(task["run_id"], "skipped", _ts(task["start"]), _ts(task["end"]),
                             int(task["release_version"]), duplicate_of=task["duplicate_of"])
    plan = _local_plan(settings, task)
    return finalize_run(settings, task["run_id"], plan, timings=dict(task.get("timings") or {}))


def _local_plan(settings: Any, task: dict[str, Any]) -> dict[str, Any]:
    """The run's plan from storage, its ``bundle_dir`` pointing at a copy of the release on this node."""
    from fleetscore.pipelines.scoring_pipeline import storage_for
    from fleetscore.scoring import writer

    storage = storage_for(settings)
    plan = writer.read_json(storage, f"{writer.run_prefix(_ts(task['start']), task['run_id'])}/{writer.PLAN}")
    if not Path(plan["bundle_dir"]).is_dir():
        from fleetscore.training.registry import resolve_release

        resolved = resolve_release(settings.tracking_uri, settings.training.model_name, str(plan["release_version"]))
        plan = {**plan, "bundle_dir": str(resolved.bundle_dir)}
    return plan


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True, default=str), encoding="utf-8")
    tmp.replace(path)


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text)
