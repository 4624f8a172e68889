"""Bad input never costs the rest of a file or the next files (issue 15): far-future and out-of-range
times, ambiguous dates, undecodable bytes, bare carriage returns, overlong lines, overflowing windows,
control characters in ids. Each becomes a quarantine reason with its line number."""

from __future__ import annotations

import io
import math
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from fleetscore.errors import ConfigError
from fleetscore.ingestion.ingest import ingest_files
from fleetscore.ingestion.store import SensorStore
from fleetscore.ingestion.timeutil import parse_time_option, resolve_range

HEADER = b"TS,Device,Sensor,Value\n"
NOW = datetime(2026, 1, 5, 12, 0)


def _url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'fleet.db'}"


def _quarantine(url: str) -> list[tuple[str, int, str]]:
    with SensorStore(url).engine.connect() as conn:
        frame = pd.read_sql("SELECT source, line, reason FROM quarantine ORDER BY source, line", conn)
    return [(Path(s).name, int(n), r) for s, n, r in frame.itertuples(index=False)]


def _rows(start: datetime, n: int, device: str = "d1", sensor: str = "s1") -> bytes:
    return b"".join(f"{(start + timedelta(seconds=5 * i)).isoformat()},{device},{sensor},{i}\n".encode()
                    for i in range(n))


def _write(path: Path, body: bytes) -> str:
    path.write_bytes(HEADER + body)
    return str(path)


def test_a_far_future_reading_is_quarantined_and_never_moves_the_watermark(tmp_path: Path) -> None:
    url = _url(tmp_path)
    first = _write(tmp_path / "a.csv", b"2200-01-01T00:00:00,d1,s1,1\n" + _rows(datetime(2026, 1, 5), 10))
    second = _write(tmp_path / "b.csv", _rows(datetime(2026, 1, 5, 1), 200))
    report = ingest_files(url, [first, second], max_bad_fraction=1.0, now=NOW)
    assert [(i.rows_read, i.windows_written, i.quarantined) for i in report.inputs] == [
        (11, 10, {"too_far_ahead": 1}), (200, 200, {})]
    assert _quarantine(url) == [("a.csv", 2, "too_far_ahead")]
    assert SensorStore(url).read_windows().ts.max() < pd.Timestamp(NOW)


def test_the_horizon_is_configurable(tmp_path: Path) -> None:
    url = _url(tmp_path)
    path = _write(tmp_path / "a.csv", _rows(NOW + timedelta(hours=2), 3))
    report = ingest_files(url, [path], max_bad_fraction=1.0, now=NOW, max_future=timedelta(hours=1))
    assert report.inputs[0].quarantined == {"too_far_ahead": 3}
    (tmp_path / "wider").mkdir()
    report = ingest_files(_url(tmp_path / "wider"), [path], now=NOW, max_future=timedelta(days=1))
    assert report.inputs[0].windows_written == 3


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_times_past_the_nanosecond_range_are_quarantined(tmp_path: Path, fmt: str) -> None:
    url = _url(tmp_path)
    times = ["2026-01-05T00:00:00", "9999-12-31T23:59:59", "2026-01-05T00:00:05", "1000-01-01T00:00:00"]
    if fmt == "csv":
        path = _write(tmp_path / "t.csv", "".join(f"{t},d1,s1,{i}\n" for i, t in enumerate(times)).encode())
    else:
        path = str(tmp_path / "t.jsonl")
        Path(path).write_text("".join(f'{{"TS": "{t}", "Device": "d1", "Sensor": "s1", "Value": {i}}}\n'
                                      for i, t in enumerate(times)))
    report = ingest_files(url, [path], max_bad_fraction=1.0, now=NOW)
    first = 2 if fmt == "csv" else 1
    assert report.inputs[0].windows_written == 2
    assert [(n, r) for _, n, r in _quarantine(url)] == [(first + 1, "too_far_ahead"), (first + 3, "bad_timestamp")]


def test_ambiguous_dates_are_refused_in_input(tmp_path: Path) -> None:
    url = _url(tmp_path)
    path = _write(tmp_path / "a.csv", b"05/01/2026,d1,s1,1\n2026-01-05T00:00:00,d1,s1,2\n")
    report = ingest_files(url, [path], max_bad_fraction=1.0, now=NOW)
    assert report.inputs[0].windows_written == 1 and _quarantine(url) == [("a.csv", 2, "bad_timestamp")]


@pytest.mark.parametrize("text", ["05/01/2026", "1 May 2026", "2026/05/01", "May 1", "20260501T0000"])
def test_ambiguous_dates_are_refused_on_the_command_line(text: str) -> None:
    with pytest.raises(ConfigError, match="--start: not an ISO 8601 time"):
        resolve_range(text, None, None)


@pytest.mark.parametrize(("text", "expected"), [("2026-05-01", datetime(2026, 5, 1)),
                                                ("2026-05-01T02:03", datetime(2026, 5, 1, 2, 3)),
                                                ("2026-05-01 02:03:04.5", datetime(2026, 5, 1, 2, 3, 4, 500000)),
                                                ("2026-05-01T02:00:00+02:00", datetime(2026, 5, 1)),
                                                ("2026-05-01T00:00:00Z", datetime(2026, 5, 1))])
def test_iso_times_are_taken(text: str, expected: datetime) -> None:
    assert parse_time_option(text) == expected


def test_a_non_utf8_byte_costs_only_its_row_and_the_next_files_are_ingested(tmp_path: Path) -> None:
    url = _url(tmp_path)
    bad = _write(tmp_path / "a.csv", b"2026-01-05T00:00:00,d\xff1,s1,1\n" + _rows(datetime(2026, 1, 5, 0, 1), 5)
                 + b"2026-01-05T00:10:00,d1,s1,\xe9\n")
    good = _write(tmp_path / "b.csv", _rows(datetime(2026, 1, 5, 1), 5))
    report = ingest_files(url, [bad, good], max_bad_fraction=1.0, now=NOW)
    assert [(i.status, i.rows_read, i.windows_written) for i in report.inputs] == [
        ("ingested", 7, 5), ("ingested", 5, 5)]
    assert _quarantine(url) == [("a.csv", 2, "not_utf8"), ("a.csv", 8, "not_utf8")]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_bare_carriage_return_inside_a_row_costs_only_that_row(tmp_path: Path, fmt: str) -> None:
    url = _url(tmp_path)
    if fmt == "csv":
        path = _write(tmp_path / "a.csv", b"2026-01-05T00:00:00,d1,s\r1,1\n" + _rows(datetime(2026, 1, 5, 0, 1), 4))
        line = 2
    else:
        path = str(tmp_path / "a.jsonl")
        Path(path).write_bytes(b'{"TS": "2026-01-05T00:00:00", "Device": "d1",\r "Sensor": "s1", "Value": 1}\n'
                               b'{"TS": "2026-01-05T00:01:00", "Device": "d1", "Sensor": "s1", "Value": 2}\r\n')
        line = 1
    report = ingest_files(url, [path], max_bad_fraction=1.0, now=NOW)
    assert report.inputs[0].status == "ingested" and report.inputs[0].windows_written >= 1
    assert _quarantine(url) == [(Path(path).name, line, "bad_row")]


class _CountingReader(io.BytesIO):
    """Standard input that counts the reads made of it."""

    reads = 0

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        return super().read(size)

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def, override]
        self.reads += 1
        return super().readinto(buffer)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_an_overlong_line_is_quarantined_at_once_in_few_reads(tmp_path: Path, where: str) -> None:
    url = _url(tmp_path)
    long_line = b"2026-01-05T00:00:00,d1,s1," + b"9" * (3 << 20) + b"\n"
    rows = _rows(datetime(2026, 1, 5, 0, 1), 20)
    half = _rows(datetime(2026, 1, 5, 0, 1), 10)
    body = {"first": long_line + rows, "middle": half + long_line + rows[len(half):],
            "last": rows + long_line[:-1]}[where]
    stdin = _CountingReader(HEADER + body)
    report = ingest_files(url, ["-"], stdin=stdin, batch_rows=100, max_bad_fraction=1.0, now=NOW,
                          max_line_bytes=1 << 20)
    assert report.inputs[0].rows_read == 21 and report.inputs[0].windows_written == 20
    [(_, _, reason)] = _quarantine(url)
    assert reason == "line_too_long"
    assert stdin.reads < 200  # a 1-byte read per byte past the block size would be millions
    with SensorStore(url).engine.connect() as conn:
        raw = conn.exec_driver_sql("SELECT raw FROM quarantine").scalar_one()
    assert raw.startswith("2026-01-05T00:00:00,d1,s1,999") and len(raw) <= 4096


def test_a_line_under_the_limit_is_read(tmp_path: Path) -> None:
    url = _url(tmp_path)
    body = b"2026-01-05T00:00:00,d1,s1,1" + b"0" * 70_000 + b"\n"  # a long but valid number: 1e70000 -> inf
    report = ingest_files(url, ["-"], stdin=io.BytesIO(HEADER + body), max_bad_fraction=1.0, now=NOW)
    assert report.inputs[0].quarantined == {"non_finite": 1}


@pytest.mark.parametrize("aggregated", [False, True])
def test_an_overflowing_window_is_quarantined_never_stored_as_inf(tmp_path: Path, aggregated: bool) -> None:
    url = _url(tmp_path)
    body = (b"2026-01-05T00:00:00,d1,s1,1.7e308\n2026-01-05T00:00:01,d1,s1,1.7e308\n"
            b"2026-01-05T00:00:00,d1,s2,1.7e308\n2026-01-05T00:00:10,d1,s1,1\n")
    if aggregated:  # two rows of one window in the aggregated form
        body = body.replace(b"00:00:01", b"00:00:00")
    path = _write(tmp_path / "a.csv", body)
    report = ingest_files(url, [path], max_bad_fraction=1.0, now=NOW, aggregated=aggregated)
    assert report.inputs[0].quarantined == {"overflow": 2}
    windows = SensorStore(url).read_windows()
    assert all(math.isfinite(v) for v in windows[["value", "value_min", "value_max"]].to_numpy().ravel())
    assert sorted(zip(windows.sensor, windows.value, strict=True)) == [("s1", 1.0), ("s2", 1.7e308)]


@pytest.mark.parametrize("path", ["sqlite", "postgresql", "generic"])
def test_two_ingests_of_huge_readings_in_one_window_merge_to_a_finite_mean(
        tmp_path: Path, path: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    from fleetscore.ingestion import ingest as ingest_module

    url = str(request.getfixturevalue("postgres_url")) if path == "postgresql" else _url(tmp_path)
    if path == "generic":
        monkeypatch.setattr(ingest_module, "SensorStore", lambda u, **o: SensorStore(u, _generic=True, **o))
    first = _write(tmp_path / "a.csv", b"2026-01-05T00:00:00,d1,s1,1.7e308\n")
    second = _write(tmp_path / "b.csv", b"2026-01-05T00:00:01,d1,s1,1.7e308\n2026-01-05T00:00:02,d1,s1,-1e308\n")
    ingest_files(url, [first], now=NOW)
    report = ingest_files(url, [second], now=NOW)  # merged in SQL into the stored window
    assert report.inputs[0].late_updates == 1 and report.inputs[0].quarantined == {}
    [window] = SensorStore(url).read_windows().itertuples()
    assert window.value_count == 3 and math.isfinite(window.value)
    assert window.value == pytest.approx(1.7e308 / 3 * 2 - 1e308 / 3, rel=1e-12)


@pytest.mark.parametrize("device", ["d\x001", "d\x07", "d\x1b[31m", "d\x7f"])
def test_control_characters_in_ids_are_quarantined(tmp_path: Path, device: str) -> None:
    url = _url(tmp_path)
    path = _write(tmp_path / "a.csv", f"2026-01-05T00:00:00,{device},s1,1\n".encode() + _rows(NOW, 2))
    report = ingest_files(url, [path], max_bad_fraction=1.0, now=NOW)
    assert report.inputs[0].quarantined == {"bad_id": 1} and report.inputs[0].windows_written == 2
