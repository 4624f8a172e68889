"""``fleetscore release``, ``rollback`` and ``models`` end to end: simulated fleet, real MLflow stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleetscore.pipelines.cli import main

pytestmark = pytest.mark.slow


def _run(*args: str, code: int = 0) -> str:
    """One command in its own process, like a user or CI runs it (in one process, SQLite connections of
    several engines on the same file do not survive the training workers' fork: reported). Returns
    stdout, or stderr when ``code`` is non-zero."""
    env = {**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    done = subprocess.run([str(Path(sys.executable).with_name("fleetscore")), *args], capture_output=True,
                          text=True, env=env, check=False)
    assert done.returncode == code, done.stderr[-3000:]
    return done.stdout if code == 0 else done.stderr


def _broken_series_csv(path: Path) -> Path:
    """Device 9 sensor 1: the same value for two hours (a dead sensor: validation excludes it)."""
    lines = ["TS,Device,Sensor,Value"]
    lines += [f"2024-01-01T{h:02d}:{m:02d}:{s:02d},9,1,12.5"
              for h in range(2) for m in range(60) for s in range(0, 60, 5)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def fleet_home(home: Path) -> Path:
    _run("simulate", "--devices", "3", "--sensors", "2", "--duration", "2h", "--start", "2024-01-01", "--seed", "3",
         "--ingest")
    _run("ingest", str(_broken_series_csv(home / "dead.csv")))
    return home


def test_release_gate_rollbacks_and_models(fleet_home: Path) -> None:
    out = _run("release", "--start", "2024-01-01T00:00", "--end", "2024-01-01T01:00")
    assert out.splitlines() == ["released v1: 0 promoted, 0 kept, 6 new, 0 failed, 1 skipped",
                                "champion: v1 (was none), model fleetscore-anomaly"]
    show = json.loads(_run("models", "show", "1", "--json"))
    assert show["skipped"] == [{"device": "9", "sensor": "1", "reason": "excluded by validation"}]
    assert {(s["device"], s["sensor"]) for s in show["series"]} == {(d, s) for d in "123" for s in "12"}
    assert show["tags"]["fleetscore.validation_id"] != "skipped"
    assert show["tags"]["fleetscore.parent_champion"] == "none"

    out = _run("release", "--start", "2024-01-01T00:30", "--end", "2024-01-01T01:30", "--skip-validation")
    first = out.splitlines()[0]
    # without validation the dead series is not excluded: it enters as new
    assert first.startswith("released v2: ") and first.endswith(" kept from v1, 1 new, 0 failed")
    promoted, kept = (int(first.split(": ")[1].split(" promoted")[0]),
                      int(first.split("promoted, ")[1].split(" kept")[0]))
    assert promoted + kept == 6
    show = json.loads(_run("models", "show", "champion", "--json"))
    assert show["version"] == 2 and show["tags"]["fleetscore.skip_validation"] == "true"
    assert show["tags"]["fleetscore.parent_champion"] == "1"
    assert show["tags"]["fleetscore.gate_summary"] == first

    assert _run("rollback").splitlines() == ["champion: v2 -> v1"]
    out = _run("rollback", "--device", "2", "--sensor", "1", "--to", "2")
    assert out.splitlines() == ["released v3: device 2 sensor 1 (1 series) from v2, 5 kept from v1"]
    show = json.loads(_run("models", "show", "--json"))
    trained = {(s["device"], s["sensor"]): s["trained_in"] for s in show["series"]}
    assert trained[("2", "1")] == 2 and trained[("1", "1")] == 1
    moves = [(m["alias"], m["from_version"], m["to_version"]) for m in show["alias_history"]]
    assert moves == [("challenger", None, 1), ("champion", None, 1), ("challenger", 1, 2), ("champion", 1, 2),
                     ("champion", 2, 1), ("champion", 1, 3)]
    sql = [(m["alias"], m["from_version"], m["to_version"]) for m in show["alias_history_sql"]]
    # every move is in SQL too (workers start from a fork server, so no SQLite connection crosses a fork)
    assert sql == moves

    listing = _run("models", "list").splitlines()
    assert listing[1].split()[:2] == ["3", listing[1].split()[1]] and "champion" in listing[1]
    assert "challenger" in listing[2] and listing[3].strip().startswith("1 ")


def test_rollback_before_any_release_is_a_one_line_error(home: Path) -> None:
    result = CliRunner().invoke(main, ["rollback"])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == ("Error: no model registry at sqlite:///.fleetscore/mlflow.db: "
                                              "fleetscore release creates it")


def test_release_on_an_empty_store_is_a_one_line_error(home: Path) -> None:
    _run("simulate", "--devices", "1", "--sensors", "1", "--duration", "1m", "--ingest")
    err = _run("train", "--start", "2030-01-01", "--end", "2030-01-02", "--skip-validation", code=1)
    assert err == ("Error: no series could be trained in [2030-01-01 00:00:00, 2030-01-01 18:00:00): "
                   "0 skipped, 0 failed\n")
