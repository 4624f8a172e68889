"""The SQL schema of fleetscore, created and versioned by the tool (SQLAlchemy Core).

Only the ``ingestion`` package talks to SQL (this module, ``store`` and the bookkeeping modules); the
other layers call their functions and get plain data back.

Timestamps are naive UTC. A window is labelled by its start: the window ``ts`` holds readings with
``ts <= t < ts + window``.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import mssql

SCHEMA_VERSION = 3  # 2: quarantine.layout; 3: partial_sources

# A time column: DATETIME2(6) on SQL Server (microseconds, like Python; SQLAlchemy's generic DateTime
# is SQL Server's DATETIME there, rounded to 1/300 s); unchanged on SQLite and PostgreSQL.
UtcDateTime = DateTime().with_variant(mssql.DATETIME2(precision=6), "mssql")

metadata = MetaData()

# One row per (device, sensor, window start): the aggregate of the readings in that window.
# The primary key (device, sensor, ts) serves per-device and per-series reads in order; ix_windows_ts
# serves fleet-wide time-range reads.
windows = Table(
    "windows",
    metadata,
    Column("device", String(64), primary_key=True),
    Column("sensor", String(64), primary_key=True),
    Column("ts", UtcDateTime, primary_key=True),
    Column("value", Float, nullable=False),  # mean of the readings
    Column("value_min", Float, nullable=False),
    Column("value_max", Float, nullable=False),
    Column("value_count", Integer, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),  # the ingest that last wrote the window
)
Index("ix_windows_ts", windows.c.ts)

# Rows that could not be ingested, with where they came from and why.
quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", Text, nullable=False),
    Column("line", Integer, nullable=False),
    Column("raw", Text, nullable=False),
    Column("reason", String(64), nullable=False),
    Column("detail", Text, nullable=False, default=""),
    Column("ingested_at", UtcDateTime, nullable=False),
    # how to read ``raw`` again (``fleetscore quarantine replay``): "jsonl", or "csv:" and the input's columns
    # in file order; NULL where no text was kept and on rows of schema 1
    Column("layout", Text, nullable=True),
)
Index("ix_quarantine_reason", quarantine.c.reason)

# Every input that was ingested, by content hash, so that re-ingesting the same file adds nothing.
# Written in the same transaction as the file's windows and quarantined rows.
sources = Table(
    "sources",
    metadata,
    Column("content_hash", String(64), primary_key=True),
    Column("name", Text, nullable=False),
    Column("rows", Integer, nullable=False),
    Column("ingested_at", UtcDateTime, nullable=False),
    Column("window_seconds", Float, nullable=False, default=0.0),
    Column("windows_written", Integer, nullable=False, default=0),
    Column("late_updates", Integer, nullable=False, default=0),
    Column("quarantined", Integer, nullable=False, default=0),
)

# An input ingested in several commits (``[ingest] commit_every``) while it is under way: how far its
# committed part reaches, so that a rerun after a crash resumes after that line and counts nothing twice.
# Written in the same transaction as each committed part; removed in the one that records the input in
# ``sources``. Times are ISO 8601 text (the stamp is compared to ``windows.updated_at`` as written).
partial_sources = Table(
    "partial_sources",
    metadata,
    Column("content_hash", String(64), primary_key=True),
    Column("name", Text, nullable=False),
    Column("owner", String(255), nullable=False),  # host:pid:start of the ingest (fleetscore.processes)
    Column("lines_done", BigInteger, nullable=False),  # every line up to this one is committed
    Column("rows", BigInteger, nullable=False),
    Column("windows_written", BigInteger, nullable=False),
    Column("late_updates", BigInteger, nullable=False),
    Column("quarantined", Text, nullable=False),  # JSON: reason -> rows
    Column("stamp", String(64), nullable=False),  # the ingest's ``updated_at`` on the windows it writes
    Column("heartbeat", String(64), nullable=False),  # when the last part was committed (UTC)
    # sha256 of the input's blocks up to lines_done: a changed file (same name, new hash) is resumed
    # only when its first lines are the ones committed
    Column("prefix_sha256", String(64), nullable=False, default=""),
)

# Event Hubs checkpoints: the last event stored per partition, written in the same transaction as the
# windows that event fed, so that a restart neither loses nor double-counts events.
eventhub_checkpoints = Table(
    "eventhub_checkpoints",
    metadata,
    Column("namespace", String(255), primary_key=True),
    Column("eventhub", String(255), primary_key=True),
    Column("consumer_group", String(255), primary_key=True),
    Column("partition_id", String(64), primary_key=True),
    Column("offset", String(64), nullable=False),
    Column("sequence_number", BigInteger, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

# Schema version, written when the tool creates the schema and checked on every connection.
schema_info = Table(
    "fleetscore_schema",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),  # no IDENTITY on SQL Server
    Column("created_at", UtcDateTime, nullable=False),
)
