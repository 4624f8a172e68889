"""The scoring pipeline: gate -> release -> plan -> shards in parallel -> manifest -> run records.

:func:`score_window` is what ``fleetscore score`` and the scheduler call. It is built from three steps
that other executors reuse one by one (the Azure ML pipeline runs them as separate steps):

- :func:`prepare_run` runs the data-checks gate, resolves the release once, fingerprints the data,
  detects a duplicate run, resumes an incomplete run of the same plan or starts a new one, and writes
  the run's plan (``_run.json``) and the gate's report under the run's folder;
- :func:`score_one_shard` scores one shard of that plan (:func:`scoring.shard.score_shard`);
- :func:`finalize_run` checks the parts, applies ``max_failed_fraction``, writes the run's log and
  its manifest (last), moves the ``latest`` pointer and records the run (SQL, then MLflow).

A run killed at any point leaves a folder without a manifest, which readers ignore; running the same
command again finds that plan and completes it (only the shards without a part are scored).
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fleetscore import __version__
from fleetscore.data_checks import PendingValidation, run_fleet_validation, run_validation, series_stats_in_sql
from fleetscore.errors import FleetscoreError, ScoringError
from fleetscore.ingestion.run_log import RunLog, window_fingerprint
from fleetscore.ingestion.timeutil import parse_duration, utcnow
from fleetscore.pipelines.executors import ShardFailure, default_workers, run_in_background, run_shards
from fleetscore.pipelines.run_finalize import ScoringResult, finalize_run, note, parse_time, storage_for
from fleetscore.pipelines.settings import Settings
from fleetscore.pipelines.shard_metrics import complete_from_shards, metrics_path
from fleetscore.scoring import writer
from fleetscore.scoring.shard import ShardTask, bundle_files, load_bundle, score_shard
from fleetscore.scoring.storage import Storage, storage_spec
from fleetscore.training.coldstart import FLEET_DEVICE

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]


@dataclass
class RunPlan:
    """A prepared run: its id, plan (as written to ``_run.json``) and the shards still to score."""

    run_id: str
    plan: dict[str, Any]
    todo: list[int]
    bundle_dir: str
    resumed: bool = False
    duplicate_of: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    journal: list[str] = field(default_factory=list)


def code_version() -> str:
    """The package version and, in a git checkout, the commit: ``0.1.0+g1a2b3c4``."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=5, cwd=Path(__file__).resolve().parent, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}" if commit else __version__


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
    if not skip_validation:
        overlapped = _score_during_gate(settings, start, end, release=release, devices=devices, executor=executor,
                                        shards=shards, force=force, csv=csv, on_progress=on_progress,
                                        part_delay=part_delay, started=t_start)
        if overlapped is not None:
            return overlapped
    prepared = prepare_run(settings, start, end, release=release, devices=devices, shards=shards,
                           force=force, csv=csv, skip_validation=skip_validation)
    plan = prepared.plan
    w_start, w_end = parse_time(plan["start"]), parse_time(plan["end"])
    if prepared.duplicate_of:
        return ScoringResult(prepared.run_id, "skipped", w_start, w_end, plan["release_version"],
                             duplicate_of=prepared.duplicate_of,
                             location=storage_for(settings).display(writer.run_prefix(w_start, prepared.duplicate_of)))
    total = plan["n_shards"]
    already = total - len(prepared.todo)
    if on_progress is not None:
        on_progress(already, total)
    progress = (lambda done, _n: on_progress(already + done, total)) if on_progress else None
    bundle: str | dict[str, bytes] = prepared.bundle_dir
    if executor.startswith("dask://"):
        bundle = bundle_files(prepared.bundle_dir)  # workers may not see this machine's disk
    t0 = time.perf_counter()
    tasks = [(shard_task(settings, plan, i, bundle, part_delay),) for i in prepared.todo]
    results = run_shards(score_shard, tasks, executor=executor, workers=settings.workers,
                         on_progress=progress)
    failures = {prepared.todo[r.shard]: r.error for r in results if isinstance(r, ShardFailure)}
    prepared.timings["score"] = time.perf_counter() - t0
    return finalize_run(settings, prepared.run_id, plan, shard_failures=failures, timings=prepared.timings,
                        started=t_start, resumed=prepared.resumed, journal=prepared.journal)


def prepare_run(
    settings: Settings,
    start: datetime | None,
    end: datetime | None,
    *,
    release: str | None = None,
    devices: Sequence[str] | None = None,
    shards: int | None = None,
    force: bool = False,
    csv: bool | None = None,
    skip_validation: bool = False,
    now: datetime | None = None,
) -> RunPlan:
    """Gate, resolve, fingerprint, detect duplicates, plan (or resume) a run; write its plan."""
    setup = _setup(settings, start, end, release, devices, skip_validation, now)
    report = _gate_verdict(setup)
    data_hash = _data_hash(setup, report)
    start, end, version = setup.start, setup.end, setup.version
    duplicate = writer.find_duplicate(setup.storage, start, end, version, data_hash, setup.device_filter)
    if duplicate and not force:
        _record_skipped(setup, data_hash, str(duplicate["run_id"]))
        stub = {"start": start.isoformat(), "end": end.isoformat(), "release_version": version}
        return RunPlan(setup.run_id, stub, [], str(setup.resolved.bundle_dir), duplicate_of=str(duplicate["run_id"]),
                       timings=setup.timings, journal=setup.journal)

    t0 = time.perf_counter()
    plan = _plan(settings, setup, report, data_hash, shards, csv)
    storage, run_id, n_shards = setup.storage, setup.run_id, plan["n_shards"]
    resumed = _find_resumable(storage, start, plan, force)
    todo = list(range(n_shards))
    if resumed is not None:
        run_id, plan = resumed, {**plan, "run_id": resumed, "created_at": writer.read_json(
            storage, f"{writer.run_prefix(start, resumed)}/{writer.PLAN}")["created_at"]}
        done = writer.done_shards(storage, writer.run_prefix(start, run_id))
        todo = [i for i in todo if i not in done]
        note(setup.journal, "resuming incomplete run %s: %d of %d shards left", run_id, len(todo), n_shards)
    prefix = writer.run_prefix(start, run_id)
    if resumed is None:
        _write_plan(storage, prefix, plan, report)
    setup.runs.start(run_id, start, end, setup.release_ref, setup.now, release_version=version, data_hash=data_hash,
                     validation_id=plan["validation_id"], shards_total=n_shards, shards_done=n_shards - len(todo),
                     location=storage.display(prefix))
    setup.timings["plan"] = time.perf_counter() - t0
    note(setup.journal, "run %s: %d devices in %d shards -> %s", run_id, sum(len(d) for d in plan["shards"]),
         n_shards, storage.display(prefix))
    return RunPlan(run_id, plan, todo, str(setup.resolved.bundle_dir), resumed=resumed is not None,
                   timings=setup.timings, journal=setup.journal)


@dataclass
class _Setup:
    """A run being prepared: its range, the gate under way in another process, the resolved release."""

    start: datetime
    end: datetime
    window: timedelta
    release_ref: str
    device_filter: list[str] | None
    skip_validation: bool
    now: datetime
    run_id: str
    storage: Storage
    runs: RunLog
    store: Any
    gate: Any
    resolved: Any = None
    version: int = 0
    bundle: Any = None
    t_gate: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    journal: list[str] = field(default_factory=list)


def _setup(settings: Settings, start: datetime | None, end: datetime | None, release: str | None,
           devices: Sequence[str] | None, skip_validation: bool, now: datetime | None,
           fleet_checks_only: bool = False) -> _Setup:
    """Resolve the range, start the gate in another process, then resolve and load the release here.

    With ``fleet_checks_only`` the gate's series checks are left pending, for metrics from the shards."""
    from fleetscore.ingestion.store import SensorStore

    now = now or utcnow()
    store = SensorStore(settings.database_url)
    window = parse_duration(settings.ingest.window, "ingest.window")
    start, end = _resolve_range(store, start, end, window)
    device_filter = sorted(devices) if devices else None
    storage = storage_for(settings)
    storage.ensure_root()
    # the gate (Great Expectations: seconds) runs in another process while this one resolves the release
    t0 = time.perf_counter()
    gate = None if skip_validation else run_in_background(
        run_fleet_validation if fleet_checks_only else run_validation, settings.database_url, start, end,
        settings.data_checks,
        report_dir=Path(settings.home) / "reports" / "validation", window=window, devices=device_filter)
    setup = _Setup(start, end, window, release or settings.scoring.release, device_filter, skip_validation, now,
                   writer.new_run_id(now), storage, RunLog(settings.database_url), store, gate, t_gate=t0)
    try:
        setup.resolved = _resolve_release(settings, setup.release_ref)
        setup.version = int(setup.resolved.version)
        setup.bundle = load_bundle(str(setup.resolved.bundle_dir))
    except BaseException:
        if gate is not None:
            gate.cancel()
        raise
    setup.timings["resolve"] = time.perf_counter() - t0
    return setup


def _gate_verdict(setup: _Setup, complete: Callable[[PendingValidation], Any] | None = None) -> Any:
    """Wait for the gate; record the run as failed and raise when it failed at fleet level. A gate whose
    series checks were left pending is completed by ``complete`` first."""
    report = setup.gate.result() if setup.gate is not None else None
    if isinstance(report, PendingValidation):
        if complete is None:
            raise TypeError("a gate with pending series checks needs `complete`")
        report = complete(report)
    setup.timings["gate"] = time.perf_counter() - setup.t_gate
    if report is not None:
        if not report.fleet_ok:
            try:
                report.raise_if_failed()
            except FleetscoreError as exc:
                setup.runs.start(setup.run_id, setup.start, setup.end, setup.release_ref, setup.now, status="failed",
                                 error=str(exc))
                setup.runs.update(setup.run_id, status="failed", error=str(exc), finished_at=utcnow())
                raise
        note(setup.journal, "validation %s: fleet ok, %d series excluded", report.id, len(report.excluded))
    else:
        note(setup.journal, "validation skipped (--skip-validation)")
    return report


def _data_hash(setup: _Setup, report: Any) -> str:
    """The data fingerprint: from the gate's own scan when it ran, else one query."""
    data_hash = str(getattr(report, "data_hash", "") or "") if report is not None else ""
    if not data_hash:
        data_hash = window_fingerprint(setup.store.database_url, setup.start, setup.end, setup.device_filter)
    note(setup.journal, "release %s -> v%d (%d models); data hash %s", setup.release_ref, setup.version,
         len(setup.bundle.keys), data_hash)
    return data_hash


def _record_skipped(setup: _Setup, data_hash: str, duplicate_of: str) -> None:
    note(setup.journal, "window %s .. %s already scored by run %s (release v%d, same data): skipped",
         setup.start, setup.end, duplicate_of, setup.version)
    setup.runs.start(setup.run_id, setup.start, setup.end, setup.release_ref, setup.now,
                     release_version=setup.version, status="skipped", data_hash=data_hash,
                     error=f"duplicate of run {duplicate_of}")
    setup.runs.update(setup.run_id, status="skipped", finished_at=utcnow())


def _plan(settings: Settings, setup: _Setup, report: Any, data_hash: str, shards: int | None,
          csv: bool | None) -> dict[str, Any]:
    """The run's plan (``_run.json``): range, release, data, gate verdict and the devices of each shard."""
    from fleetscore.ingestion.store import shard_devices

    bundle = setup.bundle
    all_devices = sorted((set(setup.store.devices()) | {d for d, _ in bundle.keys}) - {FLEET_DEVICE})
    if setup.device_filter:
        wanted_devices = set(setup.device_filter)
        all_devices = [d for d in all_devices if d in wanted_devices]
    wanted = shards or settings.scoring.shards or max(settings.workers or default_workers(),
                                                       math.ceil(len(bundle.keys) / settings.scoring.shard_series))
    n_shards = max(1, min(wanted, len(all_devices) or 1))
    return {
        "run_id": setup.run_id,
        "start": setup.start.isoformat(), "end": setup.end.isoformat(),
        "context_start": (setup.start - bundle.context_windows * setup.window).isoformat(),
        "release_ref": setup.release_ref, "release_version": setup.version,
        "release_tags": dict(setup.resolved.tags), "bundle_dir": str(setup.resolved.bundle_dir),
        "data_hash": data_hash, "devices": setup.device_filter,
        "validation_id": report.id if report else "", "skip_validation": setup.skip_validation,
        "excluded": {f"{d}/{s}": reason for (d, s), reason in sorted(report.excluded.items())} if report else {},
        "csv": settings.scoring.csv if csv is None else csv,
        "n_shards": n_shards,
        "shards": shard_devices(all_devices, n_shards),
        "created_at": setup.now.isoformat(), "code_version": code_version(),
    }


def _write_plan(storage: Storage, prefix: str, plan: dict[str, Any], report: Any) -> None:
    if report is not None and report.path:
        storage.write_bytes(f"{prefix}/validation.json", Path(report.path).read_bytes())
    writer.write_json(storage, f"{prefix}/{writer.PLAN}", plan)


def _score_during_gate(
    settings: Settings,
    start: datetime | None,
    end: datetime | None,
    *,
    release: str | None,
    devices: Sequence[str] | None,
    executor: str,
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
    from concurrent.futures import ThreadPoolExecutor

    storage = storage_for(settings)
    w_start = start
    if w_start is not None and _planned_incomplete(storage, w_start) and not force:
        return None  # maybe resumable: decided on the whole plan, after the gate
    setup = _setup(settings, start, end, release, devices, False, None, fleet_checks_only=True)
    if _planned_incomplete(storage, setup.start) and not force:
        _stop_gate(setup)
        return None
    provisional = _plan(settings, setup, None, "", shards, csv)
    prefix = writer.run_prefix(setup.start, setup.run_id)
    bundle: str | dict[str, bytes] = str(setup.resolved.bundle_dir)
    if executor.startswith("dask://"):
        bundle = bundle_files(str(setup.resolved.bundle_dir))
    n_shards = provisional["n_shards"]
    # the shards that start at once compute the gate's series metrics from their rows (a shard queued
    # behind them could not: its turn comes only after the plan); the others' series are checked in SQL
    at_once = min(n_shards, settings.workers or default_workers()) if executor == "local" else 0
    tasks = [(replace(shard_task(settings, provisional, i, bundle, part_delay), wait_for=f"{prefix}/{writer.PLAN}",
                      parent_pid=os.getpid() if executor == "local" else 0,
                      metrics_to=metrics_path(prefix, i) if i < at_once else ""),) for i in range(n_shards)]
    if on_progress is not None:
        on_progress(0, n_shards)
    t0 = time.perf_counter()
    finished: dict[int, Any] = {}
    queued = [device for devices in provisional["shards"][at_once:] for device in devices]
    pool = ThreadPoolExecutor(2)
    scoring = pool.submit(run_shards, score_shard, tasks, executor=executor, workers=settings.workers,
                          on_progress=on_progress, on_result=lambda r: finished.__setitem__(r.shard, r))
    # the queued shards' series: the gate's SQL query, beside the first shards and the fleet checks
    others = pool.submit(series_stats_in_sql, settings.database_url, setup.start, setup.end, settings.data_checks,
                         keep=queued, window=setup.window, devices=setup.device_filter) if queued else None
    pool.shutdown(wait=False)
    try:
        report = _gate_verdict(setup, lambda pending: complete_from_shards(
            pending, storage, prefix, provisional["shards"], range(at_once), finished, scoring, others))
        data_hash = _data_hash(setup, report)
        duplicate = writer.find_duplicate(storage, setup.start, setup.end, setup.version, data_hash,
                                          setup.device_filter)
        if duplicate and not force:
            _abort(storage, prefix, scoring)
            _record_skipped(setup, data_hash, str(duplicate["run_id"]))
            return ScoringResult(setup.run_id, "skipped", setup.start, setup.end, setup.version,
                                 duplicate_of=str(duplicate["run_id"]),
                                 location=storage.display(writer.run_prefix(setup.start, str(duplicate["run_id"]))))
    except BaseException:
        _abort(storage, prefix, scoring)
        raise
    plan = {**provisional, "data_hash": data_hash, "validation_id": report.id,
            "excluded": {f"{d}/{s}": reason for (d, s), reason in sorted(report.excluded.items())}}
    setup.runs.start(setup.run_id, setup.start, setup.end, setup.release_ref, setup.now,
                     release_version=setup.version, data_hash=data_hash, validation_id=report.id,
                     shards_total=n_shards, shards_done=0, location=storage.display(prefix))
    _write_plan(storage, prefix, plan, report)  # the shards' signal to write
    note(setup.journal, "run %s: %d devices in %d shards -> %s (scored during the gate)", setup.run_id,
         sum(len(d) for d in plan["shards"]), n_shards, storage.display(prefix))
    results = scoring.result()
    failures = {r.shard: r.error for r in results if isinstance(r, ShardFailure)}
    setup.timings["score"] = time.perf_counter() - t0
    return finalize_run(settings, setup.run_id, plan, shard_failures=failures, timings=setup.timings,
                        started=started, journal=setup.journal)


def _abort(storage: Storage, prefix: str, scoring: Any) -> None:
    """Tell the waiting shards to write nothing, wait for them, and remove the run's folder."""
    writer.write_json(storage, f"{prefix}/{writer.ABORT}", {"aborted_at": utcnow().isoformat()})
    try:
        scoring.result()
    finally:
        storage.remove_tree(prefix)


def _stop_gate(setup: _Setup) -> None:
    if setup.gate is not None and not setup.gate.cancel():
        try:
            setup.gate.result()
        except Exception as exc:  # noqa: BLE001 - its outcome is not used; the sequential way reruns it
            log.debug("gate of an abandoned plan: %s", exc)


def shard_task(settings: Settings, plan: dict[str, Any], shard: int, bundle: str | dict[str, bytes] | None = None,
               part_delay: float = 0.0) -> ShardTask:
    """The :class:`ShardTask` of one shard of a plan."""
    start = parse_time(plan["start"])
    excluded = frozenset(tuple(key.split("/", 1)) for key in plan["excluded"])
    spec = storage_spec(settings.storage_url, settings.scoring.storage_account,
                        settings.scoring.storage_connection_string)
    return ShardTask(
        shard=shard, devices=tuple(plan["shards"][shard]), database_url=settings.database_url,
        bundle=bundle if bundle is not None else plan["bundle_dir"], model_version=int(plan["release_version"]),
        start=start, end=parse_time(plan["end"]), context_start=parse_time(plan["context_start"]), storage=spec,
        prefix=writer.run_prefix(start, plan["run_id"]), excluded=excluded,  # type: ignore[arg-type]
        csv=bool(plan["csv"]), delay=part_delay,
    )


def score_one_shard(settings: Settings, start: datetime, run_id: str, shard: int) -> dict[str, Any]:
    """Score ONE shard of a prepared run (an Azure ML parallel step calls this): reads the run's plan
    from storage, loads the release from the plan's bundle folder, writes the shard's part."""
    storage = storage_for(settings)
    plan = writer.read_json(storage, f"{writer.run_prefix(start, run_id)}/{writer.PLAN}")
    if not 0 <= shard < plan["n_shards"]:
        raise ScoringError(f"run {run_id}: no shard {shard} (the plan has {plan['n_shards']})")
    return score_shard(shard_task(settings, plan, shard))


def _planned_incomplete(storage: Storage, start: datetime) -> bool:
    """Whether the window has an incomplete run with a plan (one that may have to be resumed). A run
    killed before its plan left at most its shards' series metrics: nothing to resume."""
    return any(not complete and storage.exists(f"{writer.run_prefix(start, run_id)}/{writer.PLAN}")
               for run_id, complete in writer.list_runs(storage, start))


def _find_resumable(storage: Storage, start: datetime, plan: dict[str, Any], force: bool) -> str | None:
    """An incomplete run of this window with the same plan (release, data, devices, shards), if any."""
    if force:
        return None
    same = ("end", "release_version", "data_hash", "devices", "n_shards", "shards", "csv", "excluded")
    for run_id, complete in reversed(writer.list_runs(storage, start)):
        prefix = writer.run_prefix(start, run_id)
        if complete or storage.exists(f"{prefix}/_failed.json") or not storage.exists(f"{prefix}/{writer.PLAN}"):
            continue
        old = writer.read_json(storage, f"{prefix}/{writer.PLAN}")
        if all(old.get(k) == plan.get(k) for k in same):
            return run_id
    return None


def _resolve_range(store: Any, start: datetime | None, end: datetime | None,
                   window: timedelta) -> tuple[datetime, datetime]:
    if start is not None and end is not None:
        return start, end
    first, last = store.time_range()
    if first is None or last is None:
        raise ScoringError("nothing to score: the sensor store holds no windows (run fleetscore ingest first)")
    return start or first, end or (last + window)


@dataclass(frozen=True)
class LocalRelease:
    """A release bundle folder scored without the registry (``--release path:FOLDER``, e.g. a candidate
    from ``fleetscore train``): version 0 unless the bundle's manifest names one."""

    version: int
    bundle_dir: Path
    tags: dict[str, str]


def _resolve_release(settings: Settings, ref: str) -> Any:
    if ref.startswith("path:"):
        folder = Path(ref[len("path:"):]).resolve()
        if not (folder / "manifest.json").is_file():
            raise ScoringError(f"--release {ref}: {folder} is not a release bundle folder (no manifest.json)")
        manifest = json.loads((folder / "manifest.json").read_text())
        version = manifest.get("version")
        return LocalRelease(version if isinstance(version, int) else 0, folder, {"source": str(folder)})
    from fleetscore.training.registry import resolve_release

    return resolve_release(settings.tracking_uri, settings.training.model_name, ref)
