"""The SQL sensor store: the schema, and the reading API every later stage uses.

``SensorStore(database_url)`` works on SQLite (a file, WAL mode) and PostgreSQL
(``postgresql://`` or ``postgresql+psycopg://``). Bulk reads go through ADBC (Arrow), several times
faster than ``pandas.read_sql`` or ``sqlite3``; on SQLite only while no ``sqlite3`` connection of this
process has the file open (see :mod:`ingestion.engine`: two SQLite library copies lose commits), else
through ``sqlite3``. Writes go through :mod:`ingestion.writer`, one transaction per input.

Any other SQLAlchemy dialect (Azure SQL: ``mssql+pyodbc://...``) takes the *generic* path: reads and
writes through SQLAlchemy Core and the dialect's DB-API driver only, sorted in Arrow (byte order of the
ids, whatever the server's collation). Tests force that path on SQLite and PostgreSQL
(``SensorStore(url, _generic=True)``), where it is checked against the native one.

All times are naive UTC; a window is labelled by its start; ranges are ``[start, end)``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from fleetscore.errors import StoreError, one_line
from fleetscore.ingestion.engine import absolute_database_url, make_engine, single_sqlite_copy, with_connect_timeout
from fleetscore.ingestion.schema import SCHEMA_VERSION, metadata, schema_info
from fleetscore.ingestion.sharding import shard_devices
from fleetscore.ingestion.timeutil import utcnow
from fleetscore.ingestion.write_lock import DEFAULT_LOCK_TIMEOUT

log = logging.getLogger(__name__)

_SCHEMA_ATTEMPTS = 6  # each failed one lost to another command creating the same schema

__all__ = ["WINDOW_COLUMNS", "SensorStore", "shard_devices"]

WINDOW_COLUMNS: tuple[str, ...] = ("device", "sensor", "ts", "value", "value_min", "value_max", "value_count")
"""The columns of a window as read from the store, in order (``updated_at`` is the store's own)."""
# How SQLAlchemy stores DATETIME on SQLite; the store writes and compares times in the same text form.
SQLITE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
_IN_CHUNK = 500  # devices per IN (...) list
# the devices of the windows table, one seek each along the primary key (a recursive CTE named d)
_LOOSE_DEVICES = ("SELECT (SELECT min(device) FROM windows) AS device UNION ALL "
                  "SELECT (SELECT min(w.device) FROM windows w WHERE w.device > d.device) FROM d "
                  "WHERE d.device IS NOT NULL")
SQLITE_CACHE_KIB = 32768  # page cache of a writer or reader: index pages of big stores stay in memory


def format_time(ts: datetime) -> str:
    """A time as SQLite text (``2018-08-29 01:00:00.000000``), ordered like the times themselves."""
    return ts.strftime(SQLITE_TIME_FORMAT)


class SensorStore:
    """The windows table and its companions in one SQL database.

    Cheap to create: nothing connects until a method runs. The schema is created (idempotently) on
    first use, so reading a fresh database gives empty results rather than an error.
    """

    def __init__(self, database_url: str, *, lock_timeout: timedelta = DEFAULT_LOCK_TIMEOUT,
                 _generic: bool = False) -> None:
        """``lock_timeout``: how long a SQLite writer waits for the write lock (see
        :mod:`ingestion.write_lock`)."""
        self.database_url = absolute_database_url(database_url)
        self.lock_timeout = lock_timeout
        url = make_url(self.database_url)
        self.dialect = url.get_backend_name()
        # native paths: SQLite (sqlite3 + ADBC reads), PostgreSQL (ADBC); everything else is generic.
        # ``_generic`` forces the generic path on SQLite/PostgreSQL: for tests and benchmarks only.
        self.generic = _generic or self.dialect not in ("sqlite", "postgresql")
        if self.dialect == "sqlite" and (not url.database or url.database == ":memory:"):
            raise StoreError("database_url: an in-memory SQLite database cannot be shared; give a file path")
        self._url = url
        self._schema_ready = False
        if self.dialect not in ("sqlite", "postgresql"):
            self.check_driver()  # a missing driver (pyodbc, ODBC) is named now, before any work is done

    def check_driver(self) -> None:
        """Build the engine (no connection) so that a missing database driver is reported at once, as a
        :class:`ConfigError` naming it and how to install it."""
        make_engine(self.database_url)

    def __repr__(self) -> str:
        return f"SensorStore({self._url.render_as_string(hide_password=True)!r})"

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (one per process and URL)."""
        return make_engine(self.database_url)

    # -- schema -------------------------------------------------------------------------------

    def create_schema(self) -> None:
        """Create the tables and record the schema version; a no-op when they exist.

        Raises :class:`StoreError` when the database holds a schema version this code does not know.
        """
        shown = self._url.render_as_string(hide_password=True)
        try:  # an unreachable server is one error now, not six tries of the schema race below
            with self.engine.connect():
                pass
        except SQLAlchemyError as exc:
            raise StoreError(f"{shown}: cannot connect: {one_line(exc)}") from exc
        # two commands on a fresh database both find no table and both create: the second one's CREATE
        # (or version row) fails on what the first committed; looking again finds the schema in place
        for attempt in range(1, _SCHEMA_ATTEMPTS + 1):
            try:
                self._create_schema_once(shown)
                break
            except SQLAlchemyError as exc:
                if attempt == _SCHEMA_ATTEMPTS:
                    raise StoreError(f"{shown}: cannot create the schema: {one_line(exc)}") from exc
                log.debug("%s: creating the schema raced another command (%s); looking again", shown,
                          one_line(exc))
                time.sleep(random.uniform(0.05, 0.2) * attempt)  # several at once: not in lockstep
        self._schema_ready = True

    def _create_schema_once(self, shown: str) -> None:
        with self.engine.begin() as conn:
            if inspect(conn).has_table(schema_info.name):
                found = conn.execute(select(schema_info.c.version)).scalars().all()
                version = max(found) if found else None
                if version is not None and version < SCHEMA_VERSION and version in _UPGRADES:
                    _upgrade(conn, version)
                    version = SCHEMA_VERSION
                if version is not None and version != SCHEMA_VERSION:
                    newer = "newer" if version > SCHEMA_VERSION else "older"
                    raise StoreError(
                        f"{shown}: schema version {version} is {newer} than this fleetscore's "
                        f"({SCHEMA_VERSION}); use a matching fleetscore version"
                    )
            metadata.create_all(conn, checkfirst=True)
            if not conn.execute(select(schema_info.c.version).where(
                    schema_info.c.version == SCHEMA_VERSION)).first():
                conn.execute(schema_info.insert().values(version=SCHEMA_VERSION, created_at=utcnow()))

    def ensure_schema(self) -> None:
        """Create the schema once per store object (see :meth:`create_schema`)."""
        if not self._schema_ready:
            self.create_schema()

    # -- connections ----------------------------------------------------------------------------

    @contextmanager
    def adbc_connection(self) -> Iterator[Any]:
        """An ADBC DB-API connection (not autocommit) to PostgreSQL; closed on exit.

        Not for SQLite: ADBC's driver links its own copy of the SQLite library, and a read-write
        connection of that copy loses the commits of Python's ``sqlite3`` in this process (see
        :mod:`ingestion.engine`). SQLite is written through ``sqlite3`` and read through
        :meth:`_query`."""
        if self.dialect == "sqlite":
            raise StoreError(f"{self!r}: no ADBC connection to SQLite (two SQLite copies corrupt the file)")
        if self.dialect != "postgresql":
            raise StoreError(f"{self!r}: no ADBC driver for {self.dialect}; the store uses SQLAlchemy here")
        self.ensure_schema()
        shown = self._url.render_as_string(hide_password=True)
        try:
            import adbc_driver_postgresql.dbapi as adbc_pg

            uri = with_connect_timeout(self._url.set(drivername="postgresql")).render_as_string(hide_password=False)
            conn = adbc_pg.connect(uri)
        except Exception as exc:
            raise StoreError(f"{shown}: cannot connect: {one_line(exc)}") from exc
        try:
            yield conn
        finally:
            conn.close()

    def placeholder(self, index: int) -> str:
        """The query parameter marker number ``index`` (1-based) in this dialect (a named SQLAlchemy
        parameter ``:pN`` on the generic path)."""
        if self.generic:
            return f":p{index}"
        return "?" if self.dialect == "sqlite" else f"${index}"

    def time_param(self, ts: datetime) -> Any:
        """A time as a query parameter (text on SQLite, where times are stored as text)."""
        return format_time(ts) if self.dialect == "sqlite" else ts

    def _query(self, sql: str, params: Sequence[Any] = ()) -> pa.Table:
        """Run one query; its result as an Arrow table."""
        return self._queries([(sql, params)])[0]

    def _queries(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[pa.Table]:
        """Run queries in one read transaction (one snapshot); their results as Arrow tables."""
        shown = self._url.render_as_string(hide_password=True)
        self.ensure_schema()
        try:
            if self.generic:
                return self._sqlalchemy_read(statements)
            if self.dialect != "sqlite":
                with self.adbc_connection() as conn:
                    tables = _adbc_read(conn, statements)
                    conn.rollback()
                    return tables
            path = str(self._url.database)
            with single_sqlite_copy(path) as alone:
                if alone:
                    return _adbc_sqlite_read(path, statements)
                log.debug("%s: a sqlite3 connection is open in this process; reading through sqlite3", shown)
                return self._sqlite3_read(statements)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"{shown}: query failed: {one_line(exc)}") from exc

    def _sqlite3_read(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[pa.Table]:
        """The slow, always safe way: Python's sqlite3 (when ADBC may not open the file now)."""
        tables = []
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("BEGIN")
            for sql, params in statements:
                cursor.execute(sql, tuple(params))
                names = [d[0] for d in cursor.description]
                rows = cursor.fetchall()
                columns = list(zip(*rows, strict=True)) if rows else [()] * len(names)
                tables.append(pa.table({n: pa.array(list(v)) for n, v in zip(names, columns, strict=True)}))
            cursor.close()
        finally:
            raw.rollback()
            raw.close()
        return tables

    def _sqlalchemy_read(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[pa.Table]:
        """The generic path: queries through SQLAlchemy (the dialect's DB-API driver) in one read
        transaction, results fetched into Arrow; parameters are the named ``:pN`` of :meth:`placeholder`."""
        tables = []
        with self.engine.connect() as conn:
            for sql, params in statements:
                result = conn.execute(text(sql), {f"p{i}": v for i, v in enumerate(params, start=1)})
                names = list(result.keys())
                rows = result.fetchall()
                columns = list(zip(*rows, strict=True)) if rows else [()] * len(names)
                tables.append(pa.table({n: pa.array(list(v)) for n, v in zip(names, columns, strict=True)}))
            conn.rollback()
        return tables

    def _order(self, column: str) -> str:
        # Byte order on PostgreSQL too (its default collation sorts differently from Python).
        return column if self.dialect == "sqlite" else f'{column} COLLATE "C"'

    # -- reading API ----------------------------------------------------------------------------

    def read_windows(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        devices: Sequence[str] | None = None,
        sensors: Sequence[str] | None = None,
        with_updated_at: bool = False,
    ) -> pd.DataFrame:
        """Windows in ``[start, end)`` (all when ``None``), for the given devices and sensors (all when
        ``None``), sorted by device, sensor, ts.

        Columns: device, sensor (str), ts (datetime64[ns]), value, value_min, value_max (float64),
        value_count (int64), and updated_at (datetime64[ns]) when ``with_updated_at``.
        """
        columns = [*WINDOW_COLUMNS, "updated_at"] if with_updated_at else list(WINDOW_COLUMNS)
        if devices is not None and len(devices) == 0:
            return _windows_frame(_empty_windows(with_updated_at))
        seek = self.dialect == "sqlite" and not self.generic and (start is not None or end is not None)
        if seek and devices is None:
            devices = self.devices()  # named devices and sensors: see below
        device_groups: list[list[str] | None]
        if devices is None:
            device_groups = [None]
        else:
            unique = sorted({str(d) for d in devices})
            device_groups = [unique[i : i + _IN_CHUNK] for i in range(0, len(unique), _IN_CHUNK)]
        tables = []
        for group in device_groups:
            group_sensors = sensors
            if group_sensors is None and seek:
                # the primary key is (device, sensor, ts): with the sensors named, SQLite seeks each
                # series' time range; with the devices alone it walks each device's whole history
                group_sensors = self.sensors_of(group)
                if not group_sensors:
                    continue
            clause, params = self._windows_where(start, end, group, group_sensors)
            if self.generic:
                sql = f"SELECT {', '.join(columns)} FROM windows{clause}"
                tables.append(_sort_by_key(self._query(sql, params), ["device", "sensor", "ts"]))
            elif self.dialect == "sqlite":
                tables.append(self._read_sqlite_windows(clause, params, columns))
            else:
                order = ", ".join(self._order(c) for c in ("device", "sensor")) + ", ts"
                sql = f"SELECT {', '.join(columns)} FROM windows{clause} ORDER BY {order}"
                tables.append(self._query(sql, params))
        table = (pa.concat_tables([_normalise_windows(t) for t in tables]) if tables
                 else _empty_windows(with_updated_at))
        return _windows_frame(table)

    def sensors_of(self, devices: Sequence[str] | None = None) -> list[str]:
        """The sensors that have windows of ``devices`` (of any device when ``None``), sorted.

        On SQLite a loose index scan: one seek along the primary key per (device, sensor), not a scan
        of the windows, so it costs the same for a day of history as for a year.
        """
        if devices is not None and len(devices) == 0:
            return []
        if self.generic or self.dialect != "sqlite":
            table = self._query("SELECT DISTINCT sensor FROM windows" + (
                f" WHERE device IN ({', '.join(self.placeholder(i + 1) for i in range(len(devices)))})"
                if devices is not None else ""), list(devices or []))
            return sorted(str(v) for v in table.column("sensor").to_pylist())
        if devices is None:
            first = _LOOSE_DEVICES
            params: list[Any] = []
        else:
            first = " UNION ALL ".join("SELECT ? AS device" for _ in devices)
            params = [str(d) for d in devices]
        sql = (
            f"WITH RECURSIVE d(device) AS ({first}), "
            "s(device, sensor) AS ("
            "SELECT d.device, (SELECT min(w.sensor) FROM windows w WHERE w.device = d.device) FROM d "
            "WHERE d.device IS NOT NULL "
            "UNION ALL SELECT s.device, (SELECT min(w.sensor) FROM windows w WHERE w.device = s.device "
            "AND w.sensor > s.sensor) FROM s WHERE s.sensor IS NOT NULL) "
            "SELECT DISTINCT sensor FROM s WHERE sensor IS NOT NULL"
        )
        table = self._query(sql, params)
        return sorted(str(v) for v in table.column("sensor").to_pylist())

    def _read_sqlite_windows(self, clause: str, params: list[Any], columns: Sequence[str]) -> pa.Table:
        """On SQLite: the rows without their device and sensor, which come once per series from a second
        query in the same snapshot (a fifth fewer values to fetch); both walk the primary key in order."""
        pk = "windows INDEXED BY sqlite_autoindex_windows_1"
        series, rows = self._queries([
            (f"SELECT device, sensor, count(*) AS n FROM {pk}{clause} GROUP BY device, sensor "
             "ORDER BY device, sensor", params),
            (f"SELECT {', '.join(columns[2:])} FROM {pk}{clause} ORDER BY device, sensor, ts", params),
        ])
        counts = series.column("n").to_numpy(zero_copy_only=False).astype(np.int64)
        if int(counts.sum()) != rows.num_rows:
            raise StoreError(f"{self!r}: windows changed between two reads of one snapshot")
        take = pa.array(np.repeat(np.arange(len(counts)), counts))
        return pa.table({
            "device": series.column("device").cast(pa.string()).take(take),
            "sensor": series.column("sensor").cast(pa.string()).take(take),
            **{name: rows.column(name) for name in columns[2:]},
        })

    def _windows_where(
        self, start: datetime | None, end: datetime | None, devices: list[str] | None,
        sensors: Sequence[str] | None,
    ) -> tuple[str, list[Any]]:
        where, params = self._range_where(start, end)
        if devices is not None:
            marks = ", ".join(self.placeholder(len(params) + i + 1) for i in range(len(devices)))
            where.append(f"device IN ({marks})")
            params.extend(devices)
        if sensors is not None:
            if len(sensors) == 0:
                where.append("1 = 0")
            else:
                marks = ", ".join(self.placeholder(len(params) + i + 1) for i in range(len(sensors)))
                where.append(f"sensor IN ({marks})")
                params.extend(str(s) for s in sensors)
        return (f" WHERE {' AND '.join(where)}" if where else ""), params

    def _range_where(self, start: datetime | None, end: datetime | None) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        if start is not None:
            params.append(self.time_param(start))
            where.append(f"ts >= {self.placeholder(len(params))}")
        if end is not None:
            params.append(self.time_param(end))
            where.append(f"ts < {self.placeholder(len(params))}")
        return where, params

    def list_series(self, start: datetime | None = None, end: datetime | None = None) -> pd.DataFrame:
        """One row per (device, sensor) with windows in ``[start, end)``: device, sensor, rows,
        first_ts, last_ts; sorted by device, sensor."""
        where, params = self._range_where(start, end)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        if self.generic:  # byte order whatever the server's collation: sorted here
            table = _sort_by_key(self._query(
                "SELECT device, sensor, count(*) AS n, min(ts) AS first_ts, max(ts) AS last_ts "
                f"FROM windows{clause} GROUP BY device, sensor", params), ["device", "sensor"])
        else:
            order = ", ".join(self._order(c) for c in ("device", "sensor"))
            table = self._query(
                "SELECT device, sensor, count(*) AS n, min(ts) AS first_ts, max(ts) AS last_ts "
                f"FROM windows{clause} GROUP BY device, sensor ORDER BY {order}",
                params,
            )
        frame = pd.DataFrame({
            "device": pd.Series(table.column("device").to_pylist(), dtype="str"),
            "sensor": pd.Series(table.column("sensor").to_pylist(), dtype="str"),
            "rows": pd.Series(table.column("n").to_numpy(zero_copy_only=False), dtype="int64"),
            "first_ts": _to_datetime(table.column("first_ts")),
            "last_ts": _to_datetime(table.column("last_ts")),
        })
        return frame

    def time_range(self) -> tuple[datetime | None, datetime | None]:
        """The first and last window start in the store; ``(None, None)`` when it is empty."""
        table = self._query("SELECT min(ts) AS first_ts, max(ts) AS last_ts FROM windows")
        first, last = (_to_datetime(table.column(c)) for c in ("first_ts", "last_ts"))
        if first.isna().all():
            return None, None
        return first.iloc[0].to_pydatetime(), last.iloc[0].to_pydatetime()

    def fill_range(self, start: datetime | None, end: datetime | None,
                   window: timedelta) -> tuple[datetime, datetime] | None:
        """``[start, end)`` with a missing end taken from the store: its first window start, or its last
        window start plus ``window``; ``None`` when an end is missing and the store is empty."""
        if start is not None and end is not None:
            return start, end
        first, last = self.time_range()
        if first is None or last is None:
            return None
        return start or first, end or (last + window)

    def devices(self) -> list[str]:
        """Every device with at least one window, sorted: on SQLite and PostgreSQL by a loose index scan
        (one seek per device along the primary key), so its cost follows the devices, not the rows that
        retention keeps; ``SELECT DISTINCT`` elsewhere."""
        if self.dialect in ("sqlite", "postgresql") and not self.generic:
            table = self._query(f"WITH RECURSIVE d(device) AS ({_LOOSE_DEVICES}) "
                                "SELECT device FROM d WHERE device IS NOT NULL")
        else:
            table = self._query("SELECT DISTINCT device FROM windows")
        return sorted(str(d) for d in table.column("device").to_pylist())

    def count_windows(self) -> int:
        """How many windows the store holds."""
        table = self._query("SELECT count(*) AS n FROM windows")
        return int(table.column("n")[0].as_py())

    def quarantine_by_source(self) -> list[tuple[str, str, int]]:
        """(input, reason, rows) of the quarantine, by input then reason."""
        table = self._query("SELECT source, reason, count(*) AS n FROM quarantine GROUP BY source, reason "
                            "ORDER BY source, reason")
        return [(str(s), str(r), int(n)) for s, r, n in zip(*(table.column(c).to_pylist()
                                                               for c in ("source", "reason", "n")), strict=True)]

    def quarantine_counts(self) -> dict[str, int]:
        """Quarantined rows by reason."""
        table = self._query("SELECT reason, count(*) AS n FROM quarantine GROUP BY reason ORDER BY reason")
        return {str(r): int(n) for r, n in zip(table.column("reason").to_pylist(),
                                                table.column("n").to_pylist(), strict=True)}


def _add_quarantine_layout(conn: Any) -> None:
    text_type = "NVARCHAR(max)" if conn.dialect.name == "mssql" else "TEXT"
    keyword = "" if conn.dialect.name == "mssql" else "COLUMN "
    conn.execute(text(f"ALTER TABLE quarantine ADD {keyword}layout {text_type} NULL"))


# schema version -> the step to the next one; each runs in create_schema's transaction
_UPGRADES: dict[int, Callable[[Any], None]] = {
    1: _add_quarantine_layout,
    2: lambda conn: None,  # partial_sources is a new table: create_all adds it
}


def _upgrade(conn: Any, version: int) -> None:
    """Bring a store of an older schema version to :data:`SCHEMA_VERSION`, one recorded step at a time."""
    while version < SCHEMA_VERSION:
        _UPGRADES[version](conn)
        version += 1
        conn.execute(schema_info.insert().values(version=version, created_at=utcnow()))
    log.info("upgraded the sensor store's schema to version %d", version)


def _adbc_read(conn: Any, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[pa.Table]:
    tables = []
    with conn.cursor() as cur:
        for sql, params in statements:
            cur.execute(sql, parameters=tuple(params) if params else None)
            tables.append(cur.fetch_arrow_table())
    return tables


def _adbc_sqlite_read(path: str, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[pa.Table]:
    """Read through ADBC (Arrow, several times faster than sqlite3), read-only, in one transaction; only
    inside :func:`ingestion.engine.single_sqlite_copy` with no sqlite3 connection open on ``path``."""
    import adbc_driver_sqlite.dbapi as adbc_sqlite

    with adbc_sqlite.connect(f"file:{path}?mode=ro") as conn:
        with conn.cursor() as cur:
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        tables = _adbc_read(conn, statements)
        conn.rollback()
    return tables


def _sort_by_key(table: pa.Table, keys: list[str]) -> pa.Table:
    """Rows sorted by ``keys`` ascending; ids compare by their UTF-8 bytes (Python's order)."""
    if table.num_rows == 0:
        return table
    columns = {k: table.column(k).cast(pa.string()) if k != "ts" else _to_timestamp(table.column(k))
               for k in keys}
    order = pc.sort_indices(pa.table(columns), sort_keys=[(k, "ascending") for k in keys])
    return table.take(order)



def _empty_windows(with_updated_at: bool = False) -> pa.Table:
    table = pa.table({
        "device": pa.array([], pa.string()),
        "sensor": pa.array([], pa.string()),
        "ts": pa.array([], pa.timestamp("ns")),
        "value": pa.array([], pa.float64()),
        "value_min": pa.array([], pa.float64()),
        "value_max": pa.array([], pa.float64()),
        "value_count": pa.array([], pa.int64()),
    })
    return table.append_column("updated_at", pa.array([], pa.timestamp("ns"))) if with_updated_at else table


def _to_timestamp(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_timestamp(column.type):
        return column.cast(pa.timestamp("ns"))
    if pa.types.is_null(column.type):
        return column.cast(pa.timestamp("ns"))
    return pc.cast(column.cast(pa.string()), pa.timestamp("ns"))


def _to_datetime(column: pa.ChunkedArray) -> pd.Series:
    values = _to_timestamp(column).to_numpy()
    return pd.Series(np.asarray(values, dtype="datetime64[ns]"))


def _normalise_windows(table: pa.Table) -> pa.Table:
    """Driver results -> the documented Arrow types (SQLite returns times as text, counts as int64)."""
    return pa.table({
        "device": table.column("device").cast(pa.string()),
        "sensor": table.column("sensor").cast(pa.string()),
        "ts": _to_timestamp(table.column("ts")),
        "value": table.column("value").cast(pa.float64()),
        "value_min": table.column("value_min").cast(pa.float64()),
        "value_max": table.column("value_max").cast(pa.float64()),
        "value_count": table.column("value_count").cast(pa.int64()),
        **({"updated_at": _to_timestamp(table.column("updated_at"))} if "updated_at" in table.column_names else {}),
    })


def _windows_frame(table: pa.Table) -> pd.DataFrame:
    frame = table.to_pandas()
    for column in ("device", "sensor"):
        if str(frame[column].dtype) != "str":
            frame[column] = frame[column].astype("str")
    for column in ("ts", "updated_at"):
        if column in frame:
            frame[column] = frame[column].astype("datetime64[ns]")
    return frame
