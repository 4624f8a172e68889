"""The contracts between the steps of a scoring run, and the names of a run's files.

A run's plan (:class:`RunPlan`, written as ``_run.json``), the task of one shard (:class:`ShardTask`, what
an executor hands to :func:`scoring.shard.score_shard`) and the shard's outcome (:class:`ShardOutcome`,
written beside its part and read by the run's finalize step) are frozen dataclasses; each has one JSON
form (``to_json`` / ``from_json``), the one stored files hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fleetscore.scoring.storage import StorageSpec

# The folder of the runs (``runs/window_start=.../run=<id>/``, beside the ``predictions/`` Delta table)
# and the files of a run's folder.
RUNS = "runs"
PLAN = "_run.json"  # the run's plan, written first (once the gate passed)
ABORT = "_abort.json"  # a run given up before its plan was written (gate failed, duplicate)
FAILED = "_failed.json"  # a run that failed (more than max_failed_fraction): never resumed
SERIES_FOLDER = "_series"  # the shards' series metrics for the gate; "_": Parquet dataset readers skip it
MANIFEST = "manifest.json"  # written after the run's table commit: a run without it is incomplete
RUN_LOG = "run.log"
VALIDATION = "validation.json"  # the gate's report


def _time(text: str | datetime) -> datetime:
    return text if isinstance(text, datetime) else datetime.fromisoformat(text)


def display_key(device: str, sensor: str) -> str:
    """``"device/sensor"``: how manifests show a series to people. Never parsed back (an id may hold
    ``/``); the ids travel as values (:attr:`RunPlan.excluded_ids`)."""
    return f"{device}/{sensor}"


def excluded_pairs(data: Mapping[str, Any]) -> frozenset[tuple[str, str]]:
    """The excluded ``(device, sensor)`` series of a plan as stored (``excluded_series``)."""
    return frozenset((str(d), str(s)) for d, s in data.get("excluded_series") or ())


@dataclass(frozen=True)
class RunPlan:
    """A run's plan (``_run.json``): range, release, data, the gate's verdict and the devices of each shard."""

    run_id: str
    start: datetime
    end: datetime
    context_start: datetime  # the first window the features need before ``start``
    release_ref: str  # what was asked for: an alias, a version, ``path:FOLDER``
    release_version: int  # what it resolved to
    release_tags: Mapping[str, str]
    bundle_dir: str
    data_hash: str
    devices: tuple[str, ...] | None  # the --devices filter, None for all
    validation_id: str
    skip_validation: bool
    excluded: Mapping[str, str]  # {"device/sensor": reason} the gate excluded, for people (see excluded_ids)
    csv: bool
    n_shards: int  # at least 1; no devices -> one shard and no device lists
    shards: tuple[tuple[str, ...], ...]  # the devices of each shard
    created_at: datetime
    code_version: str
    excluded_ids: tuple[tuple[str, str], ...] = ()  # the excluded (device, sensor) series, as values

    def excluded_series(self) -> frozenset[tuple[str, str]]:
        """The excluded series as ``(device, sensor)`` pairs."""
        return frozenset(self.excluded_ids)

    def to_json(self) -> dict[str, Any]:
        """The plan as stored in ``_run.json``."""
        return {
            "run_id": self.run_id, "start": self.start.isoformat(), "end": self.end.isoformat(),
            "context_start": self.context_start.isoformat(), "release_ref": self.release_ref,
            "release_version": self.release_version, "release_tags": dict(self.release_tags),
            "bundle_dir": self.bundle_dir, "data_hash": self.data_hash,
            "devices": list(self.devices) if self.devices is not None else None,
            "validation_id": self.validation_id, "skip_validation": self.skip_validation,
            "excluded": dict(self.excluded), "excluded_series": [list(pair) for pair in self.excluded_ids],
            "csv": self.csv, "n_shards": self.n_shards,
            "shards": [list(devices) for devices in self.shards],
            "created_at": self.created_at.isoformat(), "code_version": self.code_version,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunPlan:
        """A plan read back from ``_run.json``."""
        devices = data.get("devices")
        return cls(
            run_id=str(data["run_id"]), start=_time(data["start"]), end=_time(data["end"]),
            context_start=_time(data["context_start"]), release_ref=str(data.get("release_ref", "")),
            release_version=int(data["release_version"]), release_tags=dict(data.get("release_tags") or {}),
            bundle_dir=str(data["bundle_dir"]), data_hash=str(data.get("data_hash", "")),
            devices=tuple(devices) if devices is not None else None,
            validation_id=str(data.get("validation_id", "")), skip_validation=bool(data.get("skip_validation")),
            excluded=dict(data.get("excluded") or {}), csv=bool(data.get("csv")),
            n_shards=int(data["n_shards"]),
            shards=tuple(tuple(devices) for devices in data["shards"]),
            created_at=_time(data["created_at"]), code_version=str(data.get("code_version", "")),
            excluded_ids=tuple(sorted(excluded_pairs(data))),
        )


@dataclass(frozen=True)
class ShardTask:
    """Everything one shard needs, as picklable plain data."""

    shard: int
    devices: tuple[str, ...]
    database_url: str
    bundle: str | Mapping[str, bytes]  # a folder the worker can read, or the bundle's files as bytes
    release_version: int
    start: datetime
    end: datetime
    context_start: datetime
    storage: StorageSpec
    prefix: str  # the run's folder under the storage root
    excluded: frozenset[tuple[str, str]] = field(default_factory=frozenset)
    csv: bool = False
    delay: float = 0.0  # seconds to sleep after writing the part (tests: a window to kill the run in)
    # when set: the shard reads and scores at once, but writes its part only once this file (the run's
    # plan, written when the gate passed) exists under the storage root, leaving out the series the
    # plan excludes; if ``<run folder>/_abort.json`` appears instead, it writes nothing
    wait_for: str = ""
    parent_pid: int = 0  # the process that writes that file (local executor): stop waiting if it died
    bundle_sha256: str = ""  # the bundle's digest recorded at registration: checked before loading
    # when set: the per-series metrics of the rows read (``ingestion.series_metrics``) are written there
    # (a Parquet file under the storage root) before scoring, for the data-checks gate's series checks
    metrics_to: str = ""
    # when set (remote executors): a file under the storage root that the run's client rewrites every
    # few seconds while the shards wait; one that stops changing for ``heartbeat_timeout`` seconds means
    # the client died, and the shard stops waiting, writing nothing (so a killed client never wedges a
    # worker). ``plan_timeout`` bounds the wait in every case.
    heartbeat: str = ""
    heartbeat_timeout: float = 60.0
    plan_timeout: float = 7200.0


@dataclass(frozen=True)
class ShardOutcome:
    """What one shard did (``part-NNNNN.json`` beside its part).

    ``failed``/``unscored``: ``{"device/sensor": reason}`` (unscored: no model in the release);
    ``per_sensor``: ``{sensor: (rows, anomalies)}``; ``timings``: seconds of load, read, metrics (when
    asked for), score, encode and wait (when it waited for the plan). ``aborted``: the run was given up
    before its plan and the shard wrote nothing.
    """

    shard: int
    devices: int = 0
    rows: int = 0
    anomalies: int = 0
    series: int = 0
    failed: Mapping[str, str] = field(default_factory=dict)
    unscored: Mapping[str, str] = field(default_factory=dict)
    per_sensor: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    kernel_evaluations: int = 0
    timings: Mapping[str, float] = field(default_factory=dict)
    aborted: bool = False
    # cold start: the "device/sensor" series scored by their sensor's fleet model (no model of their own)
    fleet_scored: tuple[str, ...] = ()
    # per scored series: (device, sensor, drift or None, feature, rows, anomalies, model scope)
    drift: tuple[tuple[Any, ...], ...] = ()
    # every anomalous window: (device, sensor, ts ISO, score, reason), for the run's anomaly events
    anomalous: tuple[tuple[Any, ...], ...] = ()
    # the data files it staged for the table commit: {"name", "partition", "size", "rows", "stats"}
    files: tuple[Mapping[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The outcome as stored in ``part-NNNNN.json``."""
        if self.aborted:
            return {"shard": self.shard, "aborted": True, "timings": dict(self.timings)}
        return {"shard": self.shard, "devices": self.devices, "rows": self.rows, "anomalies": self.anomalies,
                "series": self.series, "per_sensor": {s: list(v) for s, v in self.per_sensor.items()},
                "failed": dict(self.failed), "unscored": dict(self.unscored),
                "kernel_evaluations": self.kernel_evaluations, "timings": dict(self.timings),
                "fleet_scored": list(self.fleet_scored), "drift": [list(r) for r in self.drift],
                "anomalous": [list(r) for r in self.anomalous], "files": [dict(f) for f in self.files]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ShardOutcome:
        """An outcome read back from ``part-NNNNN.json``."""
        return cls(
            shard=int(data["shard"]), devices=int(data.get("devices", 0)), rows=int(data.get("rows", 0)),
            anomalies=int(data.get("anomalies", 0)), series=int(data.get("series", 0)),
            failed=dict(data.get("failed") or {}), unscored=dict(data.get("unscored") or {}),
            per_sensor={str(s): (int(v[0]), int(v[1])) for s, v in (data.get("per_sensor") or {}).items()},
            kernel_evaluations=int(data.get("kernel_evaluations", 0)), timings=dict(data.get("timings") or {}),
            aborted=bool(data.get("aborted", False)), files=tuple(dict(f) for f in data.get("files") or ()),
            fleet_scored=tuple(data.get("fleet_scored") or ()),
            drift=tuple(tuple(r) for r in data.get("drift") or ()),
            anomalous=tuple(tuple(r) for r in data.get("anomalous") or ()),
        )
