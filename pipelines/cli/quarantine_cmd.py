"""``fleetscore quarantine list|replay``: the rows ingestion set aside, and ingesting them again."""

from __future__ import annotations

from typing import Any

import click

from fleetscore.pipelines.cli.options import echo_json, json_option
from fleetscore.pipelines.cli.progress import progress_bar


@click.group(name="quarantine")
def quarantine() -> None:
    """Rows that ingestion set aside, with their input, line and reason."""


@quarantine.command(name="list")
@json_option
@click.pass_obj
def quarantine_list(state: Any, as_json: bool) -> None:
    """Count the quarantined rows by input and reason."""
    from fleetscore.ingestion.store import SensorStore
    from fleetscore.pipelines.local_state import require_store
    from fleetscore.pipelines.settings import mask_url

    settings = state.settings()
    require_store(settings)
    counts = SensorStore(settings.database_url).quarantine_by_source()
    if as_json:
        echo_json({"quarantined": [{"source": s, "reason": r, "rows": n} for s, r, n in counts],
                   "total": sum(n for _, _, n in counts), "database": mask_url(settings.database_url)})
        return
    if not counts:
        click.echo("no rows in quarantine")
    for source, reason, rows in counts:
        click.echo(f"{source}: {reason} {rows:,}")
    if counts:
        click.echo(f"total: {sum(n for _, _, n in counts):,} rows")
    click.echo(f"database: {mask_url(settings.database_url)}")


@quarantine.command(name="replay")
@click.option("--reason", "reasons", multiple=True, metavar="REASON",
              help="Only rows quarantined for this reason, e.g. too_late (repeatable; default: every reason).")
@click.option("--source", "sources", multiple=True, metavar="INPUT",
              help="Only rows of this input, as ingest named it (repeatable; default: every input).")
@click.option("--window", default=None, metavar="DURATION", help="The store's window length (default 5s).")
@click.option("--aggregated", is_flag=True, help="The rows are windows already (they were ingested so).")
@click.option("--allowed-lateness", default=None, metavar="DURATION",
              help="Readings further behind the newest window of their series stay in quarantine (default 1h).")
@json_option
@click.pass_obj
def quarantine_replay(state: Any, reasons: tuple[str, ...], sources: tuple[str, ...], window: str | None,
                      aggregated: bool, allowed_lateness: str | None, as_json: bool) -> None:
    """Ingest quarantined rows again, under the settings given now.

    In one transaction each replayed row leaves the quarantine and ends either in a window or back in
    quarantine with the reason that applies now, under its input's name and line. Rows whose text was
    not kept whole (overlong lines, bytes that were not UTF-8) stay as they are.
    """
    from fleetscore.ingestion.replay import replay_quarantine
    from fleetscore.ingestion.timeutil import parse_duration
    from fleetscore.pipelines.local_state import require_store

    settings = state.settings(**{"ingest.window": window, "ingest.allowed_lateness": allowed_lateness})
    config = settings.ingest
    window_td = parse_duration(config.window, "--window")
    lateness_td = parse_duration(config.allowed_lateness, "--allowed-lateness")
    max_future = parse_duration(config.max_future, "ingest.max_future")
    require_store(settings)
    with progress_bar("replaying") as on_progress:
        report = replay_quarantine(settings.database_url, reasons=reasons, sources=sources, window=window_td,
                                   aggregated=aggregated, allowed_lateness=lateness_td, max_future=max_future,
                                   max_line_bytes=config.max_line_bytes, batch_rows=config.batch_rows,
                                   on_progress=on_progress,
                                   lock_timeout=parse_duration(config.lock_timeout, "ingest.lock_timeout"))
    _report(report, as_json)


def _report(report: Any, as_json: bool) -> None:
    from fleetscore.pipelines.settings import mask_url

    if as_json:
        echo_json({"selected": report.selected, "replayed": report.replayed, "ingested": report.ingested,
                   "windows_written": report.windows_written, "late_updates": report.late_updates,
                   "quarantined": report.quarantined, "kept": report.kept,
                   "database": mask_url(report.database)})
        return
    again = sum(report.quarantined.values())
    click.echo(f"replayed {report.replayed:,} of {report.selected:,} quarantined rows: {report.ingested:,} "
               f"ingested ({report.windows_written:,} windows written, {report.late_updates:,} late updates), "
               f"{again:,} quarantined again")
    if report.quarantined:
        click.echo("quarantined again by reason: "
                   + ", ".join(f"{reason} {count:,}" for reason, count in report.quarantined.items()))
    for why, count in sorted(report.kept.items()):
        click.echo(f"kept {count:,} rows: {why}")
    click.echo(f"database: {mask_url(report.database)}")
