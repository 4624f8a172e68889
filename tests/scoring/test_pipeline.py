"""The scoring pipeline in process: shards, manifest, run records, duplicates, failures, resume."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fleetscore.pipelines.scoring_pipeline as sp
from fleetscore.errors import ScoringError
from fleetscore.ingestion.run_log import RunLog
from fleetscore.pipelines import overlapped_run, release_resolution, run_planning
from fleetscore.pipelines.adapters import storage_for
from fleetscore.scoring import table, writer
from fleetscore.scoring.contracts import ShardOutcome, ShardTask
from fleetscore.scoring.shard import score_shard
from fleetscore.training.kernel import score_windows
from tests.scoring.fleet import START, Resolved, fit_release, fleet_windows, settings_for, store_windows

END = START + timedelta(minutes=10)


@pytest.fixture()
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A 6-device x 2-sensor store (10 min of 5 s windows), a release v3 of it, settings under tmp_path."""
    train = fleet_windows(6, 2, 200, seed=1, start=START - timedelta(seconds=5 * 200))
    data = fleet_windows(6, 2, 120, seed=2)
    settings = settings_for(tmp_path)
    store_windows(settings.database_url, pd.concat([train, data], ignore_index=True))
    bundle = fit_release(train)
    bundle.save(tmp_path / "bundle-v3")
    monkeypatch.setattr(release_resolution, "resolve_release",
                        lambda s, ref: Resolved(3, tmp_path / "bundle-v3", {"ref": ref}))
    return {"settings": settings, "bundle": bundle, "data": data, "train": train}


def test_scores_every_window_like_the_kernel(fleet: dict) -> None:
    settings = fleet["settings"]
    seen: list[tuple[int, int]] = []
    result = sp.score_window(settings, START, END, skip_validation=True, shards=3,
                             on_progress=lambda d, t: seen.append((d, t)))
    assert result.status == "done" and result.release_version == 3
    got = table.read_predictions(settings.storage_url).sort_values(["Device", "Sensor", "TS"]).reset_index(drop=True)
    expected = score_windows(fleet["bundle"], fleet["data"], START)
    assert len(got) == len(fleet["data"]) == 6 * 2 * 120
    np.testing.assert_allclose(got["Score"].to_numpy(), expected["score"].to_numpy(), rtol=0, atol=1e-12)
    assert got["Prediction"].tolist() == expected["prediction"].tolist()
    assert set(got["ModelVersion"]) == {3}
    assert seen[0] == (0, 3) and seen[-1] == (3, 3)

    manifest = result.manifest
    assert manifest["files"] == [f"window_start=2018-08-28T23-00/{result.run_id}-part-{i:05d}.2018-08-28T23-00.parquet"
                                 for i in range(3)]  # one hour: one data file per shard, moved into the table
    assert manifest["rows"] == len(got) and manifest["anomalies"] == int(got["Prediction"].sum())
    assert manifest["skip_validation"] is True and manifest["release_version"] == 3
    assert set(manifest["shards"]) == {"0", "1", "2"} and "score" in manifest["shards"]["0"]["timings"]
    run_dir = Path(settings.storage_url) / writer.run_prefix(START, result.run_id)
    assert json.loads((run_dir / "manifest.json").read_text())["run_id"] == result.run_id
    assert "validation skipped" in (run_dir / "run.log").read_text()

    record = RunLog(settings.database_url).get(result.run_id)
    assert record is not None
    assert (record["status"], record["rows"], record["shards_done"], record["shards_total"]) == ("done", len(got), 3, 3)


def test_context_windows_before_the_range_are_read_not_returned(fleet: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = fleet["settings"]
    bundle = fit_release(fleet["train"], features=("value", "rolling_std"))
    bundle.save(Path(settings.home) / "bundle-v4")
    monkeypatch.setattr(release_resolution, "resolve_release",
                        lambda s, ref: Resolved(4, Path(settings.home) / "bundle-v4", {}))
    result = sp.score_window(settings, START, END, skip_validation=True, shards=2)
    got = table.read_predictions(settings.storage_url).sort_values(["Device", "Sensor", "TS"]).reset_index(drop=True)
    everything = pd.concat([fleet["train"], fleet["data"]]).sort_values(["device", "sensor", "ts"])
    expected = score_windows(bundle, everything.reset_index(drop=True), START)
    assert got["TS"].min() == pd.Timestamp(START, tz="UTC") and result.rows == len(fleet["data"])
    np.testing.assert_allclose(got["Score"].to_numpy(), expected["score"].to_numpy(), rtol=0, atol=1e-12)


def test_same_window_release_and_data_is_skipped_unless_forced(fleet: dict) -> None:
    settings = fleet["settings"]
    first = sp.score_window(settings, START, END, skip_validation=True)
    again = sp.score_window(settings, START, END, skip_validation=True)
    assert again.status == "skipped" and again.duplicate_of == first.run_id
    forced = sp.score_window(settings, START, END, skip_validation=True, force=True)
    assert forced.status == "done" and forced.run_id != first.run_id
    storage = storage_for(settings)
    assert [ok for _, ok in writer.list_runs(storage, START)] == [True, True]
    assert [v.run_id for v in table.history(settings.storage_url)] == [forced.run_id, first.run_id]
    assert RunLog(settings.database_url).get(forced.run_id)["table_version"] == 1
    statuses = [r["status"] for r in RunLog(settings.database_url).list()]
    assert sorted(statuses) == ["done", "done", "skipped"]
    # new data in the window: not a duplicate any more
    store_windows(settings.database_url, fleet_windows(1, 1, 1, seed=9, start=END - timedelta(seconds=2)))
    assert sp.score_window(settings, START, END, skip_validation=True).status == "done"


def test_failing_series_are_recorded_and_the_rest_scored(fleet: dict) -> None:
    settings = settings_for(Path(fleet["settings"].home), **{"scoring.max_failed_fraction": 0.1})
    bad = fleet_windows(1, 1, 1, seed=3, start=START + timedelta(seconds=2)).assign(value=np.inf)
    store_windows(settings.database_url, bad)  # device 1 sensor 1 gets an infinite value
    result = sp.score_window(settings, START, END, skip_validation=True)
    assert result.failures == {"1/1": "non-finite values in the window"}
    got = table.read_predictions(settings.storage_url)
    assert ("1", "1") not in set(zip(got["Device"], got["Sensor"], strict=True))
    assert len(got) == 11 * 120
    assert result.manifest["failed_fraction"] == pytest.approx(1 / 12)


def test_run_fails_past_max_failed_fraction_and_leaves_no_manifest(fleet: dict) -> None:
    settings = settings_for(Path(fleet["settings"].home), **{"scoring.max_failed_fraction": 0.05})
    bad = fleet_windows(1, 1, 1, seed=3, start=START + timedelta(seconds=2)).assign(value=np.inf)
    store_windows(settings.database_url, bad)
    with pytest.raises(ScoringError) as err:
        sp.score_window(settings, START, END, skip_validation=True)
    run = RunLog(settings.database_url).list()[0]
    assert str(err.value) == (f"run {run['run_id']}: 1 of 12 series failed (8.3% > max_failed_fraction 5.0%): "
                              "1/1: non-finite values in the window")
    assert run["status"] == "failed" and run["error"] == str(err.value)
    assert table.read_predictions(settings.storage_url).empty
    assert not list(Path(settings.storage_url).rglob("manifest.json"))


def _fail_shard_one(task: ShardTask) -> ShardOutcome:
    if task.shard == 1:
        raise RuntimeError("disk on fire")
    return score_shard(task)


def test_a_failing_shard_does_not_stop_the_others(fleet: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_for(Path(fleet["settings"].home), **{"scoring.max_failed_fraction": 0.5})
    monkeypatch.setattr(sp, "score_shard", _fail_shard_one)
    result = sp.score_window(settings, START, END, skip_validation=True, shards=3)
    assert result.failures == {"shard 1": "RuntimeError: disk on fire"}
    assert [f.split("-part-")[1][:5] for f in result.manifest["files"]] == ["00000", "00002"]
    assert result.rows == 4 * 2 * 120  # 2 of 6 devices were in shard 1
    assert result.manifest["failed_fraction"] == pytest.approx(4 / 12)


def test_incomplete_run_is_resumed(fleet: dict) -> None:
    settings = settings_for(Path(fleet["settings"].home), **{"scoring.max_failed_fraction": 0.5})
    # a crash after shards 0 and 2 were written: prepare + two shards, no finalize
    prepared = run_planning.prepare_run(settings, START, END, skip_validation=True, shards=3)
    for shard in (0, 2):
        score_shard(run_planning.shard_task(settings, prepared.plan, shard))
    assert table.read_predictions(settings.storage_url).empty
    result = sp.score_window(settings, START, END, skip_validation=True, shards=3)
    assert result.resumed and result.run_id == prepared.run_id
    assert result.rows == 6 * 2 * 120
    clean = sp.score_window(settings, START, END, skip_validation=True, shards=3, force=True)
    a = table.read_run(settings.storage_url, result.run_id)
    b = table.read_run(settings.storage_url, clean.run_id)
    pd.testing.assert_frame_equal(a.sort_values(["Device", "Sensor", "TS"]).reset_index(drop=True),
                                  b.sort_values(["Device", "Sensor", "TS"]).reset_index(drop=True))


def test_series_without_a_model_are_reported_not_scored(fleet: dict) -> None:
    settings = fleet["settings"]
    store_windows(settings.database_url, fleet_windows(7, 2, 120, seed=5)[lambda f: f["device"] == "7"])
    result = sp.score_window(settings, START, END, skip_validation=True)
    assert result.manifest["unscored"] == {"7/1": "no model in release v3", "7/2": "no model in release v3"}
    assert result.rows == 6 * 2 * 120


def test_whole_range_by_default(fleet: dict) -> None:
    settings = fleet["settings"]
    result = sp.score_window(settings, None, None, skip_validation=True)
    assert result.start == START - timedelta(seconds=5 * 200)
    assert result.end == datetime(2018, 8, 28, 23, 10)
    assert result.rows == 6 * 2 * (200 + 120)


@pytest.fixture()
def stuck_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The 6 x 2 fleet with series 6/2 stuck at one value over the scored range (the gate excludes it)."""
    train = fleet_windows(6, 2, 200, seed=1, start=START - timedelta(seconds=5 * 200))
    data = fleet_windows(6, 2, 120, seed=2)
    stuck = (data["device"] == "6") & (data["sensor"] == "2")
    data.loc[stuck, ["value", "value_min", "value_max"]] = 35.0
    settings = settings_for(tmp_path)
    store_windows(settings.database_url, pd.concat([train, data], ignore_index=True))
    fit_release(train).save(tmp_path / "bundle-v3")
    monkeypatch.setattr(release_resolution, "resolve_release",
                        lambda s, ref: Resolved(3, tmp_path / "bundle-v3", {"ref": ref}))
    return {"settings": settings, "data": data}


def test_validated_run_scores_during_the_gate_without_the_excluded_series(stuck_fleet: dict) -> None:
    from fleetscore.ingestion.run_log import window_fingerprint

    settings = stuck_fleet["settings"]
    result = sp.score_window(settings, START, END, shards=3)
    manifest = result.manifest
    assert manifest["excluded"] == {"6/2": "stuck: constant 35 over the whole range (120 windows)"}
    assert manifest["validation_id"] and manifest["skip_validation"] is False
    # the gate's scan gives the same fingerprint as the separate query it replaces
    assert manifest["data_hash"] == window_fingerprint(settings.database_url, START, END)
    got = table.read_predictions(settings.storage_url)
    assert ("6", "2") not in set(zip(got["Device"], got["Sensor"], strict=True))
    assert len(got) == result.rows == 11 * 120
    run_dir = Path(settings.storage_url) / writer.run_prefix(START, result.run_id)
    assert "scored during the gate" in (run_dir / "run.log").read_text()
    assert json.loads((run_dir / "validation.json").read_text())["id"] == manifest["validation_id"]
    # the same window, release and data again: skipped, and the aborted attempt left no folder behind
    again = sp.score_window(settings, START, END, shards=3)
    assert again.status == "skipped" and again.duplicate_of == result.run_id
    assert writer.list_runs(storage_for(settings), START) == [(result.run_id, True)]


def test_the_shards_metrics_give_the_gate_the_same_report_as_its_own_query(stuck_fleet: dict) -> None:
    """The shards that start at once compute the series metrics from their rows; the queued shard's series
    are checked in SQL. The report is the standalone gate's, and the metrics files are gone after."""
    from fleetscore.data_checks import run_validation

    settings = stuck_fleet["settings"]
    result = sp.score_window(settings, START, END, shards=3)  # 2 workers: shards 0 and 1 start at once
    shards = result.manifest["shards"]
    assert ["metrics" in shards[str(i)]["timings"] for i in range(3)] == [True, True, False]
    run_dir = Path(settings.storage_url) / writer.run_prefix(START, result.run_id)
    assert not (run_dir / "_series").exists()
    scored = json.loads((run_dir / "validation.json").read_text())
    alone = run_validation(settings.database_url, START, END, settings.data_checks,
                           report_dir=Path(settings.home) / "alone")
    assert scored["series"] == alone.series == 12
    assert scored["data_hash"] == alone.data_hash
    assert {(e["device"], e["sensor"]): e["reason"] for e in scored["excluded"]} == alone.excluded
    assert [(c["name"], c["passed"]) for c in scored["checks"]] == [(c.name, c.passed) for c in alone.checks]


def test_a_run_killed_before_its_plan_leaves_nothing_to_resume(stuck_fleet: dict) -> None:
    """Killed during the gate, a run leaves at most its shards' series metrics (no plan): the next run of
    the window is scored during the gate as usual, and readers never see the leftover."""
    settings = stuck_fleet["settings"]
    storage = storage_for(settings)
    dead = writer.run_prefix(START, "20240101T000000000-dead00")
    storage.write_bytes(f"{dead}/_series/shard-00000.parquet", b"PAR1")
    result = sp.score_window(settings, START, END, shards=3)
    run_dir = Path(settings.storage_url) / writer.run_prefix(START, result.run_id)
    assert "scored during the gate" in (run_dir / "run.log").read_text()
    assert table.history(settings.storage_url)[0].run_id == result.run_id
    assert len(table.read_predictions(settings.storage_url)) == 11 * 120


def _fail_shard_zero_before_its_metrics(task: ShardTask) -> ShardOutcome:
    if task.shard == 0:
        assert task.metrics_to  # the shard the gate waits for
        raise RuntimeError("disk on fire")
    return score_shard(task)


@pytest.mark.parametrize("named_max", [500, 2])  # 2: too many devices to name, the SQL query takes the range
def test_a_shard_failing_before_its_metrics_does_not_hang_the_gate(stuck_fleet: dict, monkeypatch: pytest.MonkeyPatch,
                                                                   named_max: int) -> None:
    from fleetscore.data_checks import gate as checks_gate

    settings = settings_for(Path(stuck_fleet["settings"].home), workers=1, **{"scoring.max_failed_fraction": 0.6})
    monkeypatch.setattr(overlapped_run, "score_shard", _fail_shard_zero_before_its_metrics)
    monkeypatch.setattr(checks_gate, "KEYED_QUERY_MAX", named_max)
    result = sp.score_window(settings, START, END, shards=2)  # one worker: shard 1 waits behind shard 0
    assert result.failures == {"shard 0": "RuntimeError: disk on fire"}
    assert result.manifest["excluded"] == {"6/2": "stuck: constant 35 over the whole range (120 windows)"}
    from fleetscore.ingestion.run_log import window_fingerprint

    assert result.manifest["data_hash"] == window_fingerprint(settings.database_url, START, END)
    assert result.rows == 3 * 2 * 120 - 120  # devices 4-6 in shard 1, series 6/2 excluded


def test_gate_failure_publishes_nothing(stuck_fleet: dict) -> None:
    from fleetscore.errors import ValidationFailed

    settings = stuck_fleet["settings"]
    later = END + timedelta(hours=5)  # no windows there: the fleet-level gate fails (not_empty)
    with pytest.raises(ValidationFailed, match=r"^validation failed: not_empty"):
        sp.score_window(settings, later, later + timedelta(minutes=10), shards=3)
    assert not list(Path(settings.storage_url).rglob("part-*")) and not list(Path(settings.storage_url).rglob("run=*"))
    assert [r["status"] for r in RunLog(settings.database_url).list()] == ["failed"]


def test_overlapping_rescores_and_a_killed_run_leave_one_row_per_key(fleet: dict) -> None:
    """Scoring 23:00-23:10, then 23:05-23:10, then a run killed before its commit: the table holds each
    (Device, Sensor, TS) once, for readers with no fleetscore code, and every committed result by version."""
    import polars as pl
    from deltalake import DeltaTable

    settings = fleet["settings"]
    first = sp.score_window(settings, START, END, skip_validation=True, shards=2)
    second = sp.score_window(settings, START + timedelta(minutes=5), END, skip_validation=True, shards=2)
    killed = run_planning.prepare_run(settings, START, END, skip_validation=True, shards=2, force=True)
    for shard in killed.todo:  # its shards staged their parts; the run died before finalize
        score_shard(run_planning.shard_task(settings, killed.plan, shard))
    uri = str(Path(settings.storage_url) / "predictions")
    readers = (DeltaTable(uri).to_pandas(), pl.read_delta(uri).to_pandas(),
               table.read_predictions(settings.storage_url))
    for frame in readers:
        assert len(frame) == 6 * 2 * 120 and not frame.duplicated(["Device", "Sensor", "TS"]).any()
        assert str(frame["TS"].dtype) == "datetime64[us, UTC]"
    versions = [(v.version, v.run_id) for v in table.history(settings.storage_url)]
    assert versions == [(1, second.run_id), (0, first.run_id)]
    assert (first.table_version, second.table_version) == (0, 1)
    assert len(DeltaTable(uri, version=0).to_pandas()) == 6 * 2 * 120
    assert len(table.read_run(settings.storage_url, second.run_id)) == 6 * 2 * 60
    assert second.location == f"{uri}@v1"
    assert writer.done_shards(storage_for(settings), writer.run_prefix(START, killed.run_id)) == {0, 1}


def test_a_run_that_died_after_its_commit_is_not_committed_twice(fleet: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = fleet["settings"]

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed between the commit and the manifest")

    with monkeypatch.context() as patch:
        patch.setattr(writer, "publish", crash)
        with pytest.raises(RuntimeError, match="killed between"):
            sp.score_window(settings, START, END, skip_validation=True, shards=2)
    assert table.current_version(settings.storage_url) == 0
    result = sp.score_window(settings, START, END, skip_validation=True, shards=2)
    assert result.resumed and result.table_version == 0 and table.current_version(settings.storage_url) == 0
    assert len(table.read_predictions(settings.storage_url)) == 6 * 2 * 120


def test_a_window_partly_rescored_since_is_no_duplicate(fleet: dict) -> None:
    settings = fleet["settings"]
    first = sp.score_window(settings, START, END, skip_validation=True, shards=2)
    assert sp.score_window(settings, START, END, skip_validation=True, shards=2).status == "skipped"
    sp.score_window(settings, START + timedelta(minutes=5), END, skip_validation=True, shards=2)
    again = sp.score_window(settings, START, END, skip_validation=True, shards=2)  # same release and data
    assert again.status == "done" and again.run_id != first.run_id and again.table_version == 2
