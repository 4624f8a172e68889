"""Writing to the sensor store on any SQLAlchemy dialect (Azure SQL, ...): SQLAlchemy Core only.

The native writers merge with ``INSERT ... ON CONFLICT``, which SQL Server does not have. Here a chunk
of partial window aggregates is merged in three bulk steps inside the input's one transaction:

1. the chunk's windows that may be stored (not newer than their series' newest stored window) are
   looked up with one range query per group of devices (``device IN (...) AND ts BETWEEN ...``);
2. the stored ones are merged by ONE ``executemany`` UPDATE whose SET computes the count-weighted mean,
   the min, the max and the summed count in SQL (the same arithmetic as the native upserts);
3. the others are added by ONE bulk INSERT (SQLAlchemy's insertmanyvalues batches).

Quarantined rows, the ``sources`` row and Event Hubs checkpoints use plain Core statements. Nothing here
depends on the dialect: tests run it on SQLite and PostgreSQL (``SensorStore(url, _generic=True)``) and
compare it with the native writers; the statements compile for ``mssql`` (checked in the tests).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pyarrow as pa
from sqlalchemy import (
    Connection,
    DateTime,
    Float,
    Integer,
    Update,
    and_,
    bindparam,
    case,
    cast,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from fleetscore.errors import StoreError
from fleetscore.ingestion.schema import eventhub_checkpoints, quarantine, sources, windows
from fleetscore.ingestion.store import SensorStore
from fleetscore.ingestion.writer import StoreWriter

log = logging.getLogger(__name__)

_IN_CHUNK = 500  # devices per IN (...) list (SQL Server takes at most 2,100 parameters)
_KEY = ("device", "sensor", "ts")


def merge_update() -> Update:
    """The UPDATE that merges one partial aggregate (parameters ``k_*``: the window's key, ``m_*``: the
    partial mean, min, max, count and the writer's stamp) into a stored window; run by executemany.

    The SET expressions refer to the row's old values (SQL semantics); ``value_count`` is assigned after
    ``value`` so that MySQL, which assigns left to right, computes the same mean."""
    w = windows.c
    count = bindparam("m_count", type_=Integer)
    low, high = bindparam("m_min", type_=Float), bindparam("m_max", type_=Float)
    return (
        update(windows)
        .where(and_(w.device == bindparam("k_device"), w.sensor == bindparam("k_sensor"),
                    w.ts == bindparam("k_ts", type_=DateTime)))
        .ordered_values(
            # weighted terms (weights sum to 1): no overflow where value * count would pass 1.8e308
            (w.value, w.value * (cast(w.value_count, Float) / (w.value_count + count))
             + bindparam("m_value", type_=Float) * (cast(count, Float) / (w.value_count + count))),
            (w.value_min, case((w.value_min <= low, w.value_min), else_=low)),
            (w.value_max, case((w.value_max >= high, w.value_max), else_=high)),
            (w.value_count, w.value_count + count),
            (w.updated_at, bindparam("m_stamp", type_=DateTime)),
        )
    )


class GenericWriter(StoreWriter):
    """One write transaction on a SQLAlchemy connection, in SQLAlchemy Core only (see the module)."""

    def __init__(self, store: SensorStore, conn: Connection) -> None:
        super().__init__(store)
        self.conn = conn

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one SQL text in this transaction (parameters ``:p1``, ``:p2``, ...); rows of its result."""
        result = self.conn.execute(text(sql), {f"p{i}": v for i, v in enumerate(params, start=1)})
        return [tuple(row) for row in result] if result.returns_rows else []

    def _times(self, column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
        """Times as timestamps: SQLAlchemy's DateTime type stores them in the dialect's own form."""
        if not pa.types.is_timestamp(column.type):
            column = column.cast(pa.int64()).cast(pa.timestamp("ns"))
        return column.cast(pa.timestamp("us"), safe=False)

    def _newest(self, devices: list[str], sensors: list[str]) -> list[tuple[str, str, Any]]:
        wanted = set(zip(devices, sensors, strict=True))
        found: dict[tuple[str, str], Any] = {}
        unique = sorted(set(devices))
        for i in range(0, len(unique), _IN_CHUNK):
            stmt = (select(windows.c.device, windows.c.sensor, func.max(windows.c.ts))
                    .where(windows.c.device.in_(unique[i : i + _IN_CHUNK]))
                    .group_by(windows.c.device, windows.c.sensor))
            for device, sensor, last in self.conn.execute(stmt):
                if (device, sensor) in wanted:
                    found[(device, sensor)] = last
        return [(d, s, found.get((d, s))) for d, s in zip(devices, sensors, strict=True)]

    def _stored(self, probe: pa.Table) -> list[tuple[str, str, Any, Any]]:
        keys = list(zip(*(probe.column(c).to_pylist() for c in _KEY), strict=True))
        wanted = set(keys)
        by_device: dict[str, list[datetime]] = {}
        for device, _, ts in keys:
            by_device.setdefault(device, []).append(ts)
        unique = sorted(by_device)
        found = []
        for i in range(0, len(unique), _IN_CHUNK):
            group = unique[i : i + _IN_CHUNK]
            lo = min(min(by_device[d]) for d in group)
            hi = max(max(by_device[d]) for d in group)
            stmt = (select(windows.c.device, windows.c.sensor, windows.c.ts, windows.c.updated_at)
                    .where(windows.c.device.in_(group), windows.c.ts >= lo, windows.c.ts <= hi))
            for device, sensor, ts, updated_at in self.conn.execute(stmt):
                if (device, sensor, ts) in wanted:
                    found.append((device, sensor, ts, updated_at != self.stamp))
        return found

    def _upsert(self, stage: pa.Table, stored: set[tuple[str, str, Any]]) -> None:
        stage = stage.sort_by([(c, "ascending") for c in _KEY])
        rows = stage.to_pylist()
        new = [dict(row, updated_at=self.stamp) for row in rows
               if (row["device"], row["sensor"], row["ts"]) not in stored]
        merged = [
            {"k_device": row["device"], "k_sensor": row["sensor"], "k_ts": row["ts"], "m_value": row["value"],
             "m_min": row["value_min"], "m_max": row["value_max"], "m_count": row["value_count"],
             "m_stamp": self.stamp}
            for row in rows if (row["device"], row["sensor"], row["ts"]) in stored
        ]
        if merged:
            self.conn.execute(merge_update(), merged)
        if new:
            self.conn.execute(insert(windows), new)

    def _append_quarantine(self, table: pa.Table) -> None:
        self.conn.execute(insert(quarantine), table.to_pylist())

    def has_source(self, content_hash: str) -> bool:
        """Whether an input with this content hash was ingested already."""
        stmt = select(sources.c.content_hash).where(sources.c.content_hash == content_hash)
        return self.conn.execute(stmt).first() is not None

    def add_source(self, content_hash: str, name: str, rows: int, window_seconds: float,
                   windows_written: int, late_updates: int, quarantined: int) -> None:
        """Record an ingested input (same transaction as its windows)."""
        self.conn.execute(insert(sources).values(
            content_hash=content_hash, name=name, rows=int(rows), ingested_at=self.stamp,
            window_seconds=float(window_seconds), windows_written=int(windows_written),
            late_updates=int(late_updates), quarantined=int(quarantined)))

    def source_windows(self) -> list[float]:
        """The distinct window sizes (seconds) of the inputs ingested so far."""
        rows = self.conn.execute(select(sources.c.window_seconds).distinct())
        return [float(r[0]) for r in rows]

    def checkpoints(self, namespace: str, eventhub: str, consumer_group: str) -> dict[str, tuple[str, int]]:
        """Stored Event Hubs checkpoints: partition id -> (offset, sequence number)."""
        c = eventhub_checkpoints.c
        rows = self.conn.execute(select(c.partition_id, c.offset, c.sequence_number).where(
            c.namespace == namespace, c.eventhub == eventhub, c.consumer_group == consumer_group))
        return {str(p): (str(o), int(s)) for p, o, s in rows}

    def set_checkpoint(self, namespace: str, eventhub: str, consumer_group: str, partition_id: str,
                       offset: str, sequence_number: int) -> None:
        """Store the last processed event of a partition (same transaction as its windows): an UPDATE,
        and an INSERT when no row was there."""
        c = eventhub_checkpoints.c
        values = {"offset": str(offset), "sequence_number": int(sequence_number), "updated_at": self.stamp}
        changed = self.conn.execute(update(eventhub_checkpoints).where(
            c.namespace == namespace, c.eventhub == eventhub, c.consumer_group == consumer_group,
            c.partition_id == partition_id).values(**values))
        if changed.rowcount == 0:
            self.conn.execute(insert(eventhub_checkpoints).values(
                namespace=namespace, eventhub=eventhub, consumer_group=consumer_group,
                partition_id=partition_id, **values))


@contextmanager
def generic_transaction(store: SensorStore) -> Iterator[GenericWriter]:
    """A :class:`GenericWriter` in one SQLAlchemy transaction: committed when the block ends, rolled
    back on error."""
    store.ensure_schema()
    try:
        conn = store.engine.connect()
    except SQLAlchemyError as exc:
        raise StoreError(f"{store!r}: cannot connect: {' '.join(str(exc).split())[:300]}") from exc
    with conn:
        transaction = conn.begin()
        try:
            yield GenericWriter(store, conn)
        except BaseException:
            transaction.rollback()
            raise
        try:
            transaction.commit()
        except SQLAlchemyError as exc:
            raise StoreError(f"{store!r}: commit failed: {' '.join(str(exc).split())[:300]}") from exc
