"""``fleetscore quarantine list|replay``: exact output, JSON, one-line errors, nothing created by a read."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from fleetscore.ingestion.store import SensorStore
from fleetscore.pipelines.cli import main

DB = "sqlite:///.fleetscore/fleetscore.db"


def _run(args: list[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.stdout, result.stderr


def _ingest_late_rows(home: Path) -> None:
    (home / "new.csv").write_text("TS,Device,Sensor,Value\n2024-01-01T12:00:00,d1,s1,1\n")
    (home / "old.csv").write_text("TS,Device,Sensor,Value\n2024-01-01T10:00:00,d1,s1,2\n"
                                  "2024-01-01T10:00:01,d1,s1,4\n2024-01-01T10:00:02,d1,s1,x\n")
    code, _, err = _run(["ingest", "new.csv", "old.csv", "--max-bad-fraction", "1"])
    assert (code, err) == (0, "")


def test_list_then_replay_with_more_lateness(home: Path) -> None:
    _ingest_late_rows(home)
    code, out, err = _run(["quarantine", "list"])
    assert (code, err) == (0, "")
    assert out == f"old.csv: bad_value 1\nold.csv: too_late 2\ntotal: 3 rows\ndatabase: {DB}\n"
    code, out, err = _run(["quarantine", "replay", "--reason", "too_late", "--allowed-lateness", "3h"])
    assert (code, err) == (0, "")
    assert out == ("replayed 2 of 2 quarantined rows: 2 ingested (1 windows written, 0 late updates), "
                   f"0 quarantined again\ndatabase: {DB}\n")
    window = SensorStore(DB).read_windows().query("ts < '2024-01-01T11:00:00'")
    assert window[["value", "value_count"]].values.tolist() == [[3.0, 2]]
    code, out, _ = _run(["quarantine", "list", "--json"])
    assert code == 0
    assert json.loads(out) == {"quarantined": [{"source": "old.csv", "reason": "bad_value", "rows": 1}],
                               "total": 1, "database": DB}


def test_replay_again_json_and_nothing_left(home: Path) -> None:
    _ingest_late_rows(home)
    code, out, err = _run(["quarantine", "replay", "--json"])
    assert (code, err) == (0, "")
    assert json.loads(out) == {"selected": 3, "replayed": 3, "ingested": 0, "windows_written": 0,
                               "late_updates": 0, "quarantined": {"bad_value": 1, "too_late": 2}, "kept": {},
                               "database": DB}
    code, out, _ = _run(["quarantine", "replay", "--source", "nosuch.csv"])
    assert (code, out) == (0, "replayed 0 of 0 quarantined rows: 0 ingested (0 windows written, 0 late updates), "
                              f"0 quarantined again\ndatabase: {DB}\n")


def test_no_store_is_one_line_and_creates_nothing(home: Path) -> None:
    for args in (["quarantine", "list"], ["quarantine", "replay"]):
        code, out, err = _run(args)
        assert (code, out) == (1, "")
        assert err == (f"Error: no sensor store at {DB}: ingest readings first "
                       "(fleetscore ingest PATH, or fleetscore simulate --ingest)\n")
    assert not (home / ".fleetscore").exists()


def test_a_window_other_than_the_stores_is_refused(home: Path) -> None:
    _ingest_late_rows(home)
    code, out, err = _run(["quarantine", "replay", "--window", "10s", "--allowed-lateness", "3h"])
    assert (code, out) == (1, "")
    assert err == ("Error: window 10s: the store already holds 5s windows; use the same --window or another "
                   "database_url\n")
    code, out, _ = _run(["quarantine", "list"])
    assert out.startswith("old.csv: bad_value 1\nold.csv: too_late 2\n")
