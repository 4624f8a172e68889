"""The SQL side of scheduled scoring: versioned schedules and per-window locks.

- ``scoring_schedules``: every ``fleetscore schedule set`` adds a version (period or cron, lag, first
  window); the newest version is the schedule in force. Nothing is overwritten, so a release can be
  rolled back together with the schedule it published.
- ``scoring_windows``: one row per scheduled window: its state (``running``, ``done``, ``failed``), the
  holder of its lock, when that lock expires, the run that scored it and how many attempts were made.
  A window is taken with a single conditional UPDATE (or the INSERT of its row), so two schedulers never
  score it at once; a holder that crashed stops renewing and its lock is taken over after it expires.

Tables are created on first use. Callers get plain dicts back.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from fleetscore.errors import StoreError, one_line
from fleetscore.ingestion.engine import ensure_tables, make_engine
from fleetscore.ingestion.schema import UtcDateTime

metadata = MetaData()

scoring_schedules = Table(
    "scoring_schedules",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=True),
    Column("every", String(32), nullable=False, default=""),
    Column("cron", String(128), nullable=False, default=""),
    Column("lag", String(32), nullable=False, default="0s"),
    Column("start", UtcDateTime, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("created_by", String(128), nullable=False, default=""),
    Column("note", Text, nullable=False, default=""),
)

scoring_windows = Table(
    "scoring_windows",
    metadata,
    Column("window_start", UtcDateTime, primary_key=True),
    Column("window_end", UtcDateTime, nullable=False),
    Column("status", String(16), nullable=False),
    Column("holder", String(128), nullable=False, default=""),
    Column("locked_until", UtcDateTime, nullable=True),
    Column("run_id", String(64), nullable=False, default=""),
    Column("attempts", Integer, nullable=False, default=0),
    Column("error", Text, nullable=False, default=""),
    Column("updated_at", UtcDateTime, nullable=False),
)


class ScheduleStore:
    """Schedules and window locks in the database at ``database_url``."""

    def __init__(self, database_url: str) -> None:
        self.engine = make_engine(database_url)
        ensure_tables(database_url, metadata, "scheduler tables")

    # -- schedules -------------------------------------------------------------------------------

    def set_schedule(self, *, every: str, cron: str, lag: str, start: datetime, created_at: datetime,
                     created_by: str = "", note: str = "") -> int:
        """Add a schedule version (the new one in force) and return its version number."""
        try:
            with self.engine.begin() as conn:
                result = conn.execute(insert(scoring_schedules).values(
                    every=every, cron=cron, lag=lag, start=start, created_at=created_at,
                    created_by=created_by, note=note))
                key = result.inserted_primary_key
        except SQLAlchemyError as exc:
            raise StoreError(f"scoring_schedules: cannot store the schedule: {one_line(exc)}") from exc
        return int(key[0]) if key else 0

    def current(self) -> dict[str, Any] | None:
        """The schedule in force (the newest version), or None when none was ever set."""
        history = self.history(limit=1)
        return history[0] if history else None

    def history(self, limit: int = 20) -> list[dict[str, Any]]:
        """Schedule versions, newest first."""
        query = select(scoring_schedules).order_by(scoring_schedules.c.version.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings().all()]

    # -- window locks ----------------------------------------------------------------------------

    def acquire(self, window_start: datetime, window_end: datetime, holder: str, ttl: timedelta,
                now: datetime, max_attempts: int) -> bool:
        """Take the lock of a window that is not done, not held by a live holder and not given up.

        True when this holder now owns it (its status becomes ``running``, attempts + 1).
        """
        values = {"status": "running", "holder": holder, "locked_until": now + ttl, "updated_at": now,
                  "error": ""}
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(scoring_windows).values(
                    window_start=window_start, window_end=window_end, attempts=1, run_id="", **values))
            return True
        except IntegrityError:
            pass  # the window has a row: try to take it over below
        except SQLAlchemyError as exc:
            raise StoreError(f"scoring_windows: cannot lock window {window_start}: {one_line(exc)}") from exc
        w = scoring_windows.c
        takeable = and_(
            w.window_start == window_start,
            w.status != "done",
            w.attempts < max_attempts,
            or_(w.status == "failed", w.locked_until.is_(None), w.locked_until < now, w.holder == holder),
        )
        try:
            with self.engine.begin() as conn:
                result = conn.execute(update(scoring_windows).where(takeable).values(
                    attempts=w.attempts + 1, **values))
        except SQLAlchemyError as exc:
            raise StoreError(f"scoring_windows: cannot lock window {window_start}: {one_line(exc)}") from exc
        return bool(result.rowcount == 1)

    def heartbeat(self, window_start: datetime, holder: str, ttl: timedelta, now: datetime) -> bool:
        """Extend a held lock; False when this holder no longer holds it (it expired and was taken)."""
        w = scoring_windows.c
        with self.engine.begin() as conn:
            result = conn.execute(update(scoring_windows).where(and_(
                w.window_start == window_start, w.holder == holder, w.status == "running",
            )).values(locked_until=now + ttl, updated_at=now))
        return bool(result.rowcount == 1)

    def finish(self, window_start: datetime, holder: str, status: str, now: datetime, run_id: str = "",
               error: str = "") -> bool:
        """Record the outcome (``done`` or ``failed``) and release the lock; False if it was lost."""
        if status not in ("done", "failed"):
            raise ValueError(f"unknown window status {status!r}")
        w = scoring_windows.c
        with self.engine.begin() as conn:
            result = conn.execute(update(scoring_windows).where(and_(
                w.window_start == window_start, w.holder == holder,
            )).values(status=status, run_id=run_id, error=error[:2000], locked_until=None, updated_at=now))
        return bool(result.rowcount == 1)

    def release(self, window_start: datetime, holder: str, now: datetime) -> None:
        """Give a window back without an outcome (clean stop): it is due again, this try not counted."""
        w = scoring_windows.c
        with self.engine.begin() as conn:
            conn.execute(update(scoring_windows).where(and_(
                w.window_start == window_start, w.holder == holder, w.status == "running",
            )).values(status="failed", attempts=w.attempts - 1, locked_until=None, holder="",
                      error="abandoned on stop", updated_at=now))

    def windows(self, since: datetime | None = None, until: datetime | None = None) -> list[dict[str, Any]]:
        """Window rows with ``since <= window_start < until``, oldest first."""
        w = scoring_windows.c
        query = select(scoring_windows).order_by(w.window_start)
        if since is not None:
            query = query.where(w.window_start >= since)
        if until is not None:
            query = query.where(w.window_start < until)
        with self.engine.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings().all()]

