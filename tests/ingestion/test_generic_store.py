"""The generic (SQLAlchemy Core) path of the sensor store, the one Azure SQL uses, forced on SQLite and on
the real PostgreSQL and checked against pandas and against the native path; plus what can be checked of
SQL Server without a server: the URL is accepted, the driver error, the DDL and the merge statements."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from sqlalchemy import insert
from sqlalchemy.dialects import mssql
from sqlalchemy.schema import CreateTable

import fleetscore.ingestion.ingest as ingest_module
from fleetscore.errors import ConfigError, TooManyBadRowsError
from fleetscore.ingestion.generic_writer import GenericWriter, merge_update
from fleetscore.ingestion.ingest import ingest_files
from fleetscore.ingestion.schema import windows
from fleetscore.ingestion.store import SensorStore
from fleetscore.ingestion.writer import open_writer
from tests.ingestion.resample_check import assert_windows_match_resample, write_raw_readings

AZURE_URL = ("mssql+pyodbc://fleet:secret@myserver.database.windows.net:1433/fleetscore"
             "?driver=ODBC+Driver+18+for+SQL+Server&Encrypt=yes")


def _new_pg_database(server: str) -> str:
    import psycopg

    name = "g_" + uuid.uuid4().hex[:12]
    with psycopg.connect(server.replace("postgresql+psycopg://", "postgresql://") + "/postgres",
                         autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def urls(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """(generic, native): two fresh databases of one dialect; ``ingest_files`` on the first one goes
    through the generic path."""
    if request.param == "sqlite":
        generic, native = f"sqlite:///{tmp_path / 'generic.db'}", f"sqlite:///{tmp_path / 'native.db'}"
    else:
        server = request.getfixturevalue("postgres_server")
        generic, native = _new_pg_database(server), _new_pg_database(server)

    def store(url: str, **options: Any) -> SensorStore:
        return SensorStore(url, _generic=url == generic, **options)

    monkeypatch.setattr(ingest_module, "SensorStore", store)
    yield generic, native


def _generic(url: str) -> SensorStore:
    return SensorStore(url, _generic=True)


def _quarantine(store: SensorStore) -> pd.DataFrame:
    with store.engine.connect() as conn:
        return pd.read_sql("SELECT source, line, raw, reason, detail FROM quarantine ORDER BY source, line", conn)


def test_the_generic_path_is_what_ingest_uses(urls: tuple[str, str]) -> None:
    generic, native = urls
    assert ingest_module.SensorStore(generic).generic and not ingest_module.SensorStore(native).generic
    with open_writer(_generic(generic)) as writer:
        assert type(writer) is GenericWriter


def test_chunk_boundaries_exact_aggregates(urls: tuple[str, str], tmp_path: Path) -> None:
    generic, native = urls
    path = tmp_path / "raw.csv"
    frame = write_raw_readings(path, seed=11, n=4000, seconds=1800)
    for url in (generic, native):  # 700-row blocks: windows split across chunk boundaries
        report = ingest_files(url, [str(path)], window=timedelta(seconds=10), batch_rows=700)
    got = _generic(generic).read_windows()
    assert report.inputs[0].windows_written == len(got)
    assert_windows_match_resample(got, frame, "10s")
    # the same arithmetic as the native upsert: identical to the last bit
    pd.testing.assert_frame_equal(got, SensorStore(native).read_windows())


def test_late_updates_too_late_and_reingest(urls: tuple[str, str], tmp_path: Path) -> None:
    generic, native = urls
    first = tmp_path / "first.csv"
    first.write_text("TS,Device,Sensor,Value\n2024-01-01 00:00:01,d,s,1\n2024-01-01 02:00:00,d,s,7\n")
    late = tmp_path / "late.csv"
    late.write_text("TS,Device,Sensor,Value\n2024-01-01 01:30:02,d,s,2\n2024-01-01 02:00:03,d,s,4\n"
                    "2024-01-01 00:00:03,d,s,5\n")
    reports = {}
    for url in (generic, native):
        ingest_files(url, [str(first)])
        with pytest.raises(TooManyBadRowsError) as info:
            ingest_files(url, [str(late)], allowed_lateness=timedelta(hours=1))
        reports[url] = info.value.report.inputs[0]  # type: ignore[attr-defined]
    item = reports[generic]
    assert (item.rows_read, item.windows_written, item.late_updates, item.quarantined) == (3, 1, 1, {"too_late": 1})
    assert (item.windows_written, item.late_updates) == (reports[native].windows_written, reports[native].late_updates)
    store = _generic(generic)
    frame = store.read_windows().set_index("ts")
    newest = frame.loc[pd.Timestamp("2024-01-01 02:00:00")]
    assert (newest.value, newest.value_min, newest.value_max, newest.value_count) == (5.5, 4.0, 7.0, 2)
    assert frame.loc[pd.Timestamp("2024-01-01 00:00:00")].value == 1.0
    assert _quarantine(store).to_dict("records") == [
        {"source": str(late), "line": 4, "raw": "2024-01-01 00:00:03,d,s,5", "reason": "too_late",
         "detail": "more than 3600s behind the newest window of its series"}]
    pd.testing.assert_frame_equal(_quarantine(store), _quarantine(SensorStore(native)))
    before = store.read_windows()
    again = ingest_files(generic, [str(first), str(late)], allowed_lateness=timedelta(hours=1))
    assert [i.status for i in again.inputs] == ["skipped", "skipped"]
    pd.testing.assert_frame_equal(store.read_windows(), before)
    assert store.quarantine_counts() == {"too_late": 1}


def test_quarantine_same_as_native(urls: tuple[str, str], tmp_path: Path) -> None:
    generic, native = urls
    path = tmp_path / "bad.csv"
    path.write_text("TS,Device,Sensor,Value\n2024-01-01 00:00:00,d,s,1\nnot a time,d,s,1\n2024-01-01 00:00:01,d,s,x\n"
                    "2024-01-01 00:00:02,,s,1\n2024-01-01 00:00:03,d,s,nan\n2024-01-01 00:00:04,d,s\n"
                    f"2024-01-01 00:00:05,{'d' * 65},s,1\n2024-01-01 00:00:06,d,s,2\n")
    for url in (generic, native):
        with pytest.raises(TooManyBadRowsError):
            ingest_files(url, [str(path)])
    got, expected = _quarantine(_generic(generic)), _quarantine(SensorStore(native))
    assert len(got) == 6 and set(got.reason) == {"bad_timestamp", "bad_value", "empty_device", "non_finite",
                                                 "missing_field", "id_too_long"}
    pd.testing.assert_frame_equal(got, expected)
    good = _generic(generic).read_windows()  # the good rows of the same input are stored
    assert good[["value", "value_count"]].to_dict("records") == [{"value": 1.0, "value_count": 1},
                                                                 {"value": 2.0, "value_count": 1}]
    pd.testing.assert_frame_equal(good, SensorStore(native).read_windows())


def test_crash_mid_input_leaves_nothing(urls: tuple[str, str], reference_data: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    generic, _ = urls
    calls = {"n": 0}
    merge = GenericWriter.merge_windows

    def crash_on_third(self: GenericWriter, chunk: pa.Table) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("crash")
        return merge(self, chunk)

    monkeypatch.setattr(GenericWriter, "merge_windows", crash_on_third)
    with pytest.raises(RuntimeError):
        ingest_files(generic, [str(reference_data / "sensor_data.csv")], aggregated=True, batch_rows=2000)
    store = _generic(generic)
    assert store.count_windows() == 0 and store.quarantine_counts() == {}
    monkeypatch.setattr(GenericWriter, "merge_windows", merge)
    report = ingest_files(generic, [str(reference_data / "sensor_data.csv")], aggregated=True)
    assert report.inputs[0].windows_written == 17768 and store.count_windows() == 17768


def test_read_api_equals_native(urls: tuple[str, str], reference_data: Path) -> None:
    generic, _ = urls
    ingest_files(generic, [str(reference_data / "sensor_data_tag_header.csv")], aggregated=True, batch_rows=5000)
    # ids whose byte order differs from a collation's ("B" < "a" < "é"; "10" < "2")
    extra = pa.table({"device": ["a", "B", "é", "10"], "sensor": ["1", "1", "2", "1"],
                      "ts": pa.array([datetime(2018, 8, 29, 1, 0, 0, 250000)] * 4, pa.timestamp("us")),
                      "value": [1.0, 2.0, 3.0, 4.0], "value_min": [1.0, 2.0, 3.0, 4.0],
                      "value_max": [1.0, 2.0, 3.0, 4.0], "value_count": [1, 1, 1, 1]})
    with open_writer(_generic(generic)) as writer:
        assert writer.merge_windows(extra).created == 4
    native, forced = SensorStore(generic), _generic(generic)
    start, end = datetime(2018, 8, 29, 0, 30), datetime(2018, 8, 29, 1, 30)
    for kwargs in ({}, {"start": start}, {"end": end}, {"start": start, "end": end, "devices": ["2", "é", "B"]},
                   {"sensors": ["1", "2"]}, {"sensors": []}, {"devices": []}):
        got = forced.read_windows(**kwargs)  # type: ignore[arg-type]
        pd.testing.assert_frame_equal(got, native.read_windows(**kwargs))  # type: ignore[arg-type]
    full = forced.read_windows()
    assert len(full) == 17768 + 4
    assert list(dict.fromkeys(full.device)) == ["1", "10", "2", "3", "B", "a", "é"]
    pd.testing.assert_frame_equal(forced.list_series(), native.list_series())
    pd.testing.assert_frame_equal(forced.list_series(start, end), native.list_series(start, end))
    assert forced.time_range() == native.time_range() == (datetime(2018, 8, 28, 23, 0, 5),
                                                          datetime(2018, 8, 29, 3, 12, 30))
    assert forced.devices() == native.devices() == ["1", "10", "2", "3", "B", "a", "é"]
    assert forced.count_windows() == native.count_windows() == 17772


def test_empty_store_reads(urls: tuple[str, str]) -> None:
    generic, _ = urls
    store = _generic(generic)
    assert store.read_windows().empty and list(store.read_windows().columns) == list(SensorStore(generic)
                                                                                      .read_windows().columns)
    assert store.time_range() == (None, None) and store.devices() == [] and store.list_series().empty


def test_checkpoints_update_then_insert(urls: tuple[str, str]) -> None:
    generic, _ = urls
    store = _generic(generic)
    with open_writer(store) as writer:
        writer.set_checkpoint("ns", "hub", "$Default", "0", "100", 7)
        writer.set_checkpoint("ns", "hub", "$Default", "1", "5", 1)
    with open_writer(store) as writer:
        writer.set_checkpoint("ns", "hub", "$Default", "0", "200", 9)
    with open_writer(store) as writer:
        assert writer.checkpoints("ns", "hub", "$Default") == {"0": ("200", 9), "1": ("5", 1)}
        assert writer.checkpoints("ns", "hub", "other") == {}


# -- SQL Server (Azure SQL): no server here; the URL, the driver, the DDL and the statements ----------------


def test_azure_sql_url_is_accepted_without_connecting() -> None:
    pytest.importorskip("pyodbc", reason="pyodbc needs unixODBC's libodbc.so.2 (apt-get install unixodbc)")
    store = SensorStore(AZURE_URL)
    assert store.generic and store.dialect == "mssql"
    assert repr(store) == ("SensorStore('mssql+pyodbc://fleet:***@myserver.database.windows.net:1433/fleetscore"
                           "?Encrypt=yes&driver=ODBC+Driver+18+for+SQL+Server')")
    engine = store.engine
    assert engine.dialect.name == "mssql" and engine.dialect.driver == "pyodbc"
    assert engine.dialect.fast_executemany  # executemany as one array-bound round trip
    assert engine.pool.checkedout() == 0  # nothing connected


def test_azure_sql_missing_driver_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyodbc", None)  # as where pyodbc is not installed
    url = AZURE_URL.replace("myserver", "otherserver")  # not an engine cached by another test
    with pytest.raises(ConfigError) as info:
        SensorStore(url)
    assert str(info.value) == (
        "database_url mssql+pyodbc://fleet:***@otherserver.database.windows.net:1433/fleetscore?Encrypt=yes&"
        "driver=ODBC+Driver+18+for+SQL+Server: driver not installed (import of pyodbc halted; None in "
        "sys.modules); install pyodbc (pip install 'fleetscore[azure]') and Microsoft's ODBC Driver 18 for "
        "SQL Server, which brings unixODBC's libodbc.so.2 (docs/deploy-azure.md)")


def test_windows_ddl_is_valid_sql_server() -> None:
    dialect = mssql.dialect(deprecate_large_types=True)  # what a connection to Azure SQL sets
    ddl = " ".join(str(CreateTable(windows).compile(dialect=dialect)).split())
    assert ddl == ("CREATE TABLE windows ( device VARCHAR(64) NOT NULL, sensor VARCHAR(64) NOT NULL, "
                   "ts DATETIME2(6) NOT NULL, value FLOAT NOT NULL, value_min FLOAT NOT NULL, "
                   "value_max FLOAT NOT NULL, value_count INTEGER NOT NULL, updated_at DATETIME2(6) NOT NULL, "
                   "PRIMARY KEY (device, sensor, ts) )")


def test_merge_statements_compile_for_sql_server() -> None:
    dialect = mssql.dialect(paramstyle="qmark")  # pyodbc's
    update_sql = str(merge_update().compile(dialect=dialect))
    assert update_sql == (
        "UPDATE windows SET value=(windows.value * (CAST(windows.value_count AS FLOAT) / ((windows.value_count + ?) "
        "+ 0.0)) + ? * (CAST(? AS FLOAT) / ((windows.value_count + ?) + 0.0))), "
        "value_min=CASE WHEN (windows.value_min <= ?) THEN windows.value_min ELSE ? END, "
        "value_max=CASE WHEN (windows.value_max >= ?) THEN windows.value_max ELSE ? END, "
        "value_count=(windows.value_count + ?), updated_at=? "
        "WHERE windows.device = ? AND windows.sensor = ? AND windows.ts = ?")
    insert_sql = str(insert(windows).compile(dialect=dialect))
    assert insert_sql == ("INSERT INTO windows (device, sensor, ts, value, value_min, value_max, value_count, "
                          "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
