"""SQLite integrity: ingest, reads and SQLAlchemy writes in one process (and beside another process) lose
no row and leave a sound file.

ADBC's SQLite driver links its own copy of the library; two copies with one file open in one process
lose commits (ingestion/engine.py). These tests failed on the code that wrote through ADBC (rows of
alias_moves or windows missing, "disk I/O error", "database disk image is malformed").
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from fleetscore.errors import StoreError
from fleetscore.ingestion.engine import make_engine, single_sqlite_copy
from fleetscore.ingestion.ingest import ingest_files
from fleetscore.ingestion.store import SensorStore
from fleetscore.pipelines.cli import main
from fleetscore.records.alias_log import AliasLog

CHECK = """
import json, sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
out = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("windows", "sources", "quarantine")}
out["versions"] = [r[0] for r in conn.execute("SELECT to_version FROM alias_moves ORDER BY to_version")]
out["integrity"] = conn.execute("PRAGMA integrity_check").fetchone()[0]
print(json.dumps(out))
"""

OTHER_PROCESS_WRITES = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=60)
conn.execute("INSERT INTO alias_moves (moved_at, user, model, alias, from_version, to_version, reason) "
             "VALUES ('2026-01-01 00:00:00.000000', 'other', 'fleet', 'champion', NULL, ?, '')", (int(sys.argv[2]),))
conn.commit()
conn.close()
"""


def _seen_by_another_process(path: Path) -> dict[str, object]:
    """What a fresh process (its own connections, no cache of ours) finds in the file."""
    out = subprocess.run([sys.executable, "-c", CHECK, str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr.strip().splitlines()[-1]
    result: dict[str, object] = json.loads(out.stdout)
    return result


def _raw_csv(path: Path, device: str, start: str, minutes: int) -> int:
    """Raw readings, one a second, of one device with two sensors; returns the number of 5 s windows."""
    ts = pd.date_range(start, periods=minutes * 60, freq="1s")
    frame = pd.concat([pd.DataFrame({"TS": ts.strftime("%Y-%m-%d %H:%M:%S"), "Device": device, "Sensor": s,
                                     "Value": range(len(ts))}) for s in ("1", "2")])
    frame.to_csv(path, index=False)
    return 2 * minutes * 12


def _move(log: AliasLog, version: int) -> None:
    log.record(datetime(2026, 1, 1), "me", "fleet", "champion", version - 1 or None, version, "test")


def test_ingest_reads_and_sqlalchemy_writes_in_one_process(tmp_path: Path, reference_data: Path) -> None:
    path = tmp_path / "fleet.db"
    url = f"sqlite:///{path}"
    log, store = AliasLog(url), SensorStore(url)
    ingest_files(url, [str(reference_data / "sensor_data.csv")], aggregated=True)
    _move(log, 1)
    assert len(store.read_windows()) == 17768
    extra = _raw_csv(tmp_path / "late.csv", "new-device", "2018-08-29 01:00:00", 10)
    ingest_files(url, [str(tmp_path / "late.csv")])
    _move(log, 2)
    assert len(store.read_windows()) == 17768 + extra
    _move(log, 3)
    assert [m["to_version"] for m in log.history("fleet")] == [1, 2, 3]
    expected = {"windows": 17768 + extra, "sources": 2, "quarantine": 0, "versions": [1, 2, 3], "integrity": "ok"}
    assert _seen_by_another_process(path) == expected  # while this process still has the file open
    make_engine(store.database_url).dispose()
    assert _seen_by_another_process(path) == expected


def test_reads_here_do_not_lose_writes_of_another_process(tmp_path: Path, reference_data: Path) -> None:
    """A reader's ADBC connection used to drop this process's locks when it closed: another process then
    took itself for the last one and deleted the WAL under our open sqlite3 connections."""
    path = tmp_path / "fleet.db"
    url = f"sqlite:///{path}"
    log, store = AliasLog(url), SensorStore(url)
    ingest_files(url, [str(reference_data / "sensor_data.csv")], aggregated=True)
    for version in (1, 3, 5):
        _move(log, version)  # leaves an idle pooled sqlite3 connection in this process
        assert len(store.read_windows(devices=["1"])) > 0
        other = subprocess.run([sys.executable, "-c", OTHER_PROCESS_WRITES, str(path), str(version + 1)],
                               capture_output=True, text=True)
        assert other.returncode == 0, other.stderr.strip().splitlines()[-1]
    _move(log, 7)
    assert [m["to_version"] for m in log.history("fleet")] == list(range(1, 8))
    seen = _seen_by_another_process(path)
    assert (seen["versions"], seen["windows"], seen["integrity"]) == (list(range(1, 8)), 17768, "ok")


def test_reads_inside_an_open_transaction_use_sqlite3(tmp_path: Path, reference_data: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    ingest_files(url, [str(reference_data / "sensor_data.csv")], aggregated=True)
    store = SensorStore(url)
    fast = store.read_windows()
    with store.engine.connect() as conn:  # a checked-out sqlite3 connection: ADBC must not open the file
        with single_sqlite_copy(str(tmp_path / "fleet.db")) as alone:
            assert not alone
        slow = store.read_windows()
        assert store.list_series().rows.sum() == 17768
        assert conn.exec_driver_sql("SELECT count(*) FROM windows").scalar() == 17768
    pd.testing.assert_frame_equal(slow, fast)
    with single_sqlite_copy(str(tmp_path / "fleet.db")) as alone:
        assert alone  # the idle pooled connections were closed


def test_cli_commands_in_one_process(home: Path) -> None:
    runner = CliRunner()
    steps = [
        ["simulate", "--devices", "2", "--duration", "2h", "--seed", "1", "--ingest"],
        ["simulate", "--devices", "2", "--duration", "30m", "--seed", "2", "--start", "2024-01-01T02:00:00",
         "--out", "more.csv"],
        ["ingest", "more.csv"],
        ["validate"],
        ["ingest", "more.csv"],
    ]
    for args in steps:
        result = runner.invoke(main, args)
        text = f"{result.stdout}{result.stderr}"
        assert "disk I/O error" not in text and "malformed" not in text
        assert result.exit_code == 0, (args, text, result.exception)
    assert result.stdout.startswith("more.csv: skipped (already ingested)")
    path = home / ".fleetscore" / "fleetscore.db"
    windows = 2 * 5 * (1440 + 360)  # 2 devices x 5 sensors x (2 h + 30 min) of 5 s windows
    assert SensorStore(f"sqlite:///{path}").count_windows() == windows
    seen = _seen_by_another_process_windows(path)
    assert seen == (windows, 2, "ok")


def _seen_by_another_process_windows(path: Path) -> tuple[int, int, str]:
    code = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
            "print(c.execute('SELECT count(*) FROM windows').fetchone()[0], "
            "c.execute('SELECT count(*) FROM sources').fetchone()[0], "
            "c.execute('PRAGMA integrity_check').fetchone()[0])")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr.strip().splitlines()[-1]
    windows, sources, integrity = out.stdout.split()
    return int(windows), int(sources), integrity


def test_no_adbc_connection_to_sqlite(tmp_path: Path) -> None:
    store = SensorStore(f"sqlite:///{tmp_path / 'fleet.db'}")
    with pytest.raises(StoreError) as info, store.adbc_connection():
        pass
    assert str(info.value) == (f"SensorStore('sqlite:///{tmp_path / 'fleet.db'}'): no ADBC connection to SQLite "
                               "(two SQLite copies corrupt the file)")
