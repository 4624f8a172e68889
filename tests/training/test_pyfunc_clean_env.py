"""The release's pyfunc loads and predicts through MLflow alone, in a fresh virtualenv built with pip from
the logged model's own requirements.txt (no fleetscore installed), and with ``mlflow models predict
--env-manager local``."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid
import venv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.training.helpers import random_fleet

pytestmark = pytest.mark.slow

LOAD_AND_PREDICT = """
import importlib.util, json, sys
import mlflow, pandas as pd
assert importlib.util.find_spec("fleetscore") is None, "fleetscore is installed in the clean env"
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(pd.read_json(sys.argv[2], orient="split"))
print(out.to_json(orient="split"))
"""


def test_release_pyfunc_predicts_in_a_fresh_venv_from_its_requirements(tmp_path: Path) -> None:
    import mlflow

    from fleetscore.training import registry

    uri, name = f"sqlite:///{tmp_path / 'mlflow.db'}", f"fleet-{uuid.uuid4().hex[:8]}"
    bundle, _pipelines, frames = random_fleet(seed=5, models=3, features=("value", "spread"), rolling_window=3)
    bundle.manifest["window_seconds"] = 5.0
    bundle.save(tmp_path / "bundle")
    registry.register_release(uri, name, tmp_path / "bundle", "r1", {}, {}, {})
    model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/1", dst_path=str(tmp_path / "model"),
                                                         tracking_uri=uri))
    requirements = (model_dir / "requirements.txt").read_text()
    assert "fleetscore" not in requirements

    env = tmp_path / "clean-env"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-compile", "-r",
                    str(model_dir / "requirements.txt")],
                   check=True, timeout=900, cwd=tmp_path)

    frame = frames[1]
    readings = pd.DataFrame({"TS": frame["ts"].dt.strftime("%Y-%m-%dT%H:%M:%S"), "Device": frame["device"],
                             "Sensor": frame["sensor"], "Value": frame["value"]})
    readings = pd.concat([readings, readings.head(1).assign(Device="unknown")], ignore_index=True)
    (tmp_path / "in.json").write_text(readings.to_json(orient="split", index=False))
    expected = mlflow.pyfunc.load_model(str(model_dir)).predict(readings)

    done = subprocess.run([str(python), "-c", LOAD_AND_PREDICT, str(model_dir), str(tmp_path / "in.json")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    got = pd.read_json(io.StringIO(done.stdout.strip().splitlines()[-1]), orient="split")
    np.testing.assert_allclose(got["Score"].to_numpy(dtype=float)[:-1], expected["Score"].to_numpy()[:-1], atol=1e-9)
    assert got["Status"].tolist() == expected["Status"].tolist() and got["Status"].iloc[-1] == "no_model"
    assert pd.isna(got["Prediction"].iloc[-1])
    assert got["Reason"].tolist()[:-1] == expected["Reason"].tolist()[:-1] and pd.isna(got["Reason"].iloc[-1])

    # the MLflow CLI of that env, with the local env manager: the serving input format
    (tmp_path / "serving.json").write_text(json.dumps({"dataframe_split": json.loads(readings.to_json(
        orient="split", index=False))}))
    done = subprocess.run([str(env / "bin" / "mlflow"), "models", "predict", "-m", str(model_dir), "-i",
                           str(tmp_path / "serving.json"), "-t", "json", "-o", str(tmp_path / "out.json"),
                           "--env-manager", "local"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    predictions = json.loads((tmp_path / "out.json").read_text())["predictions"]
    assert len(predictions) == len(readings)
    assert [p["Status"] for p in predictions][-1] == "no_model" and predictions[-1]["Prediction"] is None
    assert sys.executable != str(python)
