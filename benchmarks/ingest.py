"""Ingestion throughput and memory: simulated raw readings into SQLite and PostgreSQL.

    .venv/bin/python benchmarks/ingest.py                  # 5,000,000 readings (and 1,000,000 for memory)
    .venv/bin/python benchmarks/ingest.py --readings 500000 --small 100000 --no-postgres

Each ingest runs in a fresh subprocess, which reports its wall time and peak RSS. The baseline, measured
in the same run on the small file, is the straightforward way: pandas.read_csv of the whole file,
floor + groupby, and sqlite3 executemany of the windows. Targets: >= 300,000 readings/s into SQLite
on one core, and peak memory flat in the input size (small vs large within 20%).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SERIES = (100, 5)  # devices x sensors


def _simulate(readings: int, path: Path) -> None:
    from fleetscore.simulation.simulate import SimulationSpec, plan_anomalies, write_readings

    steps = max(1, readings // (SERIES[0] * SERIES[1]))
    spec = SimulationSpec(devices=SERIES[0], sensors=SERIES[1], duration=timedelta(seconds=steps),
                          interval=timedelta(seconds=1), seed=1)
    write_readings(spec, plan_anomalies(spec), path)


def _child_ingest(url: str, path: str) -> None:
    from fleetscore.ingestion.ingest import ingest_files

    start, cpu = time.perf_counter(), time.process_time()
    report = ingest_files(url, [path])
    seconds = time.perf_counter() - start
    item = report.inputs[0]
    print(json.dumps({"seconds": seconds, "cpu": time.process_time() - cpu, "rows": item.rows_read,
                      "windows": item.windows_written,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _child_baseline(url: str, path: str) -> None:
    import sqlite3

    import pandas as pd

    start, cpu = time.perf_counter(), time.process_time()
    frame = pd.read_csv(path, dtype={"Device": str, "Sensor": str})
    frame["TS"] = pd.to_datetime(frame["TS"]).dt.floor("5s")
    windows = frame.groupby(["Device", "Sensor", "TS"]).Value.agg(["mean", "min", "max", "count"]).reset_index()
    windows["TS"] = windows["TS"].dt.strftime("%Y-%m-%d %H:%M:%S.%f")
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    conn.execute("CREATE TABLE windows (device TEXT, sensor TEXT, ts TEXT, value REAL, value_min REAL, "
                 "value_max REAL, value_count INTEGER, PRIMARY KEY (device, sensor, ts))")
    conn.executemany("INSERT INTO windows VALUES (?, ?, ?, ?, ?, ?, ?)", windows.itertuples(index=False))
    conn.commit()
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "cpu": time.process_time() - cpu, "rows": len(frame),
                      "windows": len(windows),
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _run_child(mode: str, url: str, path: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, f"--child-{mode}", url, str(path)], check=True,
                         capture_output=True, text=True, cwd=ROOT)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@contextmanager
def _postgres() -> Iterator[str]:
    """A throw-away PostgreSQL on loopback, started like tests/fixtures/postgres.py does."""
    from tests.fixtures.postgres import _as_postgres, _pg_bin, free_port

    bindir = _pg_bin()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed; use --no-postgres")
    root = Path(tempfile.mkdtemp(prefix="fleetscore-bench-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port()
    subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                                 "--no-sync", "-E", "UTF8"]), check=True, capture_output=True)
    subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                                 f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"]),
                   check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _line(label: str, result: dict[str, float]) -> str:
    rate = result["rows"] / result["seconds"]
    cpu_rate = result["rows"] / result["cpu"]
    return (f"{label:<27} {int(result['rows']):>9,} readings {result['seconds']:6.2f} s wall {rate:>9,.0f}/s, "
            f"{result['cpu']:6.2f} s CPU {cpu_rate:>9,.0f}/s, peak {result['peak_mb']:5.0f} MB")


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=5_000_000)
    parser.add_argument("--small", type=int, default=1_000_000, help="Size of the memory comparison run.")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fleetscore-bench-"))
    try:
        large, small = work / "large.csv", work / "small.csv"
        start = time.perf_counter()
        _simulate(args.readings, large)
        print(f"simulated {args.readings:,} readings to CSV in {time.perf_counter() - start:.2f} s "
              f"({large.stat().st_size / 1e6:.0f} MB)")
        _simulate(args.small, small)
        base = _run_child("baseline", f"sqlite:///{work / 'baseline.db'}", small)
        print(_line("baseline (pandas, small)", base))
        small_run = _run_child("ingest", f"sqlite:///{work / 'small.db'}", small)
        print(_line("fleetscore sqlite (small)", small_run))
        large_run = _run_child("ingest", f"sqlite:///{work / 'large.db'}", large)
        print(_line("fleetscore sqlite (large)", large_run))
        rate = large_run["rows"] / large_run["seconds"]
        cpu_rate = large_run["rows"] / large_run["cpu"]
        load = os.getloadavg()[0]
        print(f"sqlite: {rate:,.0f} readings/s wall, {cpu_rate:,.0f} per CPU-second (target >= 300,000 on one "
              f"core): {'OK' if max(rate, cpu_rate) >= 300_000 else 'BELOW TARGET'}; "
              f"{cpu_rate / (base['rows'] / base['cpu']):.1f}x the baseline per CPU-second; "
              f"load average {load:.1f} on {os.cpu_count()} cores")
        growth = large_run["peak_mb"] / small_run["peak_mb"] - 1
        print(f"memory: peak {small_run['peak_mb']:.0f} MB at {int(small_run['rows']):,} vs "
              f"{large_run['peak_mb']:.0f} MB at {int(large_run['rows']):,} readings ({growth:+.0%}; "
              f"target within 20%): {'OK' if abs(growth) <= 0.2 else 'NOT FLAT'}")
        if not args.no_postgres:
            with _postgres() as url:
                pg = _run_child("ingest", url, large)
            print(_line("fleetscore postgresql", pg))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1].startswith("--child-"):
        {"--child-ingest": _child_ingest, "--child-baseline": _child_baseline}[sys.argv[1]](sys.argv[2], sys.argv[3])
    else:
        main()
