"""A second writer on a SQLite store waits a bounded time, says who holds the lock, then gets it or a
one-line error naming the database and the holder's command (real processes, a real SQLite file)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleetscore.ingestion.store import SensorStore

FLEETSCORE = Path(sys.executable).with_name("fleetscore")
# holds the store's write lock the way a long ingest does (fleetscore's writer), or as a bare sqlite3
HOLD = """
import sqlite3, sys, time
from fleetscore.ingestion.store import SensorStore
from fleetscore.ingestion.writer import open_writer
url, seconds, how = sys.argv[1], float(sys.argv[2]), sys.argv[3]
if how == "fleetscore":
    with open_writer(SensorStore(url)):
        print("held", flush=True)
        time.sleep(seconds)
else:
    conn = sqlite3.connect(url[len("sqlite:///"):], isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    print("held", flush=True)
    time.sleep(seconds)
    conn.execute("COMMIT")
"""
READINGS = "TS,Device,Sensor,Value\n2026-01-05T00:00:00,d1,s1,1.5\n"


@pytest.fixture()
def store(home: Path) -> Path:
    (home / "hold_lock.py").write_text(HOLD)
    (home / "first.csv").write_text("TS,Device,Sensor,Value\n2026-01-05T00:00:00,d0,s0,1\n")
    (home / "readings.csv").write_text(READINGS)
    done = subprocess.run([str(FLEETSCORE), "ingest", "first.csv"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return home / ".fleetscore" / "fleetscore.db"


def _hold(home: Path, url: str, seconds: float, how: str) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "hold_lock.py", url, str(seconds), how], cwd=home,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def _ingest(home: Path, timeout: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLEETSCORE_INGEST__LOCK_TIMEOUT": timeout}
    return subprocess.run([str(FLEETSCORE), "ingest", "readings.csv"], capture_output=True, text=True, timeout=120,
                          cwd=home, env=env)


def test_past_the_lock_timeout_one_line_names_the_database_and_the_holder(home: Path, store: Path) -> None:
    url = f"sqlite:///{store}"
    holder = _hold(home, url, 30, "fleetscore")
    try:
        started = time.monotonic()
        done = _ingest(home, "4s")
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines[-1].startswith(f"Error: {store}: the write lock stayed taken for 4 s ([ingest] lock_timeout), "
                                f"held by pid {holder.pid} (hold_lock.py {url} 30 fleetscore), since ")
    assert lines[-1].endswith("; try again when it is done")
    assert any(f"{store}: waiting for the write lock, held by pid {holder.pid} (hold_lock.py" in line
               for line in lines[:-1])
    assert 4 <= waited < 30
    assert SensorStore(url).count_windows() == 1  # only first.csv; readings.csv is not half there


def test_the_waiting_writer_goes_on_once_the_lock_is_free(home: Path, store: Path) -> None:
    url = f"sqlite:///{store}"
    holder = _hold(home, url, 10, "fleetscore")
    done = _ingest(home, "60s")
    holder.wait(timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("readings.csv: 1 rows read, 1 windows written")
    assert f"{store}: waiting for the write lock, held by pid {holder.pid}" in done.stderr
    assert SensorStore(url).count_windows() == 2
    assert not Path(f"{store}.writer").exists()  # the holder's note went with its transaction


def test_a_writer_without_a_note_is_named_as_such(home: Path, store: Path) -> None:
    url = f"sqlite:///{store}"
    holder = _hold(home, url, 30, "sqlite3")
    try:
        done = _ingest(home, "2s")
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"Error: {store}: the write lock stayed taken for 2 s ([ingest] lock_timeout), held by a writer that "
        "left no note (not a fleetscore ingest); try again when it is done")


INGEST_AT = """
import sys, time
from fleetscore.ingestion.ingest import ingest_files
url, path, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
time.sleep(max(0.0, start - time.time()))
report = ingest_files(url, [path])
print(report.inputs[0].status, report.inputs[0].rows_read)
"""


def test_six_ingests_started_together_on_a_fresh_store_all_complete(tmp_path: Path) -> None:
    (tmp_path / "ingest_at.py").write_text(INGEST_AT)
    for i in range(6):
        (tmp_path / f"part{i}.csv").write_text(f"TS,Device,Sensor,Value\n2026-01-05T00:00:0{i},d{i},s1,{i}\n")
    url = f"sqlite:///{tmp_path / 'fresh.db'}"  # no schema yet: each one creates it
    start = time.time() + 6
    procs = [subprocess.Popen([sys.executable, "ingest_at.py", url, f"part{i}.csv", str(start)], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(6)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [err[-1500:] for _, err in outputs]
    assert [out.split() for out, _ in outputs] == [["ingested", "1"]] * 6
    assert SensorStore(url).count_windows() == 6
