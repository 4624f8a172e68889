"""A scoring run's folder: its plan, the shards' staged parts, its manifest (beside the predictions table).

Layout under the storage root::

    predictions/                         the Delta table (scoring.table): _delta_log/, window_start=.../
    runs/window_start=YYYY-MM-DDTHH-MM/  the runs of a requested window (the start of its range)
        run=<run_id>/
            _run.json                    the run's plan, written first (release, data hash, shards)
            part-00000.<hour>.parquet    a shard's data files, one per hour, staged here until the run's
                                         commit moves them into the table
            part-00000.json              the shard's outcome (rows, anomalies, failures, timings, its
                                         files and their statistics), written after its data files
            part-00000.csv ...           with --csv: the reference format TS,Device,Sensor,Val,Prediction
            validation.json, run.log     the gate's report and the run's log
            manifest.json                written after the table commit, naming its version

The table commit (:func:`scoring.table.commit_run`) is what makes a run's predictions visible; the
folder is bookkeeping (resume, duplicate detection, reports) that no table reader looks at.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd

from fleetscore.errors import StorageError
from fleetscore.scoring.contracts import MANIFEST, RUNS, ShardOutcome
from fleetscore.scoring.storage import Storage
from fleetscore.scoring.table import DataFile, StagedFile, encode_files

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = ["TS", "Device", "Sensor", "Val", "Prediction", "Score", "ModelVersion", "ModelScope",
                      "Reason"]
REFERENCE_COLUMNS = ["TS", "Device", "Sensor", "Val", "Prediction"]


def window_label(start: datetime) -> str:
    """``2018-08-28 23:00`` -> ``2018-08-28T23-00`` (the folder name's time part)."""
    return pd.Timestamp(start).strftime("%Y-%m-%dT%H-%M")


def window_prefix(start: datetime | str) -> str:
    """``runs/window_start=...`` for a window start (a datetime or an existing label)."""
    label = start if isinstance(start, str) else window_label(start)
    return f"{RUNS}/window_start={label}"


def run_prefix(start: datetime | str, run_id: str) -> str:
    """The folder of one run of one window."""
    return f"{window_prefix(start)}/run={run_id}"


def new_run_id(now: datetime) -> str:
    """A run id that sorts by creation time (to the millisecond): ``20180829T010203456-1a2b3c``."""
    ts = pd.Timestamp(now)
    return f"{ts:%Y%m%dT%H%M%S}{ts.microsecond // 1000:03d}-{secrets.token_hex(3)}"


def part_name(shard: int, ext: str = "parquet") -> str:
    """``part-00003.parquet``."""
    return f"part-{shard:05d}.{ext}"


def to_predictions(scored: pd.DataFrame, model_version: int) -> pd.DataFrame:
    """The kernel's output (device, sensor, ts, value, score, prediction, reason) in the predictions columns."""
    out = pd.DataFrame({
        "TS": pd.to_datetime(scored["ts"], utc=True).astype("datetime64[us, UTC]"),
        "Device": scored["device"].astype(str),
        "Sensor": scored["sensor"].astype(str),
        "Val": scored["value"].astype("float64"),
        "Prediction": scored["prediction"].astype("int8"),
        "Score": scored["score"].astype("float64"),
    })
    out["ModelVersion"] = pd.Series(model_version, index=out.index, dtype="int32")
    # series: the series' own model; fleet: its sensor's fleet model (cold start, training.coldstart)
    out["ModelScope"] = scored["scope"].astype(str) if "scope" in scored else "series"
    # what drove the score: a feature, or sensor:feature for the device family (training.kernel.reasons)
    out["Reason"] = scored["reason"].to_numpy(dtype=object) if "reason" in scored else None
    return out.reset_index(drop=True)


def reference_csv(predictions: pd.DataFrame) -> bytes:
    """The reference implementation's output format: ``TS,Device,Sensor,Val,Prediction``."""
    frame = predictions[REFERENCE_COLUMNS].copy()
    ts = frame["TS"]
    frame["TS"] = ts.dt.strftime("%Y-%m-%d %H:%M:%S.") + (ts.dt.microsecond // 1000).map("{:03d}".format)
    return frame.to_csv(index=False, lineterminator="\n").encode()


@dataclass(frozen=True)
class EncodedPart:
    """One shard's output as bytes: the table's data files (one per hour) and the optional reference CSV."""

    files: list[DataFile]
    csv: bytes | None = None


def encode_part(predictions: pd.DataFrame, csv: bool = False) -> EncodedPart:
    """One shard's files as bytes: Delta data files and (when ``csv``) the reference CSV."""
    return EncodedPart(encode_files(predictions), reference_csv(predictions) if csv else None)


def data_file_name(shard: int, partition: str) -> str:
    """``part-00003.2026-01-05T01-00.parquet``: a shard's staged data file of one hour."""
    return f"part-{shard:05d}.{partition}.parquet"


def write_part(storage: Storage, prefix: str, shard: int, predictions: pd.DataFrame | None = None,
               csv: bool = False, outcome: Mapping[str, Any] | None = None,
               encoded: EncodedPart | None = None) -> None:
    """Write one shard's output under a run prefix: the reference CSV (when ``csv``), its data files,
    then its outcome JSON, which lists the files with their statistics (its presence marks the shard done).

    ``encoded`` (from :func:`encode_part`) is written as it is, instead of encoding ``predictions``.
    """
    if encoded is None:
        if predictions is None:
            raise ValueError("write_part: give the predictions or their encoded files")
        encoded = encode_part(predictions, csv)
    if encoded.csv is not None:
        storage.write_bytes(f"{prefix}/{part_name(shard, 'csv')}", encoded.csv)
    files = []
    for item in encoded.files:
        name = data_file_name(shard, item.partition)
        storage.write_bytes(f"{prefix}/{name}", item.data)
        files.append({"name": name, "partition": item.partition, "size": len(item.data), "rows": item.rows,
                      "stats": item.stats})
    write_json(storage, f"{prefix}/{part_name(shard, 'json')}", {"shard": shard, **(outcome or {}), "files": files})


def shard_outcomes(storage: Storage, prefix: str) -> dict[int, dict[str, Any]]:
    """The outcome JSON of every shard that is done, by shard index."""
    return {shard: read_json(storage, f"{prefix}/{part_name(shard, 'json')}")
            for shard in sorted(done_shards(storage, prefix))}


def read_staged(storage: Storage, prefix: str) -> list[StagedFile]:
    """The data files staged by the shards of a run that are done, read from their outcomes."""
    return staged_files(prefix, {shard: ShardOutcome.from_json(data)
                                 for shard, data in shard_outcomes(storage, prefix).items()})


def staged_files(prefix: str, outcomes: Mapping[int, ShardOutcome]) -> list[StagedFile]:
    """The data files the shards of a run staged (paths under the storage root), shard by shard."""
    return [StagedFile(f"{prefix}/{f['name']}", f["partition"], int(f["size"]), f["stats"])
            for _, outcome in sorted(outcomes.items()) for f in outcome.files]


def write_json(storage: Storage, rel: str, obj: Mapping[str, Any]) -> None:
    """Write a JSON document atomically."""
    storage.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(storage: Storage, rel: str) -> dict[str, Any]:
    """Read a JSON document written by :func:`write_json`."""
    raw = storage.read_bytes(rel)
    try:
        data: dict[str, Any] = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise StorageError(f"{storage.display(rel)}: not valid JSON: {exc}") from exc
    return data


def done_shards(storage: Storage, prefix: str) -> set[int]:
    """Shards of a run whose outcome (written after their data files) is there."""
    return {int(name[5:10]) for name in storage.listdir(prefix)
            if name.startswith("part-") and name.endswith(".json") and name[5:10].isdigit()}


def publish(storage: Storage, start: datetime, run_id: str, manifest: Mapping[str, Any]) -> None:
    """Complete a run's folder once its table commit is made: write its manifest."""
    write_json(storage, f"{run_prefix(start, run_id)}/{MANIFEST}", manifest)


def list_windows(storage: Storage) -> list[str]:
    """Window labels that have any run folder, oldest first."""
    return [name.split("=", 1)[1] for name in storage.listdir(RUNS) if name.startswith("window_start=")]


def list_runs(storage: Storage, window: datetime | str) -> list[tuple[str, bool]]:
    """``(run_id, complete)`` for every run folder of a window, oldest first."""
    prefix = window_prefix(window)
    out = []
    for name in storage.listdir(prefix):
        if name.startswith("run="):
            run_id = name.split("=", 1)[1]
            out.append((run_id, storage.exists(f"{prefix}/{name}/{MANIFEST}")))
    return out


def complete_manifests(storage: Storage, window: datetime | str) -> list[dict[str, Any]]:
    """Manifests of the complete runs of a window, oldest first."""
    return [read_json(storage, f"{run_prefix(window, run_id)}/{MANIFEST}")
            for run_id, complete in list_runs(storage, window) if complete]


def find_duplicate(storage: Storage, start: datetime, end: datetime, release_version: int, data_hash: str,
                   devices: Sequence[str] | None = None) -> dict[str, Any] | None:
    """The manifest of a complete run of the same window, release, devices and data, if there is one."""
    wanted = sorted(devices) if devices else None
    for manifest in reversed(complete_manifests(storage, start)):
        if (manifest.get("window", {}).get("end") == pd.Timestamp(end).isoformat()
                and manifest.get("release_version") == release_version
                and manifest.get("data_hash") == data_hash
                and manifest.get("devices") == wanted):
            return manifest
    return None


