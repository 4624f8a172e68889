"""Benchmark the data-checks gate on large tables of windows, in SQLite and PostgreSQL.

    .venv/bin/python benchmarks/validate.py                      # 10,000,000 windows, both databases
    .venv/bin/python benchmarks/validate.py --rows 1000000 --backend sqlite

Tables are generated with fast bulk inserts (``executemany`` on sqlite3, ``COPY`` on psycopg), not
through Great Expectations. Each validation runs in a fresh process, which reports its wall time and
peak memory (``ru_maxrss``). The baseline, measured in the same run, is the same validation on a table
of ``--baseline-rows`` windows (default 1/10 of ``--rows``): a memory ratio near 1 shows that memory
does not grow with the table size. Without ``--postgres-url`` a throw-away PostgreSQL server is started
on loopback (Debian's ``/usr/lib/postgresql/*/bin``).
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SENSORS = 5
START = datetime(2024, 1, 1)
STEP = timedelta(seconds=5)

CHILD = """
import json, resource, sys, time
from datetime import datetime
t0 = time.perf_counter()
from fleetscore.data_checks import CheckConfig, run_validation
imported = time.perf_counter() - t0
url, report_dir = sys.argv[1], sys.argv[2]
t1 = time.perf_counter()
report = run_validation(url, None, None, CheckConfig(), report_dir=report_dir)
run = time.perf_counter() - t1
print(json.dumps({"import_s": imported, "run_s": run, "total_s": time.perf_counter() - t0,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "fleet_ok": report.fleet_ok, "rows": report.rows, "series": report.series,
                  "excluded": len(report.excluded)}))
"""


def shape(rows: int) -> tuple[int, int]:
    """(devices, windows per series) for about ``rows`` windows: 5 sensors, 2,000 windows per series."""
    per_series = min(2000, max(10, rows // SENSORS))
    devices = max(1, rows // (SENSORS * per_series))
    return devices, per_series


def generate(devices: int, per_series: int) -> Iterator[tuple[str, str, str, float, float, float, int, str]]:
    """Rows of the windows table in primary-key order (device, sensor, ts); a smooth wave per series."""
    stamps = [(START + i * STEP).strftime("%Y-%m-%d %H:%M:%S.%f") for i in range(per_series)]
    for d in range(devices):
        device = f"dev{d:05d}"
        for s in range(1, SENSORS + 1):
            base = 10.0 * s
            for i, stamp in enumerate(stamps):
                value = base + ((i * 7 + d) % 50) / 10.0
                yield device, str(s), stamp, value, value - 0.5, value + 0.5, 1, stamp


def fill_sqlite(path: Path, devices: int, per_series: int) -> None:
    """Create the schema with ingestion.schema, then bulk-insert with sqlite3 executemany."""
    from sqlalchemy import create_engine

    from fleetscore.ingestion.schema import metadata

    path.unlink(missing_ok=True)
    engine = create_engine(f"sqlite:///{path}")
    metadata.create_all(engine)
    engine.dispose()
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    con.execute("DROP INDEX ix_windows_ts")  # rebuilt once after the load: inserting into it is random I/O
    con.executemany("INSERT INTO windows VALUES (?,?,?,?,?,?,?,?)", generate(devices, per_series))
    con.execute("CREATE INDEX ix_windows_ts ON windows (ts)")
    con.commit()
    con.execute("ANALYZE")
    con.close()


def fill_postgres(url: str, devices: int, per_series: int) -> None:
    """Create the schema with ingestion.schema, then bulk-load with psycopg COPY."""
    import psycopg
    from sqlalchemy import create_engine

    from fleetscore.ingestion.schema import metadata

    engine = create_engine(url)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    engine.dispose()
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("DROP INDEX ix_windows_ts")
        with cur.copy("COPY windows (device, sensor, ts, value, value_min, value_max, value_count, updated_at) "
                      "FROM STDIN") as copy:
            buf = io.StringIO()
            for n, row in enumerate(generate(devices, per_series), 1):
                buf.write("\t".join(map(str, row)) + "\n")
                if n % 200_000 == 0:
                    copy.write(buf.getvalue())
                    buf = io.StringIO()
            copy.write(buf.getvalue())
        cur.execute("CREATE INDEX ix_windows_ts ON windows (ts)")
        conn.commit()
        cur.execute("ANALYZE windows")
        conn.commit()


def validate(url: str, report_dir: Path) -> dict[str, float]:
    """Run the gate on the whole table in a fresh process; return its timings and peak memory."""
    out = subprocess.run([sys.executable, "-c", CHILD, url, str(report_dir)], cwd=ROOT, check=True,
                         capture_output=True, text=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@contextmanager
def postgres_server() -> Iterator[str]:
    """A throw-away PostgreSQL on a free loopback port (as user postgres when run as root)."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    if not bins:
        raise SystemExit("PostgreSQL not installed: pass --postgres-url or --backend sqlite")
    bindir = Path(bins[0])
    root = Path(tempfile.mkdtemp(prefix="fleetscore-bench-pg-"))  # its own folder: postgres must own it
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    subprocess.run([*as_pg, str(bindir / "initdb"), "-D", str(root / "data"), "-U", "postgres", "-A", "trust",
                    "--no-sync", "-E", "UTF8"], check=True, capture_output=True)
    subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log"), "-w", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
                    "-c full_page_writes=off -c max_wal_size=4GB", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def bench(name: str, fill: object, url_for: object, sizes: list[int], workdir: Path) -> None:
    """Fill and validate each size; print time and peak memory, and ratios to the first (baseline) size."""
    base: dict[str, float] | None = None
    for rows in sizes:
        devices, per_series = shape(rows)
        url = url_for(rows)  # type: ignore[operator]
        t0 = time.perf_counter()
        fill(url, devices, per_series)  # type: ignore[operator]
        filled = time.perf_counter() - t0
        res = validate(url, workdir / "reports")
        base = base or res
        print(f"{name:10s} {devices * SENSORS * per_series:>11,d} windows ({devices * SENSORS:,d} series): "
              f"fill {filled:6.1f} s | validate {res['run_s']:6.1f} s (+{res['import_s']:.1f} s import) | "
              f"peak {res['peak_mb']:6.0f} MB | vs baseline: time x{res['run_s'] / base['run_s']:.2f}, "
              f"memory x{res['peak_mb'] / base['peak_mb']:.2f} | fleet_ok={res['fleet_ok']} "
              f"excluded={res['excluded']:.0f}", flush=True)


def main() -> None:
    """Parse the flags and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="windows in the large table")
    parser.add_argument("--baseline-rows", type=int, default=None, help="windows in the baseline table (rows/10)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--postgres-url", default=None, help="an empty PostgreSQL database to use")
    parser.add_argument("--workdir", default=None, help="where the SQLite files go (default: a temp folder)")
    args = parser.parse_args()
    sizes = [args.baseline_rows or max(1000, args.rows // 10), args.rows]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fleetscore-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"validate benchmark: sizes {sizes[0]:,d} (baseline) and {sizes[1]:,d} windows; {os.cpu_count()} cores")
    try:
        if args.backend in ("sqlite", "both"):
            bench("sqlite", lambda url, d, p: fill_sqlite(Path(url.removeprefix("sqlite:///")), d, p),
                  lambda rows: f"sqlite:///{workdir / f'windows_{rows}.db'}", sizes, workdir)
        if args.backend in ("postgresql", "both"):
            if args.postgres_url:
                bench("postgresql", fill_postgres, lambda rows: args.postgres_url, sizes, workdir)
            else:
                with postgres_server() as url:
                    bench("postgresql", fill_postgres, lambda rows: url, sizes, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
