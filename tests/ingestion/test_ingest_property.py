"""Property (issue 15): random CSV and JSON lines, every input row ends either in a window's count or in
quarantine, and no exception escapes ingestion."""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetscore.ingestion.ingest import ingest_files
from fleetscore.ingestion.replay import replay_quarantine
from fleetscore.ingestion.store import SensorStore

_TIMES = st.sampled_from(["2026-01-05T00:00:00", "2026-01-05T00:00:07.5", "2026-01-05 00:01:00Z", "9999-12-31T23:59:59",
                          "05/01/2026", "", "2200-01-01T00:00:00", "1000-01-01", "2026-01-04T00:00:00+02:00", "x"])
_IDS = st.one_of(st.sampled_from(["d1", "d2", "a/b", "a,b", "", " ", "d\x00", "\x1b", "x" * 70, "é"]),
                 st.text(max_size=5))
_VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["1.7e308", "abc", "", "nan"]),
                    st.integers(-10, 10))
_GARBAGE = st.one_of(st.binary(max_size=40), st.sampled_from([b"\r", b"a\rb,c,d,1", b'"q,"', b",,,", b"\xff\xfe",
                                                                b"1,2,3,4,5", b"{", b"[1]", b"\x00\x00"]))


def _csv_row(ts: str, device: str, sensor: str, value: object) -> bytes:
    return ",".join([ts, device.replace(",", ""), sensor.replace(",", ""), str(value)]).encode("utf-8", "replace")


def _json_row(ts: str, device: str, sensor: str, value: object) -> bytes:
    record: dict[str, object] = {"TS": ts, "Device": device, "Sensor": sensor}
    if value != "":
        record["Value"] = value if isinstance(value, str) else float(value)  # type: ignore[arg-type]
    return json.dumps(record).encode()


def _rows(kind: str) -> st.SearchStrategy[list[bytes]]:
    build = _csv_row if kind == "csv" else _json_row
    good = st.builds(build, _TIMES, _IDS, _IDS, _VALUES)
    line = st.one_of(good, good, _GARBAGE.map(lambda b: b.replace(b"\n", b" ")))
    return st.lists(line, max_size=40)


def _check(kind: str, rows: list[bytes], batch_rows: int) -> None:
    header = b"TS,Device,Sensor,Value\n" if kind == "csv" else b'{"TS": "2026-01-05T00:00:00", "Device": "h", ' \
                                                                b'"Sensor": "h", "Value": 1}\n'
    body = header + b"\n".join(rows) + (b"\n" if rows else b"")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"in.{kind}"
        path.write_bytes(body)
        url = f"sqlite:///{Path(folder) / 'f.db'}"
        report = ingest_files(url, [str(path)], max_bad_fraction=1.0, batch_rows=batch_rows)
        [entry] = report.inputs
        expected = sum(1 for line in body.split(b"\n")[1 if kind == "csv" else 0:] if line.rstrip(b"\r"))
        assert entry.status == "ingested" and entry.rows_read == expected
        with SensorStore(url).engine.connect() as conn:
            counted = conn.execute(sa.text("SELECT COALESCE(SUM(value_count), 0) FROM windows")).scalar_one()
            quarantined = conn.execute(sa.text("SELECT COUNT(*) FROM quarantine")).scalar_one()
            non_finite = conn.execute(sa.text("SELECT COUNT(*) FROM windows WHERE abs(value) > 1.7976931348623157e308 "
                                              "OR value != value")).scalar_one()  # inf or NaN
        assert counted + quarantined == entry.rows_read
        assert quarantined == entry.quarantined_total and non_finite == 0
        # replayed with a clock past 2200 and a lateness of centuries: rows move, none is lost or doubled
        replay = replay_quarantine(url, allowed_lateness=timedelta(days=365_000), now=datetime(2250, 1, 1),
                                   batch_rows=batch_rows)
        assert replay.selected == quarantined
        again = replay_quarantine(url, allowed_lateness=timedelta(days=365_000), now=datetime(2250, 1, 1))
        with SensorStore(url).engine.connect() as conn:
            counted = conn.execute(sa.text("SELECT COALESCE(SUM(value_count), 0) FROM windows")).scalar_one()
            quarantined = conn.execute(sa.text("SELECT COUNT(*) FROM quarantine")).scalar_one()
        assert counted + quarantined == entry.rows_read
        assert quarantined == replay.selected - replay.ingested and again.ingested == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=_rows("csv"), batch_rows=st.sampled_from([1, 3, 200_000]))
def test_random_csv_rows_are_all_accounted_for(rows: list[bytes], batch_rows: int) -> None:
    _check("csv", rows, batch_rows)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=_rows("jsonl"), batch_rows=st.sampled_from([1, 3, 200_000]))
def test_random_json_lines_are_all_accounted_for(rows: list[bytes], batch_rows: int) -> None:
    _check("jsonl", rows, batch_rows)
