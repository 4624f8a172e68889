"""Bad command-line input gives one line and leaves no record (issue 15): an unknown --devices id,
an id holding a comma, an ambiguous date."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from fleetscore.pipelines.cli import main
from fleetscore.pipelines.settings import load_settings
from fleetscore.records.run_log import RunLog
from fleetscore.scoring import table
from tests.scoring.fleet import START, fit_release, fleet_windows, store_windows

RANGE = ["--start", START.isoformat(), "--end", (START + timedelta(minutes=10)).isoformat()]


@pytest.fixture()
def comma_home(home: Path) -> Path:
    """Devices ``a,b``, ``a`` and ``b`` in the store and a release of them in ``release/``."""
    settings = load_settings({"home": str(home / ".fleetscore")}, environ={})
    train = fleet_windows(3, 2, 200, seed=1, start=START - timedelta(seconds=5 * 200))
    data = fleet_windows(3, 2, 120, seed=2)
    for frame in (train, data):
        frame["device"] = frame["device"].replace({"1": "a,b", "2": "a", "3": "b"})
    store_windows(settings.database_url, pd.concat([train, data], ignore_index=True))
    fit_release(train).save(home / "release")
    (home / "fleetscore.toml").write_text("workers = 1\n[scoring]\nlog_to_mlflow = false\n")
    return home


def _records(home: Path) -> list[dict]:
    settings = load_settings({"home": str(home / ".fleetscore")}, environ={})
    return RunLog(settings.database_url).list()


def test_an_unknown_device_is_one_line_and_leaves_no_record(comma_home: Path) -> None:
    result = CliRunner().invoke(main, ["score", *RANGE, "--release", "path:release", "--devices", "a,nosuch"])
    assert result.exit_code == 1
    assert result.output == "Error: --devices: no device 'nosuch' in the sensor store; it holds 3 devices\n"
    assert _records(comma_home) == []


@pytest.mark.parametrize("skip", [True, False])
def test_a_device_id_with_a_comma_is_selected_escaped(comma_home: Path, skip: bool) -> None:
    args = ["score", *RANGE, "--release", "path:release", "--devices", "a\\,b"]
    result = CliRunner().invoke(main, args + (["--skip-validation"] if skip else []))
    assert result.exit_code == 0, result.output
    got = table.read_predictions(str(comma_home / ".fleetscore" / "blob"))
    assert set(got["Device"]) == {"a,b"} and len(got) == 2 * 120


@pytest.mark.parametrize("option", ["--start", "--end"])
def test_an_ambiguous_date_is_refused(comma_home: Path, option: str) -> None:
    args = ["score", "--release", "path:release", option, "05/01/2026"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert result.output == (f"Error: {option}: not an ISO 8601 time: '05/01/2026' "
                             "(e.g. 2018-08-29 or 2018-08-29T01:00:00)\n")
    assert _records(comma_home) == []
