"""``fleetscore publish --target azureml``: create or update the scoring pipeline in Azure ML."""

from __future__ import annotations

from pathlib import Path

import click

from fleetscore.pipelines.cli import CliState
from fleetscore.pipelines.cli.options import echo_json, json_option


@click.command(name="publish")
@click.option("--target", type=click.Choice(["azureml"]), required=True, help="Where to publish.")
@click.option("--dry-run", is_flag=True, help="Write the YAML of every entity to --out; no Azure access.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the --dry-run YAML (default: HOME/azureml).")
@click.option("--image-tag", default=None, metavar="TAG",
              help="Tag of the scoring image in the registry (default: azureml.image_tag, else the git commit).")
@click.option("--release-image", is_flag=True,
              help="Use the image tag recorded with the champion release (release --image-tag); fail if none.")
@click.option("--every", default=None, metavar="DURATION", help="Schedule: one window every DURATION, e.g. 1h.")
@click.option("--cron", default=None, metavar="EXPR", help="Schedule: a 5-field cron expression (UTC).")
@click.option("--lag", default=None, metavar="DURATION",
              help="Score a window this long after it ends (default 0s; with --every or --cron).")
@click.option("--no-schedule", is_flag=True,
              help="Leave the schedule alone (default: the one of --every/--cron, else `fleetscore schedule set`).")
@json_option
@click.pass_obj
def publish(state: CliState, target: str, dry_run: bool, out: Path | None, image_tag: str | None,
            release_image: bool, every: str | None, cron: str | None, lag: str | None, no_schedule: bool,
            as_json: bool) -> None:
    """Publish the scoring pipeline: environment (the image in ACR), components, pipeline, schedule and
    a compute cluster that scales to zero. Publishing twice with the same inputs changes nothing."""
    from fleetscore.pipelines import azureml
    from fleetscore.pipelines.azureml_plan import ScheduleSpec, published_schedule

    settings = state.settings()
    if release_image:
        if image_tag:
            raise click.UsageError("give --image-tag or --release-image, not both")
        from fleetscore.pipelines.release import release_image_tag

        _, image_tag = release_image_tag(settings)
    schedule = None
    if every or cron:
        schedule = ScheduleSpec(every=every, cron=cron, lag=lag or "0s")
    elif lag:
        raise click.UsageError("--lag goes with --every or --cron")
    elif not no_schedule:
        schedule = published_schedule(settings.database_url)
    spec = azureml.spec_from_settings(settings, image_tag=image_tag or "", schedule=schedule)
    if dry_run:
        folder = out or Path(settings.home) / "azureml"
        entities = azureml.build_entities(spec, azureml.write_code_dir(folder / azureml.CODE_DIR))
        written = azureml.write_dry_run(entities, folder)
        actions = []
    else:
        if out is not None:
            raise click.UsageError("--out goes with --dry-run")
        workspace = azureml.Workspace.connect(settings.azureml)
        written, actions = [], list(azureml.publish(spec, workspace))
    described = schedule.describe() if schedule else None
    if as_json:
        from dataclasses import asdict

        echo_json({"dry_run": dry_run, "written": written, "actions": [asdict(a) for a in actions],
                   "image": spec.image, "schedule": described})
        return
    for path in written:
        click.echo(f"wrote {path}")
    for action in actions:
        version = f":{action.version}" if action.version else ""
        click.echo(f"{action.action:<9} {action.kind} {action.name}{version}")
    click.echo(f"image {spec.image}")
    click.echo(f"schedule {described or 'none'}")
