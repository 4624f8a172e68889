"""``fleetscore train``, ``release``, ``rollback`` and ``models list|show``."""

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


@click.command(name="train")
@time_range_options
@devices_option
@click.option("--skip-validation", is_flag=True, help="Do not run the data-checks gate (recorded in the manifest).")
@json_option
@click.pass_obj
def train(state: Any, start: str | None, end: str | None, last: str | None, devices: tuple[str, ...],
          skip_validation: bool, as_json: bool) -> None:
    """Validate and fit one model per (device, sensor); save the candidate bundle (no registration).

    Without a range, all stored windows are used. The last training.gate_holdout_fraction of the range
    is held out for the evaluation gate and not fitted.
    """
    settings = state.settings()
    from fleetscore.pipelines.local_state import require_store

    require_store(settings)
    window_start, window_end = time_range(start, end, last)
    from fleetscore.pipelines.release import train_candidate

    with progress_bar("training shards") as on_progress:
        cand = train_candidate(settings, window_start, window_end, split_ids(devices), skip_validation, on_progress)
    if as_json:
        echo_json({"models": len(cand.bundle), "rows": cand.rows, "seconds": cand.seconds,
                   "train_start": cand.start, "holdout_start": cand.split, "train_end": cand.end,
                   "validation_id": cand.validation_id, "bundle": cand.path,
                   "skipped": {f"{d}/{s}": why for (d, s), why in cand.skipped.items()},
                   "failed": {f"{d}/{s}": why for (d, s), why in cand.failed.items()}})
        return
    click.echo(f"trained {len(cand.bundle):,} models on {cand.rows:,} windows in {cand.seconds:.1f} s "
               f"({cand.models_per_second:,.0f} models/s); {len(cand.skipped):,} skipped, {len(cand.failed):,} failed")
    click.echo(f"training range {cand.start} .. {cand.split} (holdout until {cand.end}), "
               f"validation {cand.validation_id}")
    for (device, sensor), reason in list(cand.skipped.items())[:10]:
        click.echo(f"skipped {device}/{sensor}: {reason}")
    click.echo(f"bundle: {cand.path}")


@click.command(name="release")
@time_range_options
@devices_option
@click.option("--force", is_flag=True, help="Promote every new model, whatever the evaluation gate says.")
@click.option("--skip-validation", is_flag=True, help="Do not run the data-checks gate (recorded in the tags).")
@click.option("--only", "only", default="all", show_default=True, metavar="drifted|new|failed|stale|all",
              help="Retrain just these series (comma list); every other series keeps the champion's model.")
@click.option("--image-tag", default=None, metavar="TAG",
              help="Record TAG as the scoring image built for this release (publish --release-image reuses it).")
@json_option
@click.pass_obj
def release(state: Any, start: str | None, end: str | None, last: str | None, devices: tuple[str, ...],
            force: bool, skip_validation: bool, only: str, image_tag: str | None, as_json: bool) -> None:
    """Validate, train, gate against the champion, register the release and make it the champion.

    Prints e.g. "released v8: 9,812 promoted, 171 kept from v7, 17 new, 0 failed". With --only, only
    the drifted, new, failed or stale series are retrained (docs/operations.md).
    """
    settings = state.settings()
    from fleetscore.pipelines.local_state import require_store

    require_store(settings)
    window_start, window_end = time_range(start, end, last)
    from fleetscore.errors import NothingToRetrain
    from fleetscore.pipelines.release import run_release

    try:
        with progress_bar("training shards") as on_progress:
            outcome = run_release(settings, window_start, window_end, split_ids(devices), force, skip_validation,
                                  on_progress, only=only.split(","), image_tag=image_tag)
    except NothingToRetrain as exc:
        if as_json:
            echo_json({"status": "nothing_to_retrain", "reason": str(exc), "model": settings.training.model_name})
        else:
            click.echo(f"nothing to retrain: {exc}")
        return
    if as_json:
        cand = outcome.candidate
        echo_json({"status": "released", "version": outcome.version, "model": settings.training.model_name,
                   "summary": outcome.summary, "counts": outcome.counts, "champion_before": outcome.champion_before,
                   "mlflow_run_id": outcome.run_id, "train_start": cand.start, "holdout_start": cand.split,
                   "train_end": cand.end, "skipped": len(cand.skipped), "failed": len(cand.failed),
                   "validation_id": cand.validation_id})
        return
    click.echo(outcome.summary)
    click.echo(f"champion: v{outcome.version} (was {_v(outcome.champion_before)}), "
               f"model {settings.training.model_name}")


def _v(version: int | None) -> str:
    return f"v{version}" if version is not None else "none"


@click.command(name="rollback")
@click.option("--to", "to_version", type=click.IntRange(min=1), default=None, metavar="VERSION",
              help="The version to go back to (default: the previous champion).")
@click.option("--device", default=None, help="Roll back only this device's models (a new release).")
@click.option("--sensor", default=None, help="With --device: only this sensor's model.")
@click.option("--reason", default="", help="Why (recorded with the alias move).")
@json_option
@click.pass_obj
def rollback(state: Any, to_version: int | None, device: str | None, sensor: str | None, reason: str,
             as_json: bool) -> None:
    """Move the champion back, or make a release with one device's models from an older version.

    Without --device the champion alias moves to VERSION (default: the previous champion). With
    --device D [--sensor S] --to VERSION a new release takes that series from VERSION and every other
    series from the champion, and becomes the champion.
    """
    settings = state.settings()
    from fleetscore.pipelines.local_state import require_registry

    require_registry(settings)
    from fleetscore.pipelines.release import rollback as do_rollback

    outcome = do_rollback(settings, to_version, device, sensor, reason)
    if as_json:
        from dataclasses import asdict

        echo_json({**asdict(outcome), "model": settings.training.model_name})
    else:
        click.echo(outcome.summary)


@click.group(name="models")
def models() -> None:
    """Releases in the model registry: versions, aliases, alias history, per-device provenance."""


@models.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def models_list(state: Any, as_json: bool) -> None:
    """Every release of the fleet's model, newest first."""
    settings = state.settings()
    from fleetscore.pipelines.local_state import require_registry

    require_registry(settings)
    from fleetscore.pipelines.release import list_releases

    versions = list_releases(settings)
    if as_json:
        click.echo(json.dumps(versions, indent=1, default=str))
        return
    click.echo(f"{'version':>7}  {'created':19}  {'aliases':20}  summary")
    for v in versions:
        summary = v["tags"].get("fleetscore.gate_summary", "")
        click.echo(f"{v['version']:>7}  {v['created']:%Y-%m-%d %H:%M:%S}  {','.join(v['aliases']):20}  {summary}")


@models.command(name="show")
@click.argument("version", required=False, default="champion")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True,
              help="Series to list (0: all).")
@click.pass_obj
def models_show(state: Any, version: str, as_json: bool, limit: int) -> None:
    """One release (VERSION: a number, champion or challenger; default champion)."""
    settings = state.settings()
    from fleetscore.pipelines.local_state import require_registry

    require_registry(settings)
    from fleetscore.pipelines.release import show_release

    info = show_release(settings, version)
    if as_json:
        click.echo(json.dumps(info, indent=1, default=str))
        return
    click.echo(f"version {info['version']}  aliases: {', '.join(info['aliases']) or '-'}  created {info['created']}")
    for key in sorted(info["tags"]):
        click.echo(f"  {key} = {info['tags'][key]}")
    click.echo("alias history:")
    for move in info["alias_history"]:
        click.echo(f"  {move['time']}  {move['user']}  {move['alias']}: {_v(move['from_version'])} -> "
                   f"v{move['to_version']}  ({move['reason']})")
    series = info["series"] if limit == 0 else info["series"][:limit]
    click.echo(f"series ({len(info['series']):,}; features {', '.join(info['features'])}):")
    for s in series:
        click.echo(f"  {s['device']}/{s['sensor']}  {s['decision'] or '-':9}  trained in v{s['trained_in']}  "
                   f"{s['rows']} windows {s['train_start']} .. {s['train_end']}  data {s['data_hash']}")
    if limit and len(info["series"]) > limit:
        click.echo(f"  ... {len(info['series']) - limit:,} more (--limit 0 for all)")
    for s in info["skipped"]:
        click.echo(f"  skipped {s['device']}/{s['sensor']}: {s['reason']}")
