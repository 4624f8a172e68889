"""``--json`` on every command that reports a result: one object a script can parse, in one flow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fleetscore.pipelines.cli import main

pytestmark = pytest.mark.slow

START, SPLIT, END = "2024-01-01T00:00", "2024-01-01T01:00", "2024-01-01T01:30"


def _json(*args: str, env: dict[str, str] | None = None) -> Any:
    """``fleetscore ARGS --json`` in its own process; its stdout parsed (nothing else on stdout)."""
    env = {**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", **(env or {})}
    done = subprocess.run([str(Path(sys.executable).with_name("fleetscore")), *args, "--json"], capture_output=True,
                          text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _json_here(*args: str, env: dict[str, str] | None = None) -> Any:
    """The same in this process (commands that start no worker processes: seconds of imports saved)."""
    result = CliRunner().invoke(main, [*args, "--json"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_every_result_is_one_json_object(home: Path) -> None:  # noqa: PLR0915  one flow, step by step
    sim = _json_here("simulate", "--devices", "2", "--sensors", "2", "--duration", "90m", "--seed", "4",
                "--out", "readings.csv")
    assert sim["devices"] == 2 and sim["windows"] == 2 * 2 * 1080 and sim["ingest"] is None
    ingested = _json_here("ingest", "readings.csv")
    assert ingested["inputs"][0]["status"] == "ingested" and ingested["total"]["windows_written"] == 2 * 2 * 1080
    assert ingested["database"] == "sqlite:///.fleetscore/fleetscore.db"
    again = _json_here("ingest", "readings.csv")
    assert [i["status"] for i in again["inputs"]] == ["skipped"]

    trained = _json("train", "--start", START, "--end", SPLIT, "--skip-validation")
    assert trained["models"] == 4 and Path(trained["bundle"]).exists() and trained["failed"] == {}
    first = _json("release", "--start", START, "--end", SPLIT, "--skip-validation", "--image-tag", "img1")
    assert (first["status"], first["version"], first["counts"]["new"]) == ("released", 1, 4)
    second = _json("release", "--start", START, "--end", SPLIT, "--skip-validation", "--force")
    assert second["version"] == 2 and second["champion_before"] == 1
    assert [r["version"] for r in _json_here("models", "list")] == [2, 1]
    assert _json_here("models", "show")["version"] == 2

    scored = _json("score", "--start", SPLIT, "--end", END, "--skip-validation")
    assert scored["status"] == "done" and scored["release_version"] == 2 and scored["rows"] == 4 * 360
    assert 0 <= scored["anomaly_rate"] <= 1 and scored["manifest"].endswith("manifest.json")
    skipped = _json("score", "--start", SPLIT, "--end", END, "--skip-validation")
    assert skipped["status"] == "skipped" and skipped["duplicate_of"] == scored["run_id"]
    runs = _json_here("runs", "list")["runs"]
    assert [r["run_id"] for r in runs if r["status"] == "done"] == [scored["run_id"]]
    assert _json_here("runs", "show", scored["run_id"])["rows"] == scored["rows"]
    shown = _json_here("predictions", "show")
    assert shown and _json_here("predictions", "history")
    assert isinstance(_json_here("drift", "--all"), list)
    events = _json_here("events", "list")
    assert events  # the simulated anomalies make events; ack and label one
    assert _json_here("events", "ack", str(events[0]["id"]))["event"]["acked_at"]
    assert _json_here("events", "label", str(events[0]["id"]), "--normal")["event"]["label"] == "normal"
    assert _json_here("validate", "--start", START, "--end", END)["fleet_ok"] is True
    assert _json_here("config")["database_url"] == "sqlite:///.fleetscore/fleetscore.db"
    report = _json_here("report", scored["run_id"], "--out", "r.html")
    assert Path(report["report"]).name == "r.html" and Path("r.html").exists()

    back = _json_here("rollback")
    assert (back["champion_before"], back["champion"], back["new_release"]) == (2, 1, False)
    per_device = _json_here("rollback", "--device", "1", "--to", "2")
    assert per_device["new_release"] and per_device["series"] == 2 and per_device["champion"] == 3
    # the image recorded with v1 scores v3 (v1's models and code, one device from v2): publish --release-image
    from fleetscore.errors import ReleaseNotFound
    from fleetscore.pipelines.release import release_image_tag
    from fleetscore.pipelines.settings import load_settings

    settings = load_settings({}, environ={})
    assert release_image_tag(settings) == (3, "img1")
    with pytest.raises(ReleaseNotFound, match=r"v2 records no scoring image \(fleetscore.image_tag\)"):
        release_image_tag(settings, "2")

    schedule = _json_here("schedule", "set", "--every", "1h", "--start", START)["schedule"]
    assert schedule["version"] == 1 and schedule["every"] == "1h" and schedule["lag_seconds"] == 300
    assert _json_here("schedule", "show")["schedule"] == schedule
    policy = _json_here("retrain-policy", "set", "--every", "1d")["policy"]
    assert policy["every"] == "1d" and _json_here("retrain-policy", "show")["every"] == "1d"
    from tests.pipelines.test_azureml import AZURE_ENV, GLOBAL_FLAGS

    published = _json_here(*GLOBAL_FLAGS, "publish", "--target", "azureml", "--dry-run", "--out", "aml", "--image-tag",
                       "t1", "--every", "1h", env=AZURE_ENV)
    assert published["dry_run"] and published["actions"] == [] and published["image"].endswith(":t1")
    assert {Path(p).name for p in published["written"]} >= {"schedule.yml"} and published["schedule"]
