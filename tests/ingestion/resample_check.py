"""The check both ingestion paths (native and generic) must pass: raw readings written as windows equal
pandas' own resample of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def write_raw_readings(path: Path, *, seed: int, n: int, seconds: float) -> pd.DataFrame:
    """``n`` random readings of 3 devices x 2 sensors over ``seconds``, as a CSV at ``path``."""
    rng = np.random.default_rng(seed)
    ts = pd.Timestamp("2024-03-01 12:00:00") + pd.to_timedelta(np.sort(rng.uniform(0, seconds, n)), unit="s")
    frame = pd.DataFrame({"TS": ts.strftime("%Y-%m-%d %H:%M:%S.%f"), "Device": rng.choice(["1", "2", "x"], n),
                          "Sensor": rng.choice(["1", "2"], n), "Value": rng.normal(50, 10, n).round(3)})
    frame.to_csv(path, index=False)
    return frame


def assert_windows_match_resample(got: pd.DataFrame, readings: pd.DataFrame, window: str) -> None:
    """The stored windows ``got`` are the ``window`` resample of ``readings`` (mean, min, max, count)."""
    frame = readings.assign(TS=pd.to_datetime(readings.TS))
    expected = (frame.set_index("TS").groupby(["Device", "Sensor"]).Value.resample(window)
                .agg(["mean", "min", "max", "count"]).reset_index())
    expected = expected[expected["count"] > 0].reset_index(drop=True)
    assert len(got) == len(expected)
    assert list(got.device) == list(expected.Device) and list(got.ts) == list(expected.TS)
    np.testing.assert_allclose(got.value, expected["mean"], rtol=1e-12)
    assert np.array_equal(got.value_min, expected["min"]) and np.array_equal(got.value_max, expected["max"])
    assert np.array_equal(got.value_count, expected["count"])
