"""No wait without a deadline in scoring (issue 15): a store error after the gate releases the shards."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

import fleetscore.pipelines.scoring_pipeline as sp
from fleetscore.errors import FleetscoreError, StoreError
from fleetscore.pipelines import overlapped_run, release_resolution
from fleetscore.pipelines.adapters import storage_for
from fleetscore.records.run_log import RunLog
from fleetscore.scoring import writer
from fleetscore.scoring.contracts import ShardTask
from fleetscore.scoring.shard import _wait_for_plan
from fleetscore.scoring.storage import StorageSpec
from tests.scoring.fleet import START, Resolved, fit_release, fleet_windows, settings_for, store_windows

END = START + timedelta(minutes=10)


@pytest.fixture()
def small_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    train = fleet_windows(3, 2, 200, seed=1, start=START - timedelta(seconds=5 * 200))
    data = fleet_windows(3, 2, 120, seed=2)
    settings = settings_for(tmp_path)
    store_windows(settings.database_url, pd.concat([train, data], ignore_index=True))
    fit_release(train).save(tmp_path / "bundle-v3")
    monkeypatch.setattr(release_resolution, "resolve_release",
                        lambda s, ref: Resolved(3, tmp_path / "bundle-v3", {"ref": ref}))
    return {"settings": settings}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fails", ["record", "plan"])
def test_a_store_error_after_the_gate_ends_the_run_with_its_error(small_fleet: dict, monkeypatch: pytest.MonkeyPatch,
                                                                  fails: str) -> None:
    settings = small_fleet["settings"]
    if fails == "record":
        def broken(*args: object, **kwargs: object) -> None:
            raise StoreError("scoring_runs: cannot record run x: database is locked")
        monkeypatch.setattr(RunLog, "start", broken)
    else:
        def no_plan(*args: object, **kwargs: object) -> None:
            raise StoreError("blob: cannot write _run.json")
        monkeypatch.setattr(overlapped_run, "write_plan", no_plan)
    t0 = time.monotonic()
    with pytest.raises(FleetscoreError, match=r"database is locked|cannot write _run\.json"):
        sp.score_window(settings, START, END, shards=3)
    assert time.monotonic() - t0 < 60
    assert writer.list_runs(storage_for(settings), START) == []  # the run's folder is gone
    if fails == "plan":
        [record] = RunLog(settings.database_url).list()
        assert record["status"] == "failed" and "plan not written" in record["error"]


def test_a_shard_stops_waiting_for_a_plan_at_its_deadline(tmp_path: Path) -> None:
    spec = StorageSpec(str(tmp_path))
    task = ShardTask(shard=0, devices=("1",), database_url="sqlite://", bundle="", release_version=1, start=START,
                     end=END, context_start=START, storage=spec, prefix="run", wait_for="run/_run.json",
                     plan_timeout=0.5)
    t0 = time.monotonic()
    assert _wait_for_plan(spec.open(), task) is None
    assert time.monotonic() - t0 < 5
