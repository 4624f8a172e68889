"""A long input is committed in parts: the store ends as one transaction leaves it, a rerun after a crash
resumes after the committed part and counts nothing twice, and another writer gets the lock between parts."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from fleetscore.ingestion import ingest as ingest_module
from fleetscore.ingestion.ingest import IngestReport, ingest_files

FLEETSCORE = Path(sys.executable).with_name("fleetscore")
WINDOW_COLUMNS = "device, sensor, ts, value, value_min, value_max, value_count"


def _readings(path: Path, rows: int, seed: int = 0, bad_every: int = 997) -> Path:
    """Readings about every 0.7 s of 4 devices x 2 sensors (windows straddle the parts), a bad row now and
    then, and a few readings an hour late."""
    rng = np.random.default_rng(seed)
    start = np.datetime64("2026-01-05T00:00:00", "ms")
    with path.open("w") as out:
        out.write("TS,Device,Sensor,Value\n")
        for i in range(rows):
            ts = start + np.timedelta64(int(i * 700 / 8), "ms")
            if i % bad_every == 5:
                out.write(f"{ts},d{i % 4},s{i % 2},not-a-number\n")
            elif i % 5003 == 7:
                out.write(f"{ts - np.timedelta64(2, 'h')},d{i % 4},s{i % 2},1.0\n")
            else:
                out.write(f"{ts},d{i % 4},s{i % 2},{rng.normal(10, 2):.4f}\n")
    return path


def _windows(db: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT {WINDOW_COLUMNS} FROM windows ORDER BY device, sensor, ts").fetchall()


def _table(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def _counts(report: IngestReport) -> list[tuple[object, ...]]:
    return [(i.status, i.rows_read, i.windows_written, i.late_updates, i.quarantined) for i in report.inputs]


def _ingest(db: Path, path: Path, **kwargs: object) -> IngestReport:
    kwargs = {"batch_rows": 1000, "max_bad_fraction": 1.0, **kwargs}
    return ingest_files(f"sqlite:///{db}", [str(path)], **kwargs)  # type: ignore[arg-type]


def test_parts_end_as_one_transaction_leaves_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _readings(tmp_path / "readings.csv", 40_000)
    earlier = _readings(tmp_path / "earlier.csv", 3_000, seed=1)  # so that some windows are updated late
    saved: list[int] = []
    save = ingest_module.save_partial
    monkeypatch.setattr(ingest_module, "save_partial", lambda writer, part: (saved.append(part.lines_done),
                                                                          save(writer, part)))
    whole, parts = tmp_path / "whole.db", tmp_path / "parts.db"
    for db in (whole, parts):
        _ingest(db, earlier)
    one = _ingest(whole, data, commit_every=timedelta(hours=1))
    assert saved == []
    many = _ingest(parts, data, commit_every=timedelta(microseconds=1))
    assert len(saved) >= 10 and saved == sorted(saved)
    assert _counts(many) == _counts(one)
    assert one.inputs[0].late_updates > 0 and one.inputs[0].quarantined["bad_value"] > 0
    assert _windows(parts) == _windows(whole)
    quarantined = "SELECT source, line, reason FROM quarantine ORDER BY line"
    assert _table(parts, quarantined) == _table(whole, quarantined)
    assert _table(parts, "SELECT * FROM partial_sources") == []
    assert _table(parts, "SELECT rows FROM sources ORDER BY rows") == [(3_000,), (40_000,)]


def test_a_rerun_after_a_crash_resumes_after_the_committed_part(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    data = _readings(tmp_path / "readings.csv", 30_000)
    clean = _ingest(tmp_path / "clean.db", data, commit_every=timedelta(hours=1))
    crashed = tmp_path / "crashed.db"
    calls = 0
    add_raw = ingest_module.InputIngest.add_raw

    def crash_on_the_twelfth(self: object, chunk: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 12:
            raise KeyboardInterrupt  # as a kill would: the part under way is not committed
        add_raw(self, chunk)  # type: ignore[arg-type]

    monkeypatch.setattr(ingest_module.InputIngest, "add_raw", crash_on_the_twelfth)
    with pytest.raises(KeyboardInterrupt):
        _ingest(crashed, data, commit_every=timedelta(microseconds=1))
    (lines_done,), = _table(crashed, "SELECT lines_done FROM partial_sources")
    assert 0 < lines_done < 30_000 and _table(crashed, "SELECT * FROM sources") == []
    monkeypatch.setattr(ingest_module.InputIngest, "add_raw", add_raw)
    resumed = _ingest(crashed, data, commit_every=timedelta(microseconds=1))
    assert _counts(resumed) == _counts(clean)
    assert _windows(crashed) == _windows(tmp_path / "clean.db")
    assert _table(crashed, "SELECT count(*) FROM quarantine") == _table(tmp_path / "clean.db",
                                                                        "SELECT count(*) FROM quarantine")
    assert _table(crashed, "SELECT * FROM partial_sources") == []
    assert _counts(_ingest(crashed, data)) == [("skipped", 0, 0, 0, {})]


def _env(home: Path, **settings: str) -> dict[str, str]:
    return {**os.environ, **{f"FLEETSCORE_INGEST__{k.upper()}": v for k, v in settings.items()}}


def _wait_for_a_part(db: Path, process: subprocess.Popen[str], timeout: float = 120) -> int:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        assert process.poll() is None, "the ingest ended before it committed a part"
        try:
            rows = _table(db, "SELECT lines_done FROM partial_sources")
        except sqlite3.OperationalError:  # the schema is not there yet
            rows = []
        if rows:
            return int(rows[0][0])
        time.sleep(0.01)
    raise AssertionError("no part committed in time")


def test_kill_9_mid_input_then_the_rerun_equals_a_clean_run(home: Path) -> None:
    data = _readings(home / "big.csv", 300_000)
    db = home / ".fleetscore" / "fleetscore.db"
    env = _env(home, commit_every="1ms", batch_rows="2000", max_bad_fraction="1")
    first = subprocess.Popen([str(FLEETSCORE), "ingest", "big.csv"], cwd=home, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_a_part(db, first)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    assert _table(db, "SELECT * FROM sources") == []
    rerun = subprocess.run([str(FLEETSCORE), "ingest", "big.csv"], cwd=home, env=env, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    clean = _ingest(home / "clean.db", data, batch_rows=2000)
    item = clean.inputs[0]
    assert rerun.stdout.splitlines()[0] == (f"big.csv: {item.rows_read:,} rows read, {item.windows_written:,} "
                                            f"windows written, {item.late_updates:,} late updates, "
                                            f"{item.quarantined_total:,} quarantined")
    assert _windows(db) == _windows(home / "clean.db")
    assert _table(db, "SELECT * FROM partial_sources") == []


def test_another_writer_gets_the_lock_between_the_parts_of_a_long_ingest(home: Path) -> None:
    _readings(home / "big.csv", 600_000)
    (home / "small.csv").write_text("TS,Device,Sensor,Value\n2026-01-05T00:00:00,other,s1,1.5\n")
    db = home / ".fleetscore" / "fleetscore.db"
    # parts a good while apart: the short ingest's tries must not have to hit the moment between two parts
    env = _env(home, commit_every="300ms", batch_rows="1000", max_bad_fraction="1")
    long = subprocess.Popen([str(FLEETSCORE), "ingest", "big.csv"], cwd=home, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_a_part(db, long)
        short = subprocess.run([str(FLEETSCORE), "ingest", "small.csv"], cwd=home, capture_output=True, text=True,
                               timeout=120, env=_env(home, lock_timeout="60s"))
        assert short.returncode == 0, short.stderr
        assert short.stdout.splitlines()[0] == ("small.csv: 1 rows read, 1 windows written, 0 late updates, "
                                                "0 quarantined")
        assert long.poll() is None, "the long ingest ended before the short one got in"
        _out, err = long.communicate(timeout=300)
        assert long.returncode == 0, err
    finally:
        long.kill()
    assert [name for (name,) in _table(db, "SELECT name FROM sources ORDER BY rowid")] == ["small.csv",
                                                                                                 "big.csv"]


def test_an_input_another_live_ingest_is_on_is_left_to_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _readings(tmp_path / "readings.csv", 20_000)
    db = tmp_path / "store.db"
    monkeypatch.setattr(ingest_module.InputIngest, "add_raw", _crash_after(ingest_module.InputIngest.add_raw, 3))
    with pytest.raises(KeyboardInterrupt):
        _ingest(db, data, commit_every=timedelta(microseconds=1))
    monkeypatch.undo()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        from fleetscore.processes import this_process

        me = this_process()
        other = me.replace(f":{os.getpid()}:", f":{sleeper.pid}:").rsplit(":", 1)[0]
        ticks = Path(f"/proc/{sleeper.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE partial_sources SET owner = ?", (f"{other}:{ticks}",))
        with pytest.raises(ingest_module.InputsUnreadable) as info:
            _ingest(db, data)
        assert str(info.value) == (f"{data}: being ingested by {other}:{ticks} (committed up to line "
                                   f"{_table(db, 'SELECT lines_done FROM partial_sources')[0][0]:,}); "
                                   "run again when it is done")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert _counts(_ingest(db, data))[0][0] == "ingested"  # its owner is gone: resumed
    assert _table(db, "SELECT * FROM partial_sources") == []


def _crash_after(add_raw: object, calls: int) -> object:
    seen = 0

    def crash(self: object, chunk: object) -> None:
        nonlocal seen
        seen += 1
        if seen > calls:
            raise KeyboardInterrupt
        add_raw(self, chunk)  # type: ignore[operator]

    return crash


def test_a_file_that_grew_after_a_crash_is_resumed_and_a_rewritten_one_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    grown = _readings(tmp_path / "grown.csv", 30_000)
    full = grown.read_text()
    lines = full.splitlines(keepends=True)
    data = tmp_path / "readings.csv"
    data.write_text("".join(lines[:20_001]))  # the first 20,000 rows: the file as a logger had it so far
    clean = _ingest(tmp_path / "clean.db", grown, commit_every=timedelta(hours=1))
    db = tmp_path / "store.db"
    monkeypatch.setattr(ingest_module.InputIngest, "add_raw", _crash_after(ingest_module.InputIngest.add_raw, 4))
    with pytest.raises(KeyboardInterrupt):
        _ingest(db, data, commit_every=timedelta(microseconds=1))
    monkeypatch.undo()
    (lines_done,), = _table(db, "SELECT lines_done FROM partial_sources")
    rewritten = tmp_path / "rewritten" / "readings.csv"
    rewritten.parent.mkdir()
    rewritten.write_text(lines[0] + "2026-01-05T00:00:00,d0,s0,99.0\n" + "".join(lines[2:]))
    data.write_text(rewritten.read_text())
    with pytest.raises(ingest_module.InputsUnreadable) as info:
        _ingest(db, data, commit_every=timedelta(microseconds=1))
    assert str(info.value) == (f"{data}: changed since an ingest of it stopped after line {lines_done:,}, and its "
                               f"first {lines_done:,} lines are not the ones stored; ingest the earlier version "
                               "again to finish it")
    data.write_text(full)  # the logger went on writing: the same first lines, and more
    resumed = _ingest(db, data, commit_every=timedelta(microseconds=1))
    assert _counts(resumed) == _counts(clean)
    assert _windows(db) == _windows(tmp_path / "clean.db")
    assert _table(db, "SELECT * FROM partial_sources") == []
