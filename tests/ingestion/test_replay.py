"""replay_quarantine: rows set aside come back under new settings, once, atomically, under their line."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from fleetscore.ingestion import ingest as ingest_module
from fleetscore.ingestion.ingest import ingest_files
from fleetscore.ingestion.replay import replay_quarantine
from fleetscore.ingestion.schema import SCHEMA_VERSION
from fleetscore.ingestion.store import SensorStore

NEWEST = "TS,Device,Sensor,Value\n" + "".join(f"2024-01-01T12:00:0{i},d1,s1,{i}\n" for i in range(5))
# two hours behind d1/s1 (too late under the default 1h), a bad value, a bad timestamp, a byte that is not UTF-8
BEHIND = (b"Value,Sensor,TS,Device\n"
          b"1.5,s1,2024-01-01T10:00:01,d1\n"
          b"oops,s1,2024-01-01T10:00:02,d1\n"
          b"2.5,s1,2024-01-01T10:00:03,d1\n"
          b"3.5,s1,not-a-time,d1\n"
          b"4.5,s\xff,2024-01-01T10:00:04,d1\n"
          b"7.0,s2,2024-01-01T10:00:05,d1\n")


def _url(tmp_path: Path, name: str = "fleet.db") -> str:
    return f"sqlite:///{tmp_path / name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh sensor store: a SQLite file, or a database on a real PostgreSQL server."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return _url(tmp_path)


def _quarantine(url: str) -> list[tuple[str, int, str]]:
    with SensorStore(url).engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT source, line, reason FROM quarantine ORDER BY source, line")).all()
    return [(Path(s).name, int(n), str(r)) for s, n, r in rows]


def _windows(url: str) -> pd.DataFrame:
    return SensorStore(url).read_windows().drop(columns=["updated_at"], errors="ignore")


@pytest.fixture()
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    newest, behind = tmp_path / "newest.csv", tmp_path / "behind.csv"
    newest.write_text(NEWEST)
    behind.write_bytes(BEHIND)
    return newest, behind


def test_late_rows_replayed_with_more_lateness_equal_a_clean_ingest(tmp_path: Path, inputs: tuple[Path, Path],
                                                                    store_url: str) -> None:
    newest, behind = inputs
    url = store_url
    ingest_files(url, [str(newest), str(behind)], max_bad_fraction=1.0)
    assert _quarantine(url) == [("behind.csv", 2, "too_late"), ("behind.csv", 3, "bad_value"),
                                ("behind.csv", 4, "too_late"), ("behind.csv", 5, "bad_timestamp"),
                                ("behind.csv", 6, "not_utf8")]
    # s2 has no newer window: never too late
    report = replay_quarantine(url, reasons=["too_late"], allowed_lateness=timedelta(hours=3))
    assert (report.selected, report.replayed, report.ingested, report.quarantined, report.kept) == (2, 2, 2, {}, {})
    assert report.windows_written == 1  # 10:00:01 and 10:00:03 share the window 10:00:00
    assert _quarantine(url) == [("behind.csv", 3, "bad_value"), ("behind.csv", 5, "bad_timestamp"),
                                ("behind.csv", 6, "not_utf8")]
    clean = _url(tmp_path, "clean.db")
    ingest_files(clean, [str(newest), str(behind)], allowed_lateness=timedelta(hours=3), max_bad_fraction=1.0)
    pd.testing.assert_frame_equal(_windows(url), _windows(clean))


def test_rows_that_fail_again_keep_their_line_and_lossy_text_is_kept(tmp_path: Path,
                                                                     inputs: tuple[Path, Path]) -> None:
    newest, behind = inputs
    url = _url(tmp_path)
    ingest_files(url, [str(newest), str(behind)], max_bad_fraction=1.0)
    before = _quarantine(url)
    first = replay_quarantine(url)  # the default lateness: the late rows are late again
    assert (first.selected, first.replayed, first.ingested) == (5, 4, 0)
    assert first.quarantined == {"bad_timestamp": 1, "bad_value": 1, "too_late": 2}
    assert first.kept == {"the stored text is a lossy decoding of bytes that were not UTF-8": 1}
    assert _quarantine(url) == before
    second = replay_quarantine(url)
    assert (second.ingested, second.quarantined, _quarantine(url)) == (0, first.quarantined, before)


def test_rows_ahead_of_the_clock_are_taken_once_their_time_has_come(tmp_path: Path) -> None:
    path = tmp_path / "ahead.jsonl"
    path.write_text("".join(json.dumps({"TS": f"2030-06-01T00:00:0{i}", "Device": "d", "Sensor": "s", "Value": i})
                            + "\n" for i in range(3)))
    url = _url(tmp_path)
    ingest_files(url, [str(path)], max_bad_fraction=1.0, now=datetime(2030, 1, 1))
    assert _quarantine(url) == [("ahead.jsonl", 1, "too_far_ahead"), ("ahead.jsonl", 2, "too_far_ahead"),
                                ("ahead.jsonl", 3, "too_far_ahead")]
    early = replay_quarantine(url, now=datetime(2030, 2, 1))
    assert (early.ingested, early.quarantined) == (0, {"too_far_ahead": 3})
    report = replay_quarantine(url, now=datetime(2030, 6, 2))
    assert (report.ingested, report.windows_written, _quarantine(url)) == (3, 1, [])
    frame = _windows(url)
    assert frame[["device", "sensor", "value", "value_count"]].values.tolist() == [["d", "s", 1.0, 3]]


def test_a_failure_mid_replay_leaves_the_quarantine_and_the_windows_as_they_were(
        tmp_path: Path, inputs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    newest, behind = inputs
    other = tmp_path / "other.csv"
    other.write_text("TS,Device,Sensor,Value\n2024-01-01T09:00:00,d1,s1,9\n")
    url = _url(tmp_path)
    ingest_files(url, [str(newest), str(behind), str(other)], max_bad_fraction=1.0)
    before_q, before_w = _quarantine(url), _windows(url)
    calls = []
    real = ingest_module.InputIngest.add_raw

    def failing(self: ingest_module.InputIngest, chunk: object) -> None:
        calls.append(self.report.name)
        if len(calls) == 2:
            raise OSError("disk full")
        real(self, chunk)  # type: ignore[arg-type]

    monkeypatch.setattr(ingest_module.InputIngest, "add_raw", failing)
    with pytest.raises(OSError, match="disk full"):
        replay_quarantine(url, reasons=["too_late"], allowed_lateness=timedelta(hours=5))
    assert len(calls) == 2  # the first input was replayed, then the second failed
    assert _quarantine(url) == before_q
    pd.testing.assert_frame_equal(_windows(url), before_w)


def test_a_store_of_schema_1_is_upgraded_and_its_old_rows_are_kept(tmp_path: Path, inputs: tuple[Path, Path],
                                                                   store_url: str) -> None:
    newest, behind = inputs
    url = store_url
    ingest_files(url, [str(newest), str(behind)], max_bad_fraction=1.0)
    with SensorStore(url).engine.begin() as conn:  # as fleetscore 0.1 left it
        conn.execute(sa.text("ALTER TABLE quarantine DROP COLUMN layout"))
        conn.execute(sa.text("UPDATE fleetscore_schema SET version = 1"))
    report = replay_quarantine(url, allowed_lateness=timedelta(hours=3))
    assert (report.selected, report.replayed) == (5, 0)
    assert report.kept == {"its input's layout was not recorded": 4,
                           "the stored text is a lossy decoding of bytes that were not UTF-8": 1}
    with SensorStore(url).engine.connect() as conn:
        versions = conn.execute(sa.text("SELECT version FROM fleetscore_schema ORDER BY version")).scalars().all()
        columns = [c["name"] for c in sa.inspect(conn).get_columns("quarantine")]
    assert versions == list(range(1, SCHEMA_VERSION + 1)) and "layout" in columns
    later = tmp_path / "later.csv"
    later.write_text("TS,Device,Sensor,Value\n2024-01-01T10:30:00,d1,s1,1\n")
    ingest_files(url, [str(later)], max_bad_fraction=1.0)
    assert replay_quarantine(url, sources=[str(later)], allowed_lateness=timedelta(hours=3)).ingested == 1
