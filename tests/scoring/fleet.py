"""Builders for the scoring tests: windows in a real SQL store, a small fitted release, settings."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from fleetscore.ingestion.engine import make_engine
from fleetscore.ingestion.schema import windows as windows_table
from fleetscore.ingestion.store import SensorStore
from fleetscore.pipelines.settings import Settings, load_settings
from fleetscore.training.bundle import ReleaseBundle
from fleetscore.training.features import compute_features

START = datetime(2018, 8, 28, 23, 0)
RANGES = {"1": (10.0, 15.0), "2": (30.0, 40.0), "3": (60.0, 65.0), "4": (80.0, 85.0), "5": (100.0, 110.0)}


def fleet_windows(devices: int, sensors: int, n: int, seed: int = 0, start: datetime = START) -> pd.DataFrame:
    """``n`` 5-second windows per (device, sensor), uniform in the reference ranges, in the store shape."""
    rng = np.random.default_rng(seed)
    frames = []
    for d in range(1, devices + 1):
        for s in range(1, sensors + 1):
            lo, hi = RANGES[str((s - 1) % 5 + 1)]
            value = rng.uniform(lo, hi, n)
            frames.append(pd.DataFrame({
                "device": str(d), "sensor": str(s), "ts": pd.date_range(start, periods=n, freq="5s"),
                "value": value, "value_min": value, "value_max": value, "value_count": np.ones(n, dtype=np.int64),
            }))
    return pd.concat(frames, ignore_index=True)


def store_windows(database_url: str, frame: pd.DataFrame) -> None:
    """Insert windows into the sensor store (schema created by the store itself)."""
    SensorStore(database_url).create_schema()
    now = datetime(2026, 1, 1)
    rows = [dict(r, updated_at=now) for r in frame.assign(ts=frame["ts"].dt.to_pydatetime()).to_dict("records")]
    with make_engine(database_url).begin() as conn:
        conn.execute(windows_table.insert(), rows)


def fit_release(frame: pd.DataFrame, features: tuple[str, ...] = ("value",), nu: float = 0.01,
                gamma: float = 0.1) -> ReleaseBundle:
    """One StandardScaler + OneClassSVM per series of ``frame``, packed as a release bundle."""
    keys, pipelines = [], []
    for (device, sensor), group in frame.groupby(["device", "sensor"], sort=True):
        x = compute_features(group.reset_index(drop=True), features, 4)
        pipelines.append(Pipeline([("scaler", StandardScaler()), ("svm", OneClassSVM(nu=nu, gamma=gamma))]).fit(x))
        keys.append((str(device), str(sensor)))
    return ReleaseBundle.from_sklearn(keys, pipelines, features, 4, manifest={"version": 1})


@dataclass
class Resolved:
    """Stand-in for training.registry.ResolvedRelease (same fields)."""

    version: int
    bundle_dir: Path
    tags: dict[str, str]


def settings_for(home: Path, **more: Any) -> Settings:
    """Settings with all state under ``home``; MLflow logging off unless asked."""
    overrides = {"home": str(home), "workers": 2, "scoring.log_to_mlflow": False, **more}
    return load_settings(overrides, environ={})
