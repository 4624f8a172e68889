"""``fleetscore validate``: run the data-checks gate on the SQL table of windows."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import click

from fleetscore.pipelines.cli.options import devices_option, split_ids, time_range, time_range_options

_MAX_ROWS = 20  # excluded series / warnings listed on the terminal (all are in the JSON report)


@click.command(name="validate")
@time_range_options
@devices_option
@click.option("--docs", "docs_dir", default=None, type=click.Path(file_okay=False),
              help="Also build Great Expectations' HTML Data Docs in this folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
@click.option("--learn-ranges", is_flag=True,
              help="Learn each sensor's value range from the given range and store it for later runs.")
@click.pass_obj
def validate(state: Any, start: str | None, end: str | None, last: str | None, devices: tuple[str, ...],
             docs_dir: str | None, as_json: bool, learn_ranges: bool) -> None:
    """Check the windows in a time range (default: all data) with the expectation suite.

    Exits 0 when the fleet passes, even with excluded series or warnings, and 1 with a one-line
    error naming the failed fleet-level check otherwise. The JSON report is written to
    HOME/reports/validation/ID.json.
    """
    from fleetscore.ingestion.timeutil import parse_duration

    settings = state.settings()
    from fleetscore.pipelines.local_state import require_store

    begin, finish = time_range(start, end, last)
    require_store(settings)
    device_ids = split_ids(devices)
    if learn_ranges:
        from fleetscore.data_checks import learn_ranges as learn

        learned = learn(settings.database_url, begin, finish, settings.data_checks, devices=device_ids)
        _print_learned(learned, as_json)
        return

    from fleetscore.data_checks import run_validation

    window = parse_duration(settings.ingest.window, "ingest.window")
    report_dir = Path(settings.home) / "reports" / "validation"
    console = _console()
    with console.status("Validating...", spinner="dots") if console.is_terminal else nullcontext():
        report = run_validation(settings.database_url, begin, finish, settings.data_checks, report_dir=report_dir,
                                docs_dir=docs_dir, window=window, devices=device_ids)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_report(console, report)
    report.raise_if_failed()


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


def _print_report(console: Any, report: Any) -> None:
    from rich.table import Table

    marks = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "[dim]skip[/]"}
    span = f"{report.start or 'beginning'} to {report.end or 'end'}"
    table = Table(title=f"Validation {report.id}: {report.rows} windows, {report.series} series, {span}",
                  title_justify="left")
    for column in ("check", "level", "result", "detail"):
        table.add_column(column, overflow="fold")
    for check in report.checks:
        mark = "[yellow]warn[/]" if check.level == "warning" and check.passed is False else marks[check.passed]
        table.add_row(check.name, check.level, mark, check.detail)
    console.print(table)
    if report.excluded:
        console.print(f"Excluded series ({len(report.excluded)}):")
        for (device, sensor), reason in list(report.excluded.items())[:_MAX_ROWS]:
            console.print(f"  device {device} sensor {sensor}: {reason}")
        if len(report.excluded) > _MAX_ROWS:
            console.print(f"  ... and {len(report.excluded) - _MAX_ROWS} more (see the report)")
    if report.warnings:
        console.print(f"Warnings ({len(report.warnings)}):")
        for warning in report.warnings[:_MAX_ROWS]:
            console.print(f"  {warning}")
        if len(report.warnings) > _MAX_ROWS:
            console.print(f"  ... and {len(report.warnings) - _MAX_ROWS} more (see the report)")
    verdict = "fleet OK" if report.fleet_ok else "fleet FAILED"
    console.print(f"{verdict}; report: {report.path}")
    if report.docs_index:
        console.print(f"Data Docs: {report.docs_index}")


def _print_learned(learned: list[Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([vars(r) for r in learned], indent=2))
        return
    click.echo(f"Learned the ranges of {len(learned)} sensors:")
    for r in learned:
        click.echo(f"  sensor {r.sensor}: [{r.low:g}, {r.high:g}] (observed [{r.observed_min:g}, "
                   f"{r.observed_max:g}] in {r.windows} windows)")
