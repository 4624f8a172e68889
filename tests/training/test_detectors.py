"""Detector families: the registry, bundles of format 1, and the robust family against a plain loop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleetscore.errors import ConfigError, TrainingError
from fleetscore.training.bundle import ReleaseBundle
from fleetscore.training.config import TrainingConfig
from fleetscore.training.detectors import DETECTORS, get_detector
from fleetscore.training.evaluation import run_gate
from fleetscore.training.features import compute_features
from fleetscore.training.fit import fit_shard
from fleetscore.training.kernel import score_windows
from tests.training.helpers import random_fleet, random_series

FEATURES = ("value", "spread")


def _windows(seed: int, series: int, rows: tuple[int, int] = (60, 160)) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = [random_series(rng, f"dev-{m:03d}", f"s{m % 2}", int(rng.integers(*rows))) for m in range(series)]
    return pd.concat(frames, ignore_index=True).sort_values(["device", "sensor", "ts"], ignore_index=True)


def test_registry_names_each_family_and_rejects_unknown_ones() -> None:
    assert set(DETECTORS) == {"ocsvm", "robust", "device"}
    assert TrainingConfig().detector == "ocsvm"
    for name, family in DETECTORS.items():
        assert family.name == name and family.version >= 1
    with pytest.raises(ConfigError, match=r"training\.detector: unknown detector .svm."):
        get_detector("svm")


def test_bundle_records_family_and_format(tmp_path: Path) -> None:
    bundle, _, _ = random_fleet(seed=3, models=5, features=FEATURES)
    bundle.save(tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert (manifest["format"], manifest["detector"], manifest["detector_version"]) == (2, "ocsvm", 1)
    robust = fit_shard(_windows(1, 4), TrainingConfig(detector="robust", min_rows=10)).bundle
    robust.save(tmp_path / "r")
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert (manifest["format"], manifest["detector"], manifest["detector_version"]) == (2, "robust", 1)
    assert ReleaseBundle.load(tmp_path / "r").detector == "robust"


def test_a_format_1_bundle_loads_as_ocsvm_and_scores_the_same(tmp_path: Path) -> None:
    bundle, pipelines, frames = random_fleet(seed=5, models=12, features=FEATURES, rolling_window=3)
    bundle.save(tmp_path / "v1")
    # what the format-1 writer produced: the same arrays, a manifest without the family fields
    path = tmp_path / "v1" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["detector"], manifest["detector_version"]
    manifest["format"] = 1
    path.write_text(json.dumps(manifest))

    loaded = ReleaseBundle.load(tmp_path / "v1")
    assert loaded.detector == "ocsvm"
    windows = pd.concat(frames, ignore_index=True)
    got = score_windows(loaded, windows)
    np.testing.assert_array_equal(got["score"].to_numpy(), score_windows(bundle, windows)["score"].to_numpy())
    feats = compute_features(windows, FEATURES, 3)
    offsets = np.cumsum([0] + [len(f) for f in frames])
    expected = np.concatenate([p.decision_function(feats[offsets[m]:offsets[m + 1]]) for m, p in enumerate(pipelines)])
    np.testing.assert_allclose(got["score"].to_numpy(), expected, rtol=1e-9, atol=1e-9)


def test_unknown_family_in_a_manifest_is_an_error(tmp_path: Path) -> None:
    bundle, _, _ = random_fleet(seed=5, models=2, features=FEATURES)
    bundle.save(tmp_path / "b")
    path = tmp_path / "b" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "detector": "nope"}))
    with pytest.raises(Exception, match="unknown detector 'nope'"):
        ReleaseBundle.load(tmp_path / "b")


def test_robust_family_matches_a_per_series_numpy_loop() -> None:
    windows = _windows(7, 9)
    # dev-001 has a constant spread (MAD 0: the fallback scale)
    config = TrainingConfig(detector="robust", features=FEATURES, rolling_window=3, min_rows=10, robust_threshold=4.0)
    windows.loc[windows["device"] == "dev-001", "value_min"] = windows["value"]
    windows.loc[windows["device"] == "dev-001", "value_max"] = windows["value"]
    fit = fit_shard(windows, config)
    bundle = fit.bundle
    assert bundle.detector == "robust" and len(bundle) == 9 and not fit.failed
    feats = compute_features(windows, FEATURES, 3)
    scores = score_windows(bundle, windows)
    for i, ((device, sensor), part) in enumerate(windows.groupby(["device", "sensor"], sort=True)):
        assert bundle.keys[i] == (device, sensor)
        x = feats[part.index.to_numpy()]
        median = np.array([np.median(x[:, f]) for f in range(x.shape[1])])
        scale = np.array([1.4826 * np.median(np.abs(x[:, f] - median[f])) for f in range(x.shape[1])])
        for f in range(x.shape[1]):
            if scale[f] == 0:
                scale[f] = x[:, f].std() or 1e-9 * max(1.0, abs(median[f]))
        np.testing.assert_allclose(bundle.mean[i], median, rtol=1e-12)
        np.testing.assert_allclose(bundle.scale[i], scale, rtol=1e-12)
        worst = np.array([max(abs(row[f] - median[f]) / scale[f] for f in range(len(row))) for row in x])
        got = scores.loc[part.index]
        np.testing.assert_allclose(got["score"].to_numpy(), 4.0 - worst, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(got["prediction"].to_numpy(), (worst > 4.0).astype(np.int8))
        rate = bundle.series_manifest(device, sensor)["metrics"]["train_flag_rate"]
        assert rate == pytest.approx(float((worst > 4.0).mean()))


def test_robust_flags_a_spike_and_not_the_normal_windows() -> None:
    windows = _windows(9, 3, rows=(200, 201))
    config = TrainingConfig(detector="robust", min_rows=10)
    bundle = fit_shard(windows, config).bundle
    test = windows.copy()
    spike = test.index[test["device"] == "dev-001"][150]
    test.loc[spike, ["value", "value_min", "value_max"]] += 1e3
    got = score_windows(bundle, test)
    assert got.loc[spike, "prediction"] == 1 and got.loc[spike, "score"] < -10
    # recent_mean carries the spike for rolling_window - 1 windows after it
    assert got["prediction"].drop(index=range(spike, spike + config.rolling_window)).mean() <= 0.01


def test_the_gate_refuses_to_mix_families_without_force() -> None:
    windows = _windows(11, 3, rows=(120, 121))
    ocsvm = fit_shard(windows, TrainingConfig(min_rows=10)).bundle
    robust = fit_shard(windows, TrainingConfig(detector="robust", min_rows=10)).bundle
    with pytest.raises(TrainingError, match="uses detector 'ocsvm', the challenger 'robust'"):
        run_gate(robust, ocsvm, windows, TrainingConfig(detector="robust"), champion_version=1)
    forced = run_gate(robust, ocsvm, windows, TrainingConfig(detector="robust"), champion_version=1, force=True)
    assert forced.bundle.detector == "robust" and len(forced.bundle) == 3
