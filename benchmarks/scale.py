"""Scale-out benchmark: one scoring run on a real Dask cluster of 1, 2 and 4 worker processes.

    .venv/bin/python benchmarks/scale.py [--series 10000,100000] [--windows 60] [--workers 1,2,4]
                                         [--series-per-shard 2500]

For each fleet size it builds, in a temporary folder, N series (N/5 devices x 5 sensors) x W windows
in a SQLite store (an absolute path; the cluster runs on this machine, ``shared_disk = true``) and a
release of N models (fitted for at most 1,000 series with the training defaults, tiled to N: same
parameters, same scoring cost). Then, per worker count, it starts a ``LocalCluster`` of that many
single-threaded worker processes and runs ``score_window`` with the data gate on, and prints:

- per shard: wall time (median, max), bytes of the pickled task sent through the scheduler (max);
- per worker: peak RSS (``VmHWM`` read on each worker after the run: the worst shard it ran);
- the serial part (the run minus the shards' span: resolve, plan, gate decision, finalize), the gate's
  own time (it runs beside the shards) and the whole run;
- time per series, and the ratio against the 1-worker run of the same fleet (the baseline).

The machine has 2 cores shared with other work: runs of more than 2 workers cannot be faster than 2.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import score as score_bench  # noqa: E402  (the fleet builders of benchmarks/score.py)

FITTED = 1_000


def _peak_rss() -> int:
    """This process's own peak RSS (``VmHWM``). Not ``ru_maxrss``: a spawned worker inherits the peak of
    the process that started it (here the client holding the whole fleet's frames)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def build(work: Path, series: int, windows: int) -> tuple[str, Path, Any]:
    """The store (SQLite URL) and the release folder of one fleet size."""
    from fleetscore.training.bundle import ReleaseBundle

    context = 10
    start = score_bench.START
    frame = score_bench.make_windows(series, windows + context, start - timedelta(seconds=5 * context), seed=2)
    url = f"sqlite:///{work / 'fleet.db'}"
    score_bench.store(url, frame)
    train = score_bench.make_windows(min(series, FITTED), 200, start - timedelta(days=1), seed=1)
    bundle = score_bench.fit_release(train, series)
    assert isinstance(bundle, ReleaseBundle)
    bundle.save(work / "release")
    return url, work / "release", start


def run_once(work: Path, url: str, release: Path, start: Any, windows: int, workers: int,
             series_per_shard: int) -> dict[str, Any]:
    """One scoring run on a fresh cluster of ``workers`` processes; its figures."""
    from distributed import Client, LocalCluster

    import fleetscore.pipelines.overlapped_run as overlapped
    import fleetscore.pipelines.scoring_pipeline as sp
    from fleetscore.pipelines.executors import ShardResult, run_shards
    from fleetscore.pipelines.settings import load_settings

    results: list[Any] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        out = run_shards(*args, **kwargs)
        results.extend(out)
        return out

    sp.run_shards = spy  # type: ignore[assignment]
    overlapped.run_shards = spy  # type: ignore[assignment]
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        home = work / f"run-{workers}"
        settings = load_settings({
            "home": str(home), "database_url": url, "storage_url": str(home / "blob"),
            "tracking_uri": f"sqlite:///{home / 'mlflow.db'}", "executor": "dask://" + cluster.scheduler_address[6:],
            "shared_disk": True, "scoring.log_to_mlflow": False, "scoring.series_per_shard": series_per_shard,
        }, environ={})
        t0 = time.perf_counter()
        result = sp.score_window(settings, start, start + timedelta(seconds=5 * windows), release=f"path:{release}")
        whole = time.perf_counter() - t0
        rss = client.run(_peak_rss)
    assert result.status == "done", result
    shards = [r for r in results if isinstance(r, ShardResult)]
    timings = result.manifest.get("timings", {})
    # the client's own steps: everything outside the shards' span (resolve, plan, gate decision, finalize)
    serial = whole - float(timings.get("score", 0.0))
    return {"workers": workers, "shards": len(shards), "whole": whole, "serial": serial,
            "gate": float(timings.get("gate", 0.0)),
            "shard_median": statistics.median(r.seconds for r in shards), "shard_max": max(r.seconds for r in shards),
            "bytes_max": max(r.payload_bytes for r in shards), "rss_max": max(rss.values()),
            "rows": result.manifest.get("rows", 0)}


def main() -> None:
    """Run the sizes and worker counts asked for and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", default="10000,100000")
    parser.add_argument("--windows", type=int, default=60)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--series-per-shard", type=int, default=2500)
    args = parser.parse_args()
    print(f"windows per series {args.windows}, series_per_shard {args.series_per_shard}; 2 shared cores")
    print("series   workers shards  whole_s  serial_s (gate)  shard_med_s shard_max_s  task_KiB  worker_MiB  "
          "us/series  vs_1_worker")
    for series in [int(s) for s in args.series.split(",")]:
        with tempfile.TemporaryDirectory(prefix="fleetscore-scale-") as tmp:
            work = Path(tmp)
            url, release, start = build(work, series, args.windows)
            base = None
            for workers in [int(w) for w in args.workers.split(",")]:
                r = run_once(work, url, release, start, args.windows, workers, args.series_per_shard)
                base = base or r["whole"]
                print(f"{series:<8} {workers:>7} {r['shards']:>6} {r['whole']:>8.2f} {r['serial']:>9.2f} "
                      f"({r['gate']:.2f}) {r['shard_median']:>11.2f} {r['shard_max']:>11.2f} "
                      f"{r['bytes_max'] / 1024:>9.0f} {r['rss_max'] / 2**20:>11.0f} "
                      f"{r['whole'] / series * 1e6:>10.1f} {base / r['whole']:>11.2f}x", flush=True)


if __name__ == "__main__":
    main()
