"""The industrial profile: each kind present and labelled window by window, legitimate events tagged,
the timing of real telemetry, determinism by seed, and the CLI's help and output."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from fleetscore.errors import ConfigError
from fleetscore.ingestion.store import SensorStore
from fleetscore.pipelines.cli import main
from fleetscore.simulation import industrial
from fleetscore.simulation.labels import ANOMALY_KINDS, NORMAL_KINDS, match_labels, read_labels
from fleetscore.simulation.simulate import SimulationSpec, simulate_fleet

SPEC = SimulationSpec.for_profile("industrial", devices=6, start=datetime(2026, 1, 5), duration=timedelta(hours=4),
                                  seed=3, anomaly_rate=0.08)
SENSOR_INDEX = {name: i for i, name in enumerate(industrial.SENSORS)}


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Windows from the store, labels from the file, and the raw readings of the CSV."""
    folder = tmp_path_factory.mktemp("plant")
    url = f"sqlite:///{folder / 'plant.db'}"
    result = simulate_fleet(SPEC, out=folder / "plant.csv", labels=folder / "labels.csv", database_url=url)
    assert result.ingest is not None and result.ingest.quarantined_total == 0
    windows = SensorStore(url).read_windows()
    labels = read_labels(folder / "labels.csv")
    readings = pd.read_csv(folder / "plant.csv", dtype={"Device": str, "Sensor": str}, parse_dates=["TS"])
    return windows, labels, readings


def _sigma(device: str, sensor: str) -> float:
    d = int(device.split("-")[1]) - 1
    return float(industrial.window_sigma(SPEC, industrial.pump(SPEC, d))[SENSOR_INDEX[sensor]])


def _series(windows: pd.DataFrame, device: str, sensor: str) -> pd.DataFrame:
    return windows[(windows.device == device) & (windows.sensor == sensor)].set_index("ts")


def test_every_kind_is_present_and_labelled_window_by_window(plant: tuple[pd.DataFrame, ...]) -> None:
    windows, labels, _ = plant
    assert list(labels.columns) == ["Device", "Sensor", "Kind", "Start", "End", "Label", "Visible"]
    assert set(labels.Kind[labels.Label == "anomaly"]) == set(ANOMALY_KINDS)
    assert set(labels.Kind[labels.Label == "normal"]) == set(NORMAL_KINDS)
    assert set(windows.sensor) == {"temperature", "pressure", "vibration", "flow_rate"}
    assert sorted(set(windows.device)) == [f"pump-0{d}" for d in range(1, 7)]
    # anomalies only after the clean span; no two labelled rows of a series overlap
    assert (labels.Start[labels.Label == "anomaly"] >= pd.Timestamp("2026-01-05 02:00")).all()
    for _, rows in labels.groupby(["Device", "Sensor"]):
        rows = rows.sort_values("Start")
        assert (rows.Start.to_numpy()[1:] >= rows.End.to_numpy()[:-1]).all()
    marks = match_labels(windows, labels)
    # every anomaly window exists in the store (readings arrive inside every anomaly)
    for row in labels[labels.Label == "anomaly"].itertuples():
        series = _series(windows, row.Device, row.Sensor)
        inside = series[(series.index >= row.Start) & (series.index < row.End)]
        assert len(inside) == (row.End - row.Start) / pd.Timedelta("5s"), row
    assert marks.anomalous.sum() == ((labels.End - labels.Start)[labels.Label == "anomaly"]
                                     // pd.Timedelta("5s")).sum()


def test_each_anomaly_shows_in_its_windows(plant: tuple[pd.DataFrame, ...]) -> None:
    windows, labels, readings = plant
    for row in labels[labels.Label == "anomaly"].itertuples():
        series = _series(windows, row.Device, row.Sensor)
        sigma = _sigma(row.Device, row.Sensor)
        before = series[(series.index < row.Start) & (series.index >= row.Start - pd.Timedelta("2min"))]
        inside = series[(series.index >= row.Start) & (series.index < row.End)]
        offset = (inside.value.mean() - before.value.median()) / sigma
        spread = (inside.value_max - inside.value_min).mean() / (before.value_max - before.value_min).mean()
        if row.Kind == "spike":
            reading_std = sigma * np.sqrt(5)
            level = before.value.median()
            jump = max(inside.value_max.iloc[0] - level, level - inside.value_min.iloc[0])
            assert jump > 5.5 * reading_std, row  # 8-15 std, less the noise of that reading
        elif row.Kind == "level_shift" and row.Sensor != "temperature":
            assert 1.8 < abs(offset) < 4.2, (row, offset)
        elif row.Kind == "variance":
            assert spread > 2.5, (row, spread)
            assert row.Sensor == "temperature" or abs(offset) < 3.0, (row, offset)  # the same mean
        elif row.Kind == "stuck":
            raw = readings[(readings.Device == row.Device) & (readings.Sensor == row.Sensor)]
            last = raw[row.Start > raw.TS].Value.iloc[-1]
            assert (raw[(row.Start <= raw.TS) & (row.End > raw.TS)].Value == last).all(), row
        elif row.Kind == "drift" and row.Visible and row.Sensor != "temperature":
            hidden = labels[(labels.Kind == "drift") & (labels.End == row.Start) & (labels.Device == row.Device)
                            & (labels.Sensor == row.Sensor)]
            begin = hidden.Start.iloc[0] if len(hidden) else row.Start
            start = series[(series.index < begin) & (series.index >= begin - pd.Timedelta("2min"))]
            end = inside.value.iloc[-6:].mean() - start.value.median()
            assert 3.5 < abs(end) / sigma < 6.5, (row, end / sigma)
        elif row.Kind == "device" and row.Sensor != "temperature":
            # a failing pump: vibration up, pressure and flow down, each by 2.5-3.5 sigma
            expected = 1.0 if row.Sensor == "vibration" else -1.0
            assert 1.0 < expected * offset < 4.5, (row, offset)
    # a drift's hidden part is labelled first, then its visible part; a device anomaly covers all sensors
    drift = labels[labels.Kind == "drift"]
    assert set(drift.Visible) == {False, True}
    device = labels[labels.Kind == "device"].groupby(["Device", "Start", "End"]).Sensor.nunique()
    assert (device == 4).all()


def test_legitimate_events_are_tagged_normal_and_look_like_them(plant: tuple[pd.DataFrame, ...]) -> None:
    windows, labels, readings = plant
    normal = labels[labels.Label == "normal"]
    assert set(normal.Sensor[normal.Kind == "setpoint_change"]) == {"pressure"}
    assert set(normal.Sensor[normal.Kind == "micro_stop"]) == {"flow_rate"}
    assert set(normal.Sensor[normal.Kind == "dropout"]) == set(industrial.SENSORS)
    for row in normal[normal.Kind == "micro_stop"].itertuples():
        series = _series(windows, row.Device, row.Sensor)
        inside = series[(series.index >= row.Start) & (series.index < row.End)]
        assert (inside.value_min == 0).any(), row
    for row in normal[normal.Kind == "setpoint_change"].itertuples():
        series = _series(windows, row.Device, row.Sensor)
        before = series[series.index < row.Start].value.iloc[-12:].median()
        if not (series.index >= row.End).any():
            continue  # the last change runs past the end
        after = series[series.index >= row.End].value.iloc[:12].median()
        assert abs(after - before) > 0.05 * before, row  # a recipe step, legitimately far beyond the noise
    for row in normal[(normal.Kind == "dropout") & (normal.Sensor == "pressure")].itertuples():
        raw = readings[(readings.Device == row.Device) & (readings.Sensor == row.Sensor)
                       & (row.Start <= readings.TS) & (row.End > readings.TS)]
        gaps = raw.TS.diff().dt.total_seconds().max()
        assert gaps > 8, row  # a communication gap of at least 10 s (less the jitter)


def test_readings_have_jitter_drops_and_per_device_levels(plant: tuple[pd.DataFrame, ...]) -> None:
    windows, _, readings = plant
    pressure = readings[(readings.Device == "pump-01") & (readings.Sensor == "pressure")]
    steps = pressure.TS.diff().dt.total_seconds().dropna()
    assert steps.min() > 0.3 and 0.98 < steps.median() < 1.02 and steps.std() > 0.1
    assert len(readings) < SPEC.readings * 0.99  # dropped readings and gaps
    counts = windows.value_count.value_counts()
    assert counts.index.max() >= 6 and (counts.index <= 2).any()
    flow = readings[readings.Sensor == "flow_rate"].Value
    assert (flow == flow.round()).all() and (flow >= 0).all()
    means = windows[windows.sensor == "vibration"].groupby("device").value.median()
    assert means.max() - means.min() > 0.3  # per-device levels


def test_deterministic_by_seed_and_independent_of_fleet_size(tmp_path: Path) -> None:
    spec = SimulationSpec.for_profile("industrial", devices=2, duration=timedelta(minutes=150), seed=9)
    outs = []
    for name, s in (("a", spec), ("b", spec), ("c", SimulationSpec(**{**spec.__dict__, "seed": 10})),
                    ("d", SimulationSpec(**{**spec.__dict__, "devices": 3}))):
        simulate_fleet(s, out=tmp_path / f"{name}.csv", labels=tmp_path / f"{name}.labels.csv")
        outs.append((tmp_path / f"{name}.csv").read_bytes())
    assert outs[0] == outs[1] and outs[0] != outs[2]
    assert (tmp_path / "a.labels.csv").read_bytes() == (tmp_path / "b.labels.csv").read_bytes()
    two = pd.read_csv(tmp_path / "a.csv")
    three = pd.read_csv(tmp_path / "d.csv")
    pd.testing.assert_frame_equal(two.sort_values(["Device", "Sensor", "TS"], ignore_index=True),
                                  three[three.Device != "pump-03"].sort_values(["Device", "Sensor", "TS"],
                                                                               ignore_index=True))


def test_industrial_spec_checks() -> None:
    with pytest.raises(ConfigError, match="the industrial profile has 4 sensors per device, got --sensors 5"):
        SimulationSpec.for_profile("industrial", sensors=5)
    with pytest.raises(ConfigError, match="--profile must be one of uniform, industrial"):
        SimulationSpec.for_profile("plant")
    spec = SimulationSpec.for_profile("industrial")
    assert (spec.devices, spec.sensors, spec.clean, spec.anomaly_rate) == (12, 4, timedelta(hours=2), 0.05)


def test_cli_help_and_exact_output(home: Path) -> None:
    shown = CliRunner().invoke(main, ["simulate", "--help"], prog_name="fleetscore")
    assert shown.exit_code == 0
    assert "--profile [uniform|industrial]" in shown.output and "--clean DURATION" in shown.output
    args = ["simulate", "--profile", "industrial", "--devices", "2", "--duration", "150m", "--seed", "9",
            "--out", "plant.csv", "--labels", "labels.csv", "--ingest"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    labels = read_labels("labels.csv")
    readings = pd.read_csv("plant.csv")
    events = labels.drop_duplicates(["Device", "Kind", "Start"])  # one event of a device: one row per sensor
    drift_rows = labels[labels.Kind == "drift"].drop_duplicates(["Device", "Sensor", "End"])
    count = {kind: int((events.Kind == kind).sum()) for kind in (*ANOMALY_KINDS, *NORMAL_KINDS)}
    count["drift"] = len(drift_rows[drift_rows.Visible])
    windows = int(((labels.End - labels.Start)[labels.Label == "anomaly"] // pd.Timedelta("5s")).sum())
    anomalies = sum(count[k] for k in ANOMALY_KINDS)
    kinds = ", ".join(f"{k} {count[k]}" for k in ANOMALY_KINDS)
    legit = ", ".join(f"{k} {count[k]}" for k in NORMAL_KINDS)
    assert result.stdout.splitlines()[:5] == [
        f"simulated {len(readings):,} readings: 2 devices x 4 sensors, {anomalies} anomalies ({kinds}) "
        f"over {windows:,} of 14,400 windows",
        f"legitimate events (labelled normal): {legit}",
        "readings: plant.csv",
        "labels: labels.csv",
        f"simulate:profile=industrial,seed=9,devices=2,sensors=4: {len(readings):,} rows read, "
        f"{result.stdout.split('rows read, ')[1].split(' windows')[0]} windows written, 0 late updates, 0 quarantined",
    ]
    written = int(result.stdout.split("rows read, ")[1].split(" windows")[0].replace(",", ""))
    assert written == len(SensorStore("sqlite:///.fleetscore/fleetscore.db").read_windows())
