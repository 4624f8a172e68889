"""The predictions table: one Delta Lake table (delta-rs) at ``predictions/`` under the storage root.

Columns ``TS`` (timestamp[us, UTC]), ``Device``, ``Sensor``, ``Val``, ``Prediction`` (1 = anomaly),
``Score``, ``ModelVersion``, and the partition column ``window_start``: the UTC hour of ``TS`` as
``YYYY-MM-DDTHH-00`` (folders ``window_start=2026-01-05T01-00/``).

A scoring run's finalize step commits the Parquet parts its shards staged under the run's folder in ONE
transaction (:func:`commit_run`): an overwrite whose predicate is the run's range (and device filter),
so a rescore replaces exactly those rows in a new table version and the current table holds one row per
(Device, Sensor, TS). The commit's metadata holds the run id, release version, data hash, code version
and range, so every version says which run made it (:func:`history`) and earlier results stay readable
by version (:func:`read_predictions` ``version=``). Until that commit nothing of the run is in the table,
for every Delta reader (duckdb, polars, Spark, Fabric).

This module reads and writes the table through delta-rs only, with the location and storage options of
:meth:`scoring.storage.StorageSpec.table_location`; the staged parts are read through the fsspec adapter.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fleetscore.errors import StorageError
from fleetscore.scoring.storage import StorageSpec

log = logging.getLogger(__name__)

TABLE = "predictions"
PARTITION = "window_start"
META = "fleetscore."  # prefix of the commit metadata keys
SCHEMA = pa.schema([
    ("TS", pa.timestamp("us", tz="UTC")), ("Device", pa.string()), ("Sensor", pa.string()),
    ("Val", pa.float64()), ("Prediction", pa.int8()), ("Score", pa.float64()), ("ModelVersion", pa.int32()),
    ("ModelScope", pa.string()),  # series: the series' own model; fleet: its sensor's fleet model (cold start)
    ("Reason", pa.string()),  # the feature that drove the score; null in rows committed before the column came
])
# columns added after the first release of the table: a table without them gains them on its next commit
ADDED_COLUMNS = ("Reason",)
TABLE_SCHEMA = SCHEMA.append(pa.field(PARTITION, pa.string()))
_HOUR_US = 3_600_000_000


@dataclass(frozen=True)
class TableVersion:
    """One version of the predictions table and the scoring run that committed it ('' when none did)."""

    version: int
    committed_at: str
    operation: str
    run_id: str = ""
    start: str = ""
    end: str = ""
    devices: tuple[str, ...] = ()
    release_version: int | None = None
    data_hash: str = ""
    code_version: str = ""


def utc(ts: datetime | str) -> pd.Timestamp:
    """A time as a UTC timestamp (naive times are UTC)."""
    stamp = pd.Timestamp(ts)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def hour_label(ts: datetime | str) -> str:
    """The partition value of a time: its UTC hour, ``2026-01-05T01-00``."""
    return utc(ts).strftime("%Y-%m-%dT%H-00")


def hours_between(start: datetime | str, end: datetime | str) -> list[str]:
    """Partition values of the hours that ``[start, end)`` touches."""
    first, last = utc(start).floor("h"), utc(end)
    return [hour_label(h) for h in pd.date_range(first, last, freq="h", inclusive="left")] or [hour_label(first)]


def _location(spec: StorageSpec | str) -> tuple[str, dict[str, str]]:
    return as_spec(spec).table_location(TABLE)


def as_spec(spec: StorageSpec | str) -> StorageSpec:
    """A storage URL (no credentials: adlfs's environment) or a spec, as a spec."""
    return spec if isinstance(spec, StorageSpec) else StorageSpec(spec)


def _open(spec: StorageSpec | str, version: int | None = None) -> Any | None:
    """The table (at ``version``), or None when it does not exist yet."""
    from deltalake import DeltaTable

    uri, options = _location(spec)
    try:
        if not DeltaTable.is_deltatable(uri, storage_options=options):
            return None
        return DeltaTable(uri, version=version, storage_options=options)
    except Exception as exc:
        raise StorageError(f"{uri}: cannot open the predictions table{_at(version)}: {_one_line(exc)}") from exc


def table_uri(spec: StorageSpec | str) -> str:
    """Where the predictions table is (a local path or ``az://...``), for users' readers."""
    return _location(spec)[0]


def current_version(spec: StorageSpec | str) -> int | None:
    """The table's newest version, or None when no run has committed yet."""
    table = _open(spec)
    return None if table is None else int(table.version())


@dataclass(frozen=True)
class DataFile:
    """One Parquet data file of one partition (hour), encoded, with its Delta statistics (JSON)."""

    partition: str
    data: bytes
    rows: int
    stats: str


@dataclass(frozen=True)
class StagedFile:
    """A data file a shard staged under its run's folder (``rel``, under the storage root)."""

    rel: str
    partition: str
    size: int
    stats: str


_DICTIONARY = ["Device", "Sensor", "Prediction", "ModelVersion", "ModelScope", "Reason"]


def encode_files(predictions: pd.DataFrame) -> list[DataFile]:
    """Predictions as Delta data files: one Parquet file per UTC hour of TS (the partition column is in
    the path, not the file), each with the statistics the table's log records (rows, min/max, nulls)."""
    batch = pa.Table.from_pandas(predictions[SCHEMA.names], schema=SCHEMA, preserve_index=False)
    if batch.num_rows == 0:
        return []
    micros = batch.column("TS").cast(pa.int64()).to_numpy(zero_copy_only=False)
    hours = micros // _HOUR_US
    first, last = int(hours.min()), int(hours.max())
    if first == last:
        pieces = [(first, batch)]
    else:  # rows come grouped by series, so hours interleave: a stable sort by hour, then slices
        order = np.argsort(hours, kind="stable")
        counts = np.bincount((hours - first).astype(np.int64))
        ordered = batch.take(pa.array(order))
        offsets = np.concatenate([[0], np.cumsum(counts)])
        pieces = [(first + i, ordered.slice(int(offsets[i]), int(counts[i]))) for i in range(len(counts)) if counts[i]]
    out = []
    for hour, piece in pieces:
        buffer = io.BytesIO()
        # dictionary encoding where it pays (ids, version, label); tried on the floats it is given up page by page
        pq.write_table(piece, buffer, use_dictionary=_DICTIONARY, compression="snappy")
        label = hour_label(pd.Timestamp(hour * _HOUR_US, unit="us", tz="UTC"))
        out.append(DataFile(label, buffer.getvalue(), piece.num_rows, file_stats(piece)))
    return out


def file_stats(piece: pa.Table) -> str:
    """The Delta ``stats`` of a data file: numRecords, minValues, maxValues, nullCount (TS to the ms,
    the minimum rounded down and the maximum up, so that data skipping never drops a row)."""
    minimum: dict[str, Any] = {}
    maximum: dict[str, Any] = {}
    for name in SCHEMA.names:
        if name == "TS":
            micros = piece.column(name).cast(pa.int64()).to_numpy(zero_copy_only=False)
            low, high = int(micros.min()), int(micros.max())
            minimum[name] = _ms_iso(low // 1000)
            maximum[name] = _ms_iso(-(-high // 1000))
            continue
        bounds = pc.min_max(piece.column(name))
        low, high = bounds["min"].as_py(), bounds["max"].as_py()
        if isinstance(low, float) and (math.isnan(low) or math.isnan(high)):
            continue  # no statistics for a column with NaN: readers then scan it
        minimum[name], maximum[name] = low, high
    nulls = {name: int(piece.column(name).null_count) for name in SCHEMA.names}
    return json.dumps({"numRecords": piece.num_rows, "minValues": minimum, "maxValues": maximum, "nullCount": nulls},
                      separators=(",", ":"))


def _ms_iso(ms: int) -> str:
    return pd.Timestamp(ms, unit="ms", tz="UTC").strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def commit_run(spec: StorageSpec | str, staged: Sequence[StagedFile], start: datetime, end: datetime,
               devices: Sequence[str] | None, metadata: dict[str, Any]) -> int:
    """Commit a run's staged data files as ONE new table version; returns its number.

    The files are moved into the table's folder and added; the table's rows in ``[start, end)`` (of
    ``devices`` when given) are removed in the same transaction: files wholly inside are removed, a file
    only partly inside is replaced by a file of its other rows. ``metadata`` (run_id, release_version,
    data_hash, code_version, ...) goes into the commit's metadata under ``fleetscore.``. A run already
    committed (its finalize retried after a crash between the commit and the manifest) is not committed
    twice: its version is returned.
    """
    from deltalake import CommitProperties, Transaction

    run_id = str(metadata["run_id"])
    app_id = f"fleetscore-run-{run_id}"
    current = _open(spec)
    if current is not None and current.transaction_version(app_id) is not None:
        done = run_version(spec, run_id)
        if done is not None:
            log.info("run %s: already committed as table version %d", run_id, done)
            return done
    storage = as_spec(spec).open()
    uri, options = _location(spec)
    s, e = utc(start), utc(end)
    now_ms = int(pd.Timestamp.now(tz="UTC").value // 1_000_000)
    adds = []
    for item in staged:
        stats = json.loads(item.stats)
        if stats["numRecords"] and not (s <= utc(stats["minValues"]["TS"]) and utc(stats["maxValues"]["TS"]) <= e):
            raise StorageError(f"{storage.display(item.rel)}: run {run_id}: rows outside the run's range "
                               f"[{s.isoformat()}, {e.isoformat()})")
        path = data_path(run_id, item)
        storage.move(item.rel, f"{TABLE}/{path}")
        adds.append(_add(path, item.size, item.partition, now_ms, item.stats))
    custom = {f"{META}{key}": _text(value) for key, value in metadata.items()}
    custom.update({f"{META}start": s.isoformat(), f"{META}end": e.isoformat(),
                   f"{META}devices": ",".join(sorted(devices)) if devices else ""})
    props = CommitProperties(custom_metadata=custom, app_transactions=[Transaction(app_id, 1)])
    try:
        if current is None:
            from deltalake.transaction import create_table_with_add_actions

            create_table_with_add_actions(uri, _delta_schema(), adds, mode="error", partition_by=[PARTITION],
                                          name="predictions", storage_options=options, commit_properties=props)
        else:
            _add_missing_columns(current)
            replaced = _replace_range(current, storage, s, e, set(devices or ()), run_id, now_ms)
            current.create_write_transaction(adds + replaced, mode="append", schema=_delta_schema(),
                                             partition_by=[PARTITION], commit_properties=props)
    except Exception as exc:
        raise StorageError(f"{uri}: run {run_id}: the commit failed: {_one_line(exc)}") from exc
    version = next((entry.version for entry in history(spec, 20) if entry.run_id == run_id), None)
    if version is None:
        raise StorageError(f"{uri}: run {run_id}: committed, but no table version names it")
    return version


def data_path(run_id: str, item: StagedFile) -> str:
    """Where a staged file lands in the table (relative to its root): ``window_start=H/RUN-part-....parquet``."""
    return f"{PARTITION}={item.partition}/{run_id}-{item.rel.rsplit('/', 1)[-1]}"


def _delta_schema() -> Any:
    from deltalake import Schema

    return Schema.from_arrow(TABLE_SCHEMA)


def _add_missing_columns(current: Any) -> None:
    """Give a table written before a column of :data:`ADDED_COLUMNS` existed that column (nullable), in
    a version of its own that changes no rows; its older files read it as null."""
    from deltalake import Field
    from deltalake.schema import PrimitiveType

    names = set(current.schema().to_arrow().names)
    missing = [Field(name, PrimitiveType("string"), nullable=True) for name in ADDED_COLUMNS if name not in names]
    if missing:
        log.info("predictions table: adding column(s) %s", ", ".join(f.name for f in missing))
        current.alter.add_columns(missing)


def conform(rows: pa.Table) -> pa.Table:
    """Rows of a data file in the table's current columns: a column added since it was written is null."""
    for field in SCHEMA:
        if field.name not in rows.column_names:
            rows = rows.append_column(field, pa.nulls(rows.num_rows, field.type))
    return rows.select(SCHEMA.names).cast(SCHEMA)


def _add(path: str, size: int, partition: str, now_ms: int, stats: str) -> Any:
    from deltalake.transaction import AddAction

    return AddAction(path, size, {PARTITION: partition}, now_ms, True, stats)


def _replace_range(current: Any, storage: Any, s: pd.Timestamp, e: pd.Timestamp, devices: set[str], run_id: str,
                   now_ms: int) -> list[Any]:
    """Remove actions (and adds of what a file keeps) for the table's rows in ``[s, e)`` of ``devices``."""
    from deltalake.transaction import RemoveAction

    hours = set(hours_between(s, e))
    actions_table = pa.table(current.get_add_actions(flatten=True))
    column = f"partition.{PARTITION}"
    if column in actions_table.column_names:  # only the files of the hours the run touches
        actions_table = actions_table.filter(pc.is_in(actions_table.column(column), pa.array(sorted(hours))))
    files = actions_table.to_pylist()
    wanted = sorted(devices)
    actions: list[Any] = []
    for n, entry in enumerate(files):
        partition = entry.get(f"partition.{PARTITION}")
        if partition not in hours:
            continue
        low, high = entry.get("min.TS"), entry.get("max.TS")
        low_dev, high_dev = entry.get("min.Device"), entry.get("max.Device")
        if low is not None and high is not None and (pd.Timestamp(high) < s or pd.Timestamp(low) >= e):
            continue  # wholly outside the range
        if wanted and low_dev is not None and high_dev is not None and (high_dev < wanted[0] or low_dev > wanted[-1]):
            continue  # none of the devices
        whole = (low is not None and high is not None and s <= pd.Timestamp(low) and pd.Timestamp(high) < e
                 and (not wanted or (low_dev == high_dev and low_dev in devices)))
        remove = RemoveAction(entry["path"], True, now_ms, entry["size_bytes"], {PARTITION: partition})
        if whole:
            actions.append(remove)
            continue
        with storage.open_read(f"{TABLE}/{entry['path']}") as handle:
            rows = conform(pq.read_table(handle))
        inside = pc.and_(pc.greater_equal(rows.column("TS"), pa.scalar(s.to_pydatetime(), SCHEMA.field("TS").type)),
                         pc.less(rows.column("TS"), pa.scalar(e.to_pydatetime(), SCHEMA.field("TS").type)))
        if wanted:
            inside = pc.and_(inside, pc.is_in(rows.column("Device"), pa.array(wanted)))
        kept = rows.filter(pc.invert(inside))
        if kept.num_rows == rows.num_rows:
            continue
        actions.append(remove)
        for piece in encode_files(kept.to_pandas()):
            path = f"{PARTITION}={piece.partition}/{run_id}-kept-{n:05d}.parquet"
            storage.write_bytes(f"{TABLE}/{path}", piece.data)
            actions.append(_add(path, len(piece.data), piece.partition, now_ms, piece.stats))
    return actions


def history(spec: StorageSpec | str, limit: int | None = None) -> list[TableVersion]:
    """The table's versions, newest first (at most ``limit``); [] when the table does not exist."""
    table = _open(spec)
    if table is None:
        return []
    return [_version_of(entry) for entry in table.history(limit)]


def run_version(spec: StorageSpec | str, run_id: str) -> int | None:
    """The table version a run committed, or None."""
    for entry in history(spec):
        if entry.run_id == run_id:
            return entry.version
    return None


def superseded(spec: StorageSpec | str, version: int, start: datetime, end: datetime,
               devices: Sequence[str] | None = None) -> bool:
    """Whether a later version replaced rows of the range (and devices) that ``version`` committed."""
    table = _open(spec)
    if table is None:
        return True
    later = int(table.version()) - version
    if later <= 0:
        return False
    s, e, mine = utc(start), utc(end), set(devices or ())
    for entry in history(spec, later):
        if entry.version <= version:
            continue
        if entry.operation == "ADD COLUMN":  # a schema change (_add_missing_columns): no row changed
            continue
        if not entry.run_id:  # a commit of another tool: it may have changed anything
            return True
        theirs = set(entry.devices)
        if utc(entry.start) < e and s < utc(entry.end) and (not mine or not theirs or mine & theirs):
            return True
    return False


def read_predictions(spec: StorageSpec | str, start: datetime | str | None = None, end: datetime | str | None = None,
                     devices: Sequence[str] | None = None, version: int | None = None) -> pd.DataFrame:
    """The table's rows (at ``version``; default the current one) in ``[start, end)`` of ``devices``.

    TS comes back as ``datetime64[us, UTC]``; an absent table reads as no rows.
    """
    table = _open(spec, version)
    if table is None:
        if version is not None:
            raise StorageError(f"{table_uri(spec)}: no predictions table, so no version {version}")
        return empty_predictions()
    filters: list[tuple[str, str, Any]] = []
    partitions: list[tuple[str, str, Any]] = []
    if start is not None:
        filters.append(("TS", ">=", utc(start).to_pydatetime()))
    if end is not None:
        filters.append(("TS", "<", utc(end).to_pydatetime()))
    if start is not None and end is not None:
        partitions.append((PARTITION, "in", hours_between(start, end)))
    if devices:
        filters.append(("Device", "in", list(devices)))
    present = set(table.schema().to_arrow().names)
    try:
        data = table.to_pyarrow_table(partitions=partitions or None,
                                      columns=[c for c in SCHEMA.names if c in present], filters=filters or None)
    except Exception as exc:
        raise StorageError(f"{table_uri(spec)}: cannot read the predictions table{_at(version)}: "
                           f"{_one_line(exc)}") from exc
    frame: pd.DataFrame = conform(data).to_pandas()
    return frame.sort_values(["Device", "Sensor", "TS"], kind="stable").reset_index(drop=True)


def read_run(spec: StorageSpec | str, run_id: str) -> pd.DataFrame:
    """The rows a run committed, read at the version it made (even when later runs replaced them)."""
    for entry in history(spec):
        if entry.run_id == run_id:
            return read_predictions(spec, entry.start, entry.end, entry.devices or None, entry.version)
    raise StorageError(f"{table_uri(spec)}: run {run_id} has no commit in the predictions table")


def empty_predictions() -> pd.DataFrame:
    """A predictions frame with no rows and the table's column types."""
    frame: pd.DataFrame = SCHEMA.empty_table().to_pandas()
    return frame


def _version_of(entry: dict[str, Any]) -> TableVersion:
    stamp = entry.get("timestamp")
    committed = (datetime.fromtimestamp(stamp / 1000, tz=UTC).isoformat(timespec="milliseconds")
                 if isinstance(stamp, int | float) else "")
    release = entry.get(f"{META}release_version")
    devices = str(entry.get(f"{META}devices") or "")
    return TableVersion(
        version=int(entry.get("version", 0)), committed_at=committed, operation=str(entry.get("operation", "")),
        run_id=str(entry.get(f"{META}run_id") or ""), start=str(entry.get(f"{META}start") or ""),
        end=str(entry.get(f"{META}end") or ""), devices=tuple(d for d in devices.split(",") if d),
        release_version=int(release) if release not in (None, "") else None,
        data_hash=str(entry.get(f"{META}data_hash") or ""), code_version=str(entry.get(f"{META}code_version") or ""),
    )


def _iso(ts: datetime | str) -> str:
    return utc(ts).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _at(version: int | None) -> str:
    return "" if version is None else f" at version {version}"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TOOK = re.compile(r" in (\d+(?:\.\d+)?)s - ")


def _one_line(exc: BaseException) -> str:
    """delta-rs errors come as a tree of causes (ANSI-coloured ``↳`` lines): the first line, and where a
    request failed, which request and after how long (the storage deadline bounds it)."""
    lines = [line.strip().lstrip("↳").strip() for line in _ANSI.sub("", str(exc)).strip().splitlines()]
    lines = [line for line in lines if line]
    first = lines[0] if lines else ""
    request = next((line for line in lines if _TOOK.search(line)), "")
    if request:
        took = float(_TOOK.search(request).group(1))  # type: ignore[union-attr]
        verb = request.split(" ", 3)[2] if request.startswith("Error performing ") else "request"
        first = f"{first}: {verb} failed after {took:.1f} s"
    return f"{type(exc).__name__}: {first}"[:300]
