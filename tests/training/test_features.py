"""Window features against an independent pandas computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fleetscore.errors import ConfigError
from fleetscore.training.features import check_features, compute_features, context_windows
from tests.training.helpers import random_series


@pytest.fixture()
def windows() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.concat([random_series(rng, d, s, n) for d, s, n in [("a", "1", 9), ("a", "2", 2), ("b", "1", 15)]],
                     ignore_index=True)


def test_features_match_pandas_groupby(windows: pd.DataFrame) -> None:
    x = compute_features(windows, ("value", "spread", "rolling_std", "delta"), rolling_window=4)
    groups = windows.groupby(["device", "sensor"], sort=False)["value"]
    np.testing.assert_array_equal(x[:, 0], windows["value"])
    np.testing.assert_allclose(x[:, 1], windows["value_max"] - windows["value_min"])
    expected_std = groups.transform(lambda v: v.rolling(4, min_periods=1).std(ddof=0))
    np.testing.assert_allclose(x[:, 2], expected_std, atol=1e-12)
    np.testing.assert_allclose(x[:, 3], groups.diff().fillna(0.0), atol=1e-12)


def test_stuck_values_have_zero_rolling_std_after_the_window_fills() -> None:
    frame = random_series(np.random.default_rng(0), "d", "s", 12)
    frame.loc[5:, ["value", "value_min", "value_max"]] = frame.loc[4, "value"]  # stuck from row 5 on
    x = compute_features(frame, ("spread", "rolling_std"), rolling_window=3)
    assert (x[5:, 0] == 0).all()
    assert (x[4:, 1][2:] == 0).all() and x[5, 1] > 0  # row 5's window still holds a moving value


def test_context_windows() -> None:
    assert context_windows(("value", "spread"), 6) == 0
    assert context_windows(("value", "delta"), 6) == 1
    assert context_windows(("rolling_std", "delta"), 6) == 5


@pytest.mark.parametrize(("features", "window", "message"), [
    ((), 6, "training.features: at least one feature is needed"),
    (("value", "peak"), 6,
     "training.features: unknown feature 'peak'; known: value, spread, rolling_std, delta, log_spread, "
     "recent_mean, recent_level, recent_spread, residual_1, residual_4, residual_12"),
    (("value", "value"), 6, "training.features: a feature is listed twice in ['value', 'value']"),
    (("rolling_std",), 1, "training.rolling_window: must be at least 2, got 1"),
])
def test_bad_feature_settings(features: tuple[str, ...], window: int, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_features(features, window)
    assert str(info.value) == message
