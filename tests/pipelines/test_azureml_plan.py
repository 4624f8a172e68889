"""Schedules on Azure ML: the trigger fires once per window, ``lag`` after it ends, and the plan step
scores exactly that window; the parallel step's entry script runs ``fleetscore score-step shard``."""

from __future__ import annotations

import itertools
import json
import os
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from croniter import croniter

from fleetscore.errors import ConfigError
from fleetscore.pipelines.azureml_plan import ScheduleSpec, parse_schedule_input, scheduled_window, trigger_for


@pytest.mark.parametrize(("every", "lag", "expression"), [
    ("1h", "5m", "5 * * * *"),
    ("15m", "2m", "2,17,32,47 * * * *"),
    ("5m", "0s", "0,5,10,15,20,25,30,35,40,45,50,55 * * * *"),
    ("2h", "90m", "30 1,3,5,7,9,11,13,15,17,19,21,23 * * *"),
    ("1d", "30m", "30 0 * * *"),
    ("6h", "0s", "0 0,6,12,18 * * *"),
])
def test_every_becomes_cron_when_cron_can_say_it(every: str, lag: str, expression: str) -> None:
    assert trigger_for(ScheduleSpec(every=every, lag=lag)).expression == expression


@pytest.mark.parametrize(("every", "lag"), [("1h", "5m"), ("15m", "2m"), ("2h", "90m"), ("1d", "30m"), ("5m", "0s")])
def test_each_cron_firing_scores_the_window_that_just_became_due(every: str, lag: str) -> None:
    schedule = ScheduleSpec(every=every, lag=lag)
    ticks = croniter(trigger_for(schedule).expression, datetime(2018, 8, 28, 22, 59))
    windows = [scheduled_window(schedule, ticks.get_next(datetime)) for _ in range(30)]
    period = windows[0][1] - windows[0][0]
    assert all(end - start == period for start, end in windows)
    assert all(b[0] == a[1] for a, b in itertools.pairwise(windows))  # no gap, no overlap


@pytest.mark.parametrize(("every", "frequency", "interval"), [("90m", "minute", 90), ("7h", "hour", 7),
                                                               ("2d", "day", 2)])
def test_other_periods_become_an_anchored_recurrence(every: str, frequency: str, interval: int) -> None:
    schedule = ScheduleSpec(every=every, lag="10m")
    trigger = trigger_for(schedule)
    assert (trigger.kind, trigger.frequency, trigger.interval) == ("recurrence", frequency, interval)
    first = datetime.fromisoformat(trigger.start_time)
    step = timedelta(minutes=interval * {"minute": 1, "hour": 60, "day": 1440}[frequency])
    for k in (1000, 1001, 1002):
        fire = first + k * step
        start, end = scheduled_window(schedule, fire)
        assert end == fire - timedelta(minutes=10) and end - start == step


def test_cron_schedule_keeps_its_expression_and_scores_the_latest_due_window() -> None:
    schedule = ScheduleSpec(cron="0 */6 * * *", lag="0s")
    assert trigger_for(schedule).expression == "0 */6 * * *"
    assert scheduled_window(schedule, datetime(2018, 8, 29, 12, 0)) == (datetime(2018, 8, 29, 6),
                                                                        datetime(2018, 8, 29, 12))
    lagged = ScheduleSpec(cron="0 */6 * * *", lag="15m")
    assert scheduled_window(lagged, datetime(2018, 8, 29, 12, 0)) == (datetime(2018, 8, 29, 0),
                                                                      datetime(2018, 8, 29, 6))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "schedule: give exactly one of --every or --cron"),
    ({"every": "1h", "cron": "* * * * *"}, "schedule: give exactly one of --every or --cron"),
    ({"every": "90s"}, "--every: Azure ML schedules run on whole minutes, got '90s'"),
    ({"cron": "every hour"}, "--cron: not a 5-field cron expression: 'every hour'"),
    ({"every": "1h", "lag": "soon"}, "--lag: expected a duration such as 5s, 10m, 1h or 2d, got 'soon'"),
])
def test_bad_schedules_are_one_line_errors(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        ScheduleSpec(**kwargs)
    assert str(err.value) == message


def test_schedule_input_round_trips() -> None:
    for spec in (ScheduleSpec(every="1h", lag="5m"), ScheduleSpec(cron="5 * * * *", lag="0s")):
        assert parse_schedule_input(spec.as_input(), spec.lag) == spec
    with pytest.raises(ConfigError, match=r"^--schedule: expected every:DURATION or cron:EXPR, got 'hourly'$"):
        parse_schedule_input("hourly", "0s")


def test_entry_script_runs_fleetscore_per_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parallel step's entry script runs the real ``fleetscore score-step shard`` on each task file."""
    import importlib

    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["driver", "--storage-url", str(tmp_path / "blob")])
    entry = importlib.import_module("fleetscore.pipelines.azureml_entry")
    entry.init()
    assert entry._args == ["--storage-url", str(tmp_path / "blob")]
    nothing = tmp_path / "nothing.json"
    nothing.write_text(json.dumps({"run_id": "r1", "start": "2018-08-29T00:00:00", "shard": None}))
    assert entry.run([str(nothing)]) == ['{"rows": 0, "shard": null}']
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(RuntimeError) as err:
        entry.run([str(broken)])
    assert str(err.value).startswith(f"{broken}: Error: {broken}: not a scoring task file:")
