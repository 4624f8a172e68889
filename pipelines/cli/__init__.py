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
from dataclasses import dataclass, field
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
    "quarantine": "quarantine_cmd:quarantine",
}


@dataclass
class CliState:
    """What the group callback hands to every command: the flags, settings not yet resolved."""

    overrides: dict[str, Any]
    config_file: str | None
    verbose: int = 0
    quiet: bool = False
    env_set: set[str] = field(default_factory=set)  # variables configure_output set (the user's are kept)

    def settings(self, **more: Any) -> Any:
        """Resolve the settings once, with this command's own flags as the top precedence."""
        from fleetscore.pipelines.settings import load_settings

        return load_settings({**self.overrides, **more}, self.config_file)


def configure_output(state: CliState) -> None:
    """Log levels for ``-v`` (INFO), ``-vv`` (DEBUG), none (WARNING) or ``--quiet`` (ERROR only)."""
    verbose, quiet = state.verbose, state.quiet
    level = logging.ERROR if quiet else logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else (
        logging.DEBUG)
    logging.getLogger().setLevel(level)
    # MLflow logs its store migrations at INFO through its own handler and draws download bars; the
    # azure-identity and azureml-mlflow plugins log each failed credential and retry at WARNING: our
    # terminal output is the summary lines and the one-line error, -v brings the rest back
    libraries_quiet = verbose == 0
    logging.getLogger("mlflow").setLevel(logging.WARNING if libraries_quiet else logging.NOTSET)
    for name in ("azure", "azureml"):
        logging.getLogger(name).setLevel(logging.ERROR if libraries_quiet else logging.NOTSET)
    # mlflow resets its level on import from this variable; a user's own setting is kept
    for name, value in (("MLFLOW_LOGGING_LEVEL", "WARNING"), ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")):
        if libraries_quiet and name not in os.environ:
            os.environ[name] = value
            state.env_set.add(name)
        elif not libraries_quiet and name in state.env_set:
            os.environ.pop(name, None)
            state.env_set.discard(name)


def _more_verbose(ctx: click.Context, _param: click.Parameter, value: int) -> None:
    state = ctx.find_object(CliState)
    if value and state is not None:
        state.verbose += value
        configure_output(state)


def _quieter(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    state = ctx.find_object(CliState)
    if value and state is not None:
        state.quiet = True
        configure_output(state)


def _output_options(command: click.Command) -> click.Command:
    """``-v/--verbose`` and ``-q/--quiet`` on ``command`` and every subcommand of it, so that they work
    after the subcommand as before it (``fleetscore score -v`` = ``fleetscore -v score``)."""
    names = {opt for param in command.params for opt in getattr(param, "opts", [])}
    if "--verbose" not in names:
        command.params.append(click.Option(["-v", "--verbose"], count=True, expose_value=False,
                                           callback=_more_verbose, help="More log output (-vv for debug)."))
    if "--quiet" not in names:
        command.params.append(click.Option(["-q", "--quiet"], is_flag=True, expose_value=False,
                                           callback=_quieter, help="No progress bars, only errors on stderr."))
    for sub in getattr(command, "commands", {}).values():
        _output_options(sub)
    return command


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
        return _output_options(command)

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
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug); also after the command.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars, only errors on stderr; also after the command.")
@click.pass_context
def main(ctx: click.Context, config_file: str | None, home: str | None, database_url: str | None,
         tracking_uri: str | None, storage_url: str | None, verbose: int, quiet: bool) -> None:
    """fleetscore: anomaly detection for fleets of IoT devices.

    Ingest sensor readings into SQL, validate them, train one model per (device, sensor),
    release them to MLflow and score the fleet in parallel into blob storage.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    install_log_redaction()
    sys.excepthook = _redacted_excepthook
    overrides = {"home": home, "database_url": database_url, "tracking_uri": tracking_uri,
                 "storage_url": storage_url}
    ctx.obj = CliState(overrides=overrides, config_file=config_file, verbose=verbose, quiet=quiet)
    configure_output(ctx.obj)
