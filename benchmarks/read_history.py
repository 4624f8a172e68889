"""Reading the newest hour of a store that holds a long history: ``SensorStore.read_windows`` against
walking each device's history (the way it read before), same run, same file.

    .venv/bin/python benchmarks/read_history.py [--devices 40] [--hours 72] [--db /tmp/history.db]

Builds (or reuses with ``--db``) a store of D devices x 5 sensors with H hours of 5-second windows, then
reads the last hour for every device (best of 3 each):

1. ``read_windows(start, end)``: devices and sensors found by seeks along the primary key, then one
   range seek per (device, sensor);
2. the previous way: ``device IN (...)`` and the time range only, which SQLite answers by walking every
   entry of each device in the primary key (the baseline of the ratio).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

T0 = datetime(2024, 1, 1)


def build(path: Path, devices: int, hours: int) -> None:
    """The store's schema, then D x 5 series of H hours of windows, in key order."""
    from fleetscore.ingestion.store import SensorStore, format_time

    store = SensorStore(f"sqlite:///{path}")
    store.create_schema()
    store.engine.dispose()
    n = hours * 720
    times = [format_time(T0 + timedelta(seconds=5 * i)) for i in range(n)]
    stamp = format_time(T0)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA cache_size=-262144")
        for d in range(1, devices + 1):
            for s in range(1, 6):
                value = 20.0 + s
                conn.executemany("INSERT INTO windows VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                 ((str(d), str(s), t, value, value, value, 1, stamp) for t in times))


def best(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """Best wall seconds of ``repeat`` calls, and the last result."""
    seconds, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        seconds = min(seconds, time.perf_counter() - t0)
    return seconds, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=40)
    parser.add_argument("--hours", type=int, default=72)
    parser.add_argument("--db", type=Path, default=None, help="reuse (or build once) this store")
    args = parser.parse_args()
    from fleetscore.ingestion.store import SensorStore

    path = args.db or Path(tempfile.mkdtemp(prefix="fleetscore-bench-history-")) / "store.db"
    if not path.exists():
        t0 = time.perf_counter()
        build(path, args.devices, args.hours)
        print(f"setup: {args.devices * 5} series x {args.hours * 720:,} windows in {time.perf_counter() - t0:.0f} s")
    store = SensorStore(f"sqlite:///{path}")
    _, last = store.time_range()
    assert last is not None, "empty store"
    end = last + timedelta(seconds=5)
    start = end - timedelta(hours=1)
    devices = store.devices()

    def walk() -> int:
        rows = 0
        for i in range(0, len(devices), 500):
            clause, params = store._windows_where(start, end, devices[i:i + 500], None)
            rows += store._read_sqlite_windows(clause, params).num_rows
        return rows

    new_s, frame = best(lambda: store.read_windows(start, end))
    old_s, old_rows = best(walk)
    assert old_rows == len(frame)
    print(f"last hour of {len(devices)} devices ({len(frame):,} windows) out of {store.count_windows():,}:")
    print(f"  read_windows (range seek per series): {new_s:.3f} s")
    print(f"  device IN (...) and the range (walks each device's history): {old_s:.3f} s")
    print(f"  ratio: {old_s / new_s:.1f}x")


if __name__ == "__main__":
    main()
