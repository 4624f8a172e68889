"""Planning a scoring run: gate, release, data fingerprint, duplicate detection, resume, the plan.

:func:`prepare_run` runs the data-checks gate, resolves the release once, fingerprints the data,
detects a duplicate run, resumes an incomplete run of the same plan or starts a new one, and writes
the run's plan (``_run.json``, a :class:`~scoring.contracts.RunPlan`) and the gate's report under the
run's folder. :func:`shard_task` turns one shard of a plan into the task an executor runs. The
overlapped run (:mod:`pipelines.overlapped_run`) uses the same steps one by one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fleetscore import __version__, provenance
from fleetscore.data_checks import PendingValidation, run_fleet_validation, run_validation
from fleetscore.errors import FleetscoreError, ScoringError
from fleetscore.ingestion.timeutil import parse_duration, utcnow
from fleetscore.pipelines import release_resolution
from fleetscore.pipelines.adapters import storage_for, storage_spec_for
from fleetscore.pipelines.executor_kinds import Executor, executor_for, shard_count
from fleetscore.pipelines.executors import run_in_background
from fleetscore.pipelines.run_finalize import note
from fleetscore.pipelines.settings import Settings
from fleetscore.processes import owner_gone, this_process
from fleetscore.records.run_log import RunLog, window_fingerprint
from fleetscore.scoring import table, writer
from fleetscore.scoring.contracts import FAILED, PLAN, VALIDATION, RunPlan, ShardTask
from fleetscore.scoring.shard import load_bundle
from fleetscore.scoring.storage import Storage
from fleetscore.training.coldstart import FLEET_DEVICE

log = logging.getLogger("fleetscore.pipelines.scoring_pipeline")  # one logger for the whole run's messages


@dataclass
class PreparedRun:
    """A prepared run: its id, range and release version, its plan and the shards still to score.

    A duplicate (``duplicate_of`` set) has no plan and nothing to score."""

    run_id: str
    start: datetime
    end: datetime
    release_version: int
    plan: RunPlan | None
    todo: list[int]
    bundle_dir: str
    resumed: bool = False
    duplicate_of: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    journal: list[str] = field(default_factory=list)


def code_version() -> str:
    """The package version and, in a git checkout, the commit: ``0.1.0+g1a2b3c4``."""
    commit = provenance.git_commit(short=True)
    return f"{__version__}+g{commit}" if commit else __version__


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
    executor: Executor | None = None,
) -> PreparedRun:
    """Gate, resolve, fingerprint, detect duplicates, plan (or resume) a run; write its plan.

    The shard count follows the fleet and ``executor``'s capacity (default: the ``executor`` setting's).
    """
    setup = setup_run(settings, start, end, release, devices, skip_validation, now)
    report = gate_verdict(setup)
    data_hash = fingerprint(setup, report)
    start, end, version = setup.start, setup.end, setup.version
    duplicate = find_duplicate(settings, setup.storage, start, end, version, data_hash, setup.device_filter)
    if duplicate and not force:
        record_skipped(setup, data_hash, str(duplicate["run_id"]))
        return PreparedRun(setup.run_id, start, end, version, None, [], str(setup.resolved.bundle_dir),
                           duplicate_of=str(duplicate["run_id"]), timings=setup.timings, journal=setup.journal)

    t0 = time.perf_counter()
    plan = build_plan(settings, setup, report, data_hash, shards, csv, executor or executor_for(settings))
    storage, run_id, n_shards = setup.storage, setup.run_id, plan.n_shards
    resumed = find_resumable(storage, start, plan, force, setup.runs)
    todo = list(range(n_shards))
    if resumed is not None:
        old = RunPlan.from_json(writer.read_json(storage, f"{writer.run_prefix(start, resumed)}/{PLAN}"))
        run_id, plan = resumed, replace(plan, run_id=resumed, created_at=old.created_at)
        done = writer.done_shards(storage, writer.run_prefix(start, run_id))
        todo = [i for i in todo if i not in done]
        note(setup.journal, "resuming incomplete run %s: %d of %d shards left", run_id, len(todo), n_shards)
    prefix = writer.run_prefix(start, run_id)
    if resumed is None:
        write_plan(storage, prefix, plan, report)
    setup.runs.start(run_id, start, end, setup.release_ref, setup.now, release_version=version, data_hash=data_hash,
                     validation_id=plan.validation_id, shards_total=n_shards, shards_done=n_shards - len(todo),
                     location=storage.display(prefix))
    setup.timings["plan"] = time.perf_counter() - t0
    note(setup.journal, "run %s: %d devices in %d shards -> %s", run_id, sum(len(d) for d in plan.shards),
         n_shards, storage.display(prefix))
    return PreparedRun(run_id, start, end, version, plan, todo, str(setup.resolved.bundle_dir),
                       resumed=resumed is not None, timings=setup.timings, journal=setup.journal)


@dataclass
class RunSetup:
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


def setup_run(settings: Settings, start: datetime | None, end: datetime | None, release: str | None,
              devices: Sequence[str] | None, skip_validation: bool, now: datetime | None,
              fleet_checks_only: bool = False) -> RunSetup:
    """Resolve the range, start the gate in another process, then resolve and load the release here.

    With ``fleet_checks_only`` the gate's series checks are left pending, for metrics from the shards."""
    from fleetscore.ingestion.store import SensorStore

    now = now or utcnow()
    store = SensorStore(settings.database_url)
    window = parse_duration(settings.ingest.window, "ingest.window")
    bounds = store.fill_range(start, end, window)
    if bounds is None:
        raise ScoringError("nothing to score: the sensor store holds no windows (run fleetscore ingest first)")
    start, end = bounds
    device_filter = sorted(devices) if devices else None
    if device_filter:
        _check_devices(store, device_filter)
    storage = storage_for(settings)
    storage.ensure_root()
    # the gate (Great Expectations: seconds) runs in another process while this one resolves the release
    t0 = time.perf_counter()
    gate = None if skip_validation else run_in_background(
        run_fleet_validation if fleet_checks_only else run_validation, settings.database_url, start, end,
        settings.data_checks,
        report_dir=Path(settings.home) / "reports" / "validation", window=window, devices=device_filter)
    setup = RunSetup(start, end, window, release_resolution.release_ref(settings, release), device_filter,
                     skip_validation, now,
                   writer.new_run_id(now), storage, RunLog(settings.database_url), store, gate, t_gate=t0)
    try:
        setup.resolved = release_resolution.resolve_release(settings, setup.release_ref)
        setup.version = int(setup.resolved.version)
        setup.bundle = load_bundle(str(setup.resolved.bundle_dir), _bundle_sha(setup.resolved.tags),
                                   f"release v{setup.version}")
    except BaseException:
        if gate is not None:
            gate.cancel()
        raise
    setup.timings["resolve"] = time.perf_counter() - t0
    return setup


def gate_verdict(setup: RunSetup, complete: Callable[[PendingValidation], Any] | None = None) -> Any:
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


def fingerprint(setup: RunSetup, report: Any) -> str:
    """The data fingerprint: from the gate's own scan when it ran, else one query."""
    data_hash = str(getattr(report, "data_hash", "") or "") if report is not None else ""
    if not data_hash:
        data_hash = window_fingerprint(setup.store.database_url, setup.start, setup.end, setup.device_filter)
    note(setup.journal, "release %s -> v%d (%d models); data hash %s", setup.release_ref, setup.version,
         len(setup.bundle.keys), data_hash)
    return data_hash


def record_skipped(setup: RunSetup, data_hash: str, duplicate_of: str) -> None:
    """Record the run as skipped: the same release already scored the same data of this window."""
    note(setup.journal, "window %s .. %s already scored by run %s (release v%d, same data): skipped",
         setup.start, setup.end, duplicate_of, setup.version)
    setup.runs.start(setup.run_id, setup.start, setup.end, setup.release_ref, setup.now,
                     release_version=setup.version, status="skipped", data_hash=data_hash,
                     error=f"duplicate of run {duplicate_of}")
    setup.runs.update(setup.run_id, status="skipped", finished_at=utcnow())


def build_plan(settings: Settings, setup: RunSetup, report: Any, data_hash: str, shards: int | None,
               csv: bool | None, executor: Executor) -> RunPlan:
    """The run's plan (``_run.json``): range, release, data, gate verdict and the devices of each shard."""
    from fleetscore.ingestion.store import shard_devices

    bundle = setup.bundle
    all_devices = sorted((set(setup.store.devices()) | {d for d, _ in bundle.keys}) - {FLEET_DEVICE})
    if setup.device_filter:
        wanted_devices = set(setup.device_filter)
        all_devices = [d for d in all_devices if d in wanted_devices]
    # sized to the fleet and the executor's capacity, never to the cores of the machine planning the run
    n_shards = shard_count(len(bundle.keys), len(all_devices), settings.scoring.series_per_shard,
                           executor.capacity(), shards or settings.scoring.shards)
    return RunPlan(
        run_id=setup.run_id, start=setup.start, end=setup.end,
        context_start=setup.start - bundle.context_windows * setup.window,
        release_ref=setup.release_ref, release_version=setup.version,
        release_tags=dict(setup.resolved.tags), bundle_dir=str(setup.resolved.bundle_dir),
        data_hash=data_hash, devices=tuple(setup.device_filter) if setup.device_filter else None,
        validation_id=report.id if report else "", skip_validation=setup.skip_validation,
        excluded=excluded_of(report) if report else {}, excluded_ids=excluded_ids_of(report) if report else (),
        csv=settings.scoring.csv if csv is None else csv,
        n_shards=n_shards, shards=tuple(tuple(d) for d in shard_devices(all_devices, n_shards)),
        created_at=setup.now, code_version=code_version(),
    )


def excluded_of(report: Any) -> dict[str, str]:
    """The series a gate report excluded, as the plan stores them: ``{"device/sensor": reason}``."""
    return {f"{d}/{s}": reason for (d, s), reason in sorted(report.excluded.items())}


def excluded_ids_of(report: Any) -> tuple[tuple[str, str], ...]:
    """The series a gate report excluded as ``(device, sensor)`` values (what the shards read)."""
    return tuple(sorted((str(d), str(s)) for d, s in report.excluded))


def write_plan(storage: Storage, prefix: str, plan: RunPlan, report: Any) -> None:
    """Write the gate's report and the run's plan (last: the plan is the shards' signal to write)."""
    if report is not None and report.path:
        storage.write_bytes(f"{prefix}/{VALIDATION}", Path(report.path).read_bytes())
    writer.write_json(storage, f"{prefix}/{PLAN}", plan.to_json())


def shard_task(settings: Settings, plan: RunPlan, shard: int, bundle: str | dict[str, bytes] | None = None,
               part_delay: float = 0.0) -> ShardTask:
    """The :class:`ShardTask` of one shard of a plan."""
    return ShardTask(
        shard=shard, devices=plan.shards[shard], database_url=settings.database_url,
        bundle=bundle if bundle is not None else plan.bundle_dir, release_version=plan.release_version,
        start=plan.start, end=plan.end, context_start=plan.context_start, storage=storage_spec_for(settings),
        prefix=writer.run_prefix(plan.start, plan.run_id), excluded=plan.excluded_series(),
        csv=plan.csv, delay=part_delay, bundle_sha256=_bundle_sha(plan.release_tags),
    )


def _bundle_sha(tags: Any) -> str:
    from fleetscore.training.bundle import BUNDLE_SHA_TAG

    return str((tags or {}).get(BUNDLE_SHA_TAG, ""))


def planned_incomplete(storage: Storage, start: datetime) -> bool:
    """Whether the window has an incomplete run with a plan (one that may have to be resumed). A run
    killed before its plan left at most its shards' series metrics: nothing to resume."""
    return any(not complete and storage.exists(f"{writer.run_prefix(start, run_id)}/{PLAN}")
               for run_id, complete in writer.list_runs(storage, start))


def find_resumable(storage: Storage, start: datetime, plan: RunPlan, force: bool,
                   runs: RunLog | None = None) -> str | None:
    """An incomplete run of this window with the same plan (release, data, devices, shards), if any; never
    one that another live process is running (recorded in ``runs``): that one is not dead, only busy."""
    if force:
        return None
    same = ("end", "release_version", "data_hash", "devices", "n_shards", "shards", "csv", "excluded",
            "excluded_series")
    wanted = plan.to_json()
    for run_id, complete in reversed(writer.list_runs(storage, start)):
        prefix = writer.run_prefix(start, run_id)
        if complete or storage.exists(f"{prefix}/{FAILED}") or not storage.exists(f"{prefix}/{PLAN}"):
            continue
        old = writer.read_json(storage, f"{prefix}/{PLAN}")
        if all(old.get(k) == wanted.get(k) for k in same) and not _running_elsewhere(runs, run_id):
            return run_id
    return None


def _running_elsewhere(runs: RunLog | None, run_id: str) -> bool:
    record = runs.get(run_id) if runs is not None else None
    if record is None or record["status"] != "running":
        return False
    owner = str(record.get("owner") or "")
    return owner != this_process() and owner_gone(owner) is False


def _check_devices(store: Any, devices: Sequence[str]) -> None:
    """Refuse a --devices filter naming a device the store does not hold (before any record is written)."""
    known = set(store.devices())
    unknown = [d for d in devices if d not in known]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise ScoringError(f"--devices: no device {unknown[0]!r} in the sensor store{more}; "
                           f"it holds {len(known):,} devices")



def find_duplicate(settings: Settings, storage: Storage, start: datetime, end: datetime, release_version: int,
                   data_hash: str, devices: Sequence[str] | None) -> dict[str, Any] | None:
    """The manifest of a complete run of the same window, release, devices and data whose rows are still
    the table's current ones (a later run that replaced some of them makes the window worth scoring)."""
    duplicate = writer.find_duplicate(storage, start, end, release_version, data_hash, devices)
    if duplicate is None or "table_version" not in duplicate:
        return None
    if table.superseded(storage_spec_for(settings), int(duplicate["table_version"]), start, end, devices):
        return None
    return duplicate


def committed_location(settings: Settings, run_id: str) -> str:
    """``TABLE@vN`` of a committed run (the table alone if its version is not found)."""
    spec = storage_spec_for(settings)
    version = table.run_version(spec, run_id)
    return table.table_uri(spec) + (f"@v{version}" if version is not None else "")
