"""What ``fleetscore demo`` reads back after the flow: the newest scoring run and its detection quality."""

from __future__ import annotations

from pathlib import Path

from fleetscore.errors import ScoringError
from fleetscore.ingestion.run_log import RunLog
from fleetscore.ingestion.timeutil import parse_time
from fleetscore.pipelines.adapters import storage_spec_for
from fleetscore.pipelines.settings import Settings
from fleetscore.scoring.table import read_predictions
from fleetscore.simulation.labels import DetectionQuality, match_labels, read_labels
from fleetscore.simulation.labels import detection_quality as _quality


def latest_run_id(settings: Settings) -> str:
    """The id of the newest scoring run recorded in the store."""
    runs = RunLog(settings.database_url).list(limit=1)
    if not runs:
        raise ScoringError("no scoring run recorded yet")
    return str(runs[0]["run_id"])


def detection_quality(settings: Settings, labels_path: Path, start: str, end: str) -> DetectionQuality:
    """Recall per kind and false-alarm rates of the latest predictions in ``[start, end)`` against the labels."""
    predictions = read_predictions(storage_spec_for(settings), parse_time(start), parse_time(end))
    labels = match_labels(predictions, read_labels(labels_path), device="Device", sensor="Sensor", ts="TS")
    return _quality(labels, predictions["Prediction"].to_numpy() == 1)
