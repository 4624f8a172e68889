"""SensorStore: schema versioning, the reading API (shape, dtypes, ranges, filters), merging, sharding."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import sqlalchemy as sa

from fleetscore.errors import ConfigError, StoreError
from fleetscore.ingestion.schema import SCHEMA_VERSION, schema_info
from fleetscore.ingestion.sharding import shard_devices
from fleetscore.ingestion.store import SensorStore
from fleetscore.ingestion.writer import open_writer


def _chunk(rows: list[tuple[str, str, str, float, float, float, int]]) -> pa.Table:
    device, sensor, ts, value, lo, hi, count = zip(*rows, strict=True)
    return pa.table({
        "device": list(device), "sensor": list(sensor),
        "ts": pa.array(pd.to_datetime(list(ts)).to_numpy(dtype="datetime64[ns]")),
        "value": list(value), "value_min": list(lo), "value_max": list(hi), "value_count": list(count),
    })


@pytest.fixture()
def store(tmp_path: Path) -> SensorStore:
    store = SensorStore(f"sqlite:///{tmp_path / 'store.db'}")
    rows = []
    for device in ("10", "2", "a"):
        for sensor in ("1", "2"):
            for minute in range(4):
                value = float(minute)
                rows.append((device, sensor, f"2024-01-01 00:0{minute}:00", value, value, value, 1))
    with open_writer(store) as writer:
        writer.merge_windows(_chunk(rows))
    return store


def test_create_schema_is_idempotent_and_versioned(tmp_path: Path) -> None:
    store = SensorStore(f"sqlite:///{tmp_path / 'x.db'}")
    store.create_schema()
    store.create_schema()
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(schema_info.c.version)).scalars().all() == [SCHEMA_VERSION]


def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    SensorStore(url).create_schema()
    with SensorStore(url).engine.begin() as conn:
        conn.execute(sa.update(schema_info).values(version=SCHEMA_VERSION + 1))
    with pytest.raises(StoreError) as info:
        SensorStore(url).create_schema()
    assert str(info.value) == (f"{url}: schema version {SCHEMA_VERSION + 1} is newer than this fleetscore's "
                               f"({SCHEMA_VERSION}); use a matching fleetscore version")


def test_unsupported_urls_are_named() -> None:
    with pytest.raises(StoreError, match="in-memory SQLite"):
        SensorStore("sqlite://")
    # any other dialect takes the generic path; a missing driver is named at once, password masked
    with pytest.raises(ConfigError) as info:
        SensorStore("mysql://u:secret@h/db")
    assert str(info.value) == "database_url mysql://u:***@h/db: driver not installed (No module named 'MySQLdb')"


def test_read_windows_shape_dtypes_and_order(store: SensorStore) -> None:
    frame = store.read_windows()
    assert list(frame.columns) == ["device", "sensor", "ts", "value", "value_min", "value_max", "value_count"]
    assert {c: str(t) for c, t in frame.dtypes.items()} == {
        "device": "str", "sensor": "str", "ts": "datetime64[ns]", "value": "float64",
        "value_min": "float64", "value_max": "float64", "value_count": "int64"}
    assert len(frame) == 24
    # byte order of the ids, like Python's sorted()
    assert list(frame.drop_duplicates("device")["device"]) == sorted(["10", "2", "a"])
    assert frame.equals(frame.sort_values(["device", "sensor", "ts"], ignore_index=True))


def test_read_windows_range_is_half_open_and_filters(store: SensorStore) -> None:
    frame = store.read_windows(datetime(2024, 1, 1, 0, 1), datetime(2024, 1, 1, 0, 3), devices=["2", "a"],
                               sensors=["2"])
    assert list(zip(frame.device, frame.sensor, frame.ts.dt.minute, strict=True)) == [
        ("2", "2", 1), ("2", "2", 2), ("a", "2", 1), ("a", "2", 2)]
    assert store.read_windows(devices=[]).empty
    assert store.read_windows(devices=["nope"]).empty
    assert list(store.read_windows(devices=["nope"]).columns) == list(frame.columns)


def test_read_windows_many_devices(tmp_path: Path) -> None:
    store = SensorStore(f"sqlite:///{tmp_path / 'many.db'}")
    rows = [(f"d{i:04d}", "1", "2024-01-01 00:00:00", 1.0, 1.0, 1.0, 1) for i in range(1200)]
    with open_writer(store) as writer:
        writer.merge_windows(_chunk(rows))
    wanted = [f"d{i:04d}" for i in range(0, 1200, 2)] + ["missing"]
    frame = store.read_windows(devices=wanted)
    assert list(frame.device) == sorted(wanted[:-1])


def test_list_series_time_range_devices(store: SensorStore) -> None:
    series = store.list_series()
    assert list(series.columns) == ["device", "sensor", "rows", "first_ts", "last_ts"]
    assert len(series) == 6 and set(series.rows) == {4}
    assert (series.first_ts == pd.Timestamp("2024-01-01 00:00")).all()
    assert (series.last_ts == pd.Timestamp("2024-01-01 00:03")).all()
    assert set(store.list_series(start=datetime(2024, 1, 1, 0, 2)).rows) == {2}
    assert store.time_range() == (datetime(2024, 1, 1), datetime(2024, 1, 1, 0, 3))
    assert store.devices() == ["10", "2", "a"]


def test_fill_range_fills_missing_ends_from_the_store(store: SensorStore) -> None:
    minute = timedelta(minutes=1)
    first, last = datetime(2024, 1, 1), datetime(2024, 1, 1, 0, 3)
    assert store.fill_range(None, None, minute) == (first, last + minute)
    assert store.fill_range(datetime(2024, 1, 1, 0, 2), None, minute) == (datetime(2024, 1, 1, 0, 2), last + minute)
    assert store.fill_range(None, datetime(2024, 1, 2), minute) == (first, datetime(2024, 1, 2))
    given = (datetime(2020, 1, 1), datetime(2020, 1, 2))
    assert store.fill_range(*given, minute) == given


def test_empty_store(tmp_path: Path) -> None:
    store = SensorStore(f"sqlite:///{tmp_path / 'empty.db'}")
    assert store.time_range() == (None, None)
    assert store.fill_range(None, None, timedelta(minutes=1)) is None
    assert store.fill_range(datetime(2024, 1, 1), datetime(2024, 1, 2), timedelta(minutes=1)) is not None
    assert store.devices() == []
    assert store.read_windows().empty
    assert store.list_series().empty


def test_merge_is_count_weighted(store: SensorStore) -> None:
    with open_writer(store) as writer:
        result = writer.merge_windows(_chunk([("2", "1", "2024-01-01 00:00:00", 4.0, -1.0, 9.0, 3),
                                              ("2", "1", "2024-01-01 00:09:00", 5.0, 5.0, 5.0, 1)]))
    assert (result.created, result.late_updates) == (1, 1)
    first = store.read_windows(devices=["2"], sensors=["1"]).iloc[0]
    assert first.value == pytest.approx((0.0 * 1 + 4.0 * 3) / 4)
    assert (first.value_min, first.value_max, first.value_count) == (-1.0, 9.0, 4)


def test_failed_transaction_leaves_nothing(store: SensorStore) -> None:
    before = store.read_windows()
    with pytest.raises(RuntimeError), open_writer(store) as writer:
        writer.merge_windows(_chunk([("new", "1", "2024-01-01 00:00:00", 1.0, 1.0, 1.0, 1)]))
        raise RuntimeError("crash")
    assert store.read_windows().equals(before)


@pytest.mark.parametrize("n_shards", [1, 3, 7, 50])
def test_shard_devices(n_shards: int) -> None:
    devices = [f"d{i}" for i in np.random.default_rng(1).permutation(23)]
    shards = shard_devices(devices, n_shards)
    assert shards == shard_devices(sorted(devices), n_shards)  # order of the input does not matter
    assert [d for shard in shards for d in shard] == sorted(devices)
    assert len(shards) == min(n_shards, 23)
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    assert shard_devices([], 3) == []
    with pytest.raises(ValueError):
        shard_devices(devices, 0)


def test_postgres_store(postgres_url: str) -> None:
    store = SensorStore(postgres_url)
    rows = [(d, "1", f"2024-01-01 00:0{m}:00", float(m), float(m), float(m), 1) for d in ("b", "B", "a") for m in
            range(3)]
    with open_writer(store) as writer:
        writer.merge_windows(_chunk(rows))
    with open_writer(store) as writer:
        result = writer.merge_windows(_chunk([("a", "1", "2024-01-01 00:00:00", 3.0, 3.0, 3.0, 1)]))
    assert (result.created, result.late_updates) == (0, 1)
    frame = store.read_windows(start=datetime(2024, 1, 1), end=datetime(2024, 1, 1, 0, 2))
    assert list(frame.device) == ["B", "B", "a", "a", "b", "b"]  # byte order, not the server's collation
    assert frame.ts.dtype == "datetime64[ns]" and frame.value_count.dtype == "int64"
    assert frame.iloc[2].value == 1.5 and frame.iloc[2].value_count == 2
    assert store.devices() == ["B", "a", "b"]
    assert store.time_range() == (datetime(2024, 1, 1), datetime(2024, 1, 1, 0, 2))
    assert list(store.list_series().rows) == [3, 3, 3]


def test_range_reads_seek_each_series_instead_of_walking_its_history(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Scoring an hour of a store that holds months must not read the months: with the devices and
    sensors named (found by seeks along the primary key), SQLite seeks each series' time range."""
    store = SensorStore(f"sqlite:///{tmp_path / 'mixed.db'}")
    rows = [(device, sensor, f"2024-01-01 00:0{minute}:00", float(minute), float(minute), float(minute), 1)
            for device, sensors in (("d1", ("1", "2")), ("d2", ("3",)), ("d3", ("1", "9"))) for sensor in sensors
            for minute in range(6)]
    with open_writer(store) as writer:
        writer.merge_windows(_chunk(rows))
    assert store.devices() == ["d1", "d2", "d3"]
    assert store.sensors_of(["d2"]) == ["3"] and store.sensors_of(["d1", "d3", "nope"]) == ["1", "2", "9"]
    assert store.sensors_of() == ["1", "2", "3", "9"] and store.sensors_of(["nope"]) == []
    start, end = datetime(2024, 1, 1, 0, 2), datetime(2024, 1, 1, 0, 4)
    frame = store.read_windows(start, end)
    # every series of every device, none twice, though the sensors are probed for each device
    assert list(zip(frame.device, frame.sensor, frame.ts.dt.minute, strict=True)) == [
        (d, s, m) for d, s in (("d1", "1"), ("d1", "2"), ("d2", "3"), ("d3", "1"), ("d3", "9")) for m in (2, 3)]
    others = frame[frame.device != "d1"].reset_index(drop=True)
    assert store.read_windows(start, end, devices=["d2", "d3"]).equals(others)

    statements: list[tuple[str, tuple[object, ...]]] = []
    real = SensorStore._queries

    def recording(self: SensorStore, batch: list[tuple[str, list[object]]]) -> list[pa.Table]:
        statements.extend((sql, tuple(params)) for sql, params in batch)
        return real(self, batch)

    monkeypatch.setattr(SensorStore, "_queries", recording)
    assert store.read_windows(start, end, devices=["d1"]).equals(frame[frame.device == "d1"].reset_index(drop=True))
    reads = [(sql, params) for sql, params in statements if "ORDER BY device, sensor, ts" in sql]
    assert reads, statements
    with sqlite3.connect(tmp_path / "mixed.db") as conn:
        plan = " ".join(str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {reads[-1][0]}", reads[-1][1]))
    assert "device=? AND sensor=? AND ts>? AND ts<?" in plan, plan
