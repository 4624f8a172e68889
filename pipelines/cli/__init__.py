"""The ``fleetscore`` console command.

Each command lives in its own module of this package and is imported only when it runs, so
``fleetscore --help`` stays fast (``import mlflow`` alone takes 1-2 s). A command parses its
flags, calls one library function and prints the result; :class:`FleetscoreError` becomes a
one-line ``Error: ...`` on standard error and a non-zero exit.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

import click

from fleetscore import __version__
from fleetscore.errors import FleetscoreError
from fleetscore.redact import install_log_redaction, redact

# command name -> "module:attribute" (relative to pipelines.cli)
COMMANDS: dict[str, str] = {
    "config": "config_cmd:config",
    "demo": "demo_cmd:demo",
    "ingest": "ingest_cmd:ingest",
    "simulate": "ingest_cmd:simulate",
    "validate": "validate_cmd:validate",
    "train": "release_cmd:train",
    "release": "release_cmd:release",
    "rollback": "release_cmd:rollback",
    "models": "release_cmd:models",
    "score": "score_cmd:score",
    "runs": "score_cmd:runs",
    "report": "score_cmd:report",
    "predictions": "predictions_cmd:predictions",
    "schedule": "schedule_cmd:schedule",
    "scheduler": "schedule_cmd:scheduler",
    "publish": "publish_cmd:publish",
    "score-step": "shard_cmd:score_step",
    "drift": "ops_cmd:drift",
    "events": "ops_cmd:events",
    "retrain-policy": "ops_cmd:retrain_policy",
}


@dataclass
class CliState:
    """What the group callback hands to every command: the flags, settings not yet resolved."""

    overrides: dict[str, Any]
    config_file: str | None

    def settings(self, **more: Any) -> Any:
        """Resolve the settings once, with this command's own flags as the top precedence."""
        from fleetscore.pipelines.settings import load_settings

        return load_settings({**self.overrides, **more}, self.config_file)


class LazyGroup(click.Group):
    """A click group that imports a command's module only when that command is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        module = importlib.import_module(f"{__name__}.{module_name}")
        command: click.Command = getattr(module, attr)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        from fleetscore.pipelines import telemetry

        telemetry.configure(os.environ)  # the environment picks the exporter (none by default)
        command = ctx.protected_args[0] if ctx.protected_args else ""
        try:
            with telemetry.command_span(command):
                return super().invoke(ctx)
        except FleetscoreError as exc:
            click.echo(f"Error: {redact(exc)}", err=True)
            ctx.exit(exc.exit_code)
        finally:
            telemetry.shutdown()


def _redacted_excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    """A bug's traceback, with its secrets masked (an SQL driver's error may quote the URL)."""
    import traceback

    sys.stderr.write(redact("".join(traceback.format_exception(kind, value, tb))))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="fleetscore")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="Settings file (default: ./fleetscore.toml if present).")
@click.option("--home", default=None, help="Folder for all local state (default: ./.fleetscore).")
@click.option("--database-url", default=None, help="SQLAlchemy URL of the sensor store.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (the model registry).")
@click.option("--storage-url", default=None, help="Blob storage for predictions: a folder or az://container/prefix.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def main(ctx: click.Context, config_file: str | None, home: str | None, database_url: str | None,
         tracking_uri: str | None, storage_url: str | None, verbose: int) -> None:
    """fleetscore: anomaly detection for fleets of IoT devices.

    Ingest sensor readings into SQL, validate them, train one model per (device, sensor),
    release them to MLflow and score the fleet in parallel into blob storage.
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    install_log_redaction()
    sys.excepthook = _redacted_excepthook
    if verbose == 0:
        # MLflow logs its store migrations at INFO through its own handler and draws download bars:
        # our terminal output is the summary lines; -v brings them back
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        # azure-identity and the azureml-mlflow plugin log each failed credential and retry at WARNING;
        # the failure itself is the one-line error, -v brings the details back
        logging.getLogger("azure").setLevel(logging.ERROR)
        logging.getLogger("azureml").setLevel(logging.ERROR)
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # mlflow resets its level on import
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    overrides = {"home": home, "database_url": database_url, "tracking_uri": tracking_uri,
                 "storage_url": storage_url}
    ctx.obj = CliState(overrides=overrides, config_file=config_file)
