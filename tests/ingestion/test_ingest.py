"""ingest_files: reference data, exact aggregates, re-ingest, lateness, quarantine, formats, atomicity."""

from __future__ import annotations

import gzip
import io
import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from fleetscore.errors import SourceReadError
from fleetscore.ingestion import writer as writer_module
from fleetscore.ingestion.ingest import InputsUnreadable, TooManyBadRows, ingest_files
from fleetscore.ingestion.store import SensorStore
from tests.ingestion.resample_check import assert_windows_match_resample, write_raw_readings


def _url(tmp_path: Path, name: str = "fleet.db") -> str:
    return f"sqlite:///{tmp_path / name}"


def _quarantine(url: str) -> pd.DataFrame:
    with SensorStore(url).engine.connect() as conn:
        return pd.read_sql("SELECT source, line, raw, reason FROM quarantine ORDER BY line", conn)


@pytest.mark.parametrize("name", ["sensor_data.csv", "sensor_data_tag_header.csv"])
def test_reference_data_aggregated(tmp_path: Path, reference_data: Path, name: str) -> None:
    url = _url(tmp_path)
    report = ingest_files(url, [str(reference_data / name)], aggregated=True)
    assert (report.inputs[0].rows_read, report.inputs[0].windows_written) == (17768, 17768)
    store = SensorStore(url)
    series = store.list_series()
    assert len(series) == 15 and series.rows.sum() == 17768
    frame = store.read_windows()
    source = pd.read_csv(reference_data / name, dtype={"Device": str, "Sensor": str, "Tag": str})
    source = source.rename(columns={"Tag": "Sensor"}).sort_values(["Device", "Sensor", "TS"], ignore_index=True)
    assert np.array_equal(frame.value.to_numpy(), source.Value.to_numpy())
    assert (frame.value_count == 1).all() and (frame.value_min == frame.value).all()
    assert frame.ts.iloc[0] == pd.Timestamp(source.TS.iloc[0])


def test_raw_readings_match_pandas_resample(tmp_path: Path) -> None:
    path = tmp_path / "raw.csv"
    frame = write_raw_readings(path, seed=7, n=5000, seconds=3600)
    url = _url(tmp_path)
    ingest_files(url, [str(path)], window=timedelta(seconds=10), batch_rows=700)  # many chunk boundaries
    assert_windows_match_resample(SensorStore(url).read_windows(), frame, "10s")


def test_reingest_adds_nothing(tmp_path: Path, reference_data: Path) -> None:
    url = _url(tmp_path)
    path = str(reference_data / "sensor_data.csv")
    ingest_files(url, [path], aggregated=True)
    before = SensorStore(url).read_windows()
    report = ingest_files(url, [path], aggregated=True)
    assert report.inputs[0].status == "skipped"
    assert SensorStore(url).read_windows().equals(before)


def test_late_update_and_too_late(tmp_path: Path) -> None:
    url = _url(tmp_path)
    first = tmp_path / "first.csv"
    first.write_text("TS,Device,Sensor,Value\n2024-01-01 00:00:01,d,s,1\n2024-01-01 02:00:00,d,s,7\n")
    late = tmp_path / "late.csv"
    late.write_text("TS,Device,Sensor,Value\n2024-01-01 01:30:02,d,s,2\n2024-01-01 02:00:03,d,s,4\n"
                    "2024-01-01 00:00:03,d,s,5\n")
    ingest_files(url, [str(first)])
    with pytest.raises(TooManyBadRows) as info:
        ingest_files(url, [str(late)], allowed_lateness=timedelta(hours=1))
    item = info.value.report.inputs[0]
    assert (item.rows_read, item.windows_written, item.late_updates, item.quarantined) == (3, 1, 1, {"too_late": 1})
    frame = SensorStore(url).read_windows().set_index("ts")
    newest = frame.loc[pd.Timestamp("2024-01-01 02:00:00")]
    assert (newest.value, newest.value_min, newest.value_max, newest.value_count) == (5.5, 4.0, 7.0, 2)
    assert frame.loc[pd.Timestamp("2024-01-01 00:00:00")].value == 1.0  # the too-late reading was not merged
    assert _quarantine(url).to_dict("records") == [
        {"source": str(late), "line": 4, "raw": "2024-01-01 00:00:03,d,s,5", "reason": "too_late"}]


def test_every_quarantine_reason(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    long_id = "x" * 65
    path.write_text(
        "TS,Device,Sensor,Value\n"
        "2024-01-01 10:00:01,d,1,1.5\n"          # 2 good
        "yesterday,d,1,1\n"                       # 3 bad_timestamp
        "2024-01-01 10:00:02,d,1,abc\n"           # 4 bad_value
        "2024-01-01 10:00:02,d,1,nan\n"           # 5 non_finite
        "2024-01-01 10:00:02,d,1,-inf\n"          # 6 non_finite
        "2024-01-01 10:00:02,d,1\n"               # 7 missing_field
        "2024-01-01 10:00:02,d,1,\n"              # 8 missing_field (empty value)
        "2024-01-01 10:00:02, ,1,1\n"             # 9 empty_device
        "2024-01-01 10:00:02,d,,1\n"              # 10 empty_sensor
        "\n"                                      # 11 blank: skipped, not counted
        f"2024-01-01 10:00:02,{long_id},1,1\n"    # 12 id_too_long
        "2024-01-01 10:00:02,d,1,1,9\n"           # 13 extra_field
        "2024-01-01 08:00:00,d,1,1\n"             # 14 too_late
        "2024-01-01T10:00:03Z,d,1,2.5\n"          # 15 good (UTC offset)
    )
    url = _url(tmp_path)
    with pytest.raises(TooManyBadRows) as info:
        ingest_files(url, [str(path)])
    assert str(info.value) == (f"{path}: 11 of 13 rows quarantined (84.6%), more than --max-bad-fraction 0.01; "
                               "good rows were stored, see the quarantine table")
    got = _quarantine(url)
    assert list(zip(got.line, got.reason, strict=True)) == [
        (3, "bad_timestamp"), (4, "bad_value"), (5, "non_finite"), (6, "non_finite"), (7, "missing_field"),
        (8, "missing_field"), (9, "empty_device"), (10, "empty_sensor"), (12, "id_too_long"), (13, "extra_field"),
        (14, "too_late")]
    assert got.raw[got.line == 4].item() == "2024-01-01 10:00:02,d,1,abc"
    frame = SensorStore(url).read_windows()
    assert list(frame.value) == [2.0] and list(frame.value_count) == [2]  # lines 2 and 15


def test_max_bad_fraction_allows_a_few(tmp_path: Path) -> None:
    path = tmp_path / "few.csv"
    rows = [f"2024-01-01 00:00:{i:02d},d,1,{i}" for i in range(50)] + ["2024-01-01 00:01:00,d,1,oops"]
    path.write_text("TS,Device,Sensor,Value\n" + "\n".join(rows) + "\n")
    report = ingest_files(_url(tmp_path), [str(path)], max_bad_fraction=0.05)
    assert report.inputs[0].quarantined == {"bad_value": 1}


def test_stdin_gzip_and_jsonl(tmp_path: Path, reference_data: Path) -> None:
    text = (reference_data / "sensor_data.csv").read_bytes()
    url_stdin, url_gz, url_json = (_url(tmp_path, n) for n in ("a.db", "b.db", "c.db"))
    ingest_files(url_stdin, ["-"], aggregated=True, stdin=io.BytesIO(text))
    again = ingest_files(url_stdin, ["-"], aggregated=True, stdin=io.BytesIO(text))
    assert again.inputs[0].status == "skipped"
    gz = tmp_path / "data.bin"  # detected by magic bytes, not by name
    gz.write_bytes(gzip.compress(text))
    ingest_files(url_gz, [str(gz)], aggregated=True)
    frame = pd.read_csv(reference_data / "sensor_data.csv", dtype=str)
    records = frame.to_dict("records")
    lines = [json.dumps({**r, "Value": float(r["Value"]), "Device": int(r["Device"])}) for r in records[:100]]
    lines += [json.dumps(r) for r in records[100:]]  # strings everywhere: the per-line path
    jsonl = tmp_path / "data.jsonl.gz"
    jsonl.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    ingest_files(url_json, [str(jsonl)], aggregated=True, batch_rows=1000)
    expected = SensorStore(url_stdin).read_windows()
    assert len(expected) == 17768
    assert SensorStore(url_gz).read_windows().equals(expected)
    assert SensorStore(url_json).read_windows().equals(expected)


def test_jsonl_quarantine(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"TS": "2024-01-01 00:00:00", "Device": "d", "Tag": "1", "Value": 1}\n'
                    '{"TS": "2024-01-01 00:00:01", "Device": "d", "Value": 1}\n'
                    'not json\n'
                    '{"TS": "2024-01-01 00:00:02", "Device": "d", "Sensor": "1", "Value": "2"}\n')
    url = _url(tmp_path)
    with pytest.raises(TooManyBadRows):
        ingest_files(url, [str(path)])
    assert list(zip(*[_quarantine(url)[c] for c in ("line", "reason")], strict=True)) == [
        (2, "missing_field"), (3, "bad_row")]
    assert SensorStore(url).read_windows().value_count.tolist() == [2]


@pytest.mark.parametrize(("content", "message"), [
    (None, "{path}: no such file"),
    (b"", "{path}: empty input (no header)"),
    (b"a,b,c\n1,2,3\n", "{path}: unknown header 'a,b,c' (expected TS,Device,Sensor,Value or TS,Device,Tag,Value)"),
    (b"\x00\x01\x02binary", "{path}: not CSV or JSON lines (binary data)"),
])
def test_unreadable_inputs_do_not_stop_the_others(tmp_path: Path, reference_data: Path, content: bytes | None,
                                                  message: str) -> None:
    path = tmp_path / "input.csv"
    if content is not None:
        path.write_bytes(content)
    url = _url(tmp_path)
    with pytest.raises(InputsUnreadable) as info:
        ingest_files(url, [str(path), str(reference_data / "sensor_data.csv")], aggregated=True)
    assert str(info.value) == message.format(path=path)
    assert isinstance(info.value, SourceReadError)
    assert SensorStore(url).count_windows() == 17768


def test_crash_mid_file_leaves_nothing(tmp_path: Path, reference_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = _url(tmp_path)
    calls = {"n": 0}
    real = writer_module.StoreWriter.merge_windows

    def crash_on_third(self: writer_module.StoreWriter, chunk: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("power cut")
        return real(self, chunk)  # type: ignore[arg-type]

    monkeypatch.setattr(writer_module.StoreWriter, "merge_windows", crash_on_third)
    with pytest.raises(RuntimeError):
        ingest_files(url, [str(reference_data / "sensor_data.csv")], aggregated=True, batch_rows=2000)
    monkeypatch.undo()
    store = SensorStore(url)
    assert store.count_windows() == 0
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM sources")).scalar() == 0
    report = ingest_files(url, [str(reference_data / "sensor_data.csv")], aggregated=True)
    assert report.inputs[0].status == "ingested" and store.count_windows() == 17768


def test_window_size_cannot_change(tmp_path: Path, reference_data: Path) -> None:
    url = _url(tmp_path)
    ingest_files(url, [str(reference_data / "sensor_data.csv")], aggregated=True)
    other = tmp_path / "o.csv"
    other.write_text("TS,Device,Sensor,Value\n2024-01-01 00:00:00,d,1,1\n")
    with pytest.raises(Exception, match=r"^window 10s: the store already holds 5s windows"):
        ingest_files(url, [str(other)], window=timedelta(seconds=10))


def test_postgres_ingest(postgres_url: str, reference_data: Path, tmp_path: Path) -> None:
    path = str(reference_data / "sensor_data_tag_header.csv")
    report = ingest_files(postgres_url, [path], aggregated=True, batch_rows=5000)
    assert report.inputs[0].windows_written == 17768
    assert ingest_files(postgres_url, [path], aggregated=True).inputs[0].status == "skipped"
    store = SensorStore(postgres_url)
    assert len(store.list_series()) == 15
    local = _url(tmp_path)
    ingest_files(local, [path], aggregated=True)
    assert store.read_windows().equals(SensorStore(local).read_windows())
    before = store.read_windows(devices=["1"], sensors=["1"]).iloc[-1]
    bad = tmp_path / "bad.csv"
    bad.write_text(f"TS,Device,Sensor,Value\n{before.ts},1,1,x\n{before.ts + pd.Timedelta('1s')},1,1,20\n")
    with pytest.raises(TooManyBadRows):
        ingest_files(postgres_url, [str(bad)])
    assert store.quarantine_counts() == {"bad_value": 1}
    last = store.read_windows(devices=["1"], sensors=["1"]).iloc[-1]
    assert (last.ts, last.value_count, last.value_max) == (before.ts, 2, 20.0)
    assert last.value == pytest.approx((before.value + 20) / 2)
