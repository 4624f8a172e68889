"""Scale-out on a real Dask cluster of separate ``dask scheduler`` / ``dask worker`` processes, each
worker in its own working directory and temp folder, against real PostgreSQL, Azurite and MLflow."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

import fleetscore.pipelines.scoring_pipeline as sp
from fleetscore.errors import ConfigError
from fleetscore.pipelines import overlapped_run, release_resolution
from fleetscore.pipelines.cli import main
from fleetscore.pipelines.executor_kinds import executor_for, shard_count, without_password
from fleetscore.pipelines.executors import ShardResult
from fleetscore.pipelines.remote_run import HEARTBEAT
from fleetscore.scoring import table, writer
from fleetscore.scoring.storage import storage_spec
from tests.fixtures.dask_processes import DaskProcesses
from tests.scoring.fleet import START, Resolved, fit_release, fleet_windows, settings_for, store_windows

END = START + timedelta(minutes=5)
PASSWORD = "s3cret-pw-never-in-a-task"


def _with_password(url: str) -> str:
    return url.replace("postgres@", f"postgres:{PASSWORD}@", 1)


@pytest.fixture(autouse=True)
def _mlflow(mlflow_server_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every remote run here names the session's MLflow server (a local store is refused)."""
    monkeypatch.setenv("FLEETSCORE_TEST_MLFLOW", mlflow_server_uri)


def _fleet(tmp_path: Path, database_url: str, devices: int, monkeypatch: pytest.MonkeyPatch, sensors: int = 2) -> None:
    train = fleet_windows(devices, sensors, 100, seed=1, start=START - timedelta(seconds=500))
    store_windows(database_url, pd.concat([train, fleet_windows(devices, sensors, 60, seed=2)]))
    tmp_path.mkdir(parents=True, exist_ok=True)
    fit_release(train).save(tmp_path / "bundle")
    monkeypatch.setattr(release_resolution, "resolve_release", lambda s, ref: Resolved(1, tmp_path / "bundle", {}))


def _capture(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[Any], list[Any]]]:
    """Record the tasks and results of every run_shards call of the scoring pipeline."""
    calls: list[tuple[list[Any], list[Any]]] = []
    real = sp.run_shards

    def spy(fn: Callable[..., Any], shard_args: Any, *args: Any, **kwargs: Any) -> Any:
        results = real(fn, shard_args, *args, **kwargs)
        calls.append(([a[0] for a in shard_args], results))
        return results

    monkeypatch.setattr(sp, "run_shards", spy)
    monkeypatch.setattr(overlapped_run, "run_shards", spy)
    return calls


def _remote_settings(tmp_path: Path, cluster: DaskProcesses, postgres_url: str, connection: str,
                     container: str, **more: Any) -> Any:
    more.setdefault("tracking_uri", os.environ["FLEETSCORE_TEST_MLFLOW"])
    return settings_for(tmp_path, executor=cluster.executor, database_url=_with_password(postgres_url),
                        storage_url=f"az://{container}/fleet", **{"scoring.storage_connection_string": connection,
                                                                  **more})


def test_default_local_settings_are_refused_before_anything_runs(
        home: Path, dask_processes: Callable[..., DaskProcesses]) -> None:
    cluster = dask_processes(1)
    result = CliRunner().invoke(main, ["score", "--executor", cluster.executor, "--last", "1h"])
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [
        "Error: database_url sqlite:///.fleetscore/fleetscore.db: a relative SQLite database cannot be reached by "
        f"the workers of {cluster.executor}; use a database server (postgresql://...)"]
    assert not (home / ".fleetscore" / "blob").exists()


def test_each_local_only_setting_is_named(tmp_path: Path) -> None:
    base = {"executor": "dask://127.0.0.1:1", "database_url": "postgresql+psycopg://u@db/x",
            "storage_url": "az://c/p", "tracking_uri": "http://mlflow:5000"}
    cases = {"database_url": "sqlite:////abs/fleet.db", "storage_url": "/data/blob",
             "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}
    for name, value in cases.items():
        settings = settings_for(tmp_path, **{**base, name: value})
        with pytest.raises(ConfigError, match=rf"^{name} {value}: a (local|relative)"):
            executor_for(settings).check_settings(settings)
    shared = settings_for(tmp_path, **{**base, "storage_url": "/data/blob", "shared_disk": True})
    executor_for(shared).check_settings(shared)  # a shared filesystem may be named


def test_remote_services_with_credentials_in_the_workers_environment_only(
        tmp_path: Path, dask_processes: Callable[..., DaskProcesses], postgres_url: str,
        azurite_connection_string: str, mlflow_server_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _fleet(tmp_path, postgres_url, 6, monkeypatch)
    cluster = dask_processes(2, env={"AZURE_STORAGE_CONNECTION_STRING": azurite_connection_string})
    settings = _remote_settings(tmp_path, cluster, postgres_url, azurite_connection_string, "remote",
                                tracking_uri=mlflow_server_uri, **{"scoring.log_to_mlflow": True})
    calls = _capture(monkeypatch)
    result = sp.score_window(settings, START, END)
    assert result.status == "done", result
    got = table.read_predictions(storage_spec("az://remote/fleet", connection_string=azurite_connection_string))
    assert len(got) == 6 * 2 * 60
    key = azurite_connection_string.split("AccountKey=")[1].split(";")[0]
    for tasks, _ in calls:
        for task in tasks:
            raw = pickle.dumps(task)
            assert PASSWORD.encode() not in raw and key.encode() not in raw
            assert task.database_url == without_password(_with_password(postgres_url))


def test_shard_counts_follow_the_fleet_and_the_cluster_not_the_client(
        tmp_path: Path, dask_processes: Callable[..., DaskProcesses], postgres_url: str,
        azurite_connection_string: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = dask_processes(2, env={"AZURE_STORAGE_CONNECTION_STRING": azurite_connection_string})
    _fleet(tmp_path, postgres_url, 12, monkeypatch)
    # workers=1 is what `taskset -c 0` gives the client: it must not shrink the run on a cluster
    settings = _remote_settings(tmp_path, cluster, postgres_url, azurite_connection_string, "counts",
                                workers=1, **{"scoring.series_per_shard": 4})
    assert executor_for(settings).capacity() == 2
    result = sp.score_window(settings, START, END, skip_validation=True)
    assert result.status == "done" and result.manifest["n_shards"] == 6  # 24 series / 4 a shard
    assert shard_count(8, 4, 4, 2) == 2 and shard_count(8, 4, 100, 2) == 2 and shard_count(1, 1, 4, 8) == 1


def test_each_task_carries_only_its_own_models(
        tmp_path: Path, dask_processes: Callable[..., DaskProcesses], postgres_server: str,
        azurite_connection_string: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """At a fixed series_per_shard a task's bytes stay the same when the fleet grows five-fold."""
    cluster = dask_processes(1, env={"AZURE_STORAGE_CONNECTION_STRING": azurite_connection_string})
    sent, whole = {}, {}
    for devices in (8, 40):
        home = tmp_path / f"fleet-{devices}"
        database = _new_database(postgres_server)
        _fleet(home, database, devices, monkeypatch)
        calls = _capture(monkeypatch)
        settings = _remote_settings(home, cluster, database, azurite_connection_string, f"payload{devices}",
                                    **{"scoring.series_per_shard": 8})
        result = sp.score_window(settings, START, END, skip_validation=True)
        assert result.status == "done" and result.manifest["n_shards"] == devices // 4
        (tasks, results), = calls
        assert all({d for d, _ in _keys(t.bundle)} == set(t.devices) for t in tasks)  # its own models only
        sent[devices] = max(r.payload_bytes for r in results if isinstance(r, ShardResult))
        whole[devices] = sum(p.stat().st_size for p in (home / "bundle").iterdir())
    # the release grew by the 64 series added; a task (an eighth of them each) by almost nothing
    assert whole[40] - whole[8] > 7000 and sent[40] < 1.1 * sent[8] < whole[40] / 2, (sent, whole)


def _new_database(server: str) -> str:
    import uuid

    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(server.replace("postgresql+psycopg://", "postgresql://") + "/postgres",
                         autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


def _keys(files: Any) -> list[tuple[str, str]]:
    import io

    import numpy as np

    with np.load(io.BytesIO(files["bundle.npz"]), allow_pickle=False) as data:
        return list(zip(data["devices"].tolist(), data["sensors"].tolist(), strict=True))


CLIENT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import fleetscore.pipelines.scoring_pipeline as sp
    from tests.scoring.fleet import Resolved, START, settings_for
    from datetime import timedelta
    home, executor, db, conn, mlflow = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
    import fleetscore.pipelines.overlapped_run as overlapped
    import fleetscore.pipelines.release_resolution as release_resolution
    release_resolution.resolve_release = lambda s, ref: Resolved(1, home / "bundle", {})
    real = overlapped.gate_verdict
    def slow(*args, **kwargs):
        time.sleep(120)  # killed in here, while its shards wait for the plan
        return real(*args, **kwargs)
    overlapped.gate_verdict = slow
    settings = settings_for(home, executor=executor, database_url=db, storage_url="az://killed/fleet",
                            tracking_uri=mlflow,
                            **{"scoring.storage_connection_string": conn, "scoring.heartbeat_timeout": "3s"})
    sp.score_window(settings, START, START + timedelta(minutes=5))
""")


def test_a_client_killed_mid_run_does_not_wedge_the_cluster(
        tmp_path: Path, dask_processes: Callable[..., DaskProcesses], postgres_url: str,
        azurite_connection_string: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = dask_processes(1, env={"AZURE_STORAGE_CONNECTION_STRING": azurite_connection_string})
    _fleet(tmp_path, postgres_url, 4, monkeypatch)
    storage = storage_spec("az://killed/fleet", connection_string=azurite_connection_string).open()
    args = [str(tmp_path), cluster.executor, postgres_url, azurite_connection_string,
            os.environ["FLEETSCORE_TEST_MLFLOW"]]
    client = subprocess.Popen([sys.executable, "-c", CLIENT, *args], cwd=Path(__file__).resolve().parents[2],
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not any(storage.exists(f"{writer.run_prefix(START, run_id)}/{HEARTBEAT}")
                      for run_id, _ in writer.list_runs(storage, START)):
            assert client.poll() is None and time.monotonic() < deadline, "the client never started its shards"
            time.sleep(0.5)
        time.sleep(1.0)  # the shards are scored and waiting for the plan
    finally:
        if client.poll() is None:
            os.killpg(client.pid, signal.SIGKILL)
        client.wait(timeout=10)
    settings = _remote_settings(tmp_path, cluster, postgres_url, azurite_connection_string, "killed",
                                **{"scoring.shard_timeout": "90s"})
    t0 = time.monotonic()
    result = sp.score_window(settings, START, END)
    assert result.status == "done", result
    assert time.monotonic() - t0 < 90
    spec = storage_spec("az://killed/fleet", connection_string=azurite_connection_string)
    got = table.read_predictions(spec, START, END)  # the table's current version: the completed run's rows
    assert len(got) == 4 * 2 * 60 and table.run_version(spec, result.run_id) is not None


@pytest.mark.parametrize(("devices", "series_per_shard", "expected"), [
    (12, 4, 10),  # 24 series / 4 = 6 shards, raised to the cluster's 5 nodes x 2 processes
    (12, 1, 12),  # 24 shards wanted, at most one per device
    (3, 4, 3),  # a small fleet: one shard per device, not one per process of the cluster
])
def test_the_azureml_plan_step_sizes_the_run_to_the_fleet_and_max_nodes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, devices: int, series_per_shard: int, expected: int) -> None:
    from fleetscore.pipelines.azureml_plan import ScheduleSpec
    from fleetscore.pipelines.azureml_steps import plan_step

    settings = settings_for(tmp_path, **{"scoring.series_per_shard": series_per_shard, "azureml.max_nodes": 5,
                                         "azureml.processes_per_node": 2, "workers": 1})
    _fleet(tmp_path, settings.database_url, devices, monkeypatch)
    summary = plan_step(settings, START, END, ScheduleSpec(every="5m"), tmp_path / "tasks")
    assert summary["tasks"] == expected
    assert len(list((tmp_path / "tasks").glob("shard-*.json"))) == expected
