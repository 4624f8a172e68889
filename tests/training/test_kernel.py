"""The vectorised kernel gives scikit-learn's decision values on thousands of random models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from fleetscore.training.bundle import ReleaseBundle
from fleetscore.training.features import compute_features
from fleetscore.training.kernel import decision_function, kernel_evaluations, missing_series, score_windows
from tests.training.helpers import random_fleet, random_series

FEATURES = ("value", "spread", "rolling_std", "delta")


@pytest.fixture(scope="module")
def fleet():  # type: ignore[no-untyped-def]
    return random_fleet(seed=7, models=2000, features=FEATURES, rolling_window=4)


def test_decision_values_match_sklearn_on_2000_random_models(fleet) -> None:  # type: ignore[no-untyped-def]
    bundle, pipelines, frames = fleet
    assert bundle.n_support.min() <= 3 and bundle.n_support.max() >= 100  # varied SV counts
    windows = pd.concat(frames, ignore_index=True)
    out = score_windows(bundle, windows)
    assert len(out) == len(windows)
    assert list(out.columns) == ["device", "sensor", "ts", "value", "score", "prediction", "reason"]
    assert out["score"].dtype == np.float64 and out["prediction"].dtype == np.int8
    offsets = np.cumsum([0] + [len(f) for f in frames])
    x_all = compute_features(windows, FEATURES, 4)
    worst = 0.0
    flips = 0
    for i, pipe in enumerate(pipelines):
        x = x_all[offsets[i]:offsets[i + 1]]
        expected = pipe.decision_function(x)
        got = out["score"].to_numpy()[offsets[i]:offsets[i + 1]]
        tol = 1e-9 * max(1.0, abs(float(pipe.steps[-1][1].intercept_[0])))
        worst = max(worst, float(np.abs(got - expected).max()) / tol)
        labels = (expected < 0).astype(np.int8)  # OneClassSVM.predict: -1 where decision_function < 0
        away = np.abs(expected) > tol
        flips += int((out["prediction"].to_numpy()[offsets[i]:offsets[i + 1]][away] != labels[away]).sum())
    assert worst <= 1.0
    assert flips == 0


def test_start_with_context_windows_scores_like_the_full_series(fleet) -> None:  # type: ignore[no-untyped-def]
    bundle, _, frames = fleet
    full = pd.concat(frames[:50], ignore_index=True)
    scored_full = score_windows(bundle, full)
    start = pd.Timestamp("2024-01-01 00:01:00")  # row 12 of every series
    ctx = bundle.context_windows
    assert ctx == 3
    sliced = pd.concat([f[f["ts"] >= start - pd.Timedelta(seconds=5 * ctx)] for f in frames[:50]], ignore_index=True)
    scored = score_windows(bundle, sliced, start=start.to_pydatetime())
    assert scored["ts"].min() == start
    expected = scored_full[scored_full["ts"] >= start].reset_index(drop=True)
    pd.testing.assert_frame_equal(scored, expected, check_exact=False, rtol=0, atol=1e-9)


@pytest.mark.parametrize("start", [None, pd.Timestamp("2024-01-01 00:00:50")])
def test_a_fleet_of_equal_length_series_matches_sklearn(fleet, start) -> None:  # type: ignore[no-untyped-def]
    """The usual scheduled window: every series has the same windows (the kernel copies whole runs)."""
    bundle, pipelines, frames = fleet
    models = range(0, 600, 2)
    equal = [frames[i].iloc[:20].reset_index(drop=True) for i in models]
    windows = pd.concat(equal, ignore_index=True)
    out = score_windows(bundle, windows, start=None if start is None else start.to_pydatetime())
    kept = 20 if start is None else 10  # rows 10-19 of every series are at or after the start
    assert len(out) == kept * len(equal)
    for k, i in enumerate(models):
        expected = pipelines[i].decision_function(compute_features(equal[k], FEATURES, 4))[20 - kept:]
        tol = 1e-9 * max(1.0, abs(float(pipelines[i].steps[-1][1].intercept_[0])))
        np.testing.assert_allclose(out["score"].to_numpy()[k * kept:(k + 1) * kept], expected, rtol=0, atol=tol)


def test_decision_function_takes_row_or_column_major_features(fleet) -> None:  # type: ignore[no-untyped-def]
    bundle, pipelines, frames = fleet
    x = compute_features(frames[3], FEATURES, 4)
    owner = np.full(len(x), 3)
    expected = pipelines[3].decision_function(x)
    for layout in (np.asfortranarray(x), np.ascontiguousarray(x)):
        np.testing.assert_allclose(decision_function(bundle, layout, owner), expected, rtol=0, atol=1e-9)


def test_series_without_a_model_are_reported_not_scored(fleet) -> None:  # type: ignore[no-untyped-def]
    bundle, _, frames = fleet
    stranger = random_series(np.random.default_rng(1), "dev-new", "s9", 30)
    windows = pd.concat([frames[0], stranger, frames[1]], ignore_index=True)
    out = score_windows(bundle, windows)
    assert missing_series(bundle, windows) == [("dev-new", "s9")]
    assert set(zip(out["device"], out["sensor"], strict=True)) == {bundle.keys[0], bundle.keys[1]}
    assert len(out) == len(frames[0]) + len(frames[1])


def test_kernel_evaluations_counts_rows_times_support_vectors(fleet) -> None:  # type: ignore[no-untyped-def]
    bundle, _, frames = fleet
    windows = pd.concat(frames[:10], ignore_index=True)
    expected = sum(len(f) * int(bundle.n_support[i]) for i, f in enumerate(frames[:10]))
    assert kernel_evaluations(bundle, windows) == expected


def test_empty_windows_give_an_empty_frame(fleet) -> None:  # type: ignore[no-untyped-def]
    bundle, _, frames = fleet
    out = score_windows(bundle, frames[0].iloc[0:0])
    assert len(out) == 0 and list(out.columns) == ["device", "sensor", "ts", "value", "score", "prediction",
                                                   "reason"]


def test_reason_names_the_feature_that_moved() -> None:
    """A window whose mean jumps is explained by ``value``; one whose readings spread wide, with the same
    mean, by ``spread``; a NaN feature (one reading: unknown) is never the reason."""
    rng = np.random.default_rng(5)
    features = ("value", "spread")
    frames = [random_series(rng, f"dev-{m}", "temp", 150) for m in range(3)]
    pipelines = [Pipeline([("scaler", StandardScaler()), ("svm", OneClassSVM(nu=0.05, gamma=0.3))])
                 .fit(compute_features(f, features)) for f in frames]
    bundle = ReleaseBundle.from_sklearn([("dev-0", "temp"), ("dev-1", "temp"), ("dev-2", "temp")], pipelines,
                                        features, 4)
    windows = pd.concat(frames, ignore_index=True)
    jump, wide = 40, 150 + 60  # a row of dev-0 and one of dev-1
    width = float(windows["value_max"].max() - windows["value_min"].min())
    for column in ("value", "value_min", "value_max"):
        windows.loc[jump, column] += 50 * width
    windows.loc[wide, "value_min"] -= 50 * width
    windows.loc[wide, "value_max"] += 50 * width
    out = score_windows(bundle, windows)
    assert out.loc[jump, "prediction"] == 1 and out.loc[jump, "reason"] == "value"
    assert out.loc[wide, "prediction"] == 1 and out.loc[wide, "reason"] == "spread"
    assert set(out["reason"]) <= set(features) and out["reason"].notna().all()


def test_series_of_very_different_scales_in_one_bundle_match_sklearn_far_out() -> None:
    """The padding bug: a padded slot of a block reused another model's support vector (coefficient 0); for
    a series whose scale differs a lot from that model's the exponent passed 709, exp gave inf, 0 * inf =
    NaN, and the window was written as normal. Scales 1e-3 .. 1e3 in one bundle, windows far outside."""
    rng = np.random.default_rng(11)
    scales = 10.0 ** np.arange(-3, 4)  # 1e-3 .. 1e3
    features = ("value", "spread")
    keys, pipelines, train, test = [], [], [], []
    for m, scale in enumerate(np.repeat(scales, 3)):
        frame = random_series(rng, f"dev-{m:02d}", "flow" if m % 2 else "pressure", 120)
        for column in ("value", "value_min", "value_max"):
            frame[column] = frame[column] * scale
        x = compute_features(frame, features)
        nu = 0.02 if m % 3 == 0 else 0.3  # different support-vector counts: padded slots in a block
        pipe = Pipeline([("scaler", StandardScaler()), ("svm", OneClassSVM(nu=nu, gamma=0.2))]).fit(x)
        keys.append((frame["device"].iloc[0], frame["sensor"].iloc[0]))
        pipelines.append(pipe)
        train.append(frame)
        # far-out windows: the last 40 rows moved by 5 .. 1e4 times the series' own range
        far = frame.iloc[:60].copy()
        width = float(frame["value_max"].max() - frame["value_min"].min())
        shift = np.concatenate([np.zeros(20), width * np.geomspace(5, 1e4, 40) * np.where(np.arange(40) % 2, 1, -1)])
        for column in ("value", "value_min", "value_max"):
            far[column] = far[column] + shift
        test.append(far)
    bundle = ReleaseBundle.from_sklearn(keys, pipelines, features, 6)
    assert len(set(bundle.n_support.tolist())) > 1
    windows = pd.concat(test, ignore_index=True)
    out = score_windows(bundle, windows)
    scores = out["score"].to_numpy()
    assert np.isfinite(scores).all()
    for m, pipe in enumerate(pipelines):
        expected = pipe.decision_function(compute_features(test[m], features))
        got = scores[60 * m:60 * (m + 1)]
        tol = 1e-9 * max(1.0, abs(float(pipe.steps[-1][1].intercept_[0])))
        np.testing.assert_allclose(got, expected, rtol=0, atol=tol, err_msg=f"model {m} (scale {keys[m]})")
        # every far-out window (sklearn: at about -intercept) is flagged
        assert (out["prediction"].to_numpy()[60 * m + 20:60 * (m + 1)] == 1).all()


def test_a_nan_score_is_never_written_as_normal() -> None:
    from fleetscore.training.kernel import predictions

    labels = predictions(np.array([0.5, -0.1, np.nan, 0.0, -np.inf]))
    assert labels.tolist() == [0, 1, 1, 0, 1]
    assert labels.dtype == np.int8


def test_huge_finite_values_give_finite_flagged_scores(fleet) -> None:  # type: ignore[no-untyped-def]
    """|z|^2 overflows for a value near the float64 limit: the score stays finite and the window flagged."""
    bundle, _, frames = fleet
    windows = pd.concat(frames[:30], ignore_index=True)
    huge = windows.index[windows["ts"] == windows["ts"].max()]
    for column in ("value", "value_min", "value_max"):
        windows.loc[huge, column] = 1e300
    out = score_windows(bundle, windows)
    assert np.isfinite(out["score"]).all()
    assert (out["prediction"].to_numpy()[huge] == 1).all()
