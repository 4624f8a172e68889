"""The scoring worker: score one shard of devices end to end and stage its data files.

:func:`score_shard` is a top-level function of plain data (a :class:`ShardTask`), so any executor can
run it: a local process, a Dask worker, an Azure ML parallel job. It loads the release bundle once per
process (cached), reads the shard's windows from SQL (with the context windows the features need
before the range), scores every series at once with the vectorised kernel and stages its part: one
Parquet data file per hour under the run's folder, for the run's table commit.

One failing series does not stop the others: series with non-finite values are set aside before the
kernel runs; if the kernel itself raises, the shard is scored again series by series so that only
the guilty series are recorded as failed.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fleetscore.errors import one_line
from fleetscore.processes import pid_alive
from fleetscore.scoring.contracts import ABORT, ShardOutcome, ShardTask, display_key, excluded_pairs
from fleetscore.scoring.writer import EncodedPart, encode_part, read_json, to_predictions, write_part
from fleetscore.training.coldstart import SCOPE_FLEET, SCOPE_SERIES, with_fallback

log = logging.getLogger(__name__)

_BUNDLES: dict[str, Any] = {}  # bundle location -> loaded ReleaseBundle, per process




def load_bundle(source: str | Mapping[str, bytes], sha256: str = "", label: str = "release") -> Any:
    """Load a release bundle once per process: from a folder (kept, by path), or from its files' bytes
    (a shard's own models, sent in its task: only the last one is kept, so a worker that runs many
    shards holds one shard's models at a time).

    A folder is checked against ``sha256`` (the digest recorded with the registered version) on its
    first load; a mismatch is a one-line :class:`RegistryError` naming ``label``. Bytes are a shard's
    cut of a bundle that the client verified before cutting it, so they carry no registered digest.
    """
    from fleetscore.training.bundle import ReleaseBundle, files_digest, verify_bundle

    if isinstance(source, str):
        if source not in _BUNDLES:
            if sha256:
                verify_bundle(Path(source), sha256, label)
            _BUNDLES[source] = ReleaseBundle.load(Path(source))
        return _BUNDLES[source]
    key = "sha256:" + files_digest(source)
    if key not in _BUNDLES:
        for old in [k for k in _BUNDLES if k.startswith("sha256:")]:
            del _BUNDLES[old]
        with tempfile.TemporaryDirectory(prefix="fleetscore-bundle-") as tmp:
            for name, data in source.items():
                (Path(tmp) / name).write_bytes(data)
            _BUNDLES[key] = ReleaseBundle.load(tmp)
    return _BUNDLES[key]


def score_shard(task: ShardTask) -> ShardOutcome:  # noqa: PLR0915  one shard's steps in order, timed one by one
    """Score one shard and write its part (and its outcome beside it); returns the outcome.

    The timings stop before the writes: the outcome is written with the part.
    """
    from fleetscore.ingestion.store import SensorStore
    from fleetscore.training.features import compute_features
    from fleetscore.training.kernel import kernel_evaluations, missing_series, score_windows

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    bundle = load_bundle(task.bundle, task.bundle_sha256, f"release v{task.release_version}")
    timings["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    windows = SensorStore(task.database_url).read_windows(task.context_start, task.end, devices=list(task.devices),
                                                          with_updated_at=bool(task.metrics_to))
    timings["read"] = time.perf_counter() - t0
    storage = task.storage.open()
    if task.metrics_to:
        t0 = time.perf_counter()
        _write_metrics(storage, task, windows)
        windows = windows.drop(columns="updated_at")
        timings["metrics"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    failed: dict[str, str] = {}
    if task.excluded:
        windows = _drop_series(windows, task.excluded)
    windows, bad = _split_non_finite(windows)
    failed.update({display_key(d, s): "non-finite values in the window" for d, s in bad})
    # cold start: a series with no model of its own is scored by its sensor's fleet model, if any
    bundle, fleet_scored = with_fallback(bundle, missing_series(bundle, windows))
    unscored = {display_key(d, s): f"no model in release v{task.release_version}"
                for d, s in missing_series(bundle, windows)}
    evaluations = kernel_evaluations(bundle, windows)
    # the features once, for the kernel and for drift (the same columns: one release, one feature set)
    feats = compute_features(windows, bundle.features, bundle.rolling_window)
    try:
        scored = score_windows(bundle, windows, task.start, feats)
    except Exception as exc:  # noqa: BLE001 - isolate the failing series instead of losing the shard
        log.warning("shard %d: kernel failed (%s); scoring series one by one", task.shard, exc)
        scored, more = _score_each(bundle, windows, task.start, score_windows)
        failed.update(more)
    if fleet_scored:
        keys = pd.MultiIndex.from_frame(scored[["device", "sensor"]].astype(str))
        scored["scope"] = np.where(keys.isin(fleet_scored), SCOPE_FLEET, SCOPE_SERIES)
    timings["score"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ops = _drift_and_anomalies(bundle, windows, scored, task, set(fleet_scored), feats)
    timings["drift"] = time.perf_counter() - t0

    # the part is built and encoded before waiting for the plan: after the gate only the writes remain
    t0 = time.perf_counter()
    part = _build_part(scored, task)
    timings["encode"] = time.perf_counter() - t0
    late: frozenset[tuple[str, str]] = frozenset()
    if task.wait_for:
        t0 = time.perf_counter()
        plan = _wait_for_plan(storage, task)
        timings["wait"] = time.perf_counter() - t0
        if plan is None:
            return ShardOutcome(task.shard, aborted=True, timings=timings)
        late = excluded_pairs(plan)
        if late:
            late_keys = {display_key(d, s) for d, s in late}
            failed = {k: v for k, v in failed.items() if k not in late_keys}
            unscored = {k: v for k, v in unscored.items() if k not in late_keys}
            kept = _drop_series(scored, late)  # the same frame when none of its series is excluded
            if kept is not scored:
                scored = kept
                part = _build_part(scored, task)

    outcome = ShardOutcome(task.shard, devices=len(task.devices), **part.summary, failed=failed,
                           unscored=unscored, kernel_evaluations=int(evaluations), timings=timings,
                           fleet_scored=tuple(f"{d}/{s}" for d, s in fleet_scored if (d, s) not in late),
                           drift=tuple(tuple(r) for r in ops["drift"] if (r[0], r[1]) not in late),
                           anomalous=tuple(tuple(r) for r in ops["anomalous"] if (r[0], r[1]) not in late))
    write_part(storage, task.prefix, task.shard, outcome=outcome.to_json(), encoded=part.files)
    if task.delay:
        time.sleep(task.delay)
    return outcome


@dataclass(frozen=True)
class _Part:
    """A shard's predictions, encoded, with the counts its outcome reports."""

    files: EncodedPart
    summary: dict[str, Any]


def _build_part(scored: pd.DataFrame, task: ShardTask) -> _Part:
    predictions = to_predictions(scored, task.release_version)
    per_sensor = predictions.groupby("Sensor", sort=True)["Prediction"].agg(["size", "sum"])
    device, sensor = predictions["Device"], predictions["Sensor"]
    # rows are grouped by series (the kernel keeps the read order), so a series starts where either id changes
    starts = (device != device.shift()) | (sensor != sensor.shift())
    summary = {
        "rows": len(predictions),
        "anomalies": int(predictions["Prediction"].sum()),
        "series": int(starts.sum()),
        "per_sensor": {str(k): (int(v["size"]), int(v["sum"])) for k, v in per_sensor.iterrows()},
    }
    return _Part(encode_part(predictions, task.csv), summary)


def _drift_and_anomalies(bundle: Any, windows: pd.DataFrame, scored: pd.DataFrame, task: ShardTask,
                         fleet: set[tuple[str, str]], feats: np.ndarray) -> dict[str, list[list[Any]]]:
    """The shard's drift rows ``[device, sensor, drift, feature, rows, anomalies, scope]`` and anomalous
    windows ``[device, sensor, ts, score, reason]`` (for the run's drift records and anomaly events)."""
    from fleetscore.training.drift import series_drift

    table = series_drift(bundle, windows, scored, task.start, feats)
    drift = [[d, s, None if v != v else round(float(v), 6), f, int(n), int(a),
              SCOPE_FLEET if (d, s) in fleet else SCOPE_SERIES]
             for d, s, v, f, n, a in table.itertuples(index=False)]
    flagged = np.flatnonzero(scored["prediction"].to_numpy() == 1)
    anomalous: list[list[Any]] = []
    if len(flagged):
        rows = scored.iloc[flagged]
        ts = pd.to_datetime(rows["ts"]).dt.strftime("%Y-%m-%dT%H:%M:%S.%f")
        anomalous = [[str(d), str(s), t, round(float(sc), 6), str(r)] for d, s, t, sc, r in
                     zip(rows["device"], rows["sensor"], ts, rows["score"], rows["reason"], strict=True)]
    return {"drift": drift, "anomalous": anomalous}


def _write_metrics(storage: Any, task: ShardTask, windows: pd.DataFrame) -> None:
    """Write the series metrics of the shard's rows in ``[start, end)`` to ``task.metrics_to``."""
    import io

    from fleetscore.ingestion.series_metrics import series_metrics

    buffer = io.BytesIO()
    series_metrics(windows, task.start, task.end).to_parquet(buffer, index=False, engine="pyarrow")
    storage.write_bytes(task.metrics_to, buffer.getvalue())


def _wait_for_plan(storage: Any, task: ShardTask) -> dict[str, Any] | None:
    """Poll storage until the run's plan (``task.wait_for``) or its abort marker appears; the plan, or
    None when the run was aborted (gate failed, duplicate), its client died (its process gone, or its
    heartbeat still), or the plan did not come within ``task.plan_timeout`` seconds."""
    abort = f"{task.prefix}/{ABORT}"
    delay = 0.02
    started = time.monotonic()
    beat, beat_seen = None, started
    while True:
        if storage.exists(task.wait_for):
            plan: dict[str, Any] = read_json(storage, task.wait_for)
            return plan
        if storage.exists(abort):
            return None
        now = time.monotonic()
        if task.parent_pid and not pid_alive(task.parent_pid):
            log.warning("shard %d: the run's process %d is gone; nothing written", task.shard, task.parent_pid)
            return None
        if task.heartbeat:
            current = storage.read_bytes(task.heartbeat) if storage.exists(task.heartbeat) else None
            if current != beat:
                beat, beat_seen = current, now
            elif now - beat_seen > task.heartbeat_timeout:
                log.warning("shard %d: the run's client stopped beating %.0f s ago; nothing written",
                            task.shard, now - beat_seen)
                return None
        if now - started > task.plan_timeout:
            log.warning("shard %d: no plan after %.0f s; nothing written", task.shard, task.plan_timeout)
            return None
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def _drop_series(windows: pd.DataFrame, excluded: frozenset[tuple[str, str]]) -> pd.DataFrame:
    keys = pd.MultiIndex.from_frame(windows[["device", "sensor"]])
    drop = keys.isin(list(excluded))
    return windows[~drop].reset_index(drop=True) if drop.any() else windows


def _split_non_finite(windows: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Set aside every series with a non-finite value (it would poison the kernel's block)."""
    values = windows[["value", "value_min", "value_max"]].to_numpy(dtype=np.float64)
    bad_rows = ~np.isfinite(values).all(axis=1)
    if not bad_rows.any():
        return windows, []
    bad = sorted({(str(d), str(s)) for d, s in windows.loc[bad_rows, ["device", "sensor"]].itertuples(index=False)})
    return _drop_series(windows, frozenset(bad)), bad


def _score_each(bundle: Any, windows: pd.DataFrame, start: datetime,
                score_windows: Any) -> tuple[pd.DataFrame, dict[str, str]]:
    """Score series one at a time (only after the shard-wide kernel failed)."""
    frames, failed = [], {}
    for (device, sensor), group in windows.groupby(["device", "sensor"], sort=True):
        try:
            frames.append(score_windows(bundle, group.reset_index(drop=True), start))
        except Exception as exc:  # noqa: BLE001 - this series fails, the others go on
            failed[display_key(device, sensor)] = one_line(exc, with_type=True)
    columns = ["device", "sensor", "ts", "value", "score", "prediction", "reason"]
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)), failed
