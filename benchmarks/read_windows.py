"""Reading windows from SQLite: ``SensorStore.read_windows`` against the ways it replaced, same run, same file.

    .venv/bin/python benchmarks/read_windows.py                       # 10,000 series x 288 windows
    .venv/bin/python benchmarks/read_windows.py --series 1000 --db /tmp/w.db

Builds (or reuses with ``--db``) a store of N series (N/5 devices x 5 sensors) x W five-second windows,
then times, each ``--repeat`` times (best CPU time kept):

1. ``read_windows()`` (ADBC read-only while no sqlite3 connection is open, device and sensor once per
   series, text times cast by Arrow);
2. the previous way: one query of all seven columns through the same ADBC reader, then the same
   conversion (the baseline of the ratio);
3. the parts of (1): the SQLite scan alone (``sum()`` over the columns), the Arrow fetch, the
   text-to-timestamp cast, the pandas conversion;
4. Python's ``sqlite3`` ``fetchall`` of the same rows (the fallback reader when a sqlite3 connection of
   the process is checked out).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PK = "windows INDEXED BY sqlite_autoindex_windows_1"


def _best(repeat: int, fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Best CPU seconds and the wall seconds of that run, and the last result."""
    best: tuple[float, float] = (float("inf"), float("inf"))
    result = None
    for _ in range(repeat):
        cpu, wall = time.process_time(), time.perf_counter()
        result = fn()
        run = (time.process_time() - cpu, time.perf_counter() - wall)
        best = min(best, run)
    return best[0], best[1], result


def main() -> None:
    """Build or reuse the store, time the readers, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--windows", type=int, default=288)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--db", type=Path, default=None, help="Reuse (or create) this SQLite file.")
    args = parser.parse_args()

    import pyarrow as pa
    import pyarrow.compute as pc

    from benchmarks.score import make_windows, store
    from fleetscore.ingestion.store import (
        WINDOW_COLUMNS,
        SensorStore,
        _adbc_sqlite_read,
        _normalise_windows,
        _windows_frame,
    )

    path = args.db or Path(tempfile.mkdtemp(prefix="fleetscore-read-")) / "windows.db"
    url = f"sqlite:///{path}"
    if not path.exists():
        start = time.perf_counter()
        store(url, make_windows(args.series, args.windows, datetime(2024, 1, 1), seed=1))
        print(f"built {path} in {time.perf_counter() - start:.1f} s")
    sensor_store = SensorStore(url)
    rows = sensor_store.count_windows()
    print(f"{rows:,} windows in {path}")

    def previous() -> Any:
        sql = f"SELECT {', '.join(WINDOW_COLUMNS)} FROM {PK} ORDER BY device, sensor, ts"
        return _windows_frame(_normalise_windows(_adbc_sqlite_read(str(path), [(sql, [])])[0]))

    def fallback() -> Any:
        return sensor_store._sqlite3_read([(f"SELECT {', '.join(WINDOW_COLUMNS)} FROM {PK}", [])])[0]

    scan_sql = (f"SELECT sum(length(device)), sum(length(sensor)), sum(length(ts)), sum(value), sum(value_min), "
                f"sum(value_max), sum(value_count) FROM {PK}")
    fetched = _adbc_sqlite_read(str(path), [(f"SELECT {', '.join(WINDOW_COLUMNS)} FROM {PK}", [])])[0]
    normalised = _normalise_windows(fetched)
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("read_windows()", sensor_store.read_windows),
        ("previous: one 7-column query", previous),
        ("  part: SQLite scan alone", lambda: _adbc_sqlite_read(str(path), [(scan_sql, [])])),
        ("  part: ADBC fetch, 7 columns", lambda: _adbc_sqlite_read(str(path), [(
            f"SELECT {', '.join(WINDOW_COLUMNS)} FROM {PK}", [])])),
        ("  part: text -> timestamp", lambda: pc.cast(fetched.column("ts"), pa.timestamp("ns"))),
        ("  part: Arrow -> pandas", lambda: _windows_frame(normalised)),
        ("sqlite3 fetchall (fallback)", fallback),
    ]
    figures = {}
    for label, fn in cases:
        cpu, wall, result = _best(args.repeat, fn)
        figures[label] = cpu
        print(f"{label:<32} {cpu:6.2f} s CPU {wall:6.2f} s wall  {rows / cpu:>12,.0f} windows per CPU-second")
        if label == "read_windows()":
            new_frame = result
    assert new_frame.equals(previous()), "read_windows differs from the previous way"
    print(f"read_windows: {figures['previous: one 7-column query'] / figures['read_windows()']:.2f}x the "
          f"previous way per CPU-second; same DataFrame")


if __name__ == "__main__":
    main()
