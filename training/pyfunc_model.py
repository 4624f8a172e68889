"""The MLflow pyfunc model of a release, logged from code (models-from-code): no pickle.

MLflow runs this file when a release is loaded (``mlflow.pyfunc.load_model("models:/NAME@champion")``);
it builds :class:`training.registry.BundleModel` on the bundle artifact. ``predict`` takes readings
(``TS, Device, Sensor, Value``), aggregates them into the release's windows, scores them with the
vectorised kernel and returns the readings with ``Score`` and ``Prediction`` (1 = anomaly).
"""

from __future__ import annotations

from fleetscore.training.registry import BundleModel, set_model

set_model(BundleModel())
