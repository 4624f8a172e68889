"""The CLI surface: every command has help, --version, config output, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from fleetscore import __version__
from fleetscore.pipelines.cli import COMMANDS, main


def _all_commands() -> list[list[str]]:
    paths: list[list[str]] = []
    ctx = click.Context(main)
    for name in COMMANDS:
        cmd = main.get_command(ctx, name)
        assert cmd is not None
        paths.append([name])
        if isinstance(cmd, click.Group):
            paths.extend([name, sub] for sub in cmd.list_commands(ctx))
    return paths


@pytest.mark.parametrize("path", _all_commands(), ids=" ".join)
def test_every_command_has_help(path: list[str]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"], prog_name="fleetscore")
    assert result.exit_code == 0, result.output
    assert "Usage: fleetscore " + " ".join(path) in result.output
    assert "Not built yet" not in result.output


@pytest.mark.parametrize("path", _all_commands(), ids=" ".join)
def test_every_command_takes_verbose_and_quiet_after_it(path: list[str]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"], prog_name="fleetscore")
    assert "-v, --verbose" in result.output and "-q, --quiet" in result.output


def _fleetscore(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).with_name("fleetscore")), *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_verbose_after_the_command_is_verbose_before_it_and_quiet_wins(home: Path) -> None:
    info = "INFO fleetscore.ingestion.ingest: nosuch.csv: no such file\n"
    error = "Error: nosuch.csv: no such file\n"
    after, before = _fleetscore("ingest", "nosuch.csv", "-v"), _fleetscore("-v", "ingest", "nosuch.csv")
    assert after.returncode == before.returncode == 1
    assert after.stderr == before.stderr == info + error
    assert _fleetscore("ingest", "nosuch.csv").stderr == error
    assert _fleetscore("ingest", "nosuch.csv", "-v", "--quiet").stderr == error  # the error itself stays


@pytest.mark.parametrize(("args", "missing"), [
    (["runs", "list"], "store"), (["runs", "show", "r1"], "store"), (["report", "r1"], "store"),
    (["score"], "store"), (["train"], "store"), (["release"], "store"), (["validate"], "store"),
    (["events", "list"], "store"), (["events", "ack", "1"], "store"), (["drift"], "store"),
    (["retrain-policy", "show"], "store"), (["schedule", "show"], "store"),
    (["models", "list"], "registry"), (["models", "show"], "registry"), (["rollback"], "registry"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_read_only_commands_create_no_state_and_name_what_is_missing(home: Path, args: list[str],
                                                                     missing: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    state = home / ".fleetscore"
    expected = {
        "store": "Error: no sensor store at sqlite:///.fleetscore/fleetscore.db: ingest readings first "
                 "(fleetscore ingest PATH, or fleetscore simulate --ingest)",
        "registry": "Error: no model registry at sqlite:///.fleetscore/mlflow.db: fleetscore release creates it",
    }[missing]
    assert result.stderr.splitlines() == [expected]
    assert not state.exists()


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.output == f"fleetscore, version {__version__}\n"


def test_config_masks_secrets_and_shows_flags(home: Path) -> None:
    result = CliRunner().invoke(main, ["--database-url", "postgresql://me:hunter2@db/fleet", "config"])
    assert result.exit_code == 0
    assert 'database_url = "postgresql://me:****@db/fleet"' in result.output
    assert "hunter2" not in result.output
    assert "[training]" in result.output


def test_config_error_is_one_line(home: Path) -> None:
    result = CliRunner().invoke(main, ["config"], env={"FLEETSCORE_WORKERS": "many"})
    assert result.exit_code == 2
    assert result.output == "Error: setting workers: cannot read 'many' as int\n"
