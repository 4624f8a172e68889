"""The device family: every sensor of a device judged together, against a pandas reference."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fleetscore.training.config import TrainingConfig
from fleetscore.training.detectors.device import JOINT_CAP
from fleetscore.training.features import compute_features
from fleetscore.training.fit import fit_shard
from fleetscore.training.kernel import score_windows

FEATURES = ("value", "spread")
SENSORS = ("flow", "pressure", "temp", "vibration")
CONFIG = TrainingConfig(detector="device", features=FEATURES, min_rows=50, target_false_alarm_rate=0.01)


def _fleet(seed: int, devices: int, rows: int, test_rows: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Devices x 4 sensors on one 5 s grid, each series its own level and noise: the first ``rows``
    windows (training) and the next ``test_rows``."""
    rng = np.random.default_rng(seed)
    total = rows + test_rows
    ts = pd.date_range("2026-01-05", periods=total, freq="5s")
    frames = []
    for d in range(devices):
        for sensor in SENSORS:
            level, noise = rng.uniform(-50, 150), rng.uniform(0.1, 5)
            value = level + noise * rng.standard_normal(total)
            half = noise * rng.uniform(0.2, 1.0, total)
            frames.append(pd.DataFrame({"device": f"d{d}", "sensor": sensor, "ts": ts, "value": value,
                                        "value_min": value - half, "value_max": value + half,
                                        "value_count": np.int64(5)}))
    fleet = pd.concat(frames, ignore_index=True)
    late = fleet["ts"] >= ts[rows]
    return fleet[~late].reset_index(drop=True), fleet[late].reset_index(drop=True)


def _reference(train: pd.DataFrame, test: pd.DataFrame, target: float) -> pd.DataFrame:
    """Straightforward pandas: per series medians and MADs, per window the RMS of the capped sensor z."""
    def sensor_z(frame: pd.DataFrame, stats: dict) -> pd.DataFrame:
        out = []
        for (device, sensor), group in frame.groupby(["device", "sensor"], sort=False):
            x = compute_features(group.reset_index(drop=True), FEATURES)
            median, scale = stats[(device, sensor)]
            z = np.abs(x - median) / scale
            out.append(pd.DataFrame({"device": device, "sensor": sensor, "ts": group["ts"].to_numpy(),
                                     "z": z.max(axis=1), "feature": np.array(FEATURES)[z.argmax(axis=1)]}))
        rows = pd.concat(out, ignore_index=True)
        capped = np.minimum(rows["z"], JOINT_CAP) ** 2
        rows["joint"] = np.sqrt(capped.groupby([rows["device"], rows["ts"]]).transform("mean"))
        return rows

    stats = {}
    for key, group in train.groupby(["device", "sensor"], sort=False):
        x = compute_features(group.reset_index(drop=True), FEATURES)
        median = np.median(x, axis=0)
        stats[key] = (median, 1.4826 * np.median(np.abs(x - median), axis=0))
    fitted = sensor_z(train, stats)
    q = 1 - target / 2
    series_thr = fitted.groupby(["device", "sensor"])["z"].quantile(q, interpolation="lower").clip(lower=3.0)
    device_thr = fitted.groupby("device")["joint"].quantile(q, interpolation="lower").clip(lower=1.5)
    scored = sensor_z(test, stats)
    own = series_thr.loc[list(zip(scored["device"], scored["sensor"], strict=True))].to_numpy() - scored["z"]
    joint = device_thr.loc[scored["device"]].to_numpy() - scored["joint"]
    scored["score"] = np.minimum(own, joint)
    return scored


def test_device_family_matches_a_pandas_reference() -> None:
    train, test = _fleet(1, 3, 300, 120)
    bundle = fit_shard(train, CONFIG).bundle
    assert bundle.detector == "device" and len(bundle) == 12
    got = score_windows(bundle, test)
    expected = _reference(train, test, CONFIG.target_false_alarm_rate)
    np.testing.assert_allclose(got["score"].to_numpy(), expected["score"].to_numpy(), rtol=0, atol=1e-9)
    record = bundle.manifest["series"][0]
    assert record["metrics"]["calibration"]["target"] == 0.01
    assert abs(record["metrics"]["calibration"]["reached"] - 0.01) < 0.02


def test_a_whole_device_moving_a_little_is_flagged_and_named_by_sensor() -> None:
    """Every sensor of d1 moves 3 robust sigma at once for 10 windows: no sensor alone is past its
    threshold, so the robust family misses it; the device family flags it and names a sensor."""
    train, test = _fleet(3, 4, 400, 120)
    device = fit_shard(train, CONFIG).bundle
    robust = fit_shard(train, TrainingConfig(detector="robust", features=FEATURES, min_rows=50)).bundle
    hit = (test["device"] == "d1") & (test["ts"] >= test["ts"].iloc[60]) & (test["ts"] < test["ts"].iloc[70])
    for sensor in SENSORS:
        rows = hit & (test["sensor"] == sensor)
        scale = float(device.scale[device.index("d1", sensor), 0])
        for column in ("value", "value_min", "value_max"):
            test.loc[rows, column] += 3.0 * scale
    by_device = score_windows(device, test)
    alone = score_windows(robust, test)
    assert by_device.loc[hit.to_numpy(), "prediction"].mean() >= 0.9
    assert alone.loc[hit.to_numpy(), "prediction"].mean() <= 0.1
    reasons = by_device.loc[hit.to_numpy() & (by_device["prediction"] == 1).to_numpy(), "reason"]
    assert set(reasons) <= {f"{s}:value" for s in SENSORS} and len(reasons)
    normal = ~hit.to_numpy()
    assert by_device.loc[normal, "prediction"].mean() < 0.03
