"""The simulator: determinism, per-sensor ranges, and labels that match what the windows show."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleetscore.errors import ConfigError
from fleetscore.ingestion.ingest import ingest_files
from fleetscore.ingestion.store import SensorStore
from fleetscore.simulation.simulate import SENSOR_RANGES, SimulationSpec, simulate_fleet

SPEC = SimulationSpec(devices=4, sensors=6, start=datetime(2024, 5, 1, 0, 0, 2), duration=timedelta(hours=5),
                      interval=timedelta(seconds=1), seed=11, anomaly_rate=0.05)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    folder = tmp_path_factory.mktemp("sim")
    url = f"sqlite:///{folder / 'sim.db'}"
    result = simulate_fleet(SPEC, out=folder / "sim.csv", labels=folder / "labels.csv", database_url=url)
    assert result.ingest is not None and result.ingest.rows_read == SPEC.readings == 4 * 6 * 5 * 3600
    labels = pd.read_csv(folder / "labels.csv", dtype={"Device": str, "Sensor": str}, parse_dates=["Start", "End"])
    return SensorStore(url).read_windows(), labels, folder


def _label_windows(windows: pd.DataFrame, labels: pd.DataFrame) -> pd.Series:
    kind = pd.Series("", index=windows.index, dtype=object)
    for row in labels.itertuples():
        hit = ((windows.device == row.Device) & (windows.sensor == row.Sensor) & (windows.ts >= row.Start)
               & (windows.ts < row.End))
        assert hit.sum() == (row.End - row.Start) / pd.Timedelta("5s")
        assert (kind[hit] == "").all(), "anomalies overlap"
        kind[hit] = row.Kind
    return kind


def test_labels_match_the_windows(simulated: tuple[pd.DataFrame, pd.DataFrame, Path]) -> None:
    windows, labels, _ = simulated
    assert list(labels.columns) == ["Device", "Sensor", "Kind", "Start", "End", "Label", "Visible"]
    assert (labels.Label == "anomaly").all() and labels.Visible.all()
    assert set(labels.Kind) == {"spike", "level_shift", "stuck"}
    assert (labels.Start >= pd.Timestamp(SPEC.start) + pd.Timedelta("1h")).all()  # first hour is clean
    kind = _label_windows(windows, labels)
    lo = windows.sensor.astype(int).map(lambda s: SENSOR_RANGES[(s - 1) % 5][0])
    hi = windows.sensor.astype(int).map(lambda s: SENSOR_RANGES[(s - 1) % 5][1])
    outside = (windows.value_min >= hi) | (windows.value_max <= lo)
    inside = (windows.value_min >= lo) & (windows.value_max <= hi)
    flat = windows.value_min == windows.value_max
    assert outside[kind == "spike"].all()
    assert outside[kind == "level_shift"].all()
    assert (inside & flat)[kind == "stuck"].all()
    normal = kind == ""
    assert inside[normal].all()
    assert not flat[normal & (windows.value_count > 1)].any()
    share = (~normal).sum() / (windows.ts >= pd.Timestamp(SPEC.start) + pd.Timedelta("1h")).sum()
    assert 0.02 < share < 0.1  # about anomaly_rate=0.05
    spans = labels.End - labels.Start
    assert (spans[labels.Kind == "spike"] == pd.Timedelta("5s")).all()
    long = spans[labels.Kind != "spike"] / pd.Timedelta("5s")
    assert long.between(12, 60).all()


def test_stuck_value_is_the_last_normal_reading(simulated: tuple[pd.DataFrame, pd.DataFrame, Path]) -> None:
    _, labels, folder = simulated
    readings = pd.read_csv(folder / "sim.csv", dtype={"Device": str, "Sensor": str}, parse_dates=["TS"])
    for row in labels[labels.Kind == "stuck"].itertuples():
        start, end = row.Start, row.End
        series = readings[(readings.Device == row.Device) & (readings.Sensor == row.Sensor)]
        before = series[series.TS.lt(start)].Value.iloc[-1]
        inside = series[series.TS.ge(start) & series.TS.lt(end)].Value
        assert (inside == before).all()


def test_file_and_direct_ingest_agree(simulated: tuple[pd.DataFrame, pd.DataFrame, Path], tmp_path: Path) -> None:
    windows, _, folder = simulated
    url = f"sqlite:///{tmp_path / 'file.db'}"
    ingest_files(url, [str(folder / "sim.csv")])
    # the same windows; means may differ in the last bits where a window was merged across chunks
    pd.testing.assert_frame_equal(SensorStore(url).read_windows(), windows, check_exact=False, rtol=1e-12)


def test_deterministic_by_seed(tmp_path: Path) -> None:
    spec = SimulationSpec(devices=2, sensors=2, duration=timedelta(hours=2), seed=5, anomaly_rate=0.05)
    paths = [tmp_path / f"{name}.jsonl.gz" for name in ("a", "b", "c")]
    for path, seed in zip(paths, (5, 5, 6), strict=True):
        simulate_fleet(SimulationSpec(**{**spec.__dict__, "seed": seed}), out=path,
                       labels=path.with_suffix(".labels.csv"))
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()
    assert paths[0].with_suffix(".labels.csv").read_bytes() == paths[1].with_suffix(".labels.csv").read_bytes()
    assert not list(tmp_path.glob("*.partial"))


def test_simulate_ingest_twice_adds_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    spec = SimulationSpec(devices=1, sensors=1, duration=timedelta(minutes=10))
    first = simulate_fleet(spec, database_url=url).ingest
    second = simulate_fleet(spec, database_url=url).ingest
    assert first is not None and second is not None
    assert (first.windows_written, second.status) == (120, "skipped")


def test_bad_specs() -> None:
    with pytest.raises(ConfigError, match="some windows would hold no reading"):
        SimulationSpec(interval=timedelta(seconds=10))
    with pytest.raises(ConfigError, match="--anomaly-rate"):
        SimulationSpec(anomaly_rate=0.7)
    assert np.isclose(SimulationSpec().readings, 3 * 5 * 7200)
