"""The operational loop end to end, in process: a release lacking a device, cold-start predictions, drift
per series, ``release --only drifted,new``, anomaly events across overlapping runs and a rescore."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner, Result

import fleetscore.pipelines.scoring_pipeline as sp
from fleetscore.ingestion.ops_store import OpsStore
from fleetscore.pipelines import release_resolution
from fleetscore.pipelines.cli import main
from fleetscore.pipelines.release import run_release, show_release
from fleetscore.pipelines.settings import Settings
from fleetscore.scoring import table
from fleetscore.training.bundle import ReleaseBundle
from fleetscore.training.coldstart import FLEET_DEVICE
from tests.scoring.fleet import START, fleet_windows, settings_for, store_windows

pytestmark = pytest.mark.slow

T1 = START + timedelta(minutes=20)  # training data before, scoring data after
T2 = T1 + timedelta(minutes=20)
DRIFTED = ("2", "1")
NEW_DEVICE = "5"


@pytest.fixture()
def loop(home: Path) -> dict:
    """Devices 1-4 x 2 sensors from START; device 5 appears at T1; series 2/1 shifts at T1 (drift)."""
    train = fleet_windows(4, 2, 240, seed=1, start=START)
    later = fleet_windows(5, 2, 240, seed=2, start=T1)
    shifted = (later["device"] == DRIFTED[0]) & (later["sensor"] == DRIFTED[1])
    later.loc[shifted, ["value", "value_min", "value_max"]] += 3.0  # the sensor's range is 10-15
    settings = settings_for(home, **{"alerts.event_gap": "15s"})
    store_windows(settings.database_url, pd.concat([train, later], ignore_index=True))
    return {"settings": settings, "later": later}


def _cli(settings: Settings, args: list[str]) -> Result:
    return CliRunner().invoke(main, ["--home", str(settings.home), *args])


def test_cold_start_drift_and_selective_release(loop: dict) -> None:
    settings = loop["settings"]
    first = run_release(settings, START, T1, skip_validation=True)
    assert first.version == 1 and first.counts["new"] == 8
    bundle = ReleaseBundle.load(Path(release_resolution.resolve_release(settings, "champion").bundle_dir))
    assert {k for k in bundle.keys if k[0] == FLEET_DEVICE} == {(FLEET_DEVICE, "1"), (FLEET_DEVICE, "2")}

    # the new device gets fleet-scope predictions; the manifest and the CLI say so
    result = _cli(settings, ["score", "--start", T1.isoformat(), "--end", T2.isoformat(),
                                       "--skip-validation"])
    assert result.exit_code == 0, result.output
    assert "cold start: 2 series scored by a fleet model (no model of their own), 0 unscored" in result.output
    got = table.read_predictions(settings.storage_url)
    scope = got.groupby("Device")["ModelScope"].unique().map(list).to_dict()
    assert scope == {"1": ["series"], "2": ["series"], "3": ["series"], "4": ["series"], NEW_DEVICE: ["fleet"]}
    assert len(got) == len(loop["later"])  # every series scored
    manifest_path = next(line for line in result.output.splitlines() if line.startswith("manifest: "))[10:]
    manifest = json.loads(Path(manifest_path).read_text())
    run_id = manifest["run_id"]
    assert manifest["cold_start"] == {"fleet_scored_series": 2, "fleet_scored": ["5/1", "5/2"], "unscored_series": 0}

    # drift: only the shifted series is past the threshold, in the manifest, SQL and `fleetscore drift`
    assert list(manifest["drift"]["drifted"]) == ["2/1"] and manifest["drift"]["drifted_series"] == 1
    assert manifest["drift"]["drifted"]["2/1"]["anomaly_rate"] > 0.3
    listed = json.loads(_cli(settings, ["drift", "--json"]).output)
    assert [(r["device"], r["sensor"]) for r in listed] == [DRIFTED] and listed[0]["feature"] == "value"
    everything = json.loads(_cli(settings, ["drift", "--all", "--json"]).output)
    assert len(everything) == 10 and max(r["drift"] for r in everything if r["device"] != "2" or r["sensor"] != "1") \
        < settings.training.drift_threshold

    report = _cli(settings, ["report", run_id, "--out", str(Path(settings.home) / "r.html")])
    assert report.exit_code == 0, report.output
    page = (Path(settings.home) / "r.html").read_text()
    assert "Most drifted series" in page and "(drifted)" in page

    # release --only drifted,new retrains exactly the drifted series and the new device's
    second = run_release(settings, START, T2, skip_validation=True, only=["drifted", "new"])
    trained = set(second.candidate.bundle.keys)
    assert trained == {DRIFTED, (NEW_DEVICE, "1"), (NEW_DEVICE, "2")}
    show = show_release(settings, "champion")
    assert show["version"] == 2
    by_key = {(s["device"], s["sensor"]): s for s in show["series"]}
    assert set(by_key) == {(str(d), str(s)) for d in range(1, 6) for s in (1, 2)}
    for key, s in by_key.items():
        if key in trained:
            assert s["selected_as"] == ("drifted" if key == DRIFTED else "new")
        else:  # every other series keeps the champion's model, trained in v1
            assert (s["decision"], s["kept_from"], s["trained_in"]) == ("kept", 1, 1)
    assert by_key[(NEW_DEVICE, "1")]["decision"] == "new" and by_key[(NEW_DEVICE, "1")]["trained_in"] == 2
    assert [f["decision"] for f in show["fleet_models"]] == ["kept", "kept"]

    # nothing left to retrain: a one-line answer, no release
    out = _cli(settings, ["release", "--only", "new", "--skip-validation",
                                    "--start", START.isoformat(), "--end", T2.isoformat()])
    assert out.exit_code == 0 and out.output.startswith("nothing to retrain"), out.output


def test_one_event_per_episode_across_overlapping_runs_and_a_rescore(loop: dict) -> None:
    settings = loop["settings"]
    run_release(settings, START, T1, skip_validation=True)
    a = sp.score_window(settings, T1, T1 + timedelta(minutes=10), skip_validation=True)
    events_a = OpsStore(settings.database_url).list_events(limit=10_000)
    assert a.manifest["events"]["new"] == len(events_a) > 0
    b = sp.score_window(settings, T1 + timedelta(minutes=5), T1 + timedelta(minutes=15), skip_validation=True)
    rescore = sp.score_window(settings, T1, T1 + timedelta(minutes=10), skip_validation=True, force=True)
    assert rescore.run_id != a.run_id and rescore.manifest["events"]["new"] == 0
    events = OpsStore(settings.database_url).list_events(limit=10_000)

    # every anomalous window of the two windows' predictions is in exactly one event
    preds = table.read_predictions(settings.storage_url)  # the current table: one row per series and window
    preds["TS"] = preds["TS"].dt.tz_convert(None)
    flagged = preds[preds["Prediction"] == 1]
    assert sum(e["windows"] for e in events) == len(flagged)
    gap = timedelta(seconds=15)
    for (device, sensor), group in pd.DataFrame(events).groupby(["device", "sensor"]):
        group = group.sort_values("start_ts")
        # no two events of a series overlap or touch within the gap: nothing was duplicated
        assert (group["start_ts"].iloc[1:].to_numpy() > (group["end_ts"].iloc[:-1] + gap).to_numpy()).all()
        ts = flagged[(flagged["Device"] == device) & (flagged["Sensor"] == sensor)]["TS"]
        inside = np.zeros(len(ts), dtype=int)
        for _, e in group.iterrows():
            inside += ((ts >= e["start_ts"]) & (ts <= e["end_ts"])).to_numpy()
        assert (inside == 1).all()
    overlap = [e for e in events if e["start_ts"] >= T1 + timedelta(minutes=5) and e["end_ts"] < T1 + timedelta(
        minutes=10)]
    assert overlap and all({a.run_id, b.run_id, rescore.run_id} <= set(e["runs"]) for e in overlap)
    assert len({e["id"] for e in events}) == len(events)
