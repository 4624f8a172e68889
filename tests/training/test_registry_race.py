"""Two processes creating the same MLflow experiment at once: the one that loses still logs its run."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fleetscore.training import registry


def test_losing_the_race_to_create_the_experiment_still_logs_the_run(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = registry.log_run(uri, "fleetscore-scoring", "a", {}, {"rows": 1.0}, {})
    real = MlflowClient.get_experiment_by_name
    calls: list[str] = []

    def stale(self: MlflowClient, name: str) -> object:
        calls.append(name)
        return None if len(calls) == 1 else real(self, name)  # the other process created it just now

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", stale)
    second = registry.log_run(uri, "fleetscore-scoring", "b", {}, {"rows": 2.0}, {})
    client = MlflowClient(uri)
    assert len(calls) == 2 and first != second
    assert client.get_run(second).info.status == "FINISHED"
    assert client.get_run(second).info.experiment_id == client.get_run(first).info.experiment_id

