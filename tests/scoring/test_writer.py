"""A run's folder: staged parts, the reference CSV, the manifest, duplicate detection."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fleetscore.scoring import writer
from fleetscore.scoring.storage import Storage

START = datetime(2018, 8, 28, 23, 0)


def _predictions(device: str, n: int = 3, version: int = 1) -> pd.DataFrame:
    scored = pd.DataFrame({
        "device": [device] * n, "sensor": ["1"] * n,
        "ts": pd.date_range("2018-08-28 23:00:05", periods=n, freq="5s"),
        "value": [10.5 + i for i in range(n)], "score": [0.5, -0.25, 0.1][:n] + [0.2] * max(0, n - 3),
        "prediction": [0, 1, 0][:n] + [0] * max(0, n - 3),
    })
    return writer.to_predictions(scored, version)


def _complete_run(storage: Storage, run_id: str, devices: list[str]) -> None:
    prefix = writer.run_prefix(START, run_id)
    for shard, device in enumerate(devices):
        writer.write_part(storage, prefix, shard, _predictions(device), csv=True)
    writer.publish(storage, START, run_id, {"run_id": run_id})


def test_run_folder_layout_outside_the_table(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    _complete_run(storage, "20180829T000000-aaaaaa", ["1", "2"])
    killed = writer.run_prefix(START, "20180829T010000-bbbbbb")  # killed before its manifest
    writer.write_part(storage, killed, 0, _predictions("9"))

    window = tmp_path / "runs" / "window_start=2018-08-28T23-00"
    assert sorted(p.name for p in window.iterdir()) == ["run=20180829T000000-aaaaaa", "run=20180829T010000-bbbbbb"]
    assert sorted(p.name for p in (window / "run=20180829T000000-aaaaaa").iterdir()) == [
        "manifest.json", "part-00000.2018-08-28T23-00.parquet", "part-00000.csv", "part-00000.json",
        "part-00001.2018-08-28T23-00.parquet", "part-00001.csv", "part-00001.json"]
    staged = writer.read_staged(storage, writer.run_prefix(START, "20180829T000000-aaaaaa"))
    assert [(f.partition, json.loads(f.stats)["numRecords"]) for f in staged] == [("2018-08-28T23-00", 3)] * 2
    assert writer.list_runs(storage, START) == [("20180829T000000-aaaaaa", True), ("20180829T010000-bbbbbb", False)]
    assert writer.done_shards(storage, killed) == {0}
    assert not (tmp_path / "predictions").exists()  # nothing of a run folder is in the table's folder
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_reference_csv_format(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    _complete_run(storage, "20180829T000000-aaaaaa", ["1"])
    text = (tmp_path / writer.run_prefix(START, "20180829T000000-aaaaaa") / "part-00000.csv").read_text()
    assert text.splitlines() == [
        "TS,Device,Sensor,Val,Prediction",
        "2018-08-28 23:00:05.000,1,1,10.5,0",
        "2018-08-28 23:00:10.000,1,1,11.5,1",
        "2018-08-28 23:00:15.000,1,1,12.5,0",
    ]


def test_part_types(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    prefix = writer.run_prefix(START, "r1")
    writer.write_part(storage, prefix, 0, _predictions("1"))
    got = pq.read_table(tmp_path / prefix / "part-00000.2018-08-28T23-00.parquet")
    assert got.schema.names == writer.PREDICTION_COLUMNS  # the partition column is in the table's paths
    assert got.schema.field("TS").type == pa.timestamp("us", tz="UTC")
    assert got.schema.field("Prediction").type == pa.int8()
    assert got.schema.field("ModelVersion").type == pa.int32()
    assert got.column("Score").to_pylist() == [0.5, -0.25, 0.1]


def test_find_duplicate_matches_window_release_and_data(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    end = datetime(2018, 8, 29, 0, 0)
    writer.write_part(storage, writer.run_prefix(START, "r1"), 0, _predictions("1"))
    writer.publish(storage, START, "r1", {"run_id": "r1",
                                          "window": {"start": START.isoformat(), "end": end.isoformat()},
                                          "release_version": 3, "data_hash": "abc", "devices": None})
    assert writer.find_duplicate(storage, START, end, 3, "abc")["run_id"] == "r1"
    assert writer.find_duplicate(storage, START, end, 4, "abc") is None
    assert writer.find_duplicate(storage, START, end, 3, "abd") is None
    assert writer.find_duplicate(storage, START, datetime(2018, 8, 29, 1), 3, "abc") is None
    assert writer.find_duplicate(storage, START, end, 3, "abc", devices=["1"]) is None


def test_a_shard_spanning_hours_stages_one_file_per_hour_with_its_statistics(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    scored = pd.DataFrame({"device": ["1"] * 4 + ["2"] * 4, "sensor": "1",
                           "ts": list(pd.date_range("2018-08-28 23:59:50", periods=4, freq="5s")) * 2,
                           "value": 1.0, "score": [0.1, 0.2, 0.3, 0.4] * 2, "prediction": [0, 1, 0, 0] * 2})
    prefix = writer.run_prefix(START, "r1")
    writer.write_part(storage, prefix, 0, writer.to_predictions(scored, 2))
    staged = writer.read_staged(storage, prefix)
    assert [f.partition for f in staged] == ["2018-08-28T23-00", "2018-08-29T00-00"]
    stats = [json.loads(f.stats) for f in staged]
    assert [s["numRecords"] for s in stats] == [4, 4]
    assert stats[0]["minValues"]["TS"] == "2018-08-28T23:59:50.000Z" and stats[0]["maxValues"]["TS"] == (
        "2018-08-28T23:59:55.000Z")
    assert (stats[1]["minValues"]["Device"], stats[1]["maxValues"]["Device"]) == ("1", "2")
    late = pq.read_table(tmp_path / staged[1].rel).to_pandas()
    assert late["TS"].dt.hour.unique().tolist() == [0] and sorted(late["Device"]) == ["1", "1", "2", "2"]
