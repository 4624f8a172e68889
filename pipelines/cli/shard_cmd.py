"""``fleetscore score-step plan|shard|finalize``: one step of a scoring run, as Azure ML runs them.

The Azure ML scoring pipeline (``fleetscore publish --target azureml``) runs these three in the scoring
image: ``plan`` on one node, ``shard`` once per shard across the cluster, ``finalize`` last. Locally,
``fleetscore score`` does all three in one process; these commands are for the cluster and for debugging.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from fleetscore.pipelines.cli import CliState


@click.group(name="score-step")
def score_step() -> None:
    """The steps of a scoring run on Azure ML: plan, shard (one per mini-batch), finalize."""


@score_step.command(name="plan")
@click.option("--start", default="auto", show_default=True, metavar="TIME",
              help="Window start (ISO 8601), or auto: the latest window of --schedule that is due.")
@click.option("--end", default="auto", show_default=True, metavar="TIME", help="Window end (exclusive), or auto.")
@click.option("--schedule", "schedule_text", default="every:1h", show_default=True, metavar="SPEC",
              help="every:DURATION or cron:EXPR (for --start/--end auto).")
@click.option("--lag", default="0s", show_default=True, metavar="DURATION", help="Lag of the schedule.")
@click.option("--release", default=None, help="Release alias or version (default: scoring.release).")
@click.option("--devices", default="all", show_default=True, metavar="IDS", help="all, or D1,D2,...")
@click.option("--shards", type=click.IntRange(min=1), default=None, help="Number of shards.")
@click.option("--force", type=click.BOOL, default=False, show_default=True, metavar="true|false",
              help="Score again a window already scored with the same release and data.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the task files (one per shard).")
@click.pass_obj
def plan(state: CliState, start: str, end: str, schedule_text: str, lag: str, release: str | None,
         devices: str, shards: int | None, force: bool, out: Path) -> None:
    """Gate the window, resolve the release once and write one task file per shard."""
    from fleetscore.ingestion.timeutil import parse_time
    from fleetscore.pipelines.azureml_plan import parse_schedule_input
    from fleetscore.pipelines.azureml_steps import plan_step

    settings = state.settings()
    schedule = parse_schedule_input(schedule_text, lag)
    if (start == "auto") != (end == "auto"):
        raise click.UsageError("give both --start and --end, or neither (auto)")
    window = (None, None) if start == "auto" else (parse_time(start, "--start"), parse_time(end, "--end"))
    ids = None if devices.strip() in ("", "all") else [d.strip() for d in devices.split(",") if d.strip()]
    summary = plan_step(settings, window[0], window[1], schedule, out, release=release, devices=ids, shards=shards,
                        force=force)
    click.echo(json.dumps(summary, sort_keys=True, default=str))


@score_step.command(name="shard")
@click.argument("task", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def shard(state: CliState, task: Path) -> None:
    """Score the shard of one TASK file and write its part."""
    from fleetscore.pipelines.azureml_steps import read_task, shard_step

    settings = state.settings()
    outcome = shard_step(settings, read_task(task))
    if outcome is None:
        summary: dict[str, object] = {"shard": None, "rows": 0}
    else:
        summary = {k: v for k, v in outcome.to_json().items() if k in ("shard", "rows", "anomalies", "series",
                                                                       "failed")}
    click.echo(json.dumps(summary, sort_keys=True, default=str))


@score_step.command(name="finalize")
@click.option("--tasks", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="The plan step's folder of task files.")
@click.option("--results", type=click.Path(path_type=Path), default=None,
              help="The parallel step's output (its input makes finalize wait for every shard).")
@click.pass_obj
def finalize(state: CliState, tasks: Path, results: Path | None) -> None:
    """Check the parts, write the manifest last and record the run."""
    from fleetscore.pipelines.azureml_steps import finalize_step

    settings = state.settings()
    result = finalize_step(settings, tasks)
    if result.status == "skipped":
        click.echo(f"run {result.run_id}: skipped, duplicate of run {result.duplicate_of}")
        return
    click.echo(f"run {result.run_id}: {result.status}, {result.rows} rows, {result.anomalies} anomalies"
               f" -> {result.location}")
