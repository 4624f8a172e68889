"""The generic (SQLAlchemy Core) store path, the one Azure SQL uses, against the native path on SQLite.

Simulated raw readings (devices x 5 sensors, 1 s interval, 5 s windows) are written to CSV, ingested
into two fresh SQLite files, natively and through the generic path (forced), then read back whole with
``read_windows``; prints the times and the generic/native ratios, measured in the same run. Usage:
``.venv/bin/python benchmarks/generic_store.py [--readings 500000]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import fleetscore.ingestion.ingest as ingest_module
from fleetscore.ingestion.ingest import ingest_files
from fleetscore.ingestion.store import SensorStore


def main() -> None:
    """Run the comparison and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readings", type=int, default=500_000)
    args = parser.parse_args()
    devices, sensors = 100, 5
    seconds = max(1, args.readings // (devices * sensors))
    rng = np.random.default_rng(0)
    start = pd.Timestamp("2024-01-01")
    ts = np.repeat(start + pd.to_timedelta(np.arange(seconds), unit="s"), devices * sensors)
    frame = pd.DataFrame({
        "TS": pd.DatetimeIndex(ts).strftime("%Y-%m-%dT%H:%M:%S"),
        "Device": np.tile(np.repeat(np.arange(1, devices + 1).astype(str), sensors), seconds),
        "Sensor": np.tile(np.arange(1, sensors + 1).astype(str), devices * seconds),
        "Value": rng.uniform(10, 110, len(ts)).round(2),
    })
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "readings.csv"
        frame.to_csv(path, index=False)
        results = {}
        for name, generic in (("native", False), ("generic", True)):
            url = f"sqlite:///{Path(folder) / name}.db"
            ingest_module.SensorStore = (  # type: ignore[misc]
                lambda u, _g=generic: SensorStore(u, _generic=_g))
            begin = time.perf_counter()
            report = ingest_files(url, [str(path)], batch_rows=100_000)
            write = time.perf_counter() - begin
            store = SensorStore(url, _generic=generic)
            begin = time.perf_counter()
            windows = store.read_windows()
            read = time.perf_counter() - begin
            results[name] = (write, read, len(windows))
            print(f"{name:8s} ingest {len(frame):,} readings -> {report.inputs[0].windows_written:,} windows: "
                  f"{write:.2f} s ({len(frame) / write:,.0f} readings/s); read_windows {len(windows):,} rows: "
                  f"{read:.2f} s")
        (nw, nr, _), (gw, gr, _) = results["native"], results["generic"]
        print(f"generic / native on SQLite: ingest {gw / nw:.2f}x the time, read_windows {gr / nr:.2f}x the time")


if __name__ == "__main__":
    main()
