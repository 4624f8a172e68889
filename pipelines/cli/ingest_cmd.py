"""``fleetscore ingest`` and ``fleetscore simulate``: readings into the sensor store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from fleetscore.pipelines.cli import CliState
from fleetscore.pipelines.cli.options import echo_json, json_option
from fleetscore.pipelines.cli.progress import progress_bar


def ingest_json(report: Any) -> dict[str, Any]:
    """``ingest --json``: each input's outcome, the totals over the ingested ones, the database (masked)."""
    from dataclasses import asdict

    from fleetscore.pipelines.settings import mask_url

    return {"inputs": [asdict(item) for item in report.inputs],
            "total": {name: report.total(name) for name in ("rows_read", "windows_written", "late_updates")},
            "quarantined": report.quarantined, "database": mask_url(report.database)}


def _summary(report: Any) -> None:
    from fleetscore.pipelines.settings import mask_url

    for item in report.inputs:
        if item.status == "skipped":
            click.echo(f"{item.name}: skipped (already ingested)")
        elif item.status == "failed":
            click.echo(f"{item.name}: not ingested")
        else:
            click.echo(f"{item.name}: {item.rows_read:,} rows read, {item.windows_written:,} windows written, "
                       f"{item.late_updates:,} late updates, {item.quarantined_total:,} quarantined")
    if len(report.inputs) > 1:
        quarantined = sum(report.quarantined.values())
        click.echo(f"total: {report.total('rows_read'):,} rows read, {report.total('windows_written'):,} windows "
                   f"written, {report.total('late_updates'):,} late updates, {quarantined:,} quarantined")
    if report.quarantined:
        reasons = ", ".join(f"{reason} {count:,}" for reason, count in report.quarantined.items())
        click.echo(f"quarantined by reason: {reasons}")
    click.echo(f"database: {mask_url(report.database)}")


@click.command(name="ingest")
@click.argument("paths", nargs=-1, metavar="PATH...")
@click.option("--window", default=None, metavar="DURATION", help="Tumbling window length (default 5s).")
@click.option("--aggregated", is_flag=True, help="Rows are already windows: store them as they are.")
@click.option("--allowed-lateness", default=None, metavar="DURATION",
              help="Readings further behind the newest window of their series go to quarantine (default 1h).")
@click.option("--max-bad-fraction", type=float, default=None,
              help="Fail when an input's share of quarantined rows passes this (default 0.01).")
@click.option("--batch-rows", type=int, default=None, help="Lines parsed at a time (default 200000).")
@click.option("--eventhub", is_flag=True,
              help="Consume Azure Event Hubs instead of files (connection string from "
                   "FLEETSCORE_INGEST__EVENTHUB_CONNECTION_STRING).")
@click.option("--max-wait", type=float, default=None, metavar="SECONDS",
              help="With --eventhub: stop after this long without events (default: run until interrupted).")
@json_option
@click.pass_obj
def ingest(state: CliState, paths: tuple[str, ...], window: str | None, aggregated: bool,
           allowed_lateness: str | None, max_bad_fraction: float | None, batch_rows: int | None,
           eventhub: bool, max_wait: float | None, as_json: bool) -> None:
    """Ingest sensor readings into the store, aggregated into tumbling windows.

    PATH is a CSV file with header TS,Device,Sensor,Value (or TS,Device,Tag,Value), a JSON-lines file
    with the same keys, either one gzipped, or - for standard input. A window is labelled by its start.
    Re-ingesting the same file adds nothing; bad rows go to the quarantine table.
    """
    settings = state.settings(**{"ingest.window": window, "ingest.allowed_lateness": allowed_lateness,
                                 "ingest.max_bad_fraction": max_bad_fraction, "ingest.batch_rows": batch_rows})
    from fleetscore.ingestion.timeutil import parse_duration

    config = settings.ingest
    window_td = parse_duration(config.window, "--window")
    lateness_td = parse_duration(config.allowed_lateness, "--allowed-lateness")
    if eventhub:
        if paths:
            raise click.UsageError("give either PATH... or --eventhub, not both")
        from fleetscore.ingestion.eventhub import consume

        count = consume(settings.database_url, config.eventhub_connection_string, config.eventhub_name,
                        config.eventhub_consumer_group, window=window_td, allowed_lateness=lateness_td,
                        max_wait_time=max_wait)
        if as_json:
            echo_json({"eventhub_events": count})
        else:
            click.echo(f"eventhub: {count:,} events processed")
        return
    if not paths:
        raise click.UsageError("give at least one PATH (- for standard input), or --eventhub")
    from fleetscore.ingestion.ingest import InputsUnreadable, TooManyBadRows, ingest_files

    with progress_bar("ingesting", in_bytes=True) as on_progress:
        try:
            report = ingest_files(settings.database_url, paths, window=window_td, aggregated=aggregated,
                                  allowed_lateness=lateness_td, max_bad_fraction=config.max_bad_fraction,
                                  batch_rows=config.batch_rows, on_progress=on_progress,
                                  max_future=parse_duration(config.max_future, "ingest.max_future"),
                                  max_line_bytes=config.max_line_bytes,
                                  lock_timeout=parse_duration(config.lock_timeout, "ingest.lock_timeout"),
                                  commit_every=parse_duration(config.commit_every, "ingest.commit_every"))
        except (InputsUnreadable, TooManyBadRows) as exc:
            _report(exc.report, as_json)
            raise
    _report(report, as_json)


def _report(report: Any, as_json: bool) -> None:
    if as_json:
        echo_json(ingest_json(report))
    else:
        _summary(report)


@click.command(name="simulate")
@click.option("--profile", type=click.Choice(["uniform", "industrial"]), default="uniform", show_default=True,
              help="uniform: the reference simulator's uniform readings; industrial: a plant of pumps "
                   "(temperature, pressure, vibration, flow_rate) with realistic timing and legitimate events.")
@click.option("--devices", type=click.IntRange(min=1), default=None,
              help="Number of devices (default: 3 uniform, 12 industrial).")
@click.option("--sensors", type=click.IntRange(min=1), default=None,
              help="Sensors per device (default: 5 uniform; industrial has 4).")
@click.option("--duration", default="2h", show_default=True, metavar="DURATION", help="Time span simulated.")
@click.option("--interval", default="1s", show_default=True, metavar="DURATION", help="Time between readings.")
@click.option("--start", default="2024-01-01T00:00:00", show_default=True, metavar="TIME",
              help="Time of the first reading (ISO 8601, UTC).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same output).")
@click.option("--anomaly-rate", type=float, default=None,
              help="Expected share of anomalous windows after the clean span (default: 0.01 uniform, "
                   "0.05 industrial).")
@click.option("--clean", default=None, metavar="DURATION",
              help="Span at the start without anomalies, for training (default: 1h uniform, 2h industrial).")
@click.option("--window", default=None, metavar="DURATION",
              help="Window the anomalies are placed on (default: the ingest window, 5s).")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write readings to this file (.csv, .jsonl, optionally .gz).")
@click.option("--ingest", "to_store", is_flag=True, help="Ingest the readings straight into the store.")
@click.option("--labels", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the labels (CSV Device,Sensor,Kind,Start,End,Label,Visible) here.")
@json_option
@click.pass_obj
def simulate(state: CliState, profile: str, devices: int | None, sensors: int | None, duration: str,
             interval: str, start: str, seed: int, anomaly_rate: float | None, clean: str | None,
             window: str | None, out: Path | None, to_store: bool, labels: Path | None, as_json: bool) -> None:
    """Simulate fleet readings with labelled anomalies.

    uniform: readings uniform per sensor as in the reference simulator (sensor 1 in [10, 15], 2 in
    [30, 40], 3 in [60, 65], 4 in [80, 85], 5 in [100, 110], then again); anomalies spike, level_shift,
    stuck.

    industrial: pumps with jittered, dropped and gapped readings; anomalies spike, level_shift, variance,
    stuck, drift, device; legitimate events setpoint_change, micro_stop, dropout labelled normal.
    """
    if out is None and not to_store:
        raise click.UsageError("give --out FILE and/or --ingest")
    settings = state.settings(**{"ingest.window": window})
    from fleetscore.ingestion.timeutil import parse_duration, parse_time_option
    from fleetscore.simulation.simulate import SimulationSpec, simulate_fleet

    spec = SimulationSpec.for_profile(
        profile, devices=devices, sensors=sensors, anomaly_rate=anomaly_rate,
        clean=None if clean is None else parse_duration(clean, "--clean"),
        start=parse_time_option(start, "--start"), duration=parse_duration(duration, "--duration"),
        interval=parse_duration(interval, "--interval"), window=parse_duration(settings.ingest.window, "--window"),
        seed=seed)
    with progress_bar("simulating") as on_progress:
        result = simulate_fleet(spec, out=out, labels=labels,
                                database_url=settings.database_url if to_store else None,
                                allowed_lateness=parse_duration(settings.ingest.allowed_lateness,
                                                                "--allowed-lateness"),
                                on_progress=on_progress)
    if as_json:
        from fleetscore.ingestion.ingest import IngestReport

        echo_json({"profile": profile, "readings": result.readings, "devices": result.devices,
                   "sensors": result.sensors, "windows": result.windows, "anomalies": result.anomalies,
                   "anomalous_windows": result.anomalous_windows, "by_kind": result.by_kind,
                   "normal_events": result.normal_events, "readings_file": out, "labels_file": labels,
                   "ingest": None if result.ingest is None else ingest_json(
                       IngestReport(inputs=[result.ingest], database=settings.database_url))})
        return
    kinds = ", ".join(f"{kind} {count}" for kind, count in result.by_kind.items())
    click.echo(f"simulated {result.readings:,} readings: {result.devices} devices x {result.sensors} sensors, "
               f"{result.anomalies} anomalies ({kinds}) over {result.anomalous_windows:,} of "
               f"{result.windows:,} windows")
    if result.normal_events:
        events = ", ".join(f"{kind} {count}" for kind, count in result.normal_events.items())
        click.echo(f"legitimate events (labelled normal): {events}")
    if out is not None:
        click.echo(f"readings: {out}")
    if labels is not None:
        click.echo(f"labels: {labels}")
    if result.ingest is not None:
        from fleetscore.ingestion.ingest import IngestReport

        _summary(IngestReport(inputs=[result.ingest], database=settings.database_url))
