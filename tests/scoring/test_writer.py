"""The predictions layout: parts, manifest last, latest pointer, readers that never see a partial run."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from fleetscore.errors import StorageError
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
    parts = [writer.part_name(i) for i in range(len(devices))]
    writer.publish(storage, START, run_id, {"run_id": run_id, "parts": parts})


def test_layout_and_reader_sees_only_complete_runs(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    _complete_run(storage, "20180829T000000-aaaaaa", ["1", "2"])
    # a second run that was killed before its manifest: parts exist, no manifest
    killed = writer.run_prefix(START, "20180829T010000-bbbbbb")
    writer.write_part(storage, killed, 0, _predictions("9"))

    assert sorted(p.name for p in (tmp_path / "predictions" / "window_start=2018-08-28T23-00").iterdir()) == [
        "latest.json", "run=20180829T000000-aaaaaa", "run=20180829T010000-bbbbbb"]
    got = writer.read_predictions(str(tmp_path))
    assert list(got.columns) == writer.PREDICTION_COLUMNS
    assert sorted(got["Device"].unique()) == ["1", "2"]  # device 9 of the killed run is never read
    assert len(got) == 6
    with pytest.raises(StorageError, match="run 20180829T010000-bbbbbb is incomplete"):
        writer.read_predictions(str(tmp_path), START, "20180829T010000-bbbbbb")
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_latest_pointer_moves_forward_only(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    _complete_run(storage, "20180829T020000-cccccc", ["1"])
    _complete_run(storage, "20180829T010000-bbbbbb", ["2"])  # older run finishing later
    latest = json.loads((tmp_path / writer.window_prefix(START) / "latest.json").read_text())
    assert latest["run_id"] == "20180829T020000-cccccc"
    assert writer.read_predictions(str(tmp_path), START)["Device"].unique().tolist() == ["1"]
    assert writer.read_predictions(str(tmp_path), run_id="20180829T010000-bbbbbb")["Device"].unique().tolist() == ["2"]


class _MissesThePointerOnce(Storage):
    """Storage whose first look for the latest pointer finds none: the check a run makes before another
    run publishes, as when two runs of a window finish at the same moment."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.missed = False

    def exists(self, rel: str) -> bool:
        if rel.endswith(writer.LATEST) and not self.missed:
            self.missed = True
            return False
        return super().exists(rel)


def test_latest_pointer_names_the_newest_run_when_two_publish_at_once(tmp_path: Path) -> None:
    _complete_run(Storage(str(tmp_path)), "20180829T020000-cccccc", ["1"])  # the newer run, done first
    _complete_run(_MissesThePointerOnce(str(tmp_path)), "20180829T010000-bbbbbb", ["2"])  # checked before it
    latest = json.loads((tmp_path / writer.window_prefix(START) / "latest.json").read_text())
    assert latest["run_id"] == "20180829T020000-cccccc"
    assert writer.read_predictions(str(tmp_path), START)["Device"].unique().tolist() == ["1"]


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


def test_parquet_types(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    _complete_run(storage, "20180829T000000-aaaaaa", ["1"])
    got = writer.read_predictions(str(tmp_path))
    assert str(got["TS"].dtype) == "datetime64[ns]"
    assert str(got["Prediction"].dtype) == "int8"
    assert str(got["ModelVersion"].dtype) == "int32"
    assert got["Score"].tolist() == [0.5, -0.25, 0.1]


def test_find_duplicate_matches_window_release_and_data(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    end = datetime(2018, 8, 29, 0, 0)
    writer.write_part(storage, writer.run_prefix(START, "r1"), 0, _predictions("1"))
    writer.publish(storage, START, "r1", {"run_id": "r1", "parts": ["part-00000.parquet"],
                                          "window": {"start": START.isoformat(), "end": end.isoformat()},
                                          "release_version": 3, "data_hash": "abc", "devices": None})
    assert writer.find_duplicate(storage, START, end, 3, "abc")["run_id"] == "r1"
    assert writer.find_duplicate(storage, START, end, 4, "abc") is None
    assert writer.find_duplicate(storage, START, end, 3, "abd") is None
    assert writer.find_duplicate(storage, START, datetime(2018, 8, 29, 1), 3, "abc") is None
    assert writer.find_duplicate(storage, START, end, 3, "abc", devices=["1"]) is None


def test_read_predictions_of_an_empty_store(tmp_path: Path) -> None:
    got = writer.read_predictions(str(tmp_path / "nothing"))
    assert got.empty and list(got.columns) == writer.PREDICTION_COLUMNS
