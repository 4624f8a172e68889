"""Release benchmark: training throughput, registration, load, bundle size, peak memory.

    .venv/bin/python benchmarks/release.py [--series 10000] [--windows 720] [--per-series 200] [--sample 200]

Simulated windows (uniform readings like the simulator) for SERIES (device, sensor) series of WINDOWS
windows; trained with the default TrainingConfig over device shards on local processes (all cores);
the bundle registered as ONE MLflow model version (local SQLite store) and loaded back; beside it the
baseline the design replaces: one MLflow model per series (PER_SERIES of them measured, scaled up).
Training is also compared, on one core and the same SAMPLE series, with fitting each series through
scikit-learn's own ``Pipeline([StandardScaler(), OneClassSVM()]).fit`` (what ``fit_shard`` did before
it called libsvm directly), so the ratio holds whatever else loads the machine.
Targets: >= 300 models/s on 2 cores, registration < 5 s, load < 1 s.
"""

from __future__ import annotations

import argparse
import itertools
import resource
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleetscore.pipelines.executors import ShardFailure, ShardResult, default_workers, run_shards
from fleetscore.training.bundle import ReleaseBundle
from fleetscore.training.config import TrainingConfig
from fleetscore.training.features import compute_features, series_starts
from fleetscore.training.fit import fit_shard

RANGES = ((10, 15), (30, 40), (60, 65), (80, 85), (100, 110))
SENSORS = 5


def make_windows(devices: list[str], n: int, seed: int) -> pd.DataFrame:
    """Windows of 5 uniform readings each, per (device, sensor) of ``devices`` x 5 sensors, sorted."""
    rng = np.random.default_rng(seed)
    series = len(devices) * SENSORS
    sensor_idx = np.tile(np.repeat(np.arange(SENSORS), n), len(devices))
    lo = np.array([r[0] for r in RANGES], dtype=np.float64)[sensor_idx]
    hi = np.array([r[1] for r in RANGES], dtype=np.float64)[sensor_idx]
    readings = lo[:, None] + (hi - lo)[:, None] * rng.random((series * n, 5))
    ts = pd.date_range("2024-01-01", periods=n, freq="5s").to_numpy()
    return pd.DataFrame({
        "device": np.repeat(np.asarray(devices, dtype=object), SENSORS * n),
        "sensor": np.array([str(k + 1) for k in range(SENSORS)], dtype=object)[sensor_idx],
        "ts": np.tile(ts, series),
        "value": readings.mean(axis=1), "value_min": readings.min(axis=1), "value_max": readings.max(axis=1),
        "value_count": np.full(series * n, 5, dtype=np.int64),
    })


def train_shard(devices: list[str], n: int, seed: int, config: TrainingConfig) -> tuple[ReleaseBundle, float, float]:
    """One shard: generate its windows (the data would come from SQL) and fit them. Returns the bundle,
    the generation seconds and the fitting seconds."""
    t = time.perf_counter()
    windows = make_windows(devices, n, seed)
    generated = time.perf_counter() - t
    fit = fit_shard(windows, config)
    return fit.bundle, generated, fit.seconds


def sklearn_per_model(windows: pd.DataFrame, config: TrainingConfig) -> float:
    """Seconds to fit every series of ``windows`` one scikit-learn Pipeline at a time, with the decision
    function on the training rows that the per-model offset calibration needs (the former ``fit_shard``)."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import OneClassSVM

    t = time.perf_counter()
    starts = series_starts(windows)
    feats = compute_features(windows, config.features, config.rolling_window, starts=starts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for a, b in itertools.pairwise(starts):
            model = Pipeline([("scaler", StandardScaler()),
                              ("svm", OneClassSVM(kernel="rbf", nu=config.nu, gamma=config.gamma))]).fit(feats[a:b])
            model.decision_function(feats[a:b])
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--windows", type=int, default=720)
    parser.add_argument("--per-series", type=int, default=200)
    parser.add_argument("--sample", type=int, default=200, help="series of the one-core comparison")
    parser.add_argument("--selective", type=float, default=0.0, metavar="FRACTION",
                        help="instead: the full release pipeline against release --only drifted of this share "
                             "of the fleet (e.g. 0.01), on a SQLite store")
    args = parser.parse_args()
    devices = [f"{i:05d}" for i in range(max(1, args.series // SENSORS))]
    config = TrainingConfig()
    workers = default_workers()

    # one core, the same series: fit_shard against one scikit-learn Pipeline per series
    sample = make_windows(devices[:max(1, args.sample // SENSORS)], args.windows, 99)
    fit_shard(sample.iloc[:args.windows * SENSORS], config)  # warm-up (imports)
    t = time.perf_counter()
    ours = fit_shard(sample, config)
    ours_s = time.perf_counter() - t
    theirs_s = sklearn_per_model(sample, config)
    m = len(ours.bundle)
    print(f"one core, {m} series x {args.windows} windows: fit_shard {m / ours_s:,.0f} models/s, scikit-learn "
          f"Pipeline per series {m / theirs_s:,.0f} models/s -> {theirs_s / ours_s:.1f}x")

    # the fleet over device shards on all cores (about 4 shards per core: equal work, process start amortised)
    n_shards = max(1, min(len(devices), workers * 4))
    shards = [devices[i::n_shards] for i in range(n_shards)]
    t = time.perf_counter()
    results = run_shards(train_shard, [(s, args.windows, i, config) for i, s in enumerate(shards)], "local", workers)
    train_s = time.perf_counter() - t
    failed = [r for r in results if isinstance(r, ShardFailure)]
    if failed:
        raise SystemExit(f"training failed: {failed[0].error}")
    values = [r.value for r in results if isinstance(r, ShardResult)]
    bundle = ReleaseBundle.concat([v[0] for v in values], manifest={})
    gen_s = sum(v[1] for v in values) / workers
    fit_s = sum(v[2] for v in values) / workers
    print(f"training: {len(bundle):,} models x {args.windows} windows, {n_shards} shards on {workers} cores in "
          f"{train_s:.1f} s: {len(bundle) / train_s:,.0f} models/s end to end (data generation "
          f"{gen_s:.1f} s/core included), {len(bundle) / fit_s:,.0f} models/s fitting alone; "
          f"mean support vectors {bundle.n_support.mean():.1f}")

    root = Path(tempfile.mkdtemp(prefix="fleetscore-bench-"))
    try:
        from fleetscore.training import registry

        uri = f"sqlite:///{root / 'mlflow.db'}"
        t = time.perf_counter()
        registry.log_run(uri, "warmup", "warmup", {}, {}, {})  # creates the store (MLflow migrations)
        print(f"mlflow store creation (once): {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        bundle.save(root / "bundle")
        save_s = time.perf_counter() - t
        size = sum(p.stat().st_size for p in (root / "bundle").iterdir())
        t = time.perf_counter()
        version, _ = registry.register_release(uri, "bench", root / "bundle", "release", {}, {"models": len(bundle)},
                                               {"fleetscore.kind": "bench"})
        reg_s = time.perf_counter() - t
        registry.move_alias(uri, "bench", "champion", version, "bench")
        t = time.perf_counter()
        resolved = registry.resolve_release(uri, "bench", "champion", cache_dir=root / "cache")
        resolve_s = time.perf_counter() - t
        t = time.perf_counter()
        loaded = ReleaseBundle.load(resolved.bundle_dir)
        load_s = time.perf_counter() - t
        assert len(loaded) == len(bundle)
        print(f"bundle: {size / 1e6:.1f} MB (save {save_s:.2f} s); registration of the whole release "
              f"{reg_s:.2f} s; resolve + download {resolve_s:.2f} s; load {load_s * 1000:.0f} ms")

        # baseline: one registered MLflow model per series (sklearn flavour, explicit pip requirements)
        import mlflow

        mlflow.set_tracking_uri(uri)
        # its own experiment: the default one keeps artifacts in ./mlruns of the working directory
        mlflow.set_experiment(experiment_id=mlflow.create_experiment(
            "per-series-baseline", artifact_location=(root / "baseline-artifacts").as_uri()))
        n = min(args.per_series, len(bundle))
        t = time.perf_counter()
        for i in range(n):
            device, sensor = bundle.keys[i]
            with mlflow.start_run(run_name=f"{device}-{sensor}"):
                mlflow.sklearn.log_model(bundle.to_sklearn(device, sensor), name="model",
                                         registered_model_name=f"per-series-{device}-{sensor}",
                                         pip_requirements=registry.pip_requirements(),
                                         serialization_format="cloudpickle")
        per_reg = (time.perf_counter() - t) / n
        t = time.perf_counter()
        for i in range(n):
            device, sensor = bundle.keys[i]
            mlflow.sklearn.load_model(f"models:/per-series-{device}-{sensor}/1")
        per_load = (time.perf_counter() - t) / n
        print(f"per-series baseline ({n} measured): register {per_reg * 1000:.0f} ms/model -> "
              f"{per_reg * len(bundle):,.0f} s for {len(bundle):,}; load {per_load * 1000:.0f} ms/model -> "
              f"{per_load * len(bundle):,.0f} s")
        print(f"ratios: registration {per_reg * len(bundle) / reg_s:,.0f}x faster, load "
              f"{per_load * len(bundle) / (resolve_s + load_s):,.0f}x faster than per-series models")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(f"peak memory: {peak / 1024:.0f} MB (largest process)")


def selective(series: int, windows: int, fraction: float) -> None:
    """``run_release`` of the whole fleet, then ``run_release(only=["drifted"])`` with ``fraction`` of
    the series recorded as drifted: the same store, registry and settings (validation skipped in both)."""
    from datetime import datetime

    from fleetscore.ingestion.engine import make_engine
    from fleetscore.ingestion.ops_store import OpsStore
    from fleetscore.ingestion.schema import windows as windows_table
    from fleetscore.ingestion.store import SensorStore
    from fleetscore.pipelines.release import run_release
    from fleetscore.pipelines.settings import load_settings

    root = Path(tempfile.mkdtemp(prefix="fleetscore-bench-selective-"))
    try:
        settings = load_settings({"home": str(root)}, environ={})
        devices = [f"d{i:05d}" for i in range(max(1, series // SENSORS))]
        frame = make_windows(devices, windows, seed=0)
        SensorStore(settings.database_url).create_schema()
        t = time.perf_counter()
        rows = frame.assign(ts=frame["ts"].dt.to_pydatetime(), updated_at=datetime(2026, 1, 1)).to_dict("records")
        with make_engine(settings.database_url).begin() as conn:
            conn.execute(windows_table.insert(), rows)
        print(f"store: {len(frame):,} windows of {len(devices) * SENSORS:,} series in {time.perf_counter() - t:.1f} s")
        start, end = frame["ts"].min().to_pydatetime(), frame["ts"].max().to_pydatetime()
        t = time.perf_counter()
        full = run_release(settings, start, end, skip_validation=True)
        full_s = time.perf_counter() - t
        print(f"full release: {full_s:.2f} s  ({full.summary})")
        keys = [(d, str(k + 1)) for d in devices for k in range(SENSORS)]
        chosen = keys[:: max(1, round(1 / fraction))]
        OpsStore(settings.database_url).record_drift(
            "bench", full.version, start, end, datetime(2026, 1, 1),
            [{"device": d, "sensor": s, "drift": 1.0, "feature": "value", "rows": windows, "anomalies": 0}
             for d, s in chosen])
        t = time.perf_counter()
        part = run_release(settings, start, end, skip_validation=True, only=["drifted"])
        part_s = time.perf_counter() - t
        print(f"selective release (--only drifted, {len(part.candidate.bundle):,} series = "
              f"{len(part.candidate.bundle) / len(keys):.1%}): {part_s:.2f} s  ({part.summary})")
        print(f"ratio: the selective release is {full_s / part_s:.1f}x faster than the full one (target >= 20x)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if "--selective" in sys.argv:
        cli = argparse.ArgumentParser()
        cli.add_argument("--series", type=int, default=10_000)
        cli.add_argument("--windows", type=int, default=720)
        cli.add_argument("--selective", type=float, default=0.01)
        known, _ = cli.parse_known_args()
        selective(known.series, known.windows, known.selective)
    else:
        main()
