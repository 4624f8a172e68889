"""The SQL tables of the operational loop: drift per series, anomaly events, dead letters, retrain policies.

- ``series_drift``: one row per (scoring run, series): the series' drift, the feature that drove it, its
  rows and anomalies; written when a run's manifest is published; read by ``fleetscore drift`` and by
  ``release --only drifted``.
- ``anomaly_events``: one row per anomaly episode of a series (merged across runs and rescores by
  ``pipelines.events``), with acknowledgement, label and the last notified severity.
- ``alert_dead_letters``: notifications a sink kept failing to deliver.
- ``retrain_policies``: the retraining policy the scheduler runs (``fleetscore retrain-policy set``).

Tables are created on first use. All SQL of these tables lives here; callers get plain dicts back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from fleetscore.errors import StoreError
from fleetscore.ingestion.engine import ensure_tables

metadata = MetaData()

series_drift = Table(
    "series_drift", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), nullable=False),
    Column("release_version", Integer, nullable=False),
    Column("window_start", DateTime, nullable=False),
    Column("window_end", DateTime, nullable=False),
    Column("recorded_at", DateTime, nullable=False),
    Column("device", String(128), nullable=False),
    Column("sensor", String(128), nullable=False),
    Column("drift", Float, nullable=True),
    Column("feature", String(64), nullable=False, default=""),
    Column("rows", Integer, nullable=False),
    Column("anomalies", Integer, nullable=False),
    Column("model_scope", String(16), nullable=False, default="series"),
    Index("ix_series_drift_recorded", "recorded_at"),
    Index("ix_series_drift_series", "device", "sensor"),
)

anomaly_events = Table(
    "anomaly_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("device", String(128), nullable=False),
    Column("sensor", String(128), nullable=False),
    Column("start_ts", DateTime, nullable=False),
    Column("end_ts", DateTime, nullable=False),
    Column("windows", Integer, nullable=False),
    Column("peak_score", Float, nullable=False),
    Column("peak_ts", DateTime, nullable=False),
    Column("reason", String(256), nullable=False, default=""),
    Column("runs", Text, nullable=False, default="[]"),  # JSON list of run ids that saw it
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("acked_at", DateTime, nullable=True),
    Column("label", String(16), nullable=True),  # normal | anomaly
    Column("notified_peak", Float, nullable=True),  # peak score of the last notification
    Index("ix_anomaly_events_series", "device", "sensor", "start_ts"),
)

dead_letters = Table(
    "alert_dead_letters", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", Integer, nullable=False),
    Column("sink", String(64), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("payload", Text, nullable=False),
    Column("error", Text, nullable=False),
)

retrain_policies = Table(
    "retrain_policies", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("every", String(32), nullable=False),
    Column("only", String(128), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("last_run_at", DateTime, nullable=True),
    Column("last_outcome", Text, nullable=True),
)

EVENT_COLUMNS = ("id", "device", "sensor", "start_ts", "end_ts", "windows", "peak_score", "peak_ts", "reason",
                 "runs", "created_at", "updated_at", "acked_at", "label", "notified_peak")


class OpsStore:
    """The operational tables in the database at ``database_url``."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def _engine(self) -> Any:
        return ensure_tables(self.database_url, metadata, "operations tables")

    def _run(self, what: str, fn: Any) -> Any:
        try:
            engine = self._engine()
            with engine.begin() as conn:
                return fn(conn)
        except SQLAlchemyError as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise StoreError(f"database {engine.url.render_as_string(hide_password=True)}: {what}: {first}") from exc

    # -- drift -------------------------------------------------------------------------------------

    def record_drift(self, run_id: str, release_version: int, window_start: datetime, window_end: datetime,
                     recorded_at: datetime, rows: Iterable[Mapping[str, Any]]) -> int:
        """Store one run's drift rows (device, sensor, drift, feature, rows, anomalies, model_scope); a
        rerun of the same run id replaces its rows. Returns the rows written."""
        values = [{"run_id": run_id, "release_version": release_version, "window_start": window_start,
                   "window_end": window_end, "recorded_at": recorded_at, "device": str(r["device"]),
                   "sensor": str(r["sensor"]), "drift": None if r["drift"] != r["drift"] else float(r["drift"]),
                   "feature": str(r.get("feature") or ""), "rows": int(r["rows"]),
                   "anomalies": int(r["anomalies"]), "model_scope": str(r.get("model_scope") or "series")}
                  for r in rows]

        def write(conn: Any) -> int:
            conn.execute(delete(series_drift).where(series_drift.c.run_id == run_id))
            if values:
                conn.execute(insert(series_drift), values)
            return len(values)

        return int(self._run("cannot record drift", write))

    def latest_drift(self, since: datetime | None = None, release_version: int | None = None) -> list[dict[str, Any]]:
        """Per series, its most recent drift row (recorded at or after ``since``; of ``release_version``)."""
        conds = []
        if since is not None:
            conds.append(series_drift.c.recorded_at >= since)
        if release_version is not None:
            conds.append(series_drift.c.release_version == release_version)
        latest = select(func.max(series_drift.c.id).label("id")).group_by(series_drift.c.device,
                                                                          series_drift.c.sensor)
        if conds:
            latest = latest.where(and_(*conds))
        query = select(series_drift).where(series_drift.c.id.in_(latest.scalar_subquery())).order_by(
            series_drift.c.device, series_drift.c.sensor)
        return [dict(r) for r in self._run("cannot read drift", lambda c: c.execute(query).mappings().all())]

    def drift_of_run(self, run_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """One run's drift rows, most drifted first."""
        query = select(series_drift).where(series_drift.c.run_id == run_id, series_drift.c.drift.is_not(None)) \
            .order_by(series_drift.c.drift.desc()).limit(limit)
        return [dict(r) for r in self._run("cannot read drift", lambda c: c.execute(query).mappings().all())]

    # -- events ----------------------------------------------------------------------------------------

    def events_of(self, series: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        """Every event of these series (for merging a run's episodes)."""
        if not series:
            return []
        devices = sorted({d for d, _ in series})
        wanted = set(series)
        rows: list[dict[str, Any]] = []
        for i in range(0, len(devices), 500):
            query = select(anomaly_events).where(anomaly_events.c.device.in_(devices[i:i + 500]))
            found = self._run("cannot read events", lambda c, q=query: c.execute(q).mappings().all())
            rows += [_event(r) for r in found]
        return [r for r in rows if (r["device"], r["sensor"]) in wanted]

    def save_events(self, new: Sequence[Mapping[str, Any]], changed: Sequence[Mapping[str, Any]]) -> list[int]:
        """Insert ``new`` events and update ``changed`` ones (by id) in one transaction; the new ids."""
        def write(conn: Any) -> list[int]:
            ids: list[int] = []
            if new:  # one statement for all rows, ids in the rows' order (insertmanyvalues)
                returning = insert(anomaly_events).returning(anomaly_events.c.id, sort_by_parameter_order=True)
                ids = [int(r[0]) for r in conn.execute(returning, [_encode_event(row) for row in new])]
            if changed:  # one executemany for all updated rows
                # acked_at and label belong to `events ack` and `events label`: never written back here
                fields = [c for c in EVENT_COLUMNS if c not in ("id", "created_at", "acked_at", "label")]
                statement = update(anomaly_events).where(anomaly_events.c.id == bindparam("event_id")).values(
                    **{c: bindparam(c) for c in fields})
                rows = [{**{c: _encode_event(row).get(c) for c in fields}, "event_id": row["id"]} for row in changed]
                conn.execute(statement, rows)
            return ids

        result: list[int] = self._run("cannot save events", write)
        return result

    def list_events(self, open_only: bool = False, device: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Events, newest first (``open_only``: not acknowledged)."""
        query = select(anomaly_events)
        if open_only:
            query = query.where(anomaly_events.c.acked_at.is_(None))
        if device is not None:
            query = query.where(anomaly_events.c.device == device)
        query = query.order_by(anomaly_events.c.start_ts.desc(), anomaly_events.c.id.desc()).limit(limit)
        return [_event(r) for r in self._run("cannot read events", lambda c: c.execute(query).mappings().all())]

    def get_event(self, event_id: int) -> dict[str, Any] | None:
        """One event by id, or None."""
        query = select(anomaly_events).where(anomaly_events.c.id == event_id)
        row = self._run("cannot read events", lambda c: c.execute(query).mappings().first())
        return _event(row) if row is not None else None

    def set_event(self, event_id: int, **fields: Any) -> bool:
        """Update fields of one event (``acked_at``, ``label``, ``notified_peak``); False when no such id."""
        query = update(anomaly_events).where(anomaly_events.c.id == event_id).values(**fields)
        return bool(self._run("cannot update event", lambda c: c.execute(query).rowcount))

    def labelled_events(self, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """Labelled events overlapping ``[start, end)`` (for the evaluation gate)."""
        query = select(anomaly_events).where(and_(anomaly_events.c.label.is_not(None),
                                                  anomaly_events.c.end_ts >= start, anomaly_events.c.start_ts < end))
        return [_event(r) for r in self._run("cannot read events", lambda c: c.execute(query).mappings().all())]

    # -- dead letters ------------------------------------------------------------------------------

    def dead_letter(self, event_id: int, sink: str, created_at: datetime, payload: str, error: str) -> None:
        """Record a notification that could not be delivered."""
        values = {"event_id": event_id, "sink": sink, "created_at": created_at, "payload": payload, "error": error}
        self._run("cannot record a dead letter", lambda c: c.execute(insert(dead_letters).values(**values)))

    def dead_letters(self) -> list[dict[str, Any]]:
        """Every dead letter, oldest first."""
        query = select(dead_letters).order_by(dead_letters.c.id)
        return [dict(r) for r in self._run("cannot read dead letters", lambda c: c.execute(query).mappings().all())]

    # -- retrain policy ------------------------------------------------------------------------------

    def set_policy(self, every: str, only: str, created_at: datetime) -> None:
        """Store the retrain policy (the latest one is in force)."""
        values = {"every": every, "only": only, "created_at": created_at}
        self._run("cannot store the retrain policy", lambda c: c.execute(insert(retrain_policies).values(**values)))

    def policy(self) -> dict[str, Any] | None:
        """The retrain policy in force, or None."""
        query = select(retrain_policies).order_by(retrain_policies.c.id.desc()).limit(1)
        row = self._run("cannot read the retrain policy", lambda c: c.execute(query).mappings().first())
        return dict(row) if row is not None else None

    def policy_ran(self, policy_id: int, at: datetime, outcome: str) -> None:
        """Record when the policy last ran and what came of it."""
        query = update(retrain_policies).where(retrain_policies.c.id == policy_id).values(last_run_at=at,
                                                                                        last_outcome=outcome)
        self._run("cannot update the retrain policy", lambda c: c.execute(query))


def _encode_event(row: Mapping[str, Any]) -> dict[str, Any]:
    values = {k: row[k] for k in EVENT_COLUMNS if k in row and k != "id"}
    if "runs" in values:
        values["runs"] = json.dumps(list(values["runs"]))
    return values


def _event(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["runs"] = json.loads(out.get("runs") or "[]")
    return out
