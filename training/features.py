"""Per-window features of a (device, sensor) series, computed for a whole fleet at once.

Input is the windows shape of ``ingestion.store.SensorStore.read_windows`` (sorted by device, sensor,
ts). Every feature of a row depends only on that row and the ``context_windows(...)`` rows before it in
the same series, so that scoring a range with that many context windows in front gives exactly the
values training saw. Features:

- ``value``: the window mean (the reference implementation's only feature);
- ``spread``: ``value_max - value_min`` (0 for windows of one reading); a stuck sensor has none;
- ``rolling_std``: population std of ``value`` over the last ``rolling_window`` rows, current included
  (fewer at the start of a series);
- ``delta``: ``value`` minus the previous row's value (0 on a series' first row).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from fleetscore.errors import ConfigError
from fleetscore.ingestion.series_metrics import series_starts

__all__ = ["FEATURES", "check_features", "compute_features", "context_windows", "series_starts"]

FEATURES: tuple[str, ...] = ("value", "spread", "rolling_std", "delta")


def check_features(features: Sequence[str], rolling_window: int) -> None:
    """Raise :class:`ConfigError` for an unknown feature name, an empty set or a bad window length."""
    if not features:
        raise ConfigError("training.features: at least one feature is needed")
    for name in features:
        if name not in FEATURES:
            raise ConfigError(f"training.features: unknown feature {name!r}; known: {', '.join(FEATURES)}")
    if len(set(features)) != len(features):
        raise ConfigError(f"training.features: a feature is listed twice in {list(features)}")
    if rolling_window < 2:
        raise ConfigError(f"training.rolling_window: must be at least 2, got {rolling_window}")


def context_windows(features: Sequence[str], rolling_window: int) -> int:
    """How many windows before a row its features read (0 when only per-window features are used)."""
    need = 0
    if "rolling_std" in features:
        need = max(need, rolling_window - 1)
    if "delta" in features:
        need = max(need, 1)
    return need


def compute_features(
    windows: pd.DataFrame,
    features: Sequence[str],
    rolling_window: int = 6,
    starts: np.ndarray | None = None,
) -> np.ndarray:
    """The ``(len(windows), len(features))`` float64 feature matrix, columns in ``features`` order.

    ``starts`` (from :func:`series_starts`) may be passed when the caller already has it.
    """
    check_features(features, rolling_window)
    n = len(windows)
    if starts is None:
        starts = series_starts(windows)
    value = windows["value"].to_numpy(dtype=np.float64)
    # position of each row inside its series
    lengths = np.diff(starts)
    pos = np.arange(n, dtype=np.int64) - np.repeat(starts[:-1], lengths)
    out = np.empty((n, len(features)), dtype=np.float64, order="F")  # each feature contiguous
    for j, name in enumerate(features):
        if name == "value":
            out[:, j] = value
        elif name == "spread":
            out[:, j] = windows["value_max"].to_numpy(dtype=np.float64) - windows["value_min"].to_numpy(
                dtype=np.float64
            )
        elif name == "rolling_std":
            out[:, j] = _rolling_std(value, pos, rolling_window)
        elif name == "delta":
            delta = np.zeros(n, dtype=np.float64)
            if n > 1:
                delta[1:] = value[1:] - value[:-1]
            delta[pos == 0] = 0.0
            out[:, j] = delta
    return out


def _lagged(value: np.ndarray, lag: int) -> np.ndarray:
    if lag == 0:
        return value
    shifted = np.empty_like(value)
    shifted[:lag] = 0.0
    shifted[lag:] = value[:-lag]
    return shifted


def _rolling_std(value: np.ndarray, pos: np.ndarray, k: int) -> np.ndarray:
    """Two-pass population std over the last ``k`` rows of the same series (exact, order-fixed)."""
    count = np.minimum(pos + 1, k).astype(np.float64)
    total = np.zeros_like(value)
    for lag in range(k):
        total += np.where(pos >= lag, _lagged(value, lag), 0.0)
    mean = total / count
    squares = np.zeros_like(value)
    for lag in range(k):
        dev = np.where(pos >= lag, _lagged(value, lag) - mean, 0.0)
        squares += dev * dev
    return np.sqrt(squares / count)
