"""``fleetscore demo`` (what ``make demo`` runs): the whole flow on the embedded defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from fleetscore.ingestion.store import SensorStore
from fleetscore.scoring.table import read_predictions

FLEETSCORE = str(Path(sys.executable).with_name("fleetscore"))


@pytest.mark.slow
def test_demo_runs_the_whole_flow_and_says_where_everything_went(home: Path, reference_data: Path) -> None:
    done = subprocess.run([FLEETSCORE, "demo", "--devices", "3",
                           "--reference", str(reference_data / "sensor_data.csv")],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "100"})
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    steps = [line.split()[2] for line in out.splitlines() if line.startswith("$ fleetscore ")]
    assert steps == ["simulate", "ingest", "--database-url", "validate", "release", "score", "report"]
    # the reference data: 17,768 windows of 15 series, in a store of its own
    assert f"{reference_data / 'sensor_data.csv'}: 17,768 rows read, 17,768 windows written" in out
    assert "released v1: 0 promoted, 0 kept, 12 new, 0 failed" in out  # 3 pumps x 4 sensors
    assert "Traceback" not in done.stderr and "WARNING" not in done.stderr

    where = out[out.index("Where everything went:"):].splitlines()[1:]
    paths = {line.split()[0] + (" " + line.split()[1] if line.split()[1] in ("store", "data", "registry",
                                                                             "input") else ""): line.split()[-1]
             for line in where if line.strip()}
    assert paths["sensor store"] == "sqlite:///.fleetscore/fleetscore.db"
    assert (home / ".fleetscore" / "fleetscore.db").exists() and (home / ".fleetscore" / "reference.db").exists()
    assert (home / ".fleetscore" / "demo" / "report.html").read_text().startswith("<!DOCTYPE html>")

    predictions = read_predictions(".fleetscore/blob")
    predictions["TS"] = predictions["TS"].dt.tz_convert(None)  # the table's UTC times, as the labels' naive UTC
    scored = SensorStore("sqlite:///.fleetscore/fleetscore.db").read_windows(
        start=datetime(2026, 1, 5, 2), end=datetime(2026, 1, 5, 3))
    assert len(predictions) == len(scored) > 0.9 * 12 * 720  # every window of the scored hour (gaps have none)

    # the quality printed per kind is what the predictions and the labels file say, row by row
    labels = pd.read_csv(home / ".fleetscore" / "demo" / "labels.csv", parse_dates=["Start", "End"])
    kind = pd.Series("", index=predictions.index, dtype=object)
    anomalous = pd.Series(False, index=predictions.index)
    visible = pd.Series(False, index=predictions.index)
    for row in labels.itertuples():
        hit = ((predictions.Device == row.Device) & (predictions.Sensor == row.Sensor)
               & (row.Start <= predictions.TS) & (row.End > predictions.TS))
        kind[hit] = row.Kind
        anomalous[hit] = row.Label == "anomaly"
        visible[hit] = bool(row.Visible) and row.Label == "anomaly"
    flagged = predictions.Prediction == 1
    quality = out[out.index("Detection quality"):out.index("Where everything went:")].splitlines()[1:]
    printed = {line[:19].strip(): line[19:].split() for line in quality if line.strip()}
    assert {"all anomalies", "normal"} <= set(printed)
    assert set(kind[visible]) | set(kind[~anomalous & (kind != "")]) <= set(printed)  # every kind scored
    for name, fields in printed.items():
        if name == "all anomalies":
            mask = visible
        elif name == "drift < 2 sigma":
            mask = anomalous & ~visible
        elif name == "normal":
            mask = ~anomalous
        else:
            mask = (kind == name) & (visible | ~anomalous)
        assert int(fields[0].replace(",", "")) == int(mask.sum()), name
        rate = fields[3] if fields[2] == "recall" else fields[4]
        assert float(rate.rstrip("%")) == pytest.approx(100 * flagged[mask].mean(), abs=0.006), name
