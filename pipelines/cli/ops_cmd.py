"""``fleetscore drift``, ``fleetscore events list|ack|label`` and ``fleetscore retrain-policy set|show``."""

from __future__ import annotations

import json
from typing import Any

import click

from fleetscore.pipelines.cli.options import echo_json, json_option


@click.command(name="drift")
@click.option("--last", default="24h", show_default=True, help="Drift recorded by the runs of this last period.")
@click.option("--all", "show_all", is_flag=True, help="Every series, not only those past drift_threshold.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def drift(state: Any, last: str, show_all: bool, as_json: bool) -> None:
    """List the series whose latest drift is past [training] drift_threshold.

    Drift is the largest population stability index (PSI) over the features of a series' scored
    windows against its training reference, measured by every scoring run.
    """
    settings = state.settings()
    from fleetscore.pipelines.local_state import require_store

    require_store(settings)
    from fleetscore.ingestion.ops_store import OpsStore
    from fleetscore.ingestion.timeutil import parse_duration, utcnow

    since = utcnow() - parse_duration(last, "--last")
    threshold = settings.training.drift_threshold
    rows = OpsStore(settings.database_url).latest_drift(since=since)
    if not show_all:
        rows = [r for r in rows if r["drift"] is not None and r["drift"] > threshold]
    rows.sort(key=lambda r: -(r["drift"] or 0.0))
    if as_json:
        click.echo(json.dumps([{**r, "anomaly_rate": r["anomalies"] / r["rows"] if r["rows"] else 0.0}
                               for r in rows], indent=1, default=str))
        return
    if not rows:
        click.echo(f"no series past drift_threshold {threshold} in the last {last}")
        return
    click.echo(f"{'DEVICE':<16} {'SENSOR':<10} {'DRIFT':>8} {'FEATURE':<12} {'ANOMALY RATE':>12} {'RELEASE':>7}  RUN")
    for r in rows:
        rate = r["anomalies"] / r["rows"] if r["rows"] else 0.0
        value = f"{r['drift']:.3f}" if r["drift"] is not None else "-"
        click.echo(f"{r['device']:<16} {r['sensor']:<10} {value:>8} {r['feature']:<12} {rate:>12.2%} "
                   f"{'v' + str(r['release_version']):>7}  {r['run_id']}")


@click.group(name="events")
def events() -> None:
    """Anomaly events: consecutive anomalous windows of a series, merged across runs."""


@events.command(name="list")
@click.option("--open", "open_only", is_flag=True, help="Only events not acknowledged.")
@click.option("--device", default=None, help="Only this device's events.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def events_list(state: Any, open_only: bool, device: str | None, limit: int, as_json: bool) -> None:
    """List anomaly events, newest first."""
    settings = state.settings()
    from fleetscore.pipelines.local_state import require_store

    require_store(settings)
    from fleetscore.pipelines.events import list_events

    rows = list_events(settings.database_url, open_only, device, limit)
    if as_json:
        click.echo(json.dumps(rows, indent=1, default=str))
        return
    if not rows:
        click.echo("no anomaly events")
        return
    click.echo(f"{'ID':>6} {'DEVICE':<12} {'SENSOR':<8} {'START':<19} {'END':<19} {'WINDOWS':>7} {'PEAK':>9} "
               f"{'REASON':<12} {'STATE':<6} {'LABEL':<7} RUNS")
    for e in rows:
        state_ = "acked" if e["acked_at"] else "open"
        click.echo(f"{e['id']:>6} {e['device']:<12} {e['sensor']:<8} {e['start_ts']:%Y-%m-%d %H:%M:%S} "
                   f"{e['end_ts']:%Y-%m-%d %H:%M:%S} {e['windows']:>7} {e['peak_score']:>9.3f} {e['reason']:<12} "
                   f"{state_:<6} {e['label'] or '-':<7} {len(e['runs'])}")


@events.command(name="ack")
@click.argument("event_id", type=int)
@json_option
@click.pass_obj
def events_ack(state: Any, event_id: int, as_json: bool) -> None:
    """Acknowledge an event: no more notifications for it."""
    settings = state.settings()
    from fleetscore.pipelines.local_state import require_store

    require_store(settings)
    from fleetscore.pipelines.events import acknowledge

    event = acknowledge(settings.database_url, event_id)
    if as_json:
        echo_json({"event": event})
        return
    click.echo(f"event {event_id} ({event['device']}/{event['sensor']}) acknowledged at {event['acked_at']}")


@events.command(name="label")
@click.argument("event_id", type=int)
@click.option("--normal", "value", flag_value="normal", help="A false alarm.")
@click.option("--anomaly", "value", flag_value="anomaly", help="A real anomaly.")
@json_option
@click.pass_obj
def events_label(state: Any, event_id: int, value: str | None, as_json: bool) -> None:
    """Label an event (the evaluation gate's false-alarm and recall figures use the labels)."""
    if value is None:
        raise click.UsageError("give --normal or --anomaly")
    settings = state.settings()
    from fleetscore.pipelines.local_state import require_store

    require_store(settings)
    from fleetscore.pipelines.events import label

    event = label(settings.database_url, event_id, value)
    if as_json:
        echo_json({"event": event})
        return
    click.echo(f"event {event_id} ({event['device']}/{event['sensor']}) labelled {value}")


@click.group(name="retrain-policy")
def retrain_policy() -> None:
    """The retraining policy the scheduler runs beside scoring (release --only ... every period)."""


@retrain_policy.command(name="set")
@click.option("--every", required=True, help="How often: 1d, 12h, ...")
@click.option("--only", "only", default="drifted,new", show_default=True,
              help="What to retrain (as release --only).")
@json_option
@click.pass_obj
def policy_set(state: Any, every: str, only: str, as_json: bool) -> None:
    """Store the retrain policy."""
    settings = state.settings()
    from fleetscore.pipelines.retrain_policy import set_policy

    policy = set_policy(settings, every, only)
    if as_json:
        echo_json({"policy": policy})
        return
    click.echo(f"retrain policy: every {policy['every']}, release --only {policy['only']}")


@retrain_policy.command(name="show")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def policy_show(state: Any, as_json: bool) -> None:
    """Print the retrain policy in force."""
    settings = state.settings()
    from fleetscore.pipelines.local_state import require_store

    require_store(settings)
    from fleetscore.ingestion.ops_store import OpsStore

    policy = OpsStore(settings.database_url).policy()
    if as_json:
        click.echo(json.dumps(policy, indent=1, default=str))
    elif policy is None:
        click.echo("no retrain policy (fleetscore retrain-policy set --every 1d --only drifted,new)")
    else:
        click.echo(f"every {policy['every']}, release --only {policy['only']}; set {policy['created_at']}; "
                   f"last run {policy['last_run_at'] or 'never'}: {policy['last_outcome'] or '-'}")
