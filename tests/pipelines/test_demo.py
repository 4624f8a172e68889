"""``fleetscore demo`` (what ``make demo`` runs): the whole flow on the embedded defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleetscore.scoring.table import read_predictions

FLEETSCORE = str(Path(sys.executable).with_name("fleetscore"))


@pytest.mark.slow
def test_demo_runs_the_whole_flow_and_says_where_everything_went(home: Path, reference_data: Path) -> None:
    done = subprocess.run([FLEETSCORE, "demo", "--devices", "3", "--sensors", "2",
                           "--reference", str(reference_data / "sensor_data.csv")],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "100"})
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    steps = [line.split()[2] for line in out.splitlines() if line.startswith("$ fleetscore ")]
    assert steps == ["simulate", "ingest", "--database-url", "validate", "release", "score", "report"]
    # the reference data: 17,768 windows of 15 series, in a store of its own
    assert f"{reference_data / 'sensor_data.csv'}: 17,768 rows read, 17,768 windows written" in out
    assert "released v1: 0 promoted, 0 kept, 6 new, 0 failed" in out
    assert "Traceback" not in done.stderr and "WARNING" not in done.stderr

    where = out[out.index("Where everything went:"):].splitlines()[1:]
    paths = {line.split()[0] + (" " + line.split()[1] if line.split()[1] in ("store", "data", "registry",
                                                                             "input") else ""): line.split()[-1]
             for line in where if line.strip()}
    assert paths["sensor store"] == "sqlite:///.fleetscore/fleetscore.db"
    assert (home / ".fleetscore" / "fleetscore.db").exists() and (home / ".fleetscore" / "reference.db").exists()
    assert (home / ".fleetscore" / "demo" / "report.html").read_text().startswith("<!DOCTYPE html>")

    predictions = read_predictions(".fleetscore/blob")
    assert len(predictions) == 3 * 2 * 2 * 720  # 6 series x 2 scored hours of 5 s windows
    quality = out[out.index("Detection quality"):out.index("Where everything went:")]
    false_alarms = float(quality.split("false-alarm rate ")[1].split("%")[0])
    assert false_alarms <= 1.0
    for line in quality.splitlines()[1:4]:
        if "recall" in line and "nan" not in line:
            assert float(line.split("recall ")[1].rstrip("%")) >= 95.0
