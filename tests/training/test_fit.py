"""Fast fitting learns exactly what scikit-learn's ``StandardScaler + OneClassSVM`` learns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from fleetscore.errors import ConfigError
from fleetscore.training.config import TrainingConfig
from fleetscore.training.features import compute_features, series_starts
from fleetscore.training.fit import SeriesModel, fit_shard
from tests.training.helpers import random_series

TOL = 1e-12


def _fleet(seed: int, models: int, rows: tuple[int, int] = (60, 400)) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.concat([random_series(rng, f"d{m // 3:03d}", f"s{m % 3}", int(rng.integers(*rows)))
                      for m in range(models)], ignore_index=True)


def _sklearn(x: np.ndarray, nu: float, gamma: float | str) -> Pipeline:
    return Pipeline([("scaler", StandardScaler()), ("svm", OneClassSVM(kernel="rbf", nu=nu, gamma=gamma))]).fit(x)


def _assert_same(bundle, i: int, expected: Pipeline, margin: float = 0.0) -> None:  # type: ignore[no-untyped-def]
    scaler, svm = expected.named_steps["scaler"], expected.named_steps["svm"]
    a, b = int(bundle.sv_offsets[i]), int(bundle.sv_offsets[i + 1])
    np.testing.assert_allclose(bundle.mean[i], scaler.mean_, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(bundle.var[i], scaler.var_, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(bundle.scale[i], scaler.scale_, rtol=TOL, atol=TOL)
    np.testing.assert_array_equal(bundle.support[a:b], svm.support_)
    np.testing.assert_allclose(bundle.support_vectors[a:b], svm.support_vectors_, rtol=0, atol=TOL)
    np.testing.assert_allclose(bundle.dual_coef[a:b], svm.dual_coef_.ravel(), rtol=0, atol=TOL)
    # the log form: log(sum) - log((1 - margin) * rho) < 0 exactly where sum - (1 - margin) * rho < 0
    np.testing.assert_allclose(bundle.intercept[i], -np.log(-svm.intercept_[0] * (1 - margin)), rtol=TOL, atol=TOL)
    assert bundle.gamma[i] == pytest.approx(svm._gamma, rel=TOL) and bundle.n_iter[i] == svm.n_iter_
    assert bundle.n_samples[i] == svm.shape_fit_[0]


@pytest.mark.parametrize(("nu", "gamma", "features"), [
    (0.02, 0.2, ("value", "spread")),
    (0.01, "scale", ("value", "spread", "delta")),
    (0.3, "auto", ("value", "rolling_std")),
    (0.005, 3.0, ("value",)),
])
def test_fit_shard_learns_what_sklearn_learns(nu: float, gamma: float | str, features: tuple[str, ...]) -> None:
    windows = _fleet(7, 24)
    config = TrainingConfig(features=features, nu=nu, gamma=gamma, offset_margin=0.0, min_rows=10, rolling_window=4,
                            target_false_alarm_rate=0.0)
    fit = fit_shard(windows, config)
    assert len(fit.bundle) == 24 and not fit.failed and not fit.skipped
    x = compute_features(windows, features, 4)
    starts = series_starts(windows)
    for i in range(24):
        a, b = int(starts[i]), int(starts[i + 1])
        assert fit.bundle.keys[i] == (windows["device"].iloc[a], windows["sensor"].iloc[a])
        _assert_same(fit.bundle, i, _sklearn(x[a:b], nu, gamma))


def test_offset_margin_moves_only_the_offset_and_the_rebuilt_model_scores_like_sklearn() -> None:
    windows = _fleet(11, 6)
    config = TrainingConfig(features=("value", "spread"), offset_margin=0.1, target_false_alarm_rate=0.0)
    fit = fit_shard(windows, config)
    x = compute_features(windows, ("value", "spread"))
    starts = series_starts(windows)
    for i, (device, sensor) in enumerate(fit.bundle.keys):
        a, b = int(starts[i]), int(starts[i + 1])
        expected = _sklearn(x[a:b], config.nu, config.gamma)
        _assert_same(fit.bundle, i, expected, margin=0.1)
        rho = float(expected.named_steps["svm"].offset_[0])
        rebuilt = fit.bundle.to_sklearn(device, sensor)
        np.testing.assert_allclose(rebuilt.decision_function(x[a:b]), expected.decision_function(x[a:b]) + 0.1 * rho,
                                   rtol=0, atol=1e-12)
        # the bundle's own (log-form) scores have the sign of the rebuilt model's decision function
        from fleetscore.training.kernel import decision_function
        ours = decision_function(fit.bundle, x[a:b], np.full(b - a, i))
        np.testing.assert_array_equal(ours < 0, rebuilt.decision_function(x[a:b]) < 0)
        flagged = fit.bundle.manifest["series"][i]["metrics"]["train_flag_rate"]
        assert flagged == pytest.approx(float((rebuilt.decision_function(x[a:b]) < 0).mean()))


def test_series_model_is_the_sklearn_pipeline() -> None:
    x = compute_features(_fleet(3, 1), ("value", "spread"))
    model = SeriesModel(nu=0.05, gamma=0.5)
    assert model.fit(x) is model and model.get_params() == {"nu": 0.05, "gamma": 0.5, "offset_margin": 0.0}
    expected = _sklearn(x, 0.05, 0.5)
    np.testing.assert_allclose(model.decision_function(x), expected.decision_function(x), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(model.predict(x), expected.predict(x))
    assert model.n_support_ == len(expected.named_steps["svm"].support_) and model.fit_status_ == 0


def test_a_series_with_nan_features_fails_alone() -> None:
    windows = _fleet(5, 3)
    bad = windows.index[windows["sensor"] == "s1"][4]
    windows.loc[bad, "value"] = np.nan
    fit = fit_shard(windows, TrainingConfig())
    assert fit.bundle.keys == [("d000", "s0"), ("d000", "s2")]
    assert fit.failed == {("d000", "s1"): "ValueError: a feature is NaN or infinite in the training windows"}


def test_a_constant_feature_is_scaled_by_one_like_sklearn() -> None:
    windows = _fleet(9, 2)
    windows["value_min"] = windows["value_max"] = windows["value"]  # spread is 0 everywhere
    config = TrainingConfig(features=("value", "spread"), offset_margin=0.0, target_false_alarm_rate=0.0)
    fit = fit_shard(windows, config)
    x = compute_features(windows, ("value", "spread"))
    starts = series_starts(windows)
    for i in range(2):
        _assert_same(fit.bundle, i, _sklearn(x[starts[i]:starts[i + 1]], config.nu, config.gamma))
    assert (fit.bundle.scale[:, 1] == 1.0).all()


@pytest.mark.parametrize(("change", "message"), [
    ({"offset_margin": 1.0}, "training.offset_margin: must be in [0, 1), got 1.0"),
    ({"nu": 0.0}, "training.nu: must be in (0, 1], got 0.0"),
    ({"gamma": "wide"}, "training.gamma: expected a number, 'scale' or 'auto', got 'wide'"),
    ({"gamma": -1.0}, "training.gamma: must be positive, got -1.0"),
])
def test_bad_hyperparameters_name_the_setting(change: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        fit_shard(_fleet(1, 1), TrainingConfig(**change))  # type: ignore[arg-type]
    assert str(info.value) == message
