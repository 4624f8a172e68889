"""``[training] detector = "robust"`` end to end: simulate -> ingest -> release -> score."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fleetscore.pipelines.settings import load_settings
from fleetscore.scoring import table
from fleetscore.simulation.labels import label_windows, read_labels

FLEETSCORE = str(Path(sys.executable).with_name("fleetscore"))


@pytest.mark.slow
def test_release_and_score_with_the_robust_family_flag_spikes(home: Path) -> None:
    def run(*args: str) -> str:
        result = subprocess.run([FLEETSCORE, *args], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        return result.stdout

    (home / "fleetscore.toml").write_text('[training]\ndetector = "robust"\n')
    run("simulate", "--devices", "6", "--sensors", "3", "--duration", "3h", "--seed", "7",
        "--anomaly-rate", "0.03", "--labels", "labels.csv", "--ingest")
    run("release", "--start", "2024-01-01T00:00", "--end", "2024-01-01T01:00")
    run("score", "--start", "2024-01-01T01:00", "--end", "2024-01-01T03:00")

    manifests = list(home.rglob("candidates/*/manifest.json"))
    assert manifests and {json.loads(p.read_text())["detector"] for p in manifests} == {"robust"}
    settings = load_settings({}, environ={})
    got = table.read_predictions(settings.storage_url)
    assert len(got) == 6 * 3 * 2 * 720
    kind = label_windows(got, read_labels("labels.csv"), device="Device", sensor="Sensor", ts="TS")
    flagged = got["Prediction"].to_numpy() == 1
    print({k: float(flagged[kind == k].mean()) for k in sorted(set(kind) - {""})},
          "false alarms", float(flagged[kind == ""].mean()))
    assert (kind == "spike").sum() > 0
    assert float(flagged[kind == "spike"].mean()) >= 0.9
    assert float(flagged[kind == ""].mean()) <= 0.01
