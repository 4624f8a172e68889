"""``fleetscore score``, ``fleetscore runs list|show`` and ``fleetscore report``."""

from __future__ import annotations

import json
from typing import Any

import click

from fleetscore.pipelines.cli.options import (
    devices_option,
    echo_json,
    json_option,
    split_ids,
    time_range,
    time_range_options,
)
from fleetscore.pipelines.cli.progress import progress_bar


@click.command(name="score")
@time_range_options
@click.option("--release", default=None, metavar="REF",
              help="champion, challenger, a version number, or path:FOLDER for an unregistered bundle "
                   "(default: scoring.release).")
@devices_option
@click.option("--executor", default=None, metavar="EXECUTOR",
              help="local, dask://HOST:PORT or azureml (default: the executor setting).")
@click.option("--shards", type=click.IntRange(min=1), default=None,
              help="Number of device shards (default: one per worker).")
@click.option("--force", is_flag=True, help="Score again even if this window, release and data were already scored.")
@click.option("--csv", "csv", is_flag=True, default=None,
              help="Also write the reference CSV format TS,Device,Sensor,Val,Prediction.")
@click.option("--skip-validation", is_flag=True, help="Do not run the data-checks gate (recorded in the manifest).")
@click.option("--part-delay", type=float, default=0.0, hidden=True, help="Testing: sleep after each part.")
@json_option
@click.pass_obj
def score(state: Any, start: str | None, end: str | None, last: str | None, release: str | None,
          devices: tuple[str, ...], executor: str | None, shards: int | None, force: bool, csv: bool | None,
          skip_validation: bool, part_delay: float, as_json: bool) -> None:
    """Score a window of stored data into versioned predictions.

    Without a range, the whole stored range is scored. The run commits its predictions to the Delta
    table STORAGE_URL/predictions/ in one new version, replacing that range's rows; its manifest is
    in STORAGE_URL/runs/window_start=.../run=RUN_ID/.
    """
    if executor != "azureml":
        from fleetscore.pipelines.executors import start_worker_server

        start_worker_server()  # its imports overlap this process's: the gate and the shards start sooner
    settings = state.settings(executor=executor)
    window_start, window_end = time_range(start, end, last)
    device_ids = split_ids(devices)
    if settings.executor == "azureml":
        from fleetscore.pipelines.azureml import submit_scoring_job
        from fleetscore.pipelines.release_resolution import release_ref

        if window_start is None or window_end is None:
            raise click.UsageError("--executor azureml needs a range (--start/--end or --last)")
        job = submit_scoring_job(settings, window_start, window_end, release_ref(settings, release), device_ids,
                                 force=force)
        if as_json:
            echo_json({"status": "submitted", "azureml_job": job})
        else:
            click.echo(f"submitted Azure ML job {job}")
        return
    from fleetscore.pipelines.local_state import require_store
    from fleetscore.pipelines.scoring_pipeline import score_window
    from fleetscore.scoring import writer

    if settings.executor == "local":  # a cluster's own settings checks come first (pipelines.executors)
        require_store(settings)
    with progress_bar("shards") as on_progress:
        result = score_window(settings, window_start, window_end, release=release, devices=device_ids,
                              shards=shards, force=force, csv=csv, skip_validation=skip_validation,
                              on_progress=on_progress, part_delay=part_delay)
    if as_json:
        echo_json(score_json(result))
        return
    if result.status == "skipped":
        click.echo(f"skipped: window {result.start} .. {result.end} was already scored by run "
                   f"{result.duplicate_of} (release v{result.release_version}, same data); use --force to rescore")
        click.echo(f"predictions: {result.location}")
        return
    rate = result.anomalies / result.rows if result.rows else 0.0
    resumed = " (resumed)" if result.resumed else ""
    click.echo(f"run {result.run_id}{resumed}: {result.rows:,} predictions, {result.anomalies:,} anomalies "
               f"({rate:.2%}), release v{result.release_version}, window {result.start} .. {result.end}")
    if result.failures:
        click.echo(f"warning: {len(result.failures)} failed (within max_failed_fraction): "
                   + "; ".join(f"{k}: {v}" for k, v in list(result.failures.items())[:5]), err=True)
    click.echo(f"predictions: {result.location}")
    click.echo(f"manifest: {result.run_folder}/{writer.MANIFEST}")
    cold = result.manifest.get("cold_start", {})
    if cold.get("fleet_scored_series") or cold.get("unscored_series"):
        click.echo(f"cold start: {cold.get('fleet_scored_series', 0):,} series scored by a fleet model "
                   f"(no model of their own), {cold.get('unscored_series', 0):,} unscored")
    drift = result.manifest.get("drift", {})
    if drift.get("drifted_series"):
        click.echo(f"drift: {drift['drifted_series']:,} series past drift_threshold {drift['threshold']} "
                   "(fleetscore drift lists them)")
    events = result.manifest.get("events", {})
    if events.get("new") or events.get("updated"):
        click.echo(f"events: {events.get('new', 0):,} new, {events.get('updated', 0):,} updated, "
                   f"{events.get('notified', 0):,} notifications sent, "
                   f"{events.get('dead_lettered', 0):,} dead-lettered")


def score_json(result: Any) -> dict[str, Any]:
    """``score --json``: the run's outcome (``status`` done, skipped or failed) and the manifest's
    cold-start, drift and events summaries."""
    from fleetscore.scoring import writer

    manifest = result.manifest
    return {
        "run_id": result.run_id, "status": result.status, "window_start": result.start, "window_end": result.end,
        "release_version": result.release_version, "rows": result.rows, "anomalies": result.anomalies,
        "anomaly_rate": result.anomalies / result.rows if result.rows else 0.0, "resumed": result.resumed,
        "duplicate_of": result.duplicate_of or None, "failures": result.failures, "predictions": result.location,
        "table_version": result.table_version,
        "manifest": f"{result.run_folder}/{writer.MANIFEST}" if result.run_folder else None,
        "cold_start": manifest.get("cold_start", {}),
        "drift": {k: v for k, v in manifest.get("drift", {}).items() if k != "drifted"},
        "events": manifest.get("events", {}),
    }


@click.group(name="runs")
def runs() -> None:
    """Scoring runs recorded in the database."""


@runs.command(name="list")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many runs.")
@click.option("--status", type=click.Choice(["running", "done", "failed", "skipped", "abandoned"]), default=None,
              help="Only runs with this status.")
@json_option
@click.pass_obj
def runs_list(state: Any, limit: int, status: str | None, as_json: bool) -> None:
    """List scoring runs, newest first."""
    from fleetscore.records.run_log import RunLog

    settings = state.settings()
    from fleetscore.pipelines.local_state import require_store

    require_store(settings)
    from fleetscore.pipelines.run_recovery import reconcile_runs

    run_log = RunLog(settings.database_url)
    reconcile_runs(settings, run_log)
    rows = run_log.list(limit=limit, status=status)
    if as_json:
        echo_json({"runs": rows})
        return
    if not rows:
        click.echo("no scoring runs")
        return
    header = f"{'RUN ID':<25} {'WINDOW START':<19} {'WINDOW END':<19} {'RELEASE':>7} {'STATUS':<9} " \
             f"{'ROWS':>10} {'ANOMALIES':>9} {'SHARDS':>6} {'SECONDS':>7}"
    click.echo(header)
    for r in rows:
        version = f"v{r['release_version']}" if r["release_version"] is not None else "-"
        seconds = f"{r['seconds']:.1f}" if r["seconds"] is not None else "-"
        click.echo(f"{r['run_id']:<25} {r['window_start']:%Y-%m-%d %H:%M:%S} {r['window_end']:%Y-%m-%d %H:%M:%S} "
                   f"{version:>7} {r['status']:<9} {r['rows']:>10,} {r['anomalies']:>9,} "
                   f"{r['shards_done']:>2}/{r['shards_total']:<3} {seconds:>7}")


@runs.command(name="show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@click.pass_obj
def runs_show(state: Any, run_id: str, as_json: bool) -> None:
    """Show one scoring run: window, release, status, counts, timings, error."""
    from fleetscore.errors import ScoringError
    from fleetscore.records.run_log import RunLog

    settings = state.settings()
    from fleetscore.pipelines.local_state import require_store

    require_store(settings)
    from fleetscore.pipelines.run_recovery import reconcile_runs

    run_log = RunLog(settings.database_url)
    reconcile_runs(settings, run_log)
    record = run_log.get(run_id)
    if record is None:
        raise ScoringError(f"no scoring run {run_id} in {settings.database_url}")
    if as_json:
        click.echo(json.dumps(record, indent=2, default=str))
        return
    for key in ("run_id", "status", "window_start", "window_end", "release_ref", "release_version", "rows",
                "anomalies", "shards_done", "shards_total", "series_failed", "started_at", "finished_at",
                "seconds", "data_hash", "validation_id", "location", "table_version", "mlflow_run_id", "error"):
        value = record[key]
        if value in (None, ""):
            continue
        click.echo(f"{key + ':':<17} {value}")
    if record["timings"]:
        click.echo("timings:          " + ", ".join(f"{k} {v:.2f}s" for k, v in record["timings"].items()))


@click.command(name="report")
@click.argument("run_id")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="HTML file to write (default: HOME/reports/scoring/RUN_ID.html).")
@json_option
@click.pass_obj
def report(state: Any, run_id: str, out: str | None, as_json: bool) -> None:
    """Write a self-contained HTML report of a scoring run (anomalies over time, top devices, history)."""
    from fleetscore.pipelines.report import write_report

    settings = state.settings()
    from fleetscore.pipelines.local_state import require_store

    require_store(settings)
    path = write_report(settings, run_id, out)
    if as_json:
        echo_json({"run_id": run_id, "report": path})
    else:
        click.echo(f"report: {path}")

