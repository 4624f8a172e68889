"""The MLflow pyfunc model of a release, logged from code (models-from-code): no pickle.

MLflow runs this file when a release is loaded (``mlflow.pyfunc.load_model("models:/NAME@champion")``),
in any environment made from the model's own requirements.txt: it imports only mlflow, numpy, pandas and
the fleetscore modules that ``code_paths`` bundles with the model (the bundle format and the scoring
kernel), never the registry adapter or a database driver. ``predict`` takes readings
(``TS, Device, Sensor, Value``), aggregates them into the release's windows, scores them with the
vectorised kernel and returns the readings with ``Score``, ``Prediction`` (1 = anomaly, 0 = normal, null
when the release has no model for the series) and ``Status`` (``scored`` or ``no_model``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

from fleetscore.training.bundle import ReleaseBundle
from fleetscore.training.kernel import score_windows

READING_COLUMNS = ("TS", "Device", "Sensor", "Value")
SCORED, NO_MODEL = "scored", "no_model"


def readings_to_windows(readings: pd.DataFrame, window_seconds: float) -> tuple[pd.DataFrame, np.ndarray]:
    """Aggregate readings into windows (the ingestion shape); also each reading's window row."""
    ts = pd.to_datetime(readings["TS"])
    frame = pd.DataFrame({
        "device": readings["Device"].astype(str).to_numpy(), "sensor": readings["Sensor"].astype(str).to_numpy(),
        "ts": ts.dt.floor(pd.Timedelta(seconds=window_seconds)).to_numpy(),
        "v": pd.to_numeric(readings["Value"]).to_numpy(dtype=np.float64),
    })
    grouped = frame.groupby(["device", "sensor", "ts"], sort=True)
    windows = grouped["v"].agg(value="mean", value_min="min", value_max="max", value_count="count").reset_index()
    windows["value_count"] = windows["value_count"].astype(np.int64)
    row = grouped.ngroup().to_numpy()
    return windows, row


class BundleModel(PythonModel):  # type: ignore[misc]
    """Scores readings with every (device, sensor) model of a release bundle."""

    def load_context(self, context: Any) -> None:
        """Load the bundle artifact (npz + json, no pickle)."""
        self.bundle = ReleaseBundle.load(context.artifacts["bundle"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Readings in; the same readings with ``Score``, ``Prediction`` (nullable), ``Reason`` (the feature
        that drove the score) and ``Status`` out."""
        missing = [c for c in READING_COLUMNS if c not in model_input.columns]
        if missing:
            raise ValueError(f"model input: missing column(s) {', '.join(missing)}; expected TS, Device, Sensor, Value")
        window_seconds = float(self.bundle.manifest.get("window_seconds", 5.0))
        windows, row = readings_to_windows(model_input, window_seconds)
        scored = score_windows(self.bundle, windows)
        keyed = windows.merge(scored[["device", "sensor", "ts", "score", "prediction", "reason"]],
                              on=["device", "sensor", "ts"], how="left")
        known = keyed["prediction"].notna().to_numpy()[row]
        out = model_input.copy()
        out["Score"] = keyed["score"].to_numpy(dtype=np.float64)[row]
        out["Prediction"] = pd.array(keyed["prediction"].to_numpy(dtype=np.float64)[row], dtype="Int8")
        out["Reason"] = np.where(known, keyed["reason"].to_numpy(dtype=object)[row], None)
        out["Status"] = np.where(known, SCORED, NO_MODEL)
        return out


set_model(BundleModel())
