"""Anomaly events: consecutive anomalous windows of a series merged into one event, kept across runs.

A scoring run's shards report their anomalous windows; :func:`episodes` cuts each series' windows into
episodes (windows at most ``[alerts] event_gap`` apart); :func:`merge_episodes` folds them into the
``anomaly_events`` table: an episode that overlaps an event of its series, or lies within the gap of
it, updates that event (its range, window count, peak, the runs that saw it), so two overlapping runs
and a rescore of a window give one event per episode, never two. New events, and events whose peak
score got ``escalate_factor`` times as negative as the one last notified, are notified through the
alert sinks (:mod:`pipelines.alerts`); acknowledged events never are.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from fleetscore.ingestion.ops_store import OpsStore
from fleetscore.ingestion.timeutil import parse_duration, utcnow
from fleetscore.pipelines.alerts import AlertSink, deliver
from fleetscore.pipelines.alerts_config import AlertsConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Episode:
    """Consecutive anomalous windows of one series in one run."""

    device: str
    sensor: str
    start: datetime
    end: datetime  # the last anomalous window's start
    windows: tuple[datetime, ...]
    peak_score: float
    peak_ts: datetime
    reason: str


@dataclass(frozen=True)
class EventsOutcome:
    """What a run did to the events table."""

    new: int
    updated: int
    notified: int
    dead_lettered: int

    def as_dict(self) -> dict[str, int]:
        """Plain data for the manifest."""
        return {"new": self.new, "updated": self.updated, "notified": self.notified,
                "dead_lettered": self.dead_lettered}


def episodes(anomalous: Sequence[Sequence[Any]], gap: timedelta) -> list[Episode]:
    """Episodes of rows ``[device, sensor, ts (ISO), score, reason]``: per series, windows at most ``gap``
    apart (start to start) belong to one episode."""
    if not anomalous:
        return []
    frame = pd.DataFrame(list(anomalous), columns=["device", "sensor", "ts", "score", "reason"])
    frame["ts"] = pd.to_datetime(frame["ts"])
    frame = frame.sort_values(["device", "sensor", "ts"], kind="stable").reset_index(drop=True)
    same = (frame["device"] == frame["device"].shift()) & (frame["sensor"] == frame["sensor"].shift())
    cut = (~same | ((frame["ts"] - frame["ts"].shift()) > gap)).to_numpy()
    bounds = np.append(np.flatnonzero(cut), len(frame))
    group = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
    peak = frame.assign(group=group).groupby("group", sort=True)["score"].idxmin().to_numpy()
    ts = np.array([stamp.to_pydatetime() for stamp in frame["ts"]], dtype=object)
    devices, sensors = frame["device"].astype(str).to_numpy(), frame["sensor"].astype(str).to_numpy()
    scores, reasons = frame["score"].to_numpy(dtype=float), frame["reason"].astype(str).to_numpy()
    return [Episode(device=devices[a], sensor=sensors[a], start=ts[a], end=ts[b - 1], windows=tuple(ts[a:b]),
                    peak_score=float(scores[p]), peak_ts=ts[p], reason=reasons[p])
            for a, b, p in zip(bounds[:-1], bounds[1:], peak, strict=True)]


def merge_episodes(existing: list[dict[str, Any]], found: Sequence[Episode], run_id: str, gap: timedelta,
                   escalate_factor: float, now: datetime) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                                    list[tuple[dict[str, Any], str]]]:
    """Fold ``found`` into ``existing`` events (dicts of the table; updated in place). Returns the new
    events, the changed existing ones, and the notifications due as ``(event, "new" | "escalated")``."""
    by_series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for event in existing:
        by_series.setdefault((event["device"], event["sensor"]), []).append(event)
    new: list[dict[str, Any]] = []
    changed: dict[int, dict[str, Any]] = {}
    for ep in found:
        events = by_series.setdefault((ep.device, ep.sensor), [])
        match = next((e for e in events if ep.start <= e["end_ts"] + gap and ep.end >= e["start_ts"] - gap), None)
        if match is None:
            event = {"device": ep.device, "sensor": ep.sensor, "start_ts": ep.start, "end_ts": ep.end,
                     "windows": len(ep.windows), "peak_score": ep.peak_score, "peak_ts": ep.peak_ts,
                     "reason": ep.reason, "runs": [run_id], "created_at": now, "updated_at": now,
                     "acked_at": None, "label": None, "notified_peak": None}
            events.append(event)
            new.append(event)
            continue
        before = (match["start_ts"], match["end_ts"], match["windows"], match["peak_score"], list(match["runs"]))
        added = sum(1 for t in ep.windows if t < match["start_ts"] or t > match["end_ts"])
        match["windows"] += added
        match["start_ts"], match["end_ts"] = min(match["start_ts"], ep.start), max(match["end_ts"], ep.end)
        if ep.peak_score < match["peak_score"]:
            match["peak_score"], match["peak_ts"], match["reason"] = ep.peak_score, ep.peak_ts, ep.reason
        if run_id not in match["runs"]:
            match["runs"] = [*match["runs"], run_id]
        if (match["start_ts"], match["end_ts"], match["windows"], match["peak_score"], match["runs"]) != before:
            match["updated_at"] = now
            if "id" in match:
                changed[match["id"]] = match
    notify: list[tuple[dict[str, Any], str]] = [(e, "new") for e in new]
    for event in [*changed.values()]:
        if event["acked_at"] is not None:
            continue
        last = event["notified_peak"]
        if last is None or (last < 0 and event["peak_score"] <= escalate_factor * last):
            notify.append((event, "new" if last is None else "escalated"))
    return new, list(changed.values()), notify


def payload(event: dict[str, Any], kind: str) -> dict[str, Any]:
    """The JSON body an alert sink sends for an event."""
    return {
        "kind": kind, "event_id": event["id"], "device": event["device"], "sensor": event["sensor"],
        "start": _iso(event["start_ts"]), "end": _iso(event["end_ts"]), "windows": int(event["windows"]),
        "peak_score": float(event["peak_score"]), "peak_ts": _iso(event["peak_ts"]), "reason": event["reason"],
        "runs": list(event["runs"]), "label": event.get("label"),
    }


def _iso(ts: Any) -> str:
    return pd.Timestamp(ts).isoformat()


def record_events(database_url: str, config: AlertsConfig, run_id: str, anomalous: Sequence[Sequence[Any]],
                  sinks: Sequence[AlertSink], now: datetime | None = None) -> EventsOutcome:
    """Turn a run's anomalous windows into events in SQL and notify the sinks of new or escalated ones.

    A sink that keeps failing leaves a dead letter (``alert_dead_letters``); the run goes on."""
    now = now or utcnow()
    gap = parse_duration(config.event_gap, "alerts.event_gap")
    found = episodes(anomalous, gap)
    if not found:
        return EventsOutcome(0, 0, 0, 0)
    store = OpsStore(database_url)
    existing = store.events_of(sorted({(e.device, e.sensor) for e in found}))
    new, changed, notify = merge_episodes(existing, found, run_id, gap, config.escalate_factor, now)
    for event, _ in notify:  # saved with the events: one transaction, whether or not a sink is configured
        event["notified_peak"] = event["peak_score"]
    changed_ids = {e["id"] for e in changed}
    changed += [e for e, _ in notify if "id" in e and e["id"] not in changed_ids]
    ids = store.save_events(new, changed)
    for event, event_id in zip(new, ids, strict=True):
        event["id"] = event_id
    notified = dead = 0
    for event, kind in notify if sinks else []:
        body = payload(event, kind)
        for sink in sinks:
            error = deliver(sink, body)
            if error is None:
                notified += 1
            else:
                dead += 1
                log.warning("event %d: %s sink failed: %s (dead-lettered)", event["id"], sink.name, error)
                store.dead_letter(event["id"], sink.name, utcnow(), json.dumps(body, sort_keys=True), error)
    return EventsOutcome(len(new), len(changed), notified, dead)


def list_events(database_url: str, open_only: bool = False, device: str | None = None,
                limit: int = 100) -> list[dict[str, Any]]:
    """Events, newest first."""
    return OpsStore(database_url).list_events(open_only, device, limit)


def acknowledge(database_url: str, event_id: int, now: datetime | None = None) -> dict[str, Any]:
    """Acknowledge an event: it is notified no more. Returns the event."""
    from fleetscore.errors import EventNotFound

    store = OpsStore(database_url)
    if not store.set_event(event_id, acked_at=now or utcnow()):
        raise EventNotFound(f"no anomaly event {event_id} (fleetscore events list shows them)")
    event = store.get_event(event_id)
    assert event is not None
    return event


def label(database_url: str, event_id: int, value: str) -> dict[str, Any]:
    """Label an event ``normal`` (a false alarm) or ``anomaly``; the evaluation gate uses the labels."""
    from fleetscore.errors import EventNotFound

    if value not in ("normal", "anomaly"):
        raise ValueError(f"label must be normal or anomaly, got {value!r}")
    store = OpsStore(database_url)
    if not store.set_event(event_id, label=value):
        raise EventNotFound(f"no anomaly event {event_id} (fleetscore events list shows them)")
    event = store.get_event(event_id)
    assert event is not None
    return event
