"""The same run on a real Dask cluster and into Azure Blob Storage (Azurite) as locally."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

import fleetscore.pipelines.scoring_pipeline as sp
from fleetscore.errors import StorageError
from fleetscore.pipelines import release_resolution
from fleetscore.scoring import table, writer
from fleetscore.scoring.storage import Storage, storage_spec
from tests.scoring.fleet import START, Resolved, fit_release, fleet_windows, settings_for, store_windows

END = START + timedelta(minutes=5)


@pytest.fixture()
def release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    settings = settings_for(tmp_path)
    train = fleet_windows(4, 2, 100, seed=1, start=START - timedelta(seconds=500))
    store_windows(settings.database_url, pd.concat([train, fleet_windows(4, 2, 60, seed=2)]))
    fit_release(train).save(tmp_path / "bundle")
    monkeypatch.setattr(release_resolution, "resolve_release",
                        lambda s, ref: Resolved(1, tmp_path / "bundle", {}))
    return tmp_path


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["Device", "Sensor", "TS"]).reset_index(drop=True)


def test_dask_executor_gives_the_local_result(release: Path, dask_executor: str) -> None:
    local = settings_for(release)
    on_dask = settings_for(release, executor=dask_executor, storage_url=str(release / "blob-dask"))
    a = sp.score_window(local, START, END, skip_validation=True, shards=2)
    b = sp.score_window(on_dask, START, END, skip_validation=True, shards=3)
    assert b.status == "done" and len(b.manifest["files"]) == 3
    pd.testing.assert_frame_equal(_sorted(table.read_run(local.storage_url, a.run_id)),
                                  _sorted(table.read_run(on_dask.storage_url, b.run_id)))


def test_azure_blob_storage_through_azurite(release: Path, azurite_connection_string: str) -> None:
    url = "az://predictions/fleet-a"
    settings = settings_for(release, storage_url=url,
                            **{"scoring.storage_connection_string": azurite_connection_string})
    result = sp.score_window(settings, START, END, skip_validation=True, shards=2, csv=True)
    assert result.location == "az://predictions/fleet-a/predictions@v0"
    spec = storage_spec(url, connection_string=azurite_connection_string)
    got = table.read_predictions(spec)
    assert len(got) == 4 * 2 * 60 and set(got["ModelVersion"]) == {1}
    storage = spec.open()
    names = storage.listdir(writer.run_prefix(START, result.run_id))
    assert names == ["_run.json", "manifest.json", "part-00000.csv", "part-00000.json",
                     "part-00001.csv", "part-00001.json", "run.log"]  # the staged Parquet parts are committed
    assert "_delta_log" in storage.listdir("predictions")
    assert storage.read_bytes(f"{writer.run_prefix(START, result.run_id)}/part-00000.csv").startswith(
        b"TS,Device,Sensor,Val,Prediction\n2018-08-28 23:00:00.000,1,1,")
    # the duplicate check reads manifests from the blob store too
    assert sp.score_window(settings, START, END, skip_validation=True, shards=2, csv=True).status == "skipped"


def test_blob_storage_errors_are_one_line(azurite_connection_string: str) -> None:
    storage = Storage("az://nosuchcontainer/x", {"connection_string": azurite_connection_string})
    with pytest.raises(StorageError, match=r"^az://nosuchcontainer/x/a.json: not found$"):
        storage.read_bytes("a.json")
