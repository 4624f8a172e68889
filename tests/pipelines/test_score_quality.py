"""Detection quality end to end: simulate -> ingest -> release -> score, against the injected labels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fleetscore.pipelines.settings import load_settings
from fleetscore.records.run_log import RunLog
from fleetscore.scoring import table
from fleetscore.simulation.labels import after_anomaly, label_windows, read_labels

FLEETSCORE = str(Path(sys.executable).with_name("fleetscore"))


@pytest.mark.slow
def test_recall_and_false_alarms_through_fleetscore_score(home: Path) -> None:
    def run(*args: str) -> str:  # one process per command, as a user runs them
        result = subprocess.run([FLEETSCORE, *args], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        return result.stdout

    run("simulate", "--devices", "8", "--sensors", "5", "--duration", "3h", "--seed", "42",
        "--anomaly-rate", "0.03", "--labels", "labels.csv", "--ingest")
    run("release", "--start", "2024-01-01T00:00", "--end", "2024-01-01T01:00")  # the first hour is clean
    output = run("score", "--start", "2024-01-01T01:00", "--end", "2024-01-01T03:00")
    run_id = output.split()[1].rstrip(":")

    settings = load_settings({}, environ={})
    got = table.read_predictions(settings.storage_url).sort_values(["Device", "Sensor", "TS"], ignore_index=True)
    assert len(got) == 8 * 5 * 2 * 720 and set(got["ModelVersion"]) == {1}
    labels = read_labels("labels.csv")
    assert set(labels["Kind"]) == {"spike", "level_shift", "stuck"}
    kind = label_windows(got, labels, device="Device", sensor="Sensor", ts="TS")
    flagged = got["Prediction"].to_numpy() == 1
    recall = {k: float(flagged[kind == k].mean()) for k in ("spike", "level_shift", "stuck")}
    false_alarms = float(flagged[kind == ""].mean())
    tail = after_anomaly(got, kind, settings.training.rolling_window, device="Device", sensor="Sensor")
    past_tail = float(flagged[(kind == "") & ~tail].mean())
    print("recall", recall, "false alarms", false_alarms, "past the tail", past_tail)
    assert float(flagged[kind != ""].mean()) >= 0.95
    assert min(recall.values()) >= 0.95
    assert past_tail <= 0.01  # past the rolling_window windows after an anomaly (tests/training/test_accuracy.py)
    assert false_alarms <= 0.015

    record = RunLog(settings.database_url).get(run_id)
    assert record is not None and record["mlflow_run_id"]  # the run is also recorded in MLflow
