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

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
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
])
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
    if not DeltaTable.is_deltatable(uri, storage_options=options):
        return None
    try:
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


def with_partition(batch: pa.Table) -> pa.Table:
    """Predictions in the table's schema, with the ``window_start`` partition column computed from TS."""
    batch = batch.select(SCHEMA.names).cast(SCHEMA)
    micros = batch.column("TS").cast(pa.int64()).to_numpy(zero_copy_only=False)
    if len(micros) == 0:
        return batch.append_column(PARTITION, pa.array([], pa.string()))
    hours = micros // _HOUR_US
    first = int(hours.min())
    labels = pa.array([hour_label(pd.Timestamp(h * _HOUR_US, unit="us", tz="UTC"))
                       for h in range(first, int(hours.max()) + 1)])
    # few distinct hours: label each row by index into the hours' labels (no per-row formatting)
    column = pa.DictionaryArray.from_arrays(pa.array((hours - first).astype(np.int32)), labels).cast(pa.string())
    return batch.append_column(PARTITION, column)


def commit_run(spec: StorageSpec | str, parts: Sequence[str], start: datetime, end: datetime,
               devices: Sequence[str] | None, metadata: dict[str, Any]) -> int:
    """Commit a run's staged parts (paths under the storage root) as ONE new table version; its number.

    The commit replaces the table's rows in ``[start, end)`` (of ``devices`` when given) with the
    parts' rows. ``metadata`` (run_id, release_version, data_hash, code_version, ...) goes into the
    commit's metadata under ``fleetscore.``. A run already committed (the finalize step is retried
    after a crash between the commit and the manifest) is not committed twice: its version is returned.
    """
    from deltalake import CommitProperties, Transaction, write_deltalake

    run_id = str(metadata["run_id"])
    app_id = f"fleetscore-run-{run_id}"
    table = _open(spec)
    if table is not None and table.transaction_version(app_id) is not None:
        done = run_version(spec, run_id)
        if done is not None:
            log.info("run %s: already committed as table version %d", run_id, done)
            return done
    storage = as_spec(spec).open()
    tables = []
    for rel in parts:
        try:
            with storage.open_read(rel) as handle:
                tables.append(pq.read_table(handle))
        except (OSError, pa.ArrowException) as exc:
            raise StorageError(f"{storage.display(rel)}: cannot read the staged part: {_one_line(exc)}") from exc
    data = with_partition(pa.concat_tables([t.select(SCHEMA.names).cast(SCHEMA) for t in tables])
                          if tables else SCHEMA.empty_table())
    custom = {f"{META}{key}": _text(value) for key, value in metadata.items()}
    custom.update({f"{META}start": utc(start).isoformat(), f"{META}end": utc(end).isoformat(),
                   f"{META}devices": ",".join(sorted(devices)) if devices else ""})
    uri, options = _location(spec)
    try:
        write_deltalake(uri, data, mode="overwrite", partition_by=[PARTITION],
                        predicate=run_predicate(start, end, devices), storage_options=options,
                        commit_properties=CommitProperties(custom_metadata=custom,
                                                           app_transactions=[Transaction(app_id, 1)]))
    except Exception as exc:
        raise StorageError(f"{uri}: run {run_id}: the commit failed: {_one_line(exc)}") from exc
    version = next((entry.version for entry in history(spec, 20) if entry.run_id == run_id), None)
    if version is None:
        raise StorageError(f"{uri}: run {run_id}: committed, but no table version names it")
    return version


def run_predicate(start: datetime, end: datetime, devices: Sequence[str] | None = None) -> str:
    """The SQL predicate of a run's rows: its partitions (for pruning), its range, its devices."""
    hours = ", ".join(f"'{h}'" for h in hours_between(start, end))
    text = (f"{PARTITION} IN ({hours}) AND TS >= '{_iso(start)}' AND TS < '{_iso(end)}'")
    if devices:
        text += " AND Device IN (" + ", ".join("'" + d.replace("'", "''") + "'" for d in sorted(devices)) + ")"
    return text


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
    try:
        data = table.to_pyarrow_table(partitions=partitions or None, columns=SCHEMA.names,
                                      filters=filters or None)
    except Exception as exc:
        raise StorageError(f"{table_uri(spec)}: cannot read the predictions table{_at(version)}: "
                           f"{_one_line(exc)}") from exc
    frame: pd.DataFrame = data.cast(SCHEMA).to_pandas()
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


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
