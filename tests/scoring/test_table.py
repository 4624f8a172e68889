"""The predictions Delta table: one commit per run, rescoring replaces a range, versions stay readable,
and readers with no fleetscore code (deltalake, polars, duckdb) see exactly the committed rows."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from deltalake import DeltaTable

from fleetscore.errors import StorageError
from fleetscore.scoring import table, writer
from fleetscore.scoring.storage import Storage, StorageSpec, storage_spec

H1 = datetime(2026, 1, 5, 1, 0)
KEYS = ["Device", "Sensor", "TS"]


def _scored(start: datetime, end: datetime, devices: list[str], score: float) -> pd.DataFrame:
    ts = pd.date_range(start, end, freq="5min", inclusive="left")
    return pd.DataFrame({
        "device": [d for d in devices for _ in ts], "sensor": "temp", "ts": list(ts) * len(devices),
        "value": 1.5, "score": score, "prediction": 0, "reason": "value",
    })


def _run(spec: StorageSpec, run_id: str, start: datetime, end: datetime, devices: list[str], version: int,
         *, commit: bool = True, device_filter: list[str] | None = None) -> int | None:
    """Stage one part per device under the run's folder; commit them (and write the manifest) if asked."""
    storage = spec.open()
    prefix = writer.run_prefix(start, run_id)
    for shard, device in enumerate(devices):
        scored = writer.to_predictions(_scored(start, end, [device], version), version)
        writer.write_part(storage, prefix, shard, scored)
    if not commit:
        return None
    staged = writer.read_staged(storage, prefix)
    committed = table.commit_run(spec, staged, start, end, device_filter,
                                 {"run_id": run_id, "release_version": version, "data_hash": f"hash-{run_id}",
                                  "code_version": "0.1.0+gtest"})
    writer.publish(storage, start, run_id, {"run_id": run_id, "table_version": committed})
    return committed


def _history_case(spec: StorageSpec) -> tuple[int, int]:
    """Run A scores 01:00-03:00 (v1), run B rescores 02:00-03:00 (v2), run C is killed before its commit."""
    a = _run(spec, "20260105T030000000-aaaaaa", H1, H1 + timedelta(hours=2), ["d1", "d2"], 1)
    b = _run(spec, "20260105T040000000-bbbbbb", H1 + timedelta(hours=1), H1 + timedelta(hours=2), ["d1", "d2"], 2)
    _run(spec, "20260105T050000000-cccccc", H1, H1 + timedelta(hours=2), ["d1", "d2", "d9"], 3, commit=False)
    assert a is not None and b is not None
    return a, b


def _check_current(frame: pd.DataFrame) -> None:
    """Exactly the latest committed rows: 01:xx from run A (v1), 02:xx from run B (v2), nothing of run C."""
    assert len(frame) == 2 * 24
    assert not frame.duplicated(KEYS).any()
    assert sorted(frame["Device"].unique()) == ["d1", "d2"]
    hour = pd.to_datetime(frame["TS"], utc=True).dt.hour
    assert set(frame.loc[hour == 1, "ModelVersion"]) == {1}
    assert set(frame.loc[hour == 2, "ModelVersion"]) == {2}


def test_overlapping_rescoring_and_a_killed_run(tmp_path: Path) -> None:
    spec = StorageSpec(str(tmp_path))
    a, b = _history_case(spec)
    assert (a, b) == (0, 1)
    uri = str(tmp_path / "predictions")

    # deltalake itself
    dt = DeltaTable(uri)
    assert dt.version() == 1
    current = dt.to_pandas()
    _check_current(current)
    assert dt.schema().to_arrow().field("TS").type == pa.timestamp("us", tz="UTC")
    assert sorted(dt.partitions(), key=lambda p: p["window_start"]) == [
        {"window_start": "2026-01-05T01-00"}, {"window_start": "2026-01-05T02-00"}]
    assert len(DeltaTable(uri, version=0).to_pandas()) == 2 * 24  # run A's result, as it was

    # polars (its own Delta reader)
    frame = pl.read_delta(uri)
    assert frame.schema["TS"] == pl.Datetime("us", "UTC")
    _check_current(frame.to_pandas())
    assert set(pl.read_delta(uri, version=0)["ModelVersion"].to_list()) == {1}

    # duckdb over the table's current files (its delta extension is a download, not a pip package)
    files = DeltaTable(uri).file_uris()
    con = duckdb.connect()
    rows = con.execute("SELECT Device, Sensor, TS, ModelVersion FROM read_parquet($files, hive_partitioning=true)",
                       {"files": files}).df()
    _check_current(rows)
    assert con.execute("SELECT typeof(TS) FROM read_parquet($files) LIMIT 1", {"files": files}).fetchone() == (
        "TIMESTAMP WITH TIME ZONE",)

    # a plain pyarrow dataset over the folder does not trip on the log (it reads every file, old ones too)
    assert ds.dataset(uri, format="parquet", partitioning="hive").count_rows() == 2 * 24 + 2 * 12

    # fleetscore's reader, now and as of version 0, and one run's own rows
    got = table.read_predictions(spec)
    _check_current(got)
    assert str(got["TS"].dtype) == "datetime64[us, UTC]"
    assert set(table.read_predictions(spec, version=0)["ModelVersion"]) == {1}
    assert len(table.read_predictions(spec, H1 + timedelta(minutes=30), H1 + timedelta(hours=1, minutes=30))) == 2 * 12
    assert set(table.read_run(spec, "20260105T030000000-aaaaaa")["ModelVersion"]) == {1}  # even though replaced
    with pytest.raises(StorageError, match="run 20260105T050000000-cccccc has no commit"):
        table.read_run(spec, "20260105T050000000-cccccc")


def test_commit_metadata_names_the_run(tmp_path: Path) -> None:
    spec = StorageSpec(str(tmp_path))
    _history_case(spec)
    versions = table.history(spec)
    assert [(v.version, v.run_id, v.release_version) for v in versions] == [
        (1, "20260105T040000000-bbbbbb", 2), (0, "20260105T030000000-aaaaaa", 1)]
    newest = versions[0]
    assert newest.data_hash == "hash-20260105T040000000-bbbbbb" and newest.code_version == "0.1.0+gtest"
    assert (newest.start, newest.end) == ("2026-01-05T02:00:00+00:00", "2026-01-05T03:00:00+00:00")
    raw = DeltaTable(str(tmp_path / "predictions")).history(1)[0]
    assert raw["fleetscore.run_id"] == "20260105T040000000-bbbbbb"  # what a Spark user sees in DESCRIBE HISTORY
    assert table.run_version(spec, "20260105T030000000-aaaaaa") == 0
    assert table.superseded(spec, 0, H1, H1 + timedelta(hours=2))
    assert not table.superseded(spec, 0, H1, H1 + timedelta(hours=1))  # B did not touch 01:00-02:00
    assert not table.superseded(spec, 1, H1 + timedelta(hours=1), H1 + timedelta(hours=2))


def test_committing_a_run_twice_makes_one_version(tmp_path: Path) -> None:
    spec = StorageSpec(str(tmp_path))
    storage = Storage(str(tmp_path))
    prefix = writer.run_prefix(H1, "r1")
    writer.write_part(storage, prefix, 0, writer.to_predictions(_scored(H1, H1 + timedelta(hours=1), ["d1"], 1), 1))
    meta = {"run_id": "r1", "release_version": 1}
    staged = writer.read_staged(storage, prefix)
    first = table.commit_run(spec, staged, H1, H1 + timedelta(hours=1), None, meta)
    again = table.commit_run(spec, staged, H1, H1 + timedelta(hours=1), None, meta)  # files already moved
    assert first == again == 0 and table.current_version(spec) == 0


def test_a_device_filtered_rescore_keeps_the_other_devices(tmp_path: Path) -> None:
    spec = StorageSpec(str(tmp_path))
    _run(spec, "r1", H1, H1 + timedelta(hours=1), ["d1", "d2"], 1)
    _run(spec, "r2", H1, H1 + timedelta(hours=1), ["d2"], 2, device_filter=["d2"])
    got = table.read_predictions(spec)
    assert got.groupby("Device")["ModelVersion"].unique().map(list).to_dict() == {"d1": [1], "d2": [2]}
    assert not got.duplicated(KEYS).any()


def test_a_rescore_of_part_of_an_hour_keeps_the_rest_of_it(tmp_path: Path) -> None:
    spec = StorageSpec(str(tmp_path))
    _run(spec, "r1", H1, H1 + timedelta(hours=1), ["d1", "d2"], 1)
    _run(spec, "r2", H1 + timedelta(minutes=20), H1 + timedelta(minutes=40), ["d1", "d2"], 2)
    got = table.read_predictions(spec)
    assert len(got) == 2 * 12 and not got.duplicated(KEYS).any()
    minute = got["TS"].dt.minute
    assert set(got.loc[(minute >= 20) & (minute < 40), "ModelVersion"]) == {2}
    assert set(got.loc[(minute < 20) | (minute >= 40), "ModelVersion"]) == {1}
    assert pl.read_delta(str(tmp_path / "predictions")).height == 2 * 12
    assert len(table.read_predictions(spec, version=0)) == 2 * 12


def test_a_table_written_before_the_reason_column_gains_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = StorageSpec(str(tmp_path))
    old = pa.schema([f for f in table.SCHEMA if f.name != "Reason"])
    with monkeypatch.context() as patch:  # the table as a release before the column wrote it
        patch.setattr(table, "SCHEMA", old)
        patch.setattr(table, "TABLE_SCHEMA", old.append(pa.field(table.PARTITION, pa.string())))
        _run(spec, "r1", H1, H1 + timedelta(hours=1), ["d1", "d2"], 1)
    assert "Reason" not in DeltaTable(str(tmp_path / "predictions")).schema().to_arrow().names
    assert table.read_predictions(spec)["Reason"].isna().all()  # an old table reads with the column, null

    # a rescore of part of the hour: the old file is split (its kept rows gain a null Reason)
    _run(spec, "r2", H1 + timedelta(minutes=20), H1 + timedelta(minutes=40), ["d1", "d2"], 2)
    got = table.read_predictions(spec)
    assert len(got) == 2 * 12 and not got.duplicated(KEYS).any()
    new_rows = got["ModelVersion"] == 2
    assert set(got.loc[new_rows, "Reason"]) == {"value"} and got.loc[~new_rows, "Reason"].isna().all()
    assert table.run_version(spec, "r2") == table.current_version(spec)
    assert not table.superseded(spec, table.run_version(spec, "r2") or 0, H1, H1 + timedelta(hours=1))
    polars = pl.read_delta(str(tmp_path / "predictions"))
    assert polars.height == 2 * 12 and polars.filter(pl.col("Reason") == "value").height == 2 * 4


def test_rows_outside_the_runs_range_are_refused(tmp_path: Path) -> None:
    spec = StorageSpec(str(tmp_path))
    storage = Storage(str(tmp_path))
    prefix = writer.run_prefix(H1, "r1")
    writer.write_part(storage, prefix, 0, writer.to_predictions(_scored(H1, H1 + timedelta(hours=2), ["d1"], 1), 1))
    staged = writer.read_staged(storage, prefix)
    with pytest.raises(StorageError, match=r"run r1: rows outside the run's range \[2026-01-05T01:00:00\+00:00"):
        table.commit_run(spec, staged, H1, H1 + timedelta(hours=1), None, {"run_id": "r1"})
    assert table.current_version(spec) is None


def test_an_empty_store_reads_as_no_rows(tmp_path: Path) -> None:
    got = table.read_predictions(StorageSpec(str(tmp_path / "nothing")))
    assert got.empty and list(got.columns) == writer.PREDICTION_COLUMNS
    assert table.history(str(tmp_path / "nothing")) == []
    with pytest.raises(StorageError, match="no version 3"):
        table.read_predictions(str(tmp_path / "nothing"), version=3)


def test_on_azure_blob_storage(azurite_connection_string: str) -> None:
    spec = storage_spec("az://fleetscore-delta/pre", connection_string=azurite_connection_string)
    spec.open().ensure_root()
    uri, options = spec.table_location(table.TABLE)
    assert uri == "az://fleetscore-delta/pre/predictions" and options["allow_http"] == "true"
    _history_case(spec)
    _check_current(DeltaTable(uri, storage_options=options).to_pandas())
    _check_current(pl.read_delta(uri, storage_options=options).to_pandas())
    _check_current(table.read_predictions(spec))
    assert [v.run_id for v in table.history(spec)] == ["20260105T040000000-bbbbbb", "20260105T030000000-aaaaaa"]
    assert set(table.read_predictions(spec, version=0)["ModelVersion"]) == {1}


def test_predictions_command_reads_now_and_as_of_a_version(home: Path) -> None:
    import json

    from click.testing import CliRunner

    from fleetscore.pipelines.cli import main

    runner = CliRunner()
    empty = runner.invoke(main, ["predictions", "history"])
    assert empty.exit_code == 0 and empty.output == "no table versions (no scoring run committed yet)\n"
    assert not (home / ".fleetscore").exists()  # reading created nothing
    _history_case(StorageSpec(str(home / ".fleetscore" / "blob")))
    now = json.loads(runner.invoke(main, ["predictions", "show", "--json"]).output)
    assert (now["version"], now["rows"], now["devices"]) == (1, 48, 2)
    old = runner.invoke(main, ["predictions", "show", "--as-of", "0", "--start", "2026-01-05T02:00",
                               "--end", "2026-01-05T03:00", "--devices", "d1", "--out", "old.csv"])
    assert old.exit_code == 0, old.output
    assert "version 0: 12 predictions, 0 anomalies, 1 devices" in old.output
    csv = pd.read_csv(home / "old.csv")
    assert list(csv.columns) == writer.REFERENCE_COLUMNS and len(csv) == 12
    assert csv["TS"].iloc[0] == "2026-01-05 02:00:00.000"
    lines = runner.invoke(main, ["predictions", "history"]).output.splitlines()
    assert lines[1].split()[:4] == ["1", lines[1].split()[1], "20260105T040000000-bbbbbb", "v2"]
    missing = runner.invoke(main, ["predictions", "show", "--as-of", "7"])
    assert missing.exit_code == 1 and missing.output.startswith("Error: ") and "version 7" in missing.output
