"""Device ids are values: a device whose id contains ``/`` keeps the gate's exclusions (issue 15)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

import fleetscore.pipelines.scoring_pipeline as sp
from fleetscore.pipelines import release_resolution
from fleetscore.scoring import table
from tests.scoring.fleet import START, Resolved, fit_release, fleet_windows, settings_for, store_windows

END = START + timedelta(minutes=10)
ODD = {"5": "site/a/b", "6": "a/b"}  # ids with one and two slashes


@pytest.fixture()
def slash_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The 6 x 2 test fleet with devices ``site/a/b`` and ``a/b``; series ``a/b``/``2`` is stuck."""
    train = fleet_windows(6, 2, 200, seed=1, start=START - timedelta(seconds=5 * 200))
    data = fleet_windows(6, 2, 120, seed=2)
    for frame in (train, data):
        frame["device"] = frame["device"].replace(ODD)
    stuck = (data["device"] == "a/b") & (data["sensor"] == "2")
    data.loc[stuck, ["value", "value_min", "value_max"]] = 35.0
    settings = settings_for(tmp_path)
    store_windows(settings.database_url, pd.concat([train, data], ignore_index=True))
    fit_release(train).save(tmp_path / "bundle-v3")
    monkeypatch.setattr(release_resolution, "resolve_release",
                        lambda s, ref: Resolved(3, tmp_path / "bundle-v3", {"ref": ref}))
    return {"settings": settings}


def _check(settings: object, result: sp.ScoringResult) -> None:
    assert result.status == "done"
    assert result.manifest["excluded"] == {"a/b/2": "stuck: constant 35 over the whole range (120 windows)"}
    got = table.read_predictions(settings.storage_url)  # type: ignore[attr-defined]
    series = set(zip(got["Device"], got["Sensor"], strict=True))
    assert ("a/b", "2") not in series
    assert {("a/b", "1"), ("site/a/b", "1"), ("site/a/b", "2")} <= series
    assert len(got) == result.rows == 11 * 120


def test_excluded_series_of_a_slashed_device_stays_out_scored_during_the_gate(slash_fleet: dict) -> None:
    settings = slash_fleet["settings"]
    _check(settings, sp.score_window(settings, START, END, shards=3))


def test_excluded_series_of_a_slashed_device_stays_out_the_sequential_way(slash_fleet: dict,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sp, "score_during_gate", lambda *a, **k: None)
    settings = slash_fleet["settings"]
    _check(settings, sp.score_window(settings, START, END, shards=2))


def test_a_plan_gives_the_shards_the_ids_as_written() -> None:
    from fleetscore.scoring.contracts import RunPlan
    from tests.scoring.test_contracts import PLAN_FILE

    pairs = [["a/b", "2"], ["a", "b/2"]]
    plan = RunPlan.from_json({**PLAN_FILE, "excluded": {"a/b/2": "stuck"}, "excluded_series": pairs})
    assert plan.excluded_series() == {("a/b", "2"), ("a", "b/2")}
    assert RunPlan.from_json(plan.to_json()) == plan
