"""``fleetscore demo``: the whole flow on the embedded defaults, one command after another.

Each step is the real command a user would type, printed before it runs, so the demo doubles as a
walk-through: simulate -> ingest (simulated and reference data) -> validate -> release -> score -> report.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from fleetscore.pipelines.cli import CliState

# The simulated plant (the industrial profile): the first two hours train, the third is scored.
DEMO_START = "2026-01-05T00:00:00"
TRAIN_END = "2026-01-05T02:00:00"
DEMO_END = "2026-01-05T03:00:00"
REFERENCE_CSV = Path(__file__).resolve().parents[2].parent / "shared" / "reference-data" / "sensor_data.csv"


@click.command()
@click.option("--devices", default=12, show_default=True, help="Simulated pumps (4 sensors each).")
@click.option("--reference", "reference_csv", type=click.Path(dir_okay=False), default=None,
              help="Reference readings to ingest as well (default: ../shared/reference-data/sensor_data.csv "
                   "beside the source tree, when present).")
@click.pass_context
def demo(ctx: click.Context, devices: int, reference_csv: str | None) -> None:
    """Run the whole flow on the embedded defaults and print where everything went.

    simulate -> ingest -> validate -> release -> score -> report, all under --home (default ./.fleetscore).
    """
    from fleetscore.pipelines.cli import main

    state: CliState = ctx.obj
    settings = state.settings()
    home = Path(settings.home)
    demo_dir = home / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    readings = demo_dir / "readings.csv.gz"
    labels = demo_dir / "labels.csv"
    report = demo_dir / "report.html"
    global_args = _global_args(state)

    def step(*args: str) -> None:
        click.secho("\n$ fleetscore " + " ".join(shlex.quote(a) for a in args), bold=True)
        main.main([*global_args, *args], prog_name="fleetscore", standalone_mode=False)

    # the reference devices are named 1, 2, 3 like the simulated ones: they get a store of their own
    reference_db = f"sqlite:///{home / 'reference.db'}"

    step("simulate", "--profile", "industrial", "--devices", str(devices), "--duration", "3h", "--clean", "2h",
         "--interval", "1s", "--start", DEMO_START, "--seed", "7", "--out", str(readings), "--labels", str(labels))
    step("ingest", str(readings))
    reference = Path(reference_csv) if reference_csv else REFERENCE_CSV
    if reference.exists():
        step("--database-url", reference_db, "ingest", "--aggregated", str(reference))
    else:
        click.echo(f"(reference data not found at {reference}; skipped)")
    step("validate", "--start", DEMO_START, "--end", DEMO_END)
    step("release", "--start", DEMO_START, "--end", TRAIN_END)
    step("score", "--start", TRAIN_END, "--end", DEMO_END)
    run_id = _latest_run_id(settings)
    step("report", run_id, "--out", str(report))
    _print_quality(settings, labels, TRAIN_END, DEMO_END)
    click.secho("\nWhere everything went:", bold=True)
    click.echo(f"  sensor store     {settings.database_url}")
    if reference.exists():
        click.echo(f"  reference data   {reference_db}")
    click.echo(f"  model registry   {settings.tracking_uri}")
    click.echo(f"  predictions      {settings.storage_url}/predictions/")
    click.echo(f"  scoring runs     {settings.storage_url}/runs/")
    click.echo(f"  report           {report}")
    click.echo(f"  simulated input  {readings} (labels: {labels})")


def _global_args(state: CliState) -> list[str]:
    args: list[str] = []
    if state.config_file:
        args += ["--config", state.config_file]
    for key, value in state.overrides.items():
        if value is not None:
            args += ["--" + key.replace("_", "-"), str(value)]
    return args


def _latest_run_id(settings: object) -> str:
    from fleetscore.pipelines.demo import latest_run_id

    return latest_run_id(settings)  # type: ignore[arg-type]


def _print_quality(settings: object, labels: Path, start: str, end: str) -> None:
    from fleetscore.pipelines.demo import detection_quality

    quality = detection_quality(settings, labels, start, end)  # type: ignore[arg-type]
    click.secho("\nDetection quality on the simulated plant (scored range):", bold=True)
    for row in quality.anomalies:
        click.echo(f"  {row.kind:<16} {row.windows:>7,} windows  recall {row.rate:.2%}")
    click.echo(f"  {'all anomalies':<16} {quality.recall.windows:>7,} windows  recall {quality.recall.rate:.2%}")
    if quality.hidden.windows:
        click.echo(f"  {'drift < 2 sigma':<16} {quality.hidden.windows:>7,} windows  recall {quality.hidden.rate:.2%}"
                   "  (not visible in one window; left out above)")
    click.echo(f"  {'normal':<16} {quality.normal.windows:>7,} windows  false-alarm rate {quality.normal.rate:.2%}")
    for row in quality.events:
        click.echo(f"  {row.kind:<16} {row.windows:>7,} windows  false-alarm rate {row.rate:.2%}"
                   "  (legitimate, labelled normal)")
