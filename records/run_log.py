"""The SQL record of scoring runs (table ``scoring_runs``), written by the scoring pipeline.

One row per run: its window, release, status (``running``, ``done``, ``failed``, ``skipped``,
``abandoned``), rows, anomalies, shards done, timings, error and the process that runs it (``owner``).
The table is created on first use. All SQL of run records lives here; callers get plain dicts back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Column, Float, Index, Integer, MetaData, String, Table, Text, func, inspect, select, text, update
from sqlalchemy.exc import SQLAlchemyError

from fleetscore.errors import StoreError, one_line
from fleetscore.ingestion.engine import ensure_tables, make_engine
from fleetscore.ingestion.schema import UtcDateTime
from fleetscore.ingestion.schema import windows as windows_table
from fleetscore.processes import owner_gone, this_process
from fleetscore.redact import redact

metadata = MetaData()

scoring_runs = Table(
    "scoring_runs",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("window_start", UtcDateTime, nullable=False),
    Column("window_end", UtcDateTime, nullable=False),
    Column("release_ref", String(64), nullable=False, default=""),
    Column("release_version", Integer, nullable=True),
    Column("status", String(16), nullable=False),
    Column("rows", Integer, nullable=False, default=0),
    Column("anomalies", Integer, nullable=False, default=0),
    Column("shards_total", Integer, nullable=False, default=0),
    Column("shards_done", Integer, nullable=False, default=0),
    Column("series_failed", Integer, nullable=False, default=0),
    Column("started_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime, nullable=True),
    Column("seconds", Float, nullable=True),
    Column("data_hash", String(64), nullable=False, default=""),
    Column("validation_id", String(64), nullable=False, default=""),
    Column("location", Text, nullable=False, default=""),
    Column("mlflow_run_id", String(64), nullable=False, default=""),
    Column("timings", Text, nullable=False, default="{}"),
    Column("error", Text, nullable=False, default=""),
    Column("table_version", Integer, nullable=True),  # the predictions table version the run committed
    Column("owner", String(160), nullable=True),  # host:pid:start of the process running it (fleetscore.processes)
)
Index("ix_scoring_runs_window", scoring_runs.c.window_start)

STATUSES = ("running", "done", "failed", "skipped", "abandoned")
_JSON_COLUMNS = ("timings",)


class RunLog:
    """Scoring run records in the database at ``database_url``."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.engine = make_engine(database_url)
        ensure_tables(database_url, metadata, "scoring_runs")
        _add_missing_columns(self.engine)

    def start(self, run_id: str, window_start: datetime, window_end: datetime, release_ref: str,
              started_at: datetime, **fields: Any) -> None:
        """Record a run as ``running`` (or refresh the record of a run that is resumed)."""
        values = {"run_id": run_id, "window_start": window_start, "window_end": window_end,
                  "release_ref": release_ref, "status": "running", "started_at": started_at,
                  "finished_at": None, "error": "", "owner": this_process(), **_encode(fields)}
        try:
            with self.engine.begin() as conn:
                exists = conn.execute(select(scoring_runs.c.run_id).where(scoring_runs.c.run_id == run_id)).first()
                if exists:
                    conn.execute(update(scoring_runs).where(scoring_runs.c.run_id == run_id).values(**values))
                else:
                    conn.execute(scoring_runs.insert().values(**values))
        except SQLAlchemyError as exc:
            raise StoreError(f"scoring_runs: cannot record run {run_id}: {one_line(exc)}") from exc

    def update(self, run_id: str, **fields: Any) -> None:
        """Set some fields of a run (status, rows, shards_done, timings, error, ...)."""
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"unknown run status {fields['status']!r}")
        try:
            with self.engine.begin() as conn:
                conn.execute(update(scoring_runs).where(scoring_runs.c.run_id == run_id).values(**_encode(fields)))
        except SQLAlchemyError as exc:
            raise StoreError(f"scoring_runs: cannot update run {run_id}: {one_line(exc)}") from exc

    def orphaned(self) -> list[dict[str, Any]]:
        """The runs recorded ``running`` whose process, on this host, is gone."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(scoring_runs).where(scoring_runs.c.status == "running")).mappings().all()
        return [_decode(row) for row in rows if owner_gone(str(row["owner"] or ""))]

    def get(self, run_id: str) -> dict[str, Any] | None:
        """One run as a dict, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(scoring_runs).where(scoring_runs.c.run_id == run_id)).mappings().first()
        return _decode(row) if row else None

    def list(self, limit: int = 20, window_start: datetime | None = None,
             status: str | None = None) -> list[dict[str, Any]]:
        """The newest runs first (optionally of one window or with one status)."""
        query = select(scoring_runs).order_by(scoring_runs.c.started_at.desc(), scoring_runs.c.run_id.desc())
        if window_start is not None:
            query = query.where(scoring_runs.c.window_start == window_start)
        if status is not None:
            query = query.where(scoring_runs.c.status == status)
        with self.engine.connect() as conn:
            rows = conn.execute(query.limit(limit)).mappings().all()
        return [_decode(row) for row in rows]


_MIGRATED: set[str] = set()


def _add_missing_columns(engine: Any) -> None:
    """Add the columns of ``scoring_runs`` that a store created by an older fleetscore lacks."""
    key = engine.url.render_as_string(hide_password=False)
    if key in _MIGRATED:
        return
    try:
        present = {c["name"] for c in inspect(engine).get_columns("scoring_runs")}
        for column in scoring_runs.columns:
            if column.name not in present:
                kind = column.type.compile(dialect=engine.dialect)
                add = "ADD" if engine.dialect.name == "mssql" else "ADD COLUMN"
                with engine.begin() as conn:
                    conn.execute(text(f"ALTER TABLE scoring_runs {add} {column.name} {kind}"))
    except SQLAlchemyError as exc:
        raise StoreError(f"scoring_runs: cannot add the new columns: {one_line(exc)}") from exc
    _MIGRATED.add(key)


def _encode(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Column values as stored: JSON columns dumped, and every text redacted (errors quote URLs)."""
    out = {}
    for k, v in fields.items():
        value = json.dumps(v, default=str) if k in _JSON_COLUMNS and not isinstance(v, str) else v
        out[k] = redact(value) if isinstance(value, str) else value
    return out


def _decode(row: Any) -> dict[str, Any]:
    out = dict(row)
    for key in _JSON_COLUMNS:
        out[key] = json.loads(out[key] or "{}")
    return out



def window_fingerprint(database_url: str, start: datetime, end: datetime,
                       devices: list[str] | None = None) -> str:
    """A hash of the stored windows in ``[start, end)`` (of ``devices``): changes when any is added,
    removed or updated (row count, sums, newest ``updated_at``). Used to detect a rerun on the same data.
    """
    t = windows_table.c
    query = select(func.count(), func.sum(t.value_count), func.sum(t.value), func.max(t.updated_at),
                   func.min(t.ts), func.max(t.ts)).where(t.ts >= start, t.ts < end)
    if devices:
        query = query.where(t.device.in_(list(devices)))
    try:
        with make_engine(database_url).connect() as conn:
            row = conn.execute(query).one()
    except SQLAlchemyError as exc:
        raise StoreError(f"windows: cannot fingerprint {start} .. {end}: {one_line(exc)}") from exc
    count, total_count, total_value, newest, first, last = row
    text = f"{count}|{total_count}|{round(float(total_value or 0.0), 6)}|{newest}|{first}|{last}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]
