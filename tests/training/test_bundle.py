"""The bundle round-trips through files without pickle and rebuilds the exact scikit-learn models."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fleetscore.errors import RegistryError
from fleetscore.training.bundle import ReleaseBundle
from fleetscore.training.features import compute_features
from tests.training.helpers import random_fleet

FEATURES = ("value", "spread")


@pytest.fixture(scope="module")
def fleet():  # type: ignore[no-untyped-def]
    return random_fleet(seed=11, models=40, features=FEATURES, rolling_window=3)


def test_save_load_round_trip_without_pickle(fleet, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bundle, _, _ = fleet
    bundle.save(tmp_path / "release")
    assert sorted(p.name for p in (tmp_path / "release").iterdir()) == ["bundle.npz", "manifest.json"]
    with zipfile.ZipFile(tmp_path / "release" / "bundle.npz") as archive:
        for name in archive.namelist():  # every array is a plain dtype: no object (pickled) arrays
            with archive.open(name) as member:
                header = member.read(256).decode("latin1")
            assert "'descr': '|O'" not in header, name
    loaded = ReleaseBundle.load(tmp_path / "release")
    assert loaded.keys == bundle.keys
    assert loaded.features == FEATURES and loaded.rolling_window == 3
    for name in ("mean", "scale", "var", "sv_offsets", "support_vectors", "dual_coef", "intercept", "gamma", "nu"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(bundle, name))
    manifest = json.loads((tmp_path / "release" / "manifest.json").read_text())
    assert manifest["models"] == 40 and manifest["features"] == list(FEATURES) and manifest["version"] == 1


def test_to_sklearn_rebuilds_the_exact_models(fleet, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bundle, pipelines, frames = fleet
    bundle.save(tmp_path / "b")
    loaded = ReleaseBundle.load(tmp_path / "b")
    for i in (0, 17, 39):
        device, sensor = bundle.keys[i]
        rebuilt = loaded.to_sklearn(device, sensor)
        x = compute_features(frames[i], FEATURES, 3)
        np.testing.assert_array_equal(rebuilt.decision_function(x), pipelines[i].decision_function(x))
        np.testing.assert_array_equal(rebuilt.predict(x), pipelines[i].predict(x))
        np.testing.assert_array_equal(rebuilt.score_samples(x), pipelines[i].score_samples(x))


def test_subset_and_concat_keep_models_and_records(fleet) -> None:  # type: ignore[no-untyped-def]
    bundle, _, frames = fleet
    first, rest = bundle.subset([5, 2]), bundle.subset([0, 1])
    joined = ReleaseBundle.concat([first, rest])
    assert joined.keys == [bundle.keys[5], bundle.keys[2], bundle.keys[0], bundle.keys[1]]
    assert [r["device"] for r in joined.manifest["series"]] == [k[0] for k in joined.keys]
    x = compute_features(frames[2], FEATURES, 3)
    np.testing.assert_array_equal(joined.to_sklearn(*bundle.keys[2]).decision_function(x),
                                  bundle.to_sklearn(*bundle.keys[2]).decision_function(x))
    with pytest.raises(RegistryError, match="appears twice"):
        ReleaseBundle.concat([first, first])


def test_load_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as info:
        ReleaseBundle.load(tmp_path / "nothing")
    assert str(info.value) == f"{tmp_path / 'nothing'}: not a release bundle (missing manifest.json)"


def test_unknown_series_is_a_key_error(fleet) -> None:  # type: ignore[no-untyped-def]
    bundle, _, _ = fleet
    with pytest.raises(KeyError):
        bundle.to_sklearn("nope", "x")
