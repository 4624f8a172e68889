"""Per-window features of a (device, sensor) series, computed for a whole fleet at once.

Input is the windows shape of ``ingestion.store.SensorStore.read_windows`` (sorted by device, sensor,
ts). Every feature of a row depends only on that row and the ``context_windows(...)`` rows before it in
the same series, so that scoring a range with that many context windows in front gives exactly the
values training saw. Features:

- ``value``: the window mean (the reference implementation's only feature);
- ``spread``: ``value_max - value_min`` (0 for windows of one reading); a stuck sensor has none;
- ``rolling_std``: population std of ``value`` over the last ``rolling_window`` rows, current included
  (fewer at the start of a series);
- ``delta``: ``value`` minus the previous row's value (0 on a series' first row);
- ``log_spread``: ``log((max - min) / d2(n))``, the spread on a log scale normalised for the window's
  number of readings ``n`` (``d2(n)``: the expected range of ``n`` standard normal readings), so a window
  of 3 readings and one of 6 compare. A window of one reading has no spread: the feature is unknown (NaN,
  read as the model's typical value), never "stuck". A spread of 0 (stuck) is floored at
  ``1e-6 x (1 + |value|)``, far below any noisy window;
- ``recent_mean``: the mean of ``value`` over the last ``rolling_window`` rows (current included);
- ``recent_level``: the mean of ``value`` over the last ``rolling_window`` rows (current included)
  without the highest and the lowest of them (when at least 5 are there): like ``recent_mean``, but one
  spike neither moves it nor trails after it;
- ``recent_spread``: the median of the known ``log_spread`` over the last ``rolling_window`` rows
  (current included; NaN when none is known): a noise change too small to see in one window's few
  readings shows in several, and a single wide or flat window does not move it;
- ``residual_1``, ``residual_4``, ``residual_12``: the mean of the last 1, 4 or 12 window means minus a
  baseline: the median of 12 window means sampled every 4th window over the 48 windows that end
  ``BASELINE_GAP`` (12) windows before those. The gap keeps the most recent windows, where an event in
  progress is, out of its own baseline, so an event of up to about a minute is not absorbed by it.

Unknown values are NaN: at the start of a series, before a baseline exists (the residuals), and for
windows of one reading (``log_spread``). Fitting and scoring read a NaN feature as the model's mean
(a z of 0): it neither raises nor hides a score.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from fleetscore.errors import ConfigError
from fleetscore.ingestion.series_metrics import series_starts

__all__ = ["FEATURES", "WINDOW_FEATURES", "check_features", "compute_features", "context_windows", "fill_unknown",
           "series_starts"]

FEATURES: tuple[str, ...] = ("value", "spread", "rolling_std", "delta", "log_spread", "recent_mean",
                              "recent_level", "recent_spread", "residual_1", "residual_4", "residual_12")
# features of one window alone; the others smooth over neighbouring windows, so their share per decile
# in a short scored span swings with autocorrelation and says nothing about drift
WINDOW_FEATURES: frozenset[str] = frozenset({"value", "spread", "delta", "log_spread"})
RESIDUAL_SPANS = {"residual_1": 1, "residual_4": 4, "residual_12": 12}
BASELINE_GAP = 12  # windows between the residual's recent windows and its baseline
BASELINE_WINDOWS = 48  # windows the baseline covers, sampled every BASELINE_STRIDE-th
BASELINE_STRIDE = 4
SPREAD_FLOOR = 1e-6
# expected range of n standard normal readings (d2 of control charts), n = 2 .. 20
_D2 = np.array([1.128, 1.693, 2.059, 2.326, 2.534, 2.704, 2.847, 2.970, 3.078, 3.173, 3.258, 3.336, 3.407,
                3.472, 3.532, 3.588, 3.640, 3.689, 3.735])


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
    if {"rolling_std", "recent_mean", "recent_level", "recent_spread"} & set(features):
        need = max(need, rolling_window - 1)
    for name, span in RESIDUAL_SPANS.items():
        if name in features:
            need = max(need, span + BASELINE_GAP + BASELINE_WINDOWS - BASELINE_STRIDE)
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
        elif name == "log_spread":
            out[:, j] = log_spread(windows)
        elif name == "recent_mean":
            out[:, j] = _rolling_mean(value, pos, rolling_window)
        elif name == "recent_level":
            out[:, j] = _rolling_order_stat(value, pos, rolling_window, "trimmed_mean")
        elif name == "recent_spread":
            out[:, j] = _rolling_order_stat(log_spread(windows), pos, rolling_window, "median")
        else:
            out[:, j] = _residual(value, pos, RESIDUAL_SPANS[name])
    return out


def fill_unknown(feats: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """``feats`` with each NaN replaced by its series' mean of that feature over the known rows (0 when
    none is known): what fitting reads for an unknown value (in place; returned)."""
    unknown = np.isnan(feats)
    if not unknown.any() or len(feats) == 0:
        return feats
    lengths = np.diff(starts)
    first = starts[:-1][lengths > 0]
    known = np.add.reduceat(~unknown, first, axis=0).astype(np.float64)
    total = np.add.reduceat(np.where(unknown, 0.0, feats), first, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(known > 0, total / np.maximum(known, 1.0), 0.0)
    feats[unknown] = np.repeat(mean, lengths[lengths > 0], axis=0)[unknown]
    return feats


def d2(count: np.ndarray) -> np.ndarray:
    """Expected range of ``count`` standard normal readings (NaN below 2; extrapolated on log n past 20)."""
    n = np.asarray(count, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        table = np.interp(n, np.arange(2, 21), _D2)
        tail = _D2[-1] + (np.log(n) - np.log(20.0)) * (_D2[-1] - _D2[-11]) / (np.log(20.0) - np.log(10.0))
    return np.where(n < 2, np.nan, np.where(n > 20, tail, table))


def log_spread(windows: pd.DataFrame) -> np.ndarray:
    """``log(max(max - min, floor) / d2(n))`` per window, NaN for windows of fewer than two readings."""
    value = windows["value"].to_numpy(dtype=np.float64)
    spread = windows["value_max"].to_numpy(dtype=np.float64) - windows["value_min"].to_numpy(dtype=np.float64)
    floor = SPREAD_FLOOR * (1.0 + np.abs(value))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        result: np.ndarray = np.log(np.maximum(spread, floor) / d2(windows["value_count"].to_numpy()))
    return result


def _rolling_mean(value: np.ndarray, pos: np.ndarray, k: int) -> np.ndarray:
    """Mean of the last ``k`` rows of the same series, current included (fewer at the start)."""
    count = np.minimum(pos + 1, k).astype(np.float64)
    total = np.zeros_like(value)
    for lag in range(k):
        total += np.where(pos >= lag, _lagged(value, lag), 0.0)
    result: np.ndarray = total / count
    return result


ROWS_PER_CHUNK = 1 << 18  # rows of the (rows, window) block sorted at once: about 25 MB at 12 windows


def _rolling_order_stat(value: np.ndarray, pos: np.ndarray, k: int, stat: str) -> np.ndarray:
    """Over the known (not NaN) values of the last ``k`` rows of the same series, current included:
    their ``median``, or their ``trimmed_mean`` (without the highest and the lowest when at least 5 are
    known); NaN when none is known. Sorted in blocks of ``ROWS_PER_CHUNK`` rows."""
    n = len(value)
    result = np.full(n, np.nan)
    for a in range(0, n, ROWS_PER_CHUNK):
        rows = np.arange(a, min(n, a + ROWS_PER_CHUNK))
        block = np.full((len(rows), k), np.nan)
        for lag in range(k):
            inside = pos[rows] >= lag
            block[inside, lag] = value[rows[inside] - lag]
        block.sort(axis=1)  # NaN last
        count = (~np.isnan(block)).sum(axis=1)
        at = np.arange(len(rows))
        known = count > 0
        if stat == "median":
            # the two middle values of the ``count`` known ones (the same one when ``count`` is odd)
            low, high = block[at, np.maximum(count - 1, 0) // 2], block[at, count // 2]
            middle = (low + high) / 2
            result[rows] = np.where(known, middle, np.nan)
        else:
            total = np.nansum(block, axis=1)
            trim = count >= 5
            lowest, highest = block[:, 0], block[at, np.maximum(count - 1, 0)]
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(trim, (total - lowest - highest) / np.maximum(count - 2, 1),
                                total / np.maximum(count, 1))
            result[rows] = np.where(known, mean, np.nan)
    return result


def _residual(value: np.ndarray, pos: np.ndarray, span: int) -> np.ndarray:
    """Mean of the last ``span`` rows minus the median of the baseline rows (see the module docstring);
    NaN until the series has its first baseline row."""
    recent = _rolling_mean(value, pos, span)
    lags = span + BASELINE_GAP + np.arange(0, BASELINE_WINDOWS, BASELINE_STRIDE)
    # a lag beyond the series' start reads its first row (the same rows in training and scoring, as
    # long as the scoring read has context_windows in front)
    n = len(value)
    rows = np.arange(n, dtype=np.int64)
    first = rows - pos
    base = np.empty((n, len(lags)), dtype=np.float64)
    for j, lag in enumerate(lags):
        base[:, j] = value[np.maximum(rows - lag, first)]
    baseline = np.median(base, axis=1) if n else np.zeros(0)
    result: np.ndarray = np.where(pos >= lags[0], recent - baseline, np.nan)
    return result


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
