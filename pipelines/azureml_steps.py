"""The three steps of a scoring run when Azure ML runs them on separate nodes (``fleetscore score-step``).

``plan`` runs the scoring pipeline's :func:`~pipelines.run_planning.prepare_run` (gate, release
resolved once, data fingerprint, duplicate detection, the run's plan written to storage) and writes one
small task file per shard still to score; Azure ML's parallel step fans those files out, one mini-batch
each, to ``shard``; ``finalize`` writes the manifest last through
:func:`~pipelines.run_finalize.finalize_run`. The steps share nothing but storage and the task
files, so the release bundle is fetched again (by its exact version) on a node that does not have it.
No Azure SDK here: these run inside the image on the cluster, and in tests on this machine.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from fleetscore.errors import ScoringError
from fleetscore.ingestion.timeutil import utcnow
from fleetscore.pipelines.adapters import storage_for
from fleetscore.pipelines.azureml_plan import ScheduleSpec, scheduled_window
from fleetscore.pipelines.run_finalize import ScoringResult, finalize_run
from fleetscore.scoring import writer
from fleetscore.scoring.contracts import PLAN, RunPlan, ShardOutcome

log = logging.getLogger(__name__)

NOTHING_TO_DO = "nothing.json"


@dataclass(frozen=True)
class StepTask:
    """One task file of the plan step: a shard of a run, or (``shard`` None) the no-op of a run with nothing
    left to score (a duplicate, or a resumed run with every shard done)."""

    run_id: str
    start: datetime
    shard: int | None
    end: datetime | None = None
    release_version: int = 0
    duplicate_of: str = ""
    timings: Mapping[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The task as stored in its file."""
        return {"run_id": self.run_id, "start": self.start.isoformat(),
                "end": self.end.isoformat() if self.end is not None else None,
                "release_version": self.release_version, "shard": self.shard,
                "duplicate_of": self.duplicate_of, "timings": dict(self.timings)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StepTask:
        """A task read back from its file (``KeyError`` when a key it needs is missing)."""
        shard, end = data["shard"], data.get("end")
        return cls(run_id=str(data["run_id"]), start=datetime.fromisoformat(data["start"]),
                   shard=int(shard) if shard is not None else None,
                   end=datetime.fromisoformat(end) if end else None,
                   release_version=int(data.get("release_version", 0)),
                   duplicate_of=str(data.get("duplicate_of") or ""),
                   timings=dict(data.get("timings") or {}))


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
    from fleetscore.pipelines.run_planning import prepare_run

    if start is None or end is None:
        start, end = scheduled_window(schedule, now or utcnow())
    prepared = prepare_run(settings, start, end, release=release, devices=devices, shards=shards, force=force)
    base = StepTask(prepared.run_id, prepared.start, None, prepared.end, prepared.release_version,
                    duplicate_of=prepared.duplicate_of, timings=prepared.timings)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [] if prepared.duplicate_of else prepared.todo
    for shard in todo:
        _write(out_dir / f"shard-{shard:05d}.json", replace(base, shard=shard).to_json())
    if not todo:
        _write(out_dir / NOTHING_TO_DO, base.to_json())
    log.info("run %s: %s .. %s, %d task(s) in %s", prepared.run_id, start, end, max(1, len(todo)), out_dir)
    summary = base.to_json()
    del summary["shard"]
    return {**summary, "tasks": len(todo)}


def read_task(path: Path) -> StepTask:
    """One task file written by :func:`plan_step`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ScoringError(f"{path}: not a scoring task file: {exc}") from exc
    missing = {"run_id", "start", "shard"} - set(data)
    if missing:
        raise ScoringError(f"{path}: not a scoring task file: no {sorted(missing)[0]}")
    try:
        return StepTask.from_json(data)
    except (TypeError, ValueError) as exc:
        raise ScoringError(f"{path}: not a scoring task file: {exc}") from exc


def shard_step(settings: Any, task: StepTask) -> ShardOutcome | None:
    """Score the task's shard and write its part; a no-op task returns None."""
    from fleetscore.pipelines.run_planning import shard_task
    from fleetscore.scoring.shard import score_shard

    if task.shard is None:
        return None
    return score_shard(shard_task(settings, _local_plan(settings, task), task.shard))


def finalize_step(settings: Any, tasks_dir: Path) -> ScoringResult:
    """Write the run's manifest (or report the duplicate it was)."""
    files = sorted(Path(tasks_dir).glob("*.json"))
    if not files:
        raise ScoringError(f"{tasks_dir}: no task files (did the plan step run?)")
    task = read_task(files[0])
    if task.duplicate_of:
        return ScoringResult(task.run_id, "skipped", task.start, task.end or task.start, task.release_version,
                             duplicate_of=task.duplicate_of)
    return finalize_run(settings, task.run_id, _local_plan(settings, task), timings=dict(task.timings))


def _local_plan(settings: Any, task: StepTask) -> RunPlan:
    """The run's plan from storage, its ``bundle_dir`` pointing at a copy of the release on this node."""
    stored = writer.read_json(storage_for(settings), f"{writer.run_prefix(task.start, task.run_id)}/{PLAN}")
    plan = RunPlan.from_json(stored)
    if not Path(plan.bundle_dir).is_dir():
        from fleetscore.pipelines.release_resolution import resolve_release

        resolved = resolve_release(settings, str(plan.release_version))
        plan = replace(plan, bundle_dir=str(resolved.bundle_dir))
    return plan


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True, default=str), encoding="utf-8")
    tmp.replace(path)
