"""Versioned predictions: Parquet parts, a manifest written last, a ``latest`` pointer per window.

Layout under the storage root::

    predictions/window_start=YYYY-MM-DDTHH-MM/
        latest.json                      -> {"run_id": ...}, written after the run's manifest
        run=<run_id>/
            _run.json                    the run's plan, written first (release, data hash, shards)
            part-00000.parquet ...       one per shard, each written atomically
            part-00000.csv ...           with --csv: the reference format TS,Device,Sensor,Val,Prediction
            validation.json, run.log     the gate's report and the run's log
            manifest.json                written LAST: a run without it is incomplete and never read

Readers (:func:`read_predictions`) only ever look at runs that have a manifest, so a run killed at any
point leaves nothing they take for a result.
"""

from __future__ import annotations

import io
import json
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import pandas as pd

from fleetscore.errors import StorageError
from fleetscore.scoring.contracts import LATEST, MANIFEST, PREDICTIONS
from fleetscore.scoring.storage import Storage, StorageSpec

PREDICTION_COLUMNS = ["TS", "Device", "Sensor", "Val", "Prediction", "Score", "ModelVersion", "ModelScope"]
REFERENCE_COLUMNS = ["TS", "Device", "Sensor", "Val", "Prediction"]


def window_label(start: datetime) -> str:
    """``2018-08-28 23:00`` -> ``2018-08-28T23-00`` (the folder name's time part)."""
    return pd.Timestamp(start).strftime("%Y-%m-%dT%H-%M")


def window_prefix(start: datetime | str) -> str:
    """``predictions/window_start=...`` for a window start (a datetime or an existing label)."""
    label = start if isinstance(start, str) else window_label(start)
    return f"{PREDICTIONS}/window_start={label}"


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
    """The kernel's output (device, sensor, ts, value, score, prediction) in the predictions columns."""
    out = pd.DataFrame({
        "TS": pd.to_datetime(scored["ts"]).astype("datetime64[ns]"),
        "Device": scored["device"].astype(str),
        "Sensor": scored["sensor"].astype(str),
        "Val": scored["value"].astype("float64"),
        "Prediction": scored["prediction"].astype("int8"),
        "Score": scored["score"].astype("float64"),
    })
    out["ModelVersion"] = pd.Series(model_version, index=out.index, dtype="int32")
    # series: the series' own model; fleet: its sensor's fleet model (cold start, training.coldstart)
    out["ModelScope"] = scored["scope"].astype(str) if "scope" in scored else "series"
    return out.reset_index(drop=True)


def reference_csv(predictions: pd.DataFrame) -> bytes:
    """The reference implementation's output format: ``TS,Device,Sensor,Val,Prediction``."""
    frame = predictions[REFERENCE_COLUMNS].copy()
    ts = frame["TS"]
    frame["TS"] = ts.dt.strftime("%Y-%m-%d %H:%M:%S.") + (ts.dt.microsecond // 1000).map("{:03d}".format)
    return frame.to_csv(index=False, lineterminator="\n").encode()


def encode_part(predictions: pd.DataFrame, csv: bool = False) -> dict[str, bytes]:
    """One shard's files as bytes, by extension: ``parquet`` and (when ``csv``) the reference ``csv``."""
    buffer = io.BytesIO()
    # dictionary encoding where it pays (ids, version, label): tried on the float columns too, it is
    # given up page by page, which doubled the encoding time for the same size
    predictions[PREDICTION_COLUMNS].to_parquet(buffer, index=False, engine="pyarrow",
                                               use_dictionary=["Device", "Sensor", "Prediction", "ModelVersion",
                                                                               "ModelScope"])
    files = {"parquet": buffer.getvalue()}
    if csv:
        files["csv"] = reference_csv(predictions)
    return files


def write_part(storage: Storage, prefix: str, shard: int, predictions: pd.DataFrame | None = None,
               csv: bool = False, outcome: Mapping[str, Any] | None = None,
               encoded: Mapping[str, bytes] | None = None) -> None:
    """Write one shard's predictions under a run prefix: the reference CSV (when ``csv``) and the
    shard's outcome JSON first, the Parquet part last (its presence is what marks the shard done).

    ``encoded`` (from :func:`encode_part`) is written as it is, instead of encoding ``predictions``.
    """
    if encoded is None:
        if predictions is None:
            raise ValueError("write_part: give the predictions or their encoded files")
        encoded = encode_part(predictions, csv)
    if "csv" in encoded:
        storage.write_bytes(f"{prefix}/{part_name(shard, 'csv')}", encoded["csv"])
    if outcome is not None:
        write_json(storage, f"{prefix}/{part_name(shard, 'json')}", outcome)
    storage.write_bytes(f"{prefix}/{part_name(shard)}", encoded["parquet"])


def shard_outcomes(storage: Storage, prefix: str) -> dict[int, dict[str, Any]]:
    """The outcome JSON of every shard whose part is written, by shard index."""
    return {shard: read_json(storage, f"{prefix}/{part_name(shard, 'json')}")
            for shard in sorted(done_shards(storage, prefix))
            if storage.exists(f"{prefix}/{part_name(shard, 'json')}")}


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
    """Shards of a run whose Parquet part is written."""
    return {int(name[5:10]) for name in storage.listdir(prefix)
            if name.startswith("part-") and name.endswith(".parquet")}


def publish(storage: Storage, start: datetime, run_id: str, manifest: Mapping[str, Any]) -> None:
    """Complete a run: write its manifest (last of its files), then move the window's ``latest`` pointer.

    The pointer only moves forward: it keeps naming the newest complete run by creation time. Storage
    has no compare-and-swap, so after writing it the complete runs are listed again: a newer run that
    published between this one's check and its write is named instead (whichever writer comes last).
    """
    prefix = run_prefix(start, run_id)
    write_json(storage, f"{prefix}/{MANIFEST}", manifest)
    latest_rel = f"{window_prefix(start)}/{LATEST}"
    if storage.exists(latest_rel):
        current = read_json(storage, latest_rel).get("run_id", "")
        if current > run_id and storage.exists(f"{run_prefix(start, current)}/{MANIFEST}"):
            return
    write_json(storage, latest_rel, _pointer(run_id))
    newest = max((rid for rid, complete in list_runs(storage, start) if complete), default=run_id)
    if newest > run_id:
        write_json(storage, latest_rel, _pointer(newest))


def _pointer(run_id: str) -> dict[str, str]:
    return {"run_id": run_id, "manifest": f"run={run_id}/{MANIFEST}"}


def list_windows(storage: Storage) -> list[str]:
    """Window labels that have any run folder, oldest first."""
    return [name.split("=", 1)[1] for name in storage.listdir(PREDICTIONS) if name.startswith("window_start=")]


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


def latest_run(storage: Storage, window: datetime | str) -> str | None:
    """The run id the window's ``latest`` pointer names, or the newest complete run; None if none."""
    latest_rel = f"{window_prefix(window)}/{LATEST}"
    if storage.exists(latest_rel):
        run_id = str(read_json(storage, latest_rel).get("run_id", ""))
        if run_id and storage.exists(f"{run_prefix(window, run_id)}/{MANIFEST}"):
            return run_id
    complete = [run_id for run_id, ok in list_runs(storage, window) if ok]
    return complete[-1] if complete else None


def read_run(storage: Storage, window: datetime | str, run_id: str) -> pd.DataFrame:
    """The predictions of one COMPLETE run (its manifest lists the parts); incomplete runs raise."""
    prefix = run_prefix(window, run_id)
    if not storage.exists(f"{prefix}/{MANIFEST}"):
        raise StorageError(f"{storage.display(prefix)}: run {run_id} is incomplete (no manifest)")
    manifest = read_json(storage, f"{prefix}/{MANIFEST}")
    frames = []
    for part in manifest.get("parts", []):
        with storage.open_read(f"{prefix}/{part}") as handle:
            frames.append(pd.read_parquet(handle, engine="pyarrow"))
    if not frames:
        return empty_predictions()
    return pd.concat(frames, ignore_index=True)


def empty_predictions() -> pd.DataFrame:
    """A predictions frame with no rows and the right column types."""
    return pd.DataFrame({
        "TS": pd.Series([], dtype="datetime64[ns]"), "Device": pd.Series([], dtype=object),
        "Sensor": pd.Series([], dtype=object), "Val": pd.Series([], dtype="float64"),
        "Prediction": pd.Series([], dtype="int8"), "Score": pd.Series([], dtype="float64"),
        "ModelVersion": pd.Series([], dtype="int32"), "ModelScope": pd.Series([], dtype=object),
    })


def read_predictions(storage_url: str | StorageSpec, window_start: datetime | str | None = None,
                     run_id: str | None = None, storage_options: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Read complete predictions only.

    - ``window_start`` and ``run_id``: that run (it must be complete).
    - ``window_start`` only: the run the window's ``latest`` pointer names.
    - ``run_id`` only: that run, wherever its window is.
    - neither: the latest run of every window, concatenated, oldest window first.

    Runs without a manifest (in progress, killed, failed) are never read.
    """
    spec = storage_url if isinstance(storage_url, StorageSpec) else StorageSpec(storage_url, storage_options or {})
    storage = spec.open()
    windows = [window_start] if window_start is not None else list_windows(storage)
    frames = []
    for window in windows:
        if run_id is not None:
            if any(r == run_id for r, _ in list_runs(storage, window)):
                return read_run(storage, window, run_id)
            continue
        chosen = latest_run(storage, window)
        if chosen is not None:
            frames.append(read_run(storage, window, chosen))
    if run_id is not None:
        raise StorageError(f"{storage.display(PREDICTIONS)}: no run {run_id}")
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else empty_predictions()

