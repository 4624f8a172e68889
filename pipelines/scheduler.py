"""Scheduled scoring: the schedule's windows, which are due, and the loop that scores each exactly once.

A schedule is a period (``every``, windows ``[start + k*P, start + (k+1)*P)``) or a cron expression
(windows between consecutive fire times, via croniter), plus a ``lag``: a window is due when
``window end + lag <= now``, so late data has time to arrive. The scheduler scores every due window
that is not done yet, oldest first, which also catches up the windows missed while it was down.

Two schedulers (two processes, two machines) may run at once: each window is taken with a lock row
in SQL (``records.schedule_store``) that the holder renews while it scores; a holder that crashed
stops renewing and its window is taken over once the lock expires. A stop request (SIGTERM in the CLI)
lets the current window finish, then the loop returns.
"""

from __future__ import annotations

import getpass
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from fleetscore.errors import ConfigError, FleetscoreError, ScheduleError
from fleetscore.ingestion.timeutil import parse_duration, utcnow
from fleetscore.pipelines.settings import Settings
from fleetscore.records.schedule_store import ScheduleStore

log = logging.getLogger(__name__)

FINAL = ("done",)


@dataclass(frozen=True)
class Schedule:
    """One version of the scoring schedule."""

    version: int
    every: str
    cron: str
    lag: timedelta
    start: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Schedule:
        """From a ``scoring_schedules`` row."""
        return cls(int(row["version"]), row["every"], row["cron"], parse_duration(row["lag"], "lag")
                   if row["lag"] not in ("", "0", "0s") else timedelta(0), pd.Timestamp(row["start"]).to_pydatetime())

    def describe(self) -> str:
        """``every 1h, lag 5m`` or ``cron '0 * * * *', lag 5m``."""
        what = f"every {self.every}" if self.every else f"cron {self.cron!r}"
        return f"{what}, lag {_fmt(self.lag)}"

    def windows(self, horizon: datetime, limit: int = 100_000) -> list[tuple[datetime, datetime]]:
        """The schedule's windows from its start whose ``end + lag <= horizon``, oldest first."""
        out: list[tuple[datetime, datetime]] = []
        last_end = horizon - self.lag
        if self.every:
            period = parse_duration(self.every, "every")
            a = self.start
            while a + period <= last_end and len(out) < limit:
                out.append((a, a + period))
                a += period
            return out
        from croniter import croniter

        it = croniter(self.cron, self.start - timedelta(seconds=1))
        a = it.get_next(datetime)
        while len(out) < limit:
            b = it.get_next(datetime)
            if b > last_end:
                break
            out.append((a, b))
            a = b
        return out


def validate_schedule(every: str | None, cron: str | None, lag: str) -> None:
    """Check the flags of ``schedule set`` (exactly one of every/cron; a valid cron; durations)."""
    if bool(every) == bool(cron):
        raise ConfigError("give exactly one of --every or --cron")
    if every:
        parse_duration(every, "--every")
    if cron:
        from croniter import croniter

        if not croniter.is_valid(cron):
            raise ConfigError(f"--cron: not a cron expression: {cron!r} (five fields, e.g. '0 * * * *')")
    if lag not in ("0", "0s"):
        parse_duration(lag, "--lag")


def set_schedule(database_url: str, *, every: str | None, cron: str | None, lag: str = "5m",
                 start: datetime | None = None, now: datetime | None = None, created_by: str = "") -> Schedule:
    """Publish a new schedule version. ``start`` (the first window) defaults to now, rounded down to
    the period (``every``) or to the previous minute (``cron``)."""
    validate_schedule(every, cron, lag)
    now = now or utcnow()
    if start is None:
        if every:
            period = pd.Timedelta(parse_duration(every, "--every"))
            start = pd.Timestamp(now).floor(period).to_pydatetime()
        else:
            start = now.replace(second=0, microsecond=0)
    store = ScheduleStore(database_url)
    version = store.set_schedule(every=every or "", cron=cron or "", lag=lag, start=start, created_at=now,
                                 created_by=created_by or _whoami())
    log.info("schedule v%d published", version)
    current = store.current()
    assert current is not None
    return Schedule.from_row(current)


def current_schedule(database_url: str) -> Schedule:
    """The schedule in force; :class:`ScheduleError` when none was set."""
    row = ScheduleStore(database_url).current()
    if row is None:
        raise ScheduleError("no scoring schedule: publish one with fleetscore schedule set --every 1h")
    return Schedule.from_row(row)


@dataclass
class SchedulerSummary:
    """What a scheduler loop did."""

    scored: list[tuple[datetime, str]] = field(default_factory=list)  # (window start, run id)
    failed: list[tuple[datetime, str]] = field(default_factory=list)  # (window start, error)
    skipped_locked: int = 0
    retrains: list[str] = field(default_factory=list)  # the retrain policy's outcomes


ScoreFn = Callable[[Settings, datetime, datetime], Any]


def run_scheduler(
    settings: Settings,
    *,
    score: ScoreFn,
    once: bool = False,
    until: datetime | None = None,
    now_fn: Callable[[], datetime] = utcnow,
    stop: threading.Event | None = None,
    holder: str | None = None,
    on_window: Callable[[str, datetime, datetime, str], None] | None = None,
    retrain: Callable[[Settings, list[str]], Any] | None = None,
) -> SchedulerSummary:
    """Score every due window of the schedule once, then (unless ``once``) wait for the next ones.

    ``score(settings, start, end)`` scores one window and returns an object with ``run_id`` and
    ``status``. ``until``: never score windows that end after it, and return once every window up to
    it is done (or given up after ``scoring.max_attempts``). ``stop`` set: return after the current
    window. ``on_window(event, start, end, detail)`` reports progress (``start``, ``done``, ``failed``).
    ``retrain(settings, only)``: after each pass, the retrain policy (``fleetscore retrain-policy set``)
    runs through it when due (:func:`pipelines.retrain_policy.run_if_due`).
    """
    stop = stop or threading.Event()
    holder = holder or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"
    store = ScheduleStore(settings.database_url)
    ttl = parse_duration(settings.scoring.lock_ttl, "scoring.lock_ttl")
    poll = parse_duration(settings.scoring.poll, "scoring.poll").total_seconds()
    summary = SchedulerSummary()
    while not stop.is_set():
        schedule = current_schedule(settings.database_url)
        now = now_fn()
        horizon = min(now, until) if until is not None else now
        pending = _pending(store, schedule, horizon, settings.scoring.max_attempts)
        for start, end in pending:
            if stop.is_set():
                break
            if not store.acquire(start, end, holder, ttl, now_fn(), settings.scoring.max_attempts):
                summary.skipped_locked += 1
                continue
            _score_locked(settings, store, score, start, end, holder, ttl, now_fn, summary, on_window)
        if retrain is not None and not stop.is_set():
            from fleetscore.pipelines.retrain_policy import run_if_due

            line = run_if_due(settings, retrain, now_fn())
            if line is not None:
                summary.retrains.append(line)
        if once or stop.is_set():
            break
        left = _pending(store, schedule, horizon, settings.scoring.max_attempts)
        if until is not None and now_fn() >= until and not left:
            break
        stop.wait(poll)
    return summary


def _pending(store: ScheduleStore, schedule: Schedule, horizon: datetime,
             max_attempts: int) -> list[tuple[datetime, datetime]]:
    states = {pd.Timestamp(row["window_start"]).to_pydatetime(): row
              for row in store.windows(since=schedule.start)}
    out = []
    for start, end in schedule.windows(horizon):
        row = states.get(start)
        if row is None or (row["status"] not in FINAL and row["attempts"] < max_attempts):
            out.append((start, end))
    return out


def _score_locked(settings: Settings, store: ScheduleStore, score: ScoreFn, start: datetime, end: datetime,
                  holder: str, ttl: timedelta, now_fn: Callable[[], datetime], summary: SchedulerSummary,
                  on_window: Callable[[str, datetime, datetime, str], None] | None) -> None:
    """Score one window while a thread renews its lock; record the outcome."""
    done = threading.Event()

    def renew() -> None:
        while not done.wait(max(ttl.total_seconds() / 3, 0.05)):
            if not store.heartbeat(start, holder, ttl, now_fn()):
                log.warning("window %s: lock lost to another scheduler", start)
                return

    beat = threading.Thread(target=renew, name=f"lock-{start:%Y%m%dT%H%M}", daemon=True)
    beat.start()
    if on_window:
        on_window("start", start, end, "")
    try:
        result = score(settings, start, end)
    except FleetscoreError as exc:
        done.set()
        beat.join()
        store.finish(start, holder, "failed", now_fn(), error=str(exc))
        summary.failed.append((start, str(exc)))
        log.warning("window %s .. %s failed: %s", start, end, exc)
        if on_window:
            on_window("failed", start, end, str(exc))
        return
    except BaseException:
        done.set()
        beat.join()
        store.release(start, holder, now_fn())  # interrupted: give the window back untouched
        raise
    done.set()
    beat.join()
    run_id = str(getattr(result, "duplicate_of", "") or getattr(result, "run_id", ""))
    if not store.finish(start, holder, "done", now_fn(), run_id=run_id):
        log.warning("window %s: finished, but its lock had been taken over", start)
    summary.scored.append((start, run_id))
    if on_window:
        on_window("done", start, end, run_id)


def _fmt(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _whoami() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return ""
