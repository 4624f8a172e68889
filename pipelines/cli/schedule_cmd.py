"""``fleetscore schedule set|show`` and ``fleetscore scheduler``."""

from __future__ import annotations

import signal
from typing import Any

import click

from fleetscore.pipelines.cli.options import echo_json, json_option


@click.group(name="schedule")
def schedule() -> None:
    """The scoring schedule (stored in SQL, one version per change)."""


@schedule.command(name="set")
@click.option("--every", default=None, metavar="DURATION", help="Score one window of this length each period, e.g. 1h.")
@click.option("--cron", default=None, metavar="EXPR",
              help="Score the windows between cron fire times, e.g. '0 * * * *'.")
@click.option("--lag", default="5m", show_default=True, metavar="DURATION",
              help="Wait this long after a window ends before scoring it (late data).")
@click.option("--start", default=None, metavar="TIME",
              help="First window to score (default: now, rounded down to the period).")
@json_option
@click.pass_obj
def schedule_set(state: Any, every: str | None, cron: str | None, lag: str, start: str | None,
                 as_json: bool) -> None:
    """Publish a new version of the scoring schedule."""
    from fleetscore.ingestion.timeutil import parse_time_option
    from fleetscore.pipelines.scheduler import set_schedule

    settings = state.settings()
    first = parse_time_option(start, "--start") if start else None
    published = set_schedule(settings.database_url, every=every, cron=cron, lag=lag, start=first)
    if as_json:
        echo_json({"schedule": _schedule_json(published)})
        return
    click.echo(f"schedule v{published.version}: {published.describe()}, first window {published.start}")


@schedule.command(name="show")
@click.option("--history", "history", type=click.IntRange(min=1), default=5, show_default=True,
              help="How many earlier versions to list.")
@json_option
@click.pass_obj
def schedule_show(state: Any, history: int, as_json: bool) -> None:
    """Show the schedule in force, its earlier versions and the state of recent windows."""
    from fleetscore.pipelines.scheduler import Schedule, current_schedule
    from fleetscore.records.schedule_store import ScheduleStore

    settings = state.settings()
    from fleetscore.pipelines.local_state import require_store

    require_store(settings)
    current = current_schedule(settings.database_url)
    store = ScheduleStore(settings.database_url)
    if as_json:
        earlier = [{**_schedule_json(Schedule.from_row(row)), "created_at": row["created_at"],
                    "created_by": row["created_by"]} for row in store.history(limit=history + 1)[1:]]
        echo_json({"schedule": _schedule_json(current), "history": earlier,
                   "recent_windows": store.windows(since=current.start)[-10:]})
        return
    click.echo(f"schedule v{current.version}: {current.describe()}, first window {current.start}")
    for row in store.history(limit=history + 1)[1:]:
        old = Schedule.from_row(row)
        click.echo(f"  v{old.version} (set {row['created_at']:%Y-%m-%d %H:%M:%S} by {row['created_by'] or '?'}): "
                   f"{old.describe()}")
    windows = store.windows(since=current.start)[-10:]
    if windows:
        click.echo("recent windows:")
        for w in windows:
            detail = w["run_id"] or w["error"] or w["holder"]
            click.echo(f"  {w['window_start']:%Y-%m-%d %H:%M} {w['status']:<8} attempts {w['attempts']} {detail}")


def _schedule_json(schedule: Any) -> dict[str, Any]:
    return {"version": schedule.version, "every": schedule.every or None, "cron": schedule.cron or None,
            "lag_seconds": schedule.lag.total_seconds(), "first_window": schedule.start}


@click.command(name="scheduler")
@click.option("--once", is_flag=True, help="Score the windows due now, then exit.")
@click.option("--until", default=None, metavar="TIME",
              help="Score no window ending after TIME; exit when every window up to it is done.")
@click.pass_obj
def scheduler(state: Any, once: bool, until: str | None) -> None:
    """Run the scoring schedule: one run per due window, catching up missed ones; stops on SIGTERM."""
    import threading

    from fleetscore.ingestion.timeutil import parse_time_option
    from fleetscore.pipelines.retrain_policy import default_release
    from fleetscore.pipelines.scheduler import run_scheduler
    from fleetscore.pipelines.scoring_pipeline import score_window

    settings = state.settings()
    horizon = parse_time_option(until, "--until") if until else None
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        click.echo(f"{signal.Signals(signum).name}: stopping after the current window", err=True)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    def on_window(event: str, start: Any, end: Any, detail: str) -> None:
        if event != "start":
            click.echo(f"window {start} .. {end}: {event}" + (f" ({detail})" if detail else ""))

    try:
        summary = run_scheduler(settings, score=lambda s, a, b: score_window(s, a, b), once=once,
                                until=horizon, stop=stop, on_window=on_window, retrain=default_release)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo(f"scheduler: {len(summary.scored)} windows scored, {len(summary.failed)} failed")
    for line in summary.retrains:
        click.echo(f"retrain policy: {line}")
