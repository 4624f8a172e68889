"""Small builders shared by the training tests: random windows and fitted scikit-learn models."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from fleetscore.training.bundle import ReleaseBundle
from fleetscore.training.features import compute_features


def random_series(
    rng: np.random.Generator, device: str, sensor: str, n: int, start: str = "2024-01-01"
) -> pd.DataFrame:
    """``n`` windows of one series in the ingestion shape, with a random level, noise and spread."""
    level, noise = rng.uniform(-50, 150), rng.uniform(0.01, 20)
    value = level + noise * rng.standard_normal(n)
    half = rng.uniform(0, 2, n) * noise
    count = rng.integers(1, 6, n)
    half[count == 1] = 0.0
    return pd.DataFrame({
        "device": device, "sensor": sensor,
        "ts": pd.date_range(start, periods=n, freq="5s"),
        "value": value, "value_min": value - half, "value_max": value + half * rng.uniform(0.5, 1.5, n),
        "value_count": count.astype(np.int64),
    })


def random_fleet(
    seed: int, models: int, features: tuple[str, ...], rolling_window: int = 4,
    rows: tuple[int, int] = (20, 200),
) -> tuple[ReleaseBundle, list[Pipeline], list[pd.DataFrame]]:
    """``models`` series with random data, each fitted with a random nu and gamma (varied SV counts)."""
    rng = np.random.default_rng(seed)
    frames = [random_series(rng, f"dev-{m:05d}", f"s{m % 3}", int(rng.integers(*rows))) for m in range(models)]
    x_all = compute_features(pd.concat(frames, ignore_index=True), features, rolling_window)
    offsets = np.cumsum([0] + [len(f) for f in frames])
    keys, pipelines = [], []
    for m, frame in enumerate(frames):
        svm = OneClassSVM(kernel="rbf", nu=float(rng.uniform(0.005, 0.6)), gamma=float(10 ** rng.uniform(-2.5, 1)))
        pipelines.append(Pipeline([("scaler", StandardScaler()), ("svm", svm)]).fit(x_all[offsets[m]:offsets[m + 1]]))
        keys.append((frame["device"].iloc[0], frame["sensor"].iloc[0]))
    bundle = ReleaseBundle.from_sklearn(keys, pipelines, features, rolling_window, manifest={"version": 1})
    return bundle, pipelines, frames


def simulated_windows(spec: object) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``fleetscore simulate`` readings aggregated into windows in memory, and their labels."""
    import pyarrow as pa

    from fleetscore.ingestion.windowing import aggregate
    from fleetscore.simulation.simulate import block_readings, generate, labels_frame, plan_anomalies

    anomalies = plan_anomalies(spec)  # type: ignore[arg-type]
    window_ns = int(spec.window.total_seconds() * 1e9)  # type: ignore[attr-defined]
    tables, done = [], 0
    for block in generate(spec, anomalies):  # type: ignore[arg-type]
        tables.append(aggregate(block_readings(spec, block, done + 1), window_ns))  # type: ignore[arg-type]
        done += len(block.ts)
    partial = pa.concat_tables(tables).to_pandas()
    partial["s"] = partial["value"] * partial["value_count"]
    merged = partial.groupby(["device", "sensor", "ts"], as_index=False).agg(
        s=("s", "sum"), value_min=("value_min", "min"), value_max=("value_max", "max"),
        value_count=("value_count", "sum"))
    merged["value"] = merged["s"] / merged["value_count"]
    merged = merged.sort_values(["device", "sensor", "ts"], ignore_index=True)
    windows = merged[["device", "sensor", "ts", "value", "value_min", "value_max", "value_count"]]
    return windows, labels_frame(spec, anomalies)  # type: ignore[arg-type]
