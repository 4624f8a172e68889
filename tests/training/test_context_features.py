"""Context features, the log-form score and per-series calibration (issue 11)."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from scipy.special import logsumexp

from fleetscore.training.config import TrainingConfig
from fleetscore.training.features import (
    BASELINE_GAP,
    FEATURES,
    compute_features,
    context_windows,
    d2,
)
from fleetscore.training.fit import fit_shard
from fleetscore.training.kernel import score_windows
from tests.training.helpers import random_series

CONTEXT = ("log_spread", "recent_mean", "residual_1", "residual_4", "residual_12")


def _noise_series(seed: int, n: int, device: str = "d", sensor: str = "s", level: float = 50.0,
                  sd: float = 1.0, per_window: int = 5) -> pd.DataFrame:
    """``n`` windows of ``per_window`` Gaussian readings each, aggregated like ingestion does."""
    rng = np.random.default_rng(seed)
    readings = level + sd * rng.standard_normal((n, per_window))
    return pd.DataFrame({
        "device": device, "sensor": sensor, "ts": pd.date_range("2024-01-01", periods=n, freq="5s"),
        "value": readings.mean(axis=1), "value_min": readings.min(axis=1), "value_max": readings.max(axis=1),
        "value_count": np.full(n, per_window, dtype=np.int64),
    })


def test_context_features_match_a_plain_loop() -> None:
    frame = random_series(np.random.default_rng(4), "d", "s", 140)
    x = compute_features(frame, CONTEXT, rolling_window=6)
    value = frame["value"].to_numpy()
    for i in range(len(frame)):
        n, spread = int(frame["value_count"][i]), frame["value_max"][i] - frame["value_min"][i]
        if n < 2:
            assert np.isnan(x[i, 0])
        else:
            assert x[i, 0] == pytest.approx(math.log(max(spread, 1e-6 * (1 + abs(value[i]))) / d2(np.array([n]))[0]))
        assert x[i, 1] == pytest.approx(value[max(0, i - 5):i + 1].mean())
        for j, span in ((2, 1), (3, 4), (4, 12)):
            first_lag = span + BASELINE_GAP
            if i < first_lag:
                assert np.isnan(x[i, j])
                continue
            base = [value[max(0, i - lag)] for lag in range(first_lag, first_lag + 48, 4)]
            assert x[i, j] == pytest.approx(value[max(0, i - span + 1):i + 1].mean() - np.median(base))


def test_recent_level_and_spread_match_a_plain_loop() -> None:
    frame = random_series(np.random.default_rng(5), "d", "s", 80)
    frame.loc[[10, 30, 31], "value_count"] = 1  # windows of one reading: unknown spread
    x = compute_features(frame, ("log_spread", "recent_level", "recent_spread"), rolling_window=6)
    value = frame["value"].to_numpy()
    for i in range(len(frame)):
        last = sorted(value[max(0, i - 5):i + 1])
        level = np.mean(last[1:-1]) if len(last) >= 5 else np.mean(last)
        assert x[i, 1] == pytest.approx(level)
        known = [v for v in x[max(0, i - 5):i + 1, 0] if not np.isnan(v)]
        assert x[i, 2] == pytest.approx(np.median(known)) if known else np.isnan(x[i, 2])


def test_one_spike_does_not_trail_in_the_recent_level() -> None:
    frame = _noise_series(9, 40)
    frame.loc[20, ["value", "value_min", "value_max"]] += 1000.0
    x = compute_features(frame, ("recent_mean", "recent_level"), rolling_window=12)
    assert (np.abs(x[20:32, 0] - 50) > 50).all()  # the plain mean carries the spike for 12 windows
    assert (np.abs(x[20:32, 1] - 50) < 1).all()


def test_recent_spread_sees_a_noise_rise_too_small_for_one_window() -> None:
    train = _noise_series(6, 720)
    test = _noise_series(7, 240)
    burst = _noise_series(8, 60, sd=2.0)  # twice the noise, same mean: 60 windows
    test.loc[120:179, ["value", "value_min", "value_max"]] = burst[["value", "value_min", "value_max"]].to_numpy()
    inside = np.zeros(len(test), dtype=bool)
    inside[126:180] = True  # once recent_spread's 6 windows are inside the burst
    found = {}
    for features in (("value", "log_spread"), ("value", "log_spread", "recent_spread")):  # 6 windows
        bundle = fit_shard(train, TrainingConfig(features=features, min_rows=50)).bundle
        flagged = score_windows(bundle, test)["prediction"].to_numpy() == 1
        found[features] = (flagged[inside].mean(), flagged[~inside & (np.arange(len(test)) < 120)].mean())
    one_window, recent = found[("value", "log_spread")], found[("value", "log_spread", "recent_spread")]
    assert recent[0] >= 0.7 and recent[0] > one_window[0] + 0.2, found
    assert recent[1] <= 0.05, found  # not at the price of false alarms before the burst


def test_d2_is_the_expected_range_of_normal_readings() -> None:
    rng = np.random.default_rng(0)
    for n in (2, 5, 12, 40):
        sample = rng.standard_normal((20000, n))
        assert d2(np.array([n]))[0] == pytest.approx(float(np.ptp(sample, axis=1).mean()), rel=0.02)
    assert np.isnan(d2(np.array([1]))[0])


def test_scoring_a_range_with_context_gives_the_training_values() -> None:
    frame = pd.concat([random_series(np.random.default_rng(s), f"d{s}", "s", 200) for s in range(3)],
                      ignore_index=True)
    need = context_windows(FEATURES, 6)
    full = compute_features(frame, FEATURES, 6)
    start = frame["ts"].min() + timedelta(seconds=5 * 120)
    late = frame[frame["ts"] >= start - timedelta(seconds=5 * need)].reset_index(drop=True)
    part = compute_features(late, FEATURES, 6)
    keep_full = (frame["ts"] >= start).to_numpy()
    keep_part = (late["ts"] >= start).to_numpy()
    np.testing.assert_array_equal(part[keep_part], full[keep_full])


def test_a_window_of_one_reading_is_unknown_not_stuck() -> None:
    train = _noise_series(1, 600)
    bundle = fit_shard(train, TrainingConfig(min_rows=50)).bundle
    test = _noise_series(2, 120)
    lonely = test.index[60]
    test.loc[lonely, ["value_min", "value_max"]] = test.loc[lonely, "value"]
    test.loc[lonely, "value_count"] = 1
    stuck = test.index[90]
    test.loc[stuck, ["value_min", "value_max"]] = test.loc[stuck, "value"]  # 5 readings, no spread
    scored = score_windows(bundle, test)
    assert scored.loc[lonely, "prediction"] == 0 and scored.loc[stuck, "prediction"] == 1


def test_log_form_keeps_ranking_far_out_windows() -> None:
    train = _noise_series(3, 400)
    bundle = fit_shard(train, TrainingConfig(features=("value", "log_spread"), min_rows=50)).bundle
    assert bundle.score_form == "log"
    test = pd.concat([_noise_series(4, 8)] * 1, ignore_index=True)
    shifts = np.array([0.0, 5, 20, 80, 300, 1e3, 1e5, 1e8])
    for c in ("value", "value_min", "value_max"):
        test[c] = test[c] + shifts
    score = score_windows(bundle, test)["score"].to_numpy()
    assert np.isfinite(score).all()
    assert (np.diff(score) < 0).all()  # each window further out scores lower: no floor
    # the exact value against a logsumexp of scikit-learn's kernel terms
    model = bundle.to_sklearn("d", "s")
    z = model.named_steps["scaler"].transform(compute_features(test, bundle.features, bundle.rolling_window))
    svm = model.named_steps["svm"]
    terms = np.log(svm.dual_coef_.ravel())[None, :] - svm._gamma * (
        (z[:, None, :] - svm.support_vectors_[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_allclose(score, logsumexp(terms, axis=1) + bundle.intercept[0], rtol=1e-9, atol=1e-9)
    # the rebuilt scikit-learn model predicts what the bundle predicts
    np.testing.assert_array_equal(svm.predict(z) == -1, score < 0)


@pytest.mark.parametrize("target", [0.005, 0.02])
def test_calibration_reaches_its_target_on_normal_data(target: float) -> None:
    series = [_noise_series(10 + s, 1440, device=f"d{s:02d}", level=float(s), sd=0.5 + s / 10) for s in range(12)]
    train = pd.concat(series, ignore_index=True)
    fit = fit_shard(train, TrainingConfig(target_false_alarm_rate=target))
    assert len(fit.bundle) == 12
    for record in fit.bundle.manifest["series"]:
        calibration = record["metrics"]["calibration"]
        assert calibration["target"] == target and calibration["windows"] == 1440
        assert abs(calibration["reached"] - target) <= 1.5 / 720 + 1e-12  # a quantile of 720 scores per fold
    # fresh normal data from the same series: the rate reached is near the target, fleet-wide
    fresh = pd.concat([_noise_series(100 + s, 1440, device=f"d{s:02d}", level=float(s), sd=0.5 + s / 10)
                       for s in range(12)], ignore_index=True)
    rate = float(score_windows(fit.bundle, fresh)["prediction"].mean())
    assert target / 3 <= rate <= target * 2.5, rate
