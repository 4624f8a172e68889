"""Writing to the sensor store: one transaction per input (a file, a simulated batch, an event batch).

Chunks of partial window aggregates are merged into ``windows`` with ``INSERT ... ON CONFLICT DO
UPDATE``: the count-weighted mean, the min, the max and the sum of counts, so a window that arrives in
several pieces (chunk boundaries, late readings, several files) ends up exactly as if its readings had
come together. Quarantined rows, the ``sources`` row and Event Hubs checkpoints go into the same
transaction: a crash leaves nothing half-counted.

SQLite is written through Python's ``sqlite3`` only (a prepared upsert fed by ``executemany``, in
key order), the library SQLAlchemy uses for the other tables: ADBC's driver links its own SQLite copy,
and two copies writing one file in one process lose commits (see :mod:`ingestion.engine`).
PostgreSQL is written through ADBC (COPY into a temporary stage, then one ``INSERT ... SELECT``).
Any other dialect (Azure SQL) is written by :class:`GenericWriter` through SQLAlchemy Core only: the
stored keys of a chunk are found with a few range queries, then one ``executemany`` UPDATE merges into
them and one bulk INSERT adds the rest; no upsert syntax, no per-row round trip.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.errors import StoreError
from fleetscore.ingestion.store import SQLITE_CACHE_KIB, WINDOW_COLUMNS, SensorStore
from fleetscore.ingestion.timeutil import utcnow
from fleetscore.ingestion.write_lock import make_way as make_way_for_waiters
from fleetscore.ingestion.write_lock import sqlite_write_lock

log = logging.getLogger(__name__)

_STAGE = "_fs_stage"
_SERIES = "_fs_series"
_PROBE = "_fs_probe"
_NO_TIME = np.iinfo(np.int64).min
_DELETE_BATCH = 500  # ids per DELETE: under SQL Server's 2,100 parameters and SQLite's 32,766
_last_stamp: datetime | None = None


def _next_stamp() -> datetime:
    """A strictly increasing ``updated_at`` per writer in this process (tells writers apart)."""
    global _last_stamp
    now = utcnow()
    if _last_stamp is not None and now <= _last_stamp:
        now = _last_stamp + timedelta(microseconds=1)
    _last_stamp = now
    return now


@dataclass(frozen=True)
class MergeResult:
    """What merging one chunk of windows did: windows created, and stored windows updated late."""

    created: int
    late_updates: int


class StoreWriter:
    """One write transaction: the dialect-independent logic. Use :func:`open_writer`, which gives a
    :class:`SqliteWriter`, a :class:`PostgresWriter` or a :class:`GenericWriter`."""

    def __init__(self, store: SensorStore) -> None:
        self.store = store
        self.stamp = _next_stamp()
        self._late_keys: set[tuple[str, str, Any]] = set()
        self._known: dict[tuple[str, str], int] = {}  # newest window per series, stored or written

    # -- dialect primitives ----------------------------------------------------------------------

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement in this transaction; rows of its result if any."""
        raise NotImplementedError

    def _newest(self, devices: list[str], sensors: list[str]) -> list[tuple[str, str, Any]]:
        """(device, sensor, newest stored window start or None) for each pair."""
        raise NotImplementedError

    def _stored(self, probe: pa.Table) -> list[tuple[str, str, Any, Any]]:
        """(device, sensor, ts, written by another writer) of the probe's windows that are stored."""
        raise NotImplementedError

    def _upsert(self, stage: pa.Table, stored: set[tuple[str, str, Any]]) -> None:
        """Insert the stage's windows, merging into the stored ones (``stored``: their keys, as
        :meth:`_stored` gave them)."""
        raise NotImplementedError

    def _append_quarantine(self, table: pa.Table) -> None:
        raise NotImplementedError

    # -- helpers --------------------------------------------------------------------------------

    def _p(self, index: int) -> str:
        return self.store.placeholder(index)

    def _time(self, ts: datetime) -> Any:
        return self.store.time_param(ts)

    def _times(self, column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
        """Times (timestamp or int64 ns) in the form the dialect stores: text on SQLite."""
        if not pa.types.is_timestamp(column.type):
            column = column.cast(pa.int64()).cast(pa.timestamp("ns"))
        column = column.cast(pa.timestamp("us"), safe=False)
        if self.store.dialect == "sqlite":
            return column.cast(pa.string())  # 2018-08-29 01:00:00.000000, as SQLAlchemy writes DATETIME
        return column

    # -- windows --------------------------------------------------------------------------------

    def newest_windows(self, devices: list[str], sensors: list[str]) -> list[int | None]:
        """For each (device, sensor) pair, the start of its newest stored window in ns, or None."""
        if not devices:
            return []
        rows = self._newest(devices, sensors)
        last = pa.array([r[2] for r in rows])
        if not pa.types.is_timestamp(last.type):
            last = pc.cast(last.cast(pa.string()), pa.timestamp("ns"))
        last_ns = last.cast(pa.timestamp("ns")).cast(pa.int64()).to_pylist()
        found: dict[tuple[str, str], int | None] = {}
        for (dev, sen, _), ts in zip(rows, last_ns, strict=True):
            found[(dev, sen)] = ts
            self._known.setdefault((dev, sen), _NO_TIME if ts is None else int(ts))
        return [found.get((d, s)) for d, s in zip(devices, sensors, strict=True)]

    def _may_exist(self, chunk: pa.Table) -> np.ndarray:
        """Mask of the chunk's windows that may already be stored: not after the newest window of their
        series that was stored before or written by this writer. Updates that watermark."""
        joined = pc.binary_join_element_wise(chunk.column("device").combine_chunks(),
                                             chunk.column("sensor").combine_chunks(), "\x1f")
        encoded = joined.dictionary_encode()
        codes = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        keys = [tuple(k.split("\x1f", 1)) for k in encoded.dictionary.to_pylist()]
        unknown = [k for k in keys if k not in self._known]
        if unknown:
            self.newest_windows([k[0] for k in unknown], [k[1] for k in unknown])
        known = np.array([self._known.get(k, _NO_TIME) for k in keys], dtype=np.int64)
        ts = np.asarray(chunk.column("ts").cast(pa.timestamp("ns")).cast(pa.int64()).to_numpy(), dtype=np.int64)
        possible = ts <= known[codes]
        newest = np.full(len(keys), _NO_TIME, dtype=np.int64)
        np.maximum.at(newest, codes, ts)
        for key, value in zip(keys, newest, strict=True):
            self._known[key] = max(self._known.get(key, _NO_TIME), int(value))  # type: ignore[index]
        return possible

    def merge_windows(self, chunk: pa.Table) -> MergeResult:
        """Merge partial aggregates (device, sensor, ts, value [mean], value_min, value_max,
        value_count; at most one row per window) into ``windows``."""
        if chunk.num_rows == 0:
            return MergeResult(0, 0)
        stage = pa.table({
            "device": chunk.column("device").cast(pa.string()),
            "sensor": chunk.column("sensor").cast(pa.string()),
            "ts": self._times(chunk.column("ts")),
            "value": chunk.column("value").cast(pa.float64()),
            "value_min": chunk.column("value_min").cast(pa.float64()),
            "value_max": chunk.column("value_max").cast(pa.float64()),
            "value_count": chunk.column("value_count").cast(pa.int64()),
        })
        possible = self._may_exist(chunk)
        stored: set[tuple[str, str, Any]] = set()
        late = 0
        if possible.any():
            probe = stage.select(["device", "sensor", "ts"]).filter(pa.array(possible))
            for device, sensor, ts, is_late in self._stored(probe):
                key = (device, sensor, ts)
                stored.add(key)
                if is_late and key not in self._late_keys:
                    self._late_keys.add(key)
                    late += 1
        self._upsert(stage, stored)
        return MergeResult(created=chunk.num_rows - len(stored), late_updates=late)

    def _on_conflict(self) -> str:
        """The ``ON CONFLICT`` clause of the native upserts (SQLite, PostgreSQL)."""
        lo, hi = ("min", "max") if self.store.dialect == "sqlite" else ("LEAST", "GREATEST")
        double = "REAL" if self.store.dialect == "sqlite" else "DOUBLE PRECISION"
        total = "(windows.value_count + excluded.value_count)"
        # the count-weighted mean as a sum of weighted terms (weights sum to 1): never beyond the largest
        # finite value, where value * count would overflow for two windows of 1.7e308
        return (
            " ON CONFLICT (device, sensor, ts) DO UPDATE SET "
            f"value = windows.value * (CAST(windows.value_count AS {double}) / {total}) "
            f"+ excluded.value * (CAST(excluded.value_count AS {double}) / {total}), "
            f"value_min = {lo}(windows.value_min, excluded.value_min), "
            f"value_max = {hi}(windows.value_max, excluded.value_max), "
            "value_count = windows.value_count + excluded.value_count, "
            "updated_at = excluded.updated_at"
        )

    # -- quarantine, sources, checkpoints --------------------------------------------------------

    def quarantine(self, source: str, lines: list[int], raws: list[str], reasons: list[str],
                   details: list[str], layout: str | None = None) -> None:
        """Store rejected rows with where they came from, why, and how to read their text again."""
        if not lines:
            return
        self._append_quarantine(pa.table({
            "source": pa.array([source] * len(lines), pa.string()),
            "line": pa.array(lines, pa.int32()),
            "raw": pa.array(raws, pa.string()),
            "reason": pa.array(reasons, pa.string()),
            "detail": pa.array(details, pa.string()),
            "ingested_at": self._times(pa.array([self.stamp] * len(lines), pa.timestamp("us"))),
            "layout": pa.array([layout if raw else None for raw in raws], pa.string()),
        }))

    def quarantined_rows(self, reasons: Sequence[str] = (), sources: Sequence[str] = ()) -> list[tuple[Any, ...]]:
        """(id, source, line, raw, reason, layout) of the quarantined rows with one of ``reasons`` from
        one of ``sources`` (all when empty), in the order they were quarantined."""
        where, params = [], [*reasons, *sources]
        marks = [self._p(i) for i in range(1, len(params) + 1)]
        if reasons:
            where.append(f"reason IN ({', '.join(marks[:len(reasons)])})")
        if sources:
            where.append(f"source IN ({', '.join(marks[len(reasons):])})")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        return self.execute(f"SELECT id, source, line, raw, reason, layout FROM quarantine{clause} ORDER BY id",
                            tuple(params))

    def delete_quarantined(self, ids: Sequence[int]) -> None:
        """Remove quarantined rows by id (same transaction as their replay)."""
        for start in range(0, len(ids), _DELETE_BATCH):
            batch = [int(i) for i in ids[start:start + _DELETE_BATCH]]
            marks = ", ".join(self._p(i) for i in range(1, len(batch) + 1))
            self.execute(f"DELETE FROM quarantine WHERE id IN ({marks})", tuple(batch))

    def has_source(self, content_hash: str) -> bool:
        """Whether an input with this content hash was ingested already."""
        rows = self.execute(f"SELECT 1 FROM sources WHERE content_hash = {self._p(1)}", (content_hash,))
        return bool(rows)

    def add_source(self, content_hash: str, name: str, rows: int, window_seconds: float,
                   windows_written: int, late_updates: int, quarantined: int) -> None:
        """Record an ingested input (same transaction as its windows)."""
        marks = ", ".join(self._p(i) for i in range(1, 9))
        self.execute(
            "INSERT INTO sources (content_hash, name, rows, ingested_at, window_seconds, windows_written, "
            f"late_updates, quarantined) VALUES ({marks})",
            (content_hash, name, int(rows), self._time(self.stamp), float(window_seconds),
             int(windows_written), int(late_updates), int(quarantined)),
        )

    def source_windows(self) -> list[float]:
        """The distinct window sizes (seconds) of the inputs ingested so far."""
        rows = self.execute("SELECT DISTINCT window_seconds FROM sources")
        return [float(r[0]) for r in rows]

    def checkpoints(self, namespace: str, eventhub: str, consumer_group: str) -> dict[str, tuple[str, int]]:
        """Stored Event Hubs checkpoints: partition id -> (offset, sequence number)."""
        rows = self.execute(
            "SELECT partition_id, \"offset\", sequence_number FROM eventhub_checkpoints WHERE "
            f"namespace = {self._p(1)} AND eventhub = {self._p(2)} AND consumer_group = {self._p(3)}",
            (namespace, eventhub, consumer_group),
        )
        return {str(p): (str(o), int(s)) for p, o, s in rows}

    def set_checkpoint(self, namespace: str, eventhub: str, consumer_group: str, partition_id: str,
                       offset: str, sequence_number: int) -> None:
        """Store the last processed event of a partition (same transaction as its windows)."""
        marks = ", ".join(self._p(i) for i in range(1, 8))
        self.execute(
            "INSERT INTO eventhub_checkpoints (namespace, eventhub, consumer_group, partition_id, \"offset\", "
            f"sequence_number, updated_at) VALUES ({marks}) ON CONFLICT (namespace, eventhub, consumer_group, "
            "partition_id) DO UPDATE SET \"offset\" = excluded.\"offset\", "
            "sequence_number = excluded.sequence_number, updated_at = excluded.updated_at",
            (namespace, eventhub, consumer_group, partition_id, str(offset), int(sequence_number),
             self._time(self.stamp)),
        )


_WINDOW_COLUMNS = ", ".join([*WINDOW_COLUMNS, "updated_at"])


class SqliteWriter(StoreWriter):
    """A write transaction on a ``sqlite3`` connection (``BEGIN IMMEDIATE``: writers queue up front)."""

    def __init__(self, store: SensorStore, conn: sqlite3.Connection) -> None:
        super().__init__(store)
        self.conn = conn
        self.cursor = conn.cursor()

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement in this transaction; rows of its result if any."""
        self.cursor.execute(sql, params)
        return self.cursor.fetchall() if self.cursor.description is not None else []

    def _newest(self, devices: list[str], sensors: list[str]) -> list[tuple[str, str, Any]]:
        sql = "SELECT max(ts) FROM windows WHERE device = ? AND sensor = ?"  # one primary-key seek each
        return [(d, s, self.cursor.execute(sql, (d, s)).fetchone()[0])
                for d, s in zip(devices, sensors, strict=True)]

    def _stored(self, probe: pa.Table) -> list[tuple[str, str, Any, Any]]:
        sql = "SELECT updated_at <> ? FROM windows WHERE device = ? AND sensor = ? AND ts = ?"
        stamp = self._time(self.stamp)
        found = []
        for device, sensor, ts in zip(*(probe.column(c).to_pylist() for c in ("device", "sensor", "ts")),
                                      strict=True):
            row = self.cursor.execute(sql, (stamp, device, sensor, ts)).fetchone()
            if row is not None:
                found.append((device, sensor, ts, row[0]))
        return found

    def _upsert(self, stage: pa.Table, stored: set[tuple[str, str, Any]]) -> None:
        update = self._on_conflict()
        # In key order, so that each series' part of the primary-key index is visited once per chunk.
        stage = stage.sort_by([("device", "ascending"), ("sensor", "ascending"), ("ts", "ascending")])
        stamps = [self._time(self.stamp)] * stage.num_rows
        rows = zip(*(_pylist(stage.column(c)) for c in stage.column_names), stamps, strict=True)
        self.cursor.executemany(f"INSERT INTO windows ({_WINDOW_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?){update}",
                                rows)

    def _append_quarantine(self, table: pa.Table) -> None:
        marks = ", ".join("?" * table.num_columns)
        self.cursor.executemany(f"INSERT INTO quarantine ({', '.join(table.column_names)}) VALUES ({marks})",
                                zip(*(_pylist(table.column(c)) for c in table.column_names), strict=True))


def _pylist(column: pa.ChunkedArray) -> list[Any]:
    """A column as Python values, fast: numbers through numpy, repeated strings decoded once."""
    if pa.types.is_floating(column.type) or pa.types.is_integer(column.type):
        values: list[Any] = column.to_numpy().tolist()
        return values
    encoded = pc.dictionary_encode(column).combine_chunks()
    words = np.array([*encoded.dictionary.to_pylist(), None], dtype=object)
    codes = encoded.indices.fill_null(len(words) - 1).to_numpy()
    decoded: list[Any] = words[codes].tolist()
    return decoded


class PostgresWriter(StoreWriter):
    """A write transaction on an ADBC PostgreSQL connection (COPY into temporary stage tables)."""

    def __init__(self, store: SensorStore, conn: Any) -> None:
        super().__init__(store)
        self.conn = conn
        self.cursor = conn.cursor()
        self._temp: set[str] = set()

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement in this transaction; rows of its result if any."""
        self.cursor.execute(sql, parameters=params or None)
        if self.cursor.description is None:
            return []
        rows: list[tuple[Any, ...]] = self.cursor.fetchall()
        return rows

    def _load_temp(self, name: str, table: pa.Table) -> None:
        if name in self._temp:
            self.cursor.execute(f"DELETE FROM {name}")
            self.cursor.adbc_ingest(name, table, mode="append", temporary=True)
        else:
            self.cursor.execute(f"DROP TABLE IF EXISTS {name}")
            self.cursor.adbc_ingest(name, table, mode="create_append", temporary=True)
            self._temp.add(name)

    def _newest(self, devices: list[str], sensors: list[str]) -> list[tuple[str, str, Any]]:
        self._load_temp(_SERIES, pa.table({"device": pa.array(devices, pa.string()),
                                          "sensor": pa.array(sensors, pa.string())}))
        return self.execute(
            f"SELECT s.device, s.sensor, (SELECT max(w.ts) FROM windows w WHERE w.device = s.device "
            f"AND w.sensor = s.sensor) AS last_ts FROM {_SERIES} s"
        )  # type: ignore[return-value]

    def _stored(self, probe: pa.Table) -> list[tuple[str, str, Any, Any]]:
        self._load_temp(_PROBE, probe)
        return self.execute(
            f"SELECT s.device, s.sensor, s.ts, w.updated_at <> $1 AS late FROM {_PROBE} s "
            "JOIN windows w ON w.device = s.device AND w.sensor = s.sensor AND w.ts = s.ts",
            (self._time(self.stamp),),
        )  # type: ignore[return-value]

    def _upsert(self, stage: pa.Table, stored: set[tuple[str, str, Any]]) -> None:
        update = self._on_conflict()
        self._load_temp(_STAGE, stage)
        self.execute(
            f"INSERT INTO windows ({_WINDOW_COLUMNS}) SELECT device, sensor, ts, value, value_min, value_max, "
            f"value_count, $1 FROM {_STAGE}{update}",
            (self._time(self.stamp),),
        )

    def _append_quarantine(self, table: pa.Table) -> None:
        self.cursor.adbc_ingest("quarantine", table, mode="append")


@contextmanager
def open_writer(store: SensorStore, stamp: datetime | None = None) -> Iterator[StoreWriter]:
    """A :class:`StoreWriter` whose transaction commits when the block ends and rolls back on error.

    ``stamp`` is the ``updated_at`` it writes (default: a new one); the parts of one input committed
    apart share theirs, so a window continued in the next part is not taken for a late update."""
    if store.generic:
        from fleetscore.ingestion.generic_writer import generic_transaction

        with generic_transaction(store) as generic_writer:
            generic_writer.stamp = stamp or generic_writer.stamp
            yield generic_writer
        return
    if store.dialect == "sqlite":
        with _sqlite_transaction(store) as conn:
            sqlite_writer = SqliteWriter(store, conn)
            sqlite_writer.stamp = stamp or sqlite_writer.stamp
            try:
                yield sqlite_writer
            finally:
                sqlite_writer.cursor.close()
        return
    with store.adbc_connection() as conn:
        writer = PostgresWriter(store, conn)
        writer.stamp = stamp or writer.stamp
        try:
            yield writer
        except BaseException:
            conn.rollback()
            raise
        try:
            conn.commit()
        except Exception as exc:
            raise StoreError(f"{store!r}: commit failed: {' '.join(str(exc).split())}") from exc
        finally:
            writer.cursor.close()


def make_way(store: SensorStore) -> None:
    """Between two parts of a long write on SQLite: let the writers that wait for the lock in first
    (:func:`ingestion.write_lock.make_way`); nothing to do on other databases."""
    if store.dialect == "sqlite" and not store.generic and store.engine.url.database:
        make_way_for_waiters(Path(store.engine.url.database))


@contextmanager
def _sqlite_transaction(store: SensorStore) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` on a pooled ``sqlite3`` connection of the store's engine (the
    connection SQLAlchemy uses too), with a larger page cache; the connection goes back as it came."""
    store.ensure_schema()
    try:
        raw = store.engine.raw_connection()
    except Exception as exc:
        raise StoreError(f"{store!r}: cannot connect: {' '.join(str(exc).split())}") from exc
    try:
        conn: sqlite3.Connection = raw.driver_connection  # type: ignore[assignment]
        isolation, cache = conn.isolation_level, conn.execute("PRAGMA cache_size").fetchone()[0]
        conn.isolation_level = None  # transactions spelled out below, not begun implicitly
        conn.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        try:
            with sqlite_write_lock(conn, Path(store.engine.url.database or ""), store.lock_timeout):
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise StoreError(f"{store!r}: commit failed: {' '.join(str(exc).split())}") from exc
        finally:
            conn.execute(f"PRAGMA cache_size={int(cache)}")
            conn.isolation_level = isolation
    finally:
        raw.close()
