"""Schedules, due windows, catch-up, retries, the window lock (in process and across processes), stop."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from fleetscore.errors import ConfigError, ScheduleError, ScoringError
from fleetscore.pipelines.scheduler import Schedule, current_schedule, run_scheduler, set_schedule
from fleetscore.pipelines.settings import Settings, load_settings
from fleetscore.records.schedule_store import ScheduleStore

T0 = datetime(2018, 8, 28, 23, 0)


@dataclass
class Result:
    run_id: str
    status: str = "done"


def _settings(tmp_path: Path, **more: object) -> Settings:
    return load_settings({"home": str(tmp_path), "scoring.poll": "0.05s", **more}, environ={})


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_every_windows_are_due_after_their_end_plus_lag() -> None:
    schedule = Schedule(1, "1h", "", timedelta(minutes=5), T0)
    assert schedule.windows(T0 + timedelta(hours=1, minutes=4)) == []
    assert schedule.windows(T0 + timedelta(hours=2, minutes=5)) == [
        (T0, T0 + timedelta(hours=1)), (T0 + timedelta(hours=1), T0 + timedelta(hours=2))]


def test_cron_windows_lie_between_fire_times() -> None:
    schedule = Schedule(1, "", "*/15 * * * *", timedelta(0), T0 + timedelta(minutes=7))
    assert schedule.windows(T0 + timedelta(minutes=46)) == [
        (T0 + timedelta(minutes=15), T0 + timedelta(minutes=30)),
        (T0 + timedelta(minutes=30), T0 + timedelta(minutes=45))]


def test_set_schedule_is_versioned_and_validated(tmp_path: Path) -> None:
    url = _settings(tmp_path).database_url
    with pytest.raises(ScheduleError, match=r"^no scoring schedule: publish one with fleetscore schedule set"):
        current_schedule(url)
    first = set_schedule(url, every="1h", cron=None, lag="5m", now=datetime(2018, 8, 29, 1, 23))
    assert (first.version, first.start, first.describe()) == (1, datetime(2018, 8, 29, 1, 0), "every 1h, lag 5m")
    second = set_schedule(url, every=None, cron="0 */2 * * *", lag="10m", start=T0)
    assert current_schedule(url) == second and second.version == 2
    assert [row["version"] for row in ScheduleStore(url).history()] == [2, 1]
    with pytest.raises(ConfigError, match=r"^give exactly one of --every or --cron$"):
        set_schedule(url, every="1h", cron="* * * * *")
    with pytest.raises(ConfigError, match=r"^--cron: not a cron expression: 'every hour'"):
        set_schedule(url, every=None, cron="every hour")


def test_catch_up_after_downtime_scores_each_window_once_in_order(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    set_schedule(settings.database_url, every="1h", cron=None, lag="5m", start=T0)
    clock = Clock(T0 + timedelta(hours=3, minutes=10))
    scored: list[datetime] = []

    def score(_s: Settings, start: datetime, end: datetime) -> Result:
        assert end - start == timedelta(hours=1)
        scored.append(start)
        return Result(f"run-{start:%H}")

    first = run_scheduler(settings, score=score, once=True, now_fn=clock)
    assert scored == [T0 + timedelta(hours=h) for h in range(3)]
    assert [s for s, _ in first.scored] == scored
    run_scheduler(settings, score=score, once=True, now_fn=clock)  # nothing new is due
    assert len(scored) == 3
    clock.now += timedelta(hours=2)  # the scheduler was down for two periods
    run_scheduler(settings, score=score, once=True, now_fn=clock)
    assert scored[3:] == [T0 + timedelta(hours=3), T0 + timedelta(hours=4)]
    rows = ScheduleStore(settings.database_url).windows()
    assert [(r["status"], r["run_id"], r["attempts"]) for r in rows] == [
        ("done", f"run-{(T0 + timedelta(hours=h)):%H}", 1) for h in range(5)]


def test_failed_window_is_retried_then_given_up(tmp_path: Path) -> None:
    settings = _settings(tmp_path, **{"scoring.max_attempts": 2})
    set_schedule(settings.database_url, every="1h", cron=None, lag="0s", start=T0)
    clock = Clock(T0 + timedelta(hours=1))
    calls: list[datetime] = []

    def score(_s: Settings, start: datetime, _end: datetime) -> Result:
        calls.append(start)
        raise ScoringError("validation failed: freshness")

    for _ in range(3):
        summary = run_scheduler(settings, score=score, once=True, now_fn=clock)
    assert calls == [T0, T0]
    assert summary.failed == []
    row = ScheduleStore(settings.database_url).windows()[0]
    assert (row["status"], row["attempts"], row["error"]) == ("failed", 2, "validation failed: freshness")


def test_lock_is_exclusive_and_taken_over_after_expiry(tmp_path: Path) -> None:
    store = ScheduleStore(_settings(tmp_path).database_url)
    ttl, end = timedelta(minutes=10), T0 + timedelta(hours=1)
    assert store.acquire(T0, end, "a", ttl, T0, max_attempts=3)
    assert not store.acquire(T0, end, "b", ttl, T0 + timedelta(minutes=5), max_attempts=3)
    assert store.heartbeat(T0, "a", ttl, T0 + timedelta(minutes=8))  # a renews: lock until 18 min
    assert not store.acquire(T0, end, "b", ttl, T0 + timedelta(minutes=15), max_attempts=3)
    # a crashes (no more heartbeats); after expiry b takes over
    assert store.acquire(T0, end, "b", ttl, T0 + timedelta(minutes=19), max_attempts=3)
    assert not store.heartbeat(T0, "a", ttl, T0 + timedelta(minutes=20))
    assert not store.finish(T0, "a", "done", T0 + timedelta(minutes=20))
    assert store.finish(T0, "b", "done", T0 + timedelta(minutes=21), run_id="r1")
    assert not store.acquire(T0, end, "c", ttl, T0 + timedelta(hours=5), max_attempts=3)  # done stays done


def test_stop_finishes_the_current_window_then_returns(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    set_schedule(settings.database_url, every="1h", cron=None, lag="0s", start=T0)
    stop = threading.Event()
    scored: list[datetime] = []

    def score(_s: Settings, start: datetime, _end: datetime) -> Result:
        stop.set()  # SIGTERM arrives while the first window is being scored
        scored.append(start)
        return Result("r")

    summary = run_scheduler(settings, score=score, now_fn=Clock(T0 + timedelta(hours=4)), stop=stop)
    assert scored == [T0] and len(summary.scored) == 1
    rows = ScheduleStore(settings.database_url).windows()
    assert [(r["status"], r["holder"] != "") for r in rows] == [("done", True)]


def test_interrupted_window_is_given_back(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    set_schedule(settings.database_url, every="1h", cron=None, lag="0s", start=T0)

    def score(_s: Settings, _start: datetime, _end: datetime) -> Result:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_scheduler(settings, score=score, once=True, now_fn=Clock(T0 + timedelta(hours=1)))
    row = ScheduleStore(settings.database_url).windows()[0]
    assert (row["status"], row["attempts"], row["holder"]) == ("failed", 0, "")
    assert len(run_scheduler(settings, score=lambda *_: Result("r2"), once=True,
                             now_fn=Clock(T0 + timedelta(hours=1))).scored) == 1


WORKER = textwrap.dedent("""
    import os, sys, time
    from datetime import datetime
    from fleetscore.pipelines.settings import load_settings
    from fleetscore.pipelines.scheduler import run_scheduler

    home, log = sys.argv[1], sys.argv[2]
    settings = load_settings({"home": home, "scoring.poll": "0.05s", "scoring.lock_ttl": "5s"}, environ={})

    class Result:
        run_id = "r"

    def score(_settings, start, end):
        with open(log, "a") as handle:
            handle.write(f"{start:%Y-%m-%dT%H:%M} {os.getpid()}\\n")
        time.sleep(0.15)
        return Result()

    open(f"{log}.ready-{os.getpid()}", "w").close()
    while not os.path.exists(f"{log}.go"):  # start together, so that both compete for every window
        time.sleep(0.01)
    run_scheduler(settings, score=score, until=datetime(2018, 8, 29, 5, 0))
""")


def test_two_scheduler_processes_score_each_window_once(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    set_schedule(settings.database_url, every="30m", cron=None, lag="0s", start=T0)
    log = tmp_path / "scored.txt"
    root = Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), str(log)], cwd=root)
             for _ in range(2)]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("scored.txt.ready-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    (tmp_path / "scored.txt.go").touch()
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    lines = log.read_text().split("\n")[:-1]
    windows = [line.split()[0] for line in lines]
    expected = [f"{T0 + timedelta(minutes=30 * k):%Y-%m-%dT%H:%M}" for k in range(12)]
    assert sorted(windows) == expected  # 12 windows up to 05:00, each exactly once
    assert len({line.split()[1] for line in lines}) == 2  # both schedulers took part
    rows = ScheduleStore(settings.database_url).windows()
    assert [r["status"] for r in rows] == ["done"] * 12 and all(r["attempts"] == 1 for r in rows)


def test_the_retrain_policy_runs_beside_scoring_when_due(tmp_path: Path) -> None:
    from fleetscore.errors import NothingToRetrain
    from fleetscore.ingestion.ops_store import OpsStore
    from fleetscore.pipelines.retrain_policy import set_policy

    settings = _settings(tmp_path)
    set_schedule(settings.database_url, every="1h", cron=None, lag="0s", now=T0)
    clock = Clock(T0 + timedelta(hours=1))
    policy = set_policy(settings, "1d", "new,drifted", now=T0)
    assert policy["only"] == "new,drifted"
    releases: list[list[str]] = []

    def release(s: Settings, only: list[str]) -> object:
        releases.append(only)
        if len(releases) > 1:
            raise NothingToRetrain("release --only new,drifted: no series to retrain")
        return Result(run_id="v2")

    score = lambda s, a, b: Result(run_id=f"run-{a:%H}")  # noqa: E731
    first = run_scheduler(settings, score=score, once=True, now_fn=clock, retrain=release)
    assert [s for s, _ in first.scored] == [T0] and releases == [["new", "drifted"]]
    clock.now += timedelta(hours=1)  # scored again, but the policy ran less than a day ago
    second = run_scheduler(settings, score=score, once=True, now_fn=clock, retrain=release)
    assert len(second.scored) == 1 and second.retrains == [] and len(releases) == 1
    clock.now += timedelta(days=1)
    third = run_scheduler(settings, score=score, once=True, now_fn=clock, retrain=release)
    assert third.retrains == ["nothing to retrain: release --only new,drifted: no series to retrain"]
    stored = OpsStore(settings.database_url).policy()
    assert stored is not None and stored["last_run_at"] == clock.now
    with pytest.raises(ConfigError):
        set_policy(settings, "1d", "drifted,everything")
