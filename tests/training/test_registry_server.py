"""The registry adapter against a real ``mlflow server`` (HTTP, proxied artifacts) and the local SQLite store."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleetscore.errors import ReleaseNotFound
from fleetscore.training.bundle import ReleaseBundle
from tests.training.helpers import random_fleet

pytestmark = pytest.mark.slow


@pytest.fixture(params=["server", "sqlite"])
def tracking_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "server":
        return str(request.getfixturevalue("mlflow_server_uri"))
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_register_resolve_alias_and_pyfunc(tracking_uri: str, tmp_path: Path) -> None:
    from fleetscore.training import registry

    name = f"fleet-{uuid.uuid4().hex[:8]}"
    bundle, pipelines, frames = random_fleet(seed=3, models=5, features=("value", "spread"), rolling_window=3)
    bundle.manifest["window_seconds"] = 5.0
    bundle.save(tmp_path / "bundle")
    with pytest.raises(ReleaseNotFound) as info:
        registry.resolve_release(tracking_uri, name, "champion", cache_dir=tmp_path / "cache")
    assert str(info.value) == f"model {name}: no alias 'champion' in the registry"

    version, run_id = registry.register_release(tracking_uri, name, tmp_path / "bundle", "r1", {"nu": 0.01},
                                                {"models": 5.0}, {"fleetscore.git_commit": "abc123"})
    assert version == 1 and run_id
    registry.move_alias(tracking_uri, name, "champion", version, "first release", user="tester")
    resolved = registry.resolve_release(tracking_uri, name, "champion", cache_dir=tmp_path / "cache")
    assert resolved.version == 1 and resolved.tags["fleetscore.git_commit"] == "abc123"
    loaded = ReleaseBundle.load(resolved.bundle_dir)
    np.testing.assert_array_equal(loaded.support_vectors, bundle.support_vectors)
    again = registry.resolve_release(tracking_uri, name, "1", cache_dir=tmp_path / "cache")
    assert again.bundle_dir == resolved.bundle_dir  # downloaded once

    history = registry.alias_history(tracking_uri, name)
    assert [(m.alias, m.from_version, m.to_version, m.user, m.reason) for m in history] == [
        ("champion", None, 1, "tester", "first release")]

    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    frame = frames[2]
    readings = pd.DataFrame({"TS": frame["ts"], "Device": frame["device"], "Sensor": frame["sensor"],
                             "Value": frame["value"]})
    unknown = readings.head(2).assign(Device="no-such-device")
    out_all = model.predict(pd.concat([readings, unknown], ignore_index=True))
    assert list(out_all.columns) == ["TS", "Device", "Sensor", "Value", "Score", "Prediction", "Reason", "Status"]
    tail = out_all.tail(2)
    assert tail["Prediction"].isna().all() and tail["Score"].isna().all() and tail["Reason"].isna().all()
    assert set(out_all["Reason"].head(len(readings))) <= {"value", "spread"}
    assert list(tail["Status"]) == ["no_model", "no_model"]
    out = out_all.head(len(readings))
    assert set(out["Status"]) == {"scored"}
    assert model.metadata.get_output_schema().input_names()[-4:] == ["Score", "Prediction", "Reason", "Status"]
    assert model.metadata.saved_input_example_info is not None
    # one reading per window: the window's spread is 0, its value the reading
    windows = frame.assign(value_min=frame["value"], value_max=frame["value"], value_count=1)
    from fleetscore.training.features import compute_features

    expected = pipelines[2].decision_function(compute_features(windows, ("value", "spread"), 3))
    np.testing.assert_allclose(out["Score"].to_numpy(), expected, rtol=0, atol=1e-9)
    assert (out["Prediction"].to_numpy(dtype=int) == (expected < 0)).all()

    run = registry.log_run(tracking_uri, "scoring", "run-1", {"a": 1}, {"rows": 10.0}, {"kind": "scoring"})
    assert len(run) == 32
