"""Release benchmark: training throughput, registration, load, bundle size, peak memory.

    .venv/bin/python benchmarks/release.py [--series 10000] [--windows 720] [--per-series 200]

Simulated windows (uniform readings like the simulator) for SERIES (device, sensor) series of WINDOWS
windows; trained with the default TrainingConfig over device shards on local processes (all cores);
the bundle registered as ONE MLflow model version (local SQLite store) and loaded back; beside it the
baseline the design replaces: one MLflow model per series (PER_SERIES of them measured, scaled up).
Targets: >= 300 models/s on 2 cores, registration < 5 s, load < 1 s.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.executors import ShardFailure, default_workers, run_shards
from training.bundle import ReleaseBundle
from training.config import TrainingConfig
from training.fit import fit_shard

RANGES = ((10, 15), (30, 40), (60, 65), (80, 85), (100, 110))


def make_windows(devices: list[str], sensors: int, n: int, seed: int) -> pd.DataFrame:
    """Windows of 5 uniform readings each, per (device, sensor), sorted."""
    rng = np.random.default_rng(seed)
    frames = []
    ts = pd.date_range("2024-01-01", periods=n, freq="5s").to_numpy()
    for d in devices:
        for s in range(sensors):
            lo, hi = RANGES[s % 5]
            readings = lo + rng.random((n, 5)) * (hi - lo)
            frames.append(pd.DataFrame({"device": d, "sensor": str(s + 1), "ts": ts, "value": readings.mean(1),
                                        "value_min": readings.min(1), "value_max": readings.max(1),
                                        "value_count": np.int64(5)}))
    return pd.concat(frames, ignore_index=True)


def train_shard(devices: list[str], sensors: int, n: int, seed: int, config: TrainingConfig) -> ReleaseBundle:
    """One shard: generate its windows (the data would come from SQL) and fit them."""
    return fit_shard(make_windows(devices, sensors, n, seed), config).bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--windows", type=int, default=720)
    parser.add_argument("--per-series", type=int, default=200)
    args = parser.parse_args()
    sensors = 5
    devices = [f"{i:05d}" for i in range(max(1, args.series // sensors))]
    config = TrainingConfig()
    workers = default_workers()
    shards = [devices[i::workers * 4] for i in range(workers * 4)]

    # baseline for the data generation alone (not training): one shard, this process
    t = time.perf_counter()
    make_windows(shards[0], sensors, args.windows, 0)
    gen_per_shard = time.perf_counter() - t

    t = time.perf_counter()
    results = run_shards(train_shard, [(s, sensors, args.windows, i, config) for i, s in enumerate(shards)],
                         "local", workers)
    train_s = time.perf_counter() - t
    failed = [r for r in results if isinstance(r, ShardFailure)]
    if failed:
        raise SystemExit(f"training failed: {failed[0].error}")
    bundle = ReleaseBundle.concat([r.value for r in results], manifest={})  # type: ignore[union-attr]
    fit_s = max(0.0, train_s - gen_per_shard * len(shards) / workers)
    print(f"training: {len(bundle):,} models x {args.windows} windows on {workers} cores in {train_s:.1f} s "
          f"({len(bundle) / train_s:,.0f} models/s incl. data generation; ~{len(bundle) / fit_s:,.0f} models/s "
          f"fitting alone); mean support vectors {bundle.n_support.mean():.1f}")

    root = Path(tempfile.mkdtemp(prefix="fleetscore-bench-"))
    try:
        from training import registry

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


if __name__ == "__main__":
    main()
