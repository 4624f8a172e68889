"""``fleetscore predictions show|history``: read the predictions table (now or at an earlier version)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click

from fleetscore.pipelines.cli.options import devices_option, split_ids, time_range, time_range_options


@click.group(name="predictions")
def predictions() -> None:
    """The predictions table (Delta Lake): its rows and its versions."""


@predictions.command(name="show")
@time_range_options
@devices_option
@click.option("--as-of", "as_of", type=click.IntRange(min=0), default=None, metavar="VERSION",
              help="Read this table version (see `fleetscore predictions history`; default: the current one).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Also write the rows to FILE: .parquet, or .csv for the reference format.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.pass_obj
def show(state: Any, start: str | None, end: str | None, last: str | None, devices: tuple[str, ...],
         as_of: int | None, out: str | None, as_json: bool) -> None:
    """Summarise the predictions in a range (rows, anomalies, devices), optionally writing them out."""
    from fleetscore.pipelines.adapters import storage_spec_for
    from fleetscore.scoring import table
    from fleetscore.scoring.writer import reference_csv

    settings = state.settings()
    spec = storage_spec_for(settings)
    window_start, window_end = time_range(start, end, last)
    version = as_of if as_of is not None else table.current_version(spec)
    rows = table.read_predictions(spec, window_start, window_end, split_ids(devices), as_of)
    if out:
        if out.endswith(".csv"):
            with open(out, "wb") as handle:
                handle.write(reference_csv(rows))
        else:
            rows.to_parquet(out, index=False, engine="pyarrow")
    summary = {"table": table.table_uri(spec), "version": version, "rows": len(rows),
               "anomalies": int(rows["Prediction"].sum()) if len(rows) else 0,
               "devices": int(rows["Device"].nunique()), "first": str(rows["TS"].min()) if len(rows) else None,
               "last": str(rows["TS"].max()) if len(rows) else None, "out": out}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{summary['table']} version {version if version is not None else '- (no run committed yet)'}: "
               f"{summary['rows']:,} predictions, {summary['anomalies']:,} anomalies, {summary['devices']} devices"
               + (f", {summary['first']} .. {summary['last']}" if len(rows) else ""))
    if out:
        click.echo(f"written: {out}")


@predictions.command(name="history")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many versions.")
@click.option("--json", "as_json", is_flag=True, help="Print the versions as a JSON list.")
@click.pass_obj
def history(state: Any, limit: int, as_json: bool) -> None:
    """The table's versions, newest first, with the scoring run that committed each."""
    from fleetscore.pipelines.adapters import storage_spec_for
    from fleetscore.scoring import table

    versions = table.history(storage_spec_for(state.settings()), limit)
    if as_json:
        click.echo(json.dumps([asdict(v) for v in versions], indent=2))
        return
    if not versions:
        click.echo("no table versions (no scoring run committed yet)")
        return
    click.echo(f"{'VERSION':>7} {'COMMITTED':<29} {'RUN ID':<25} {'RELEASE':>7} {'RANGE'}")
    for v in versions:
        release = f"v{v.release_version}" if v.release_version is not None else "-"
        span = v.operation
        if v.run_id:
            span = f"{v.start} .. {v.end}" + (f" devices {','.join(v.devices)}" if v.devices else "")
        click.echo(f"{v.version:>7} {v.committed_at:<29} {v.run_id or '-':<25} {release:>7} {span}")
