"""Synthetic anomalies injected into a holdout of windows: the simulator's six kinds, in window space.

The evaluation gate scores each model on the holdout as it is and with each kind injected into every
series (:func:`perturb`). Sizes follow ``simulate --profile industrial`` and are relative to each
series' own noise: ``sigma`` is the robust standard deviation of its window means' noise, estimated
from the holdout as ``1.4826 x median(|diff(value)|) / sqrt(2)`` (differences cancel slow cycles).

- ``spike``: every 10th window jumps 0.5-2 ranges beyond the series' holdout min or max;
- ``level_shift``: a run of ``SEGMENT`` windows shifted by 2.5-3.5 sigma;
- ``variance``: a run whose noise is 4 times larger around the run's own mean (spread too);
- ``stuck``: a run where every reading is the last normal reading before it;
- ``drift``: a ``2 x SEGMENT`` run ramping linearly to 5 sigma; only the windows past 2 sigma count
  (a detector that looks at one window cannot see the rest);
- ``device``: the same run on every sensor of a device, each moved by 2.5-3.5 sigma (signs alternating
  by sensor) with twice the noise.

Pure: a DataFrame in, a DataFrame and a mask out; seeded, so the champion and the challenger see the
same anomalies.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fleetscore.training.features import series_starts

KINDS = ("spike", "level_shift", "variance", "stuck", "drift", "device")
SEGMENT = 12  # windows of an injected run (a drift ramps over twice as many)
SHIFT_SIGMA = (2.5, 3.5)
DRIFT_SIGMA, VISIBLE_SIGMA = 5.0, 2.0
VARIANCE_FACTOR, DEVICE_NOISE_FACTOR = 4.0, 2.0

__all__ = ["KINDS", "SEGMENT", "noise_sigma", "perturb"]


def noise_sigma(value: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per series (``starts``: offsets of each series, then the length): the robust standard deviation of
    the window means' noise; a series with no movement gets ``1e-3 x max(1, |median value|)``."""
    lengths = np.diff(starts)
    series = np.repeat(np.arange(len(lengths)), lengths)
    step = np.abs(np.diff(value, prepend=np.nan))
    step[starts[:-1]] = np.nan  # no difference across series
    frame = pd.DataFrame({"series": series, "step": step, "value": value})
    grouped = frame.groupby("series", sort=True)
    sigma = (1.4826 * grouped["step"].median() / np.sqrt(2.0)).reindex(range(len(lengths))).to_numpy()
    level = grouped["value"].median().abs().reindex(range(len(lengths))).to_numpy()
    fallback = 1e-3 * np.maximum(1.0, np.nan_to_num(level))
    result: np.ndarray = np.where(np.isfinite(sigma) & (sigma > 0), sigma, fallback)
    return result


def perturb(holdout: pd.DataFrame, kind: str, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """A copy of ``holdout`` (windows, sorted) with anomalies of ``kind`` injected in every series, and
    the mask of the injected windows that count for recall."""
    if kind not in KINDS:
        raise ValueError(f"unknown anomaly kind {kind!r}: expected one of {', '.join(KINDS)}")
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    out = holdout.copy()
    n = len(out)
    if n == 0:
        return out, np.zeros(0, dtype=bool)
    starts = series_starts(out)
    lengths = np.diff(starts)
    pos = np.arange(n) - np.repeat(starts[:-1], lengths)
    value = out["value"].to_numpy(dtype=np.float64).copy()
    vmin = out["value_min"].to_numpy(dtype=np.float64).copy()
    vmax = out["value_max"].to_numpy(dtype=np.float64).copy()
    if kind == "spike":
        value, vmin, vmax, mask = _spike(rng, value, vmin, vmax, starts, pos)
    else:
        span = 2 * SEGMENT if kind == "drift" else SEGMENT
        seg = np.minimum(span, np.maximum(lengths // 3, 1))
        first = _run_starts(rng, out, starts, seg, same_per_device=kind == "device")
        first_row, seg_row = np.repeat(first, lengths), np.repeat(seg, lengths)
        inside = (pos >= first_row) & (pos < first_row + seg_row)
        sigma = np.repeat(noise_sigma(value, starts), lengths)
        mask = inside
        if kind == "level_shift":
            sign = np.where(rng.random(len(lengths)) < 0.5, 1.0, -1.0)
            size = np.repeat(sign * rng.uniform(*SHIFT_SIGMA, len(lengths)), lengths) * sigma
            value, vmin, vmax = (a + np.where(inside, size, 0.0) for a in (value, vmin, vmax))
        elif kind == "variance":
            value, vmin, vmax = _widen(value, vmin, vmax, inside, starts, VARIANCE_FACTOR, np.zeros(n))
        elif kind == "stuck":
            stuck = np.repeat(value[starts[:-1] + np.maximum(first - 1, 0)], lengths)
            value, vmin, vmax = (np.where(inside, stuck, a) for a in (value, vmin, vmax))
        elif kind == "drift":
            sign = np.repeat(np.where(rng.random(len(lengths)) < 0.5, 1.0, -1.0), lengths)
            ramp = DRIFT_SIGMA * (pos - first_row + 1) / seg_row
            size = np.where(inside, sign * ramp * sigma, 0.0)
            value, vmin, vmax = value + size, vmin + size, vmax + size
            mask = inside & (ramp >= VISIBLE_SIGMA)
        else:  # device
            sensor_rank = _sensor_rank(out, starts)
            sign = np.repeat(np.where(sensor_rank % 2 == 0, 1.0, -1.0), lengths)
            size = np.repeat(rng.uniform(*SHIFT_SIGMA, len(lengths)), lengths) * sigma * sign
            value, vmin, vmax = _widen(value, vmin, vmax, inside, starts, DEVICE_NOISE_FACTOR,
                                       np.where(inside, size, 0.0))
    out["value"], out["value_min"], out["value_max"] = value, vmin, vmax
    return out, mask


def _spike(rng: np.random.Generator, value: np.ndarray, vmin: np.ndarray, vmax: np.ndarray, starts: np.ndarray,
           pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    lengths = np.diff(starts)
    n = len(value)
    lo = np.minimum.reduceat(vmin, starts[:-1])
    hi = np.maximum.reduceat(vmax, starts[:-1])
    width = hi - lo
    width = np.where(width > 0, width, np.maximum(np.abs(hi), 1.0) * 0.1)
    phase = np.repeat(rng.integers(0, 10, len(lengths)), lengths)
    mask = (pos % 10 == phase) & (pos >= 1)
    sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    target = np.where(sign > 0, np.repeat(hi, lengths), np.repeat(lo, lengths)) + sign * rng.uniform(
        0.5, 2.0, n) * np.repeat(width, lengths)
    shift = np.where(mask, target - value, 0.0)
    return value + shift, vmin + shift, vmax + shift, mask


def _run_starts(rng: np.random.Generator, windows: pd.DataFrame, starts: np.ndarray, seg: np.ndarray,
                same_per_device: bool) -> np.ndarray:
    """The first window of each series' run (at least 1: the window before it is normal); with
    ``same_per_device`` every series of a device starts at the same position."""
    lengths = np.diff(starts)
    room = np.maximum(2, lengths - seg + 1)
    first = rng.integers(1, room)
    if same_per_device:
        devices = windows["device"].take(starts[:-1]).astype(str).to_numpy()
        frame = pd.DataFrame({"device": devices, "room": room})
        device_room = frame.groupby("device", sort=False)["room"].transform("min").to_numpy()
        per_device = {d: int(rng.integers(1, r)) for d, r in zip(devices, device_room, strict=True)}
        first = np.array([per_device[d] for d in devices])
    return np.asarray(first, dtype=np.int64)


def _sensor_rank(windows: pd.DataFrame, starts: np.ndarray) -> np.ndarray:
    """Each series' position among its device's sensors (0, 1, ...), in the holdout's order."""
    devices = pd.Series(windows["device"].take(starts[:-1]).astype(str).to_numpy())
    return devices.groupby(devices, sort=False).cumcount().to_numpy()


def _widen(value: np.ndarray, vmin: np.ndarray, vmax: np.ndarray, inside: np.ndarray, starts: np.ndarray,
           factor: float, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The run's noise ``factor`` times larger around the run's own mean (window means and spreads),
    plus ``shift``."""
    lengths = np.diff(starts)
    series = np.repeat(np.arange(len(lengths)), lengths)
    total = np.bincount(series, weights=np.where(inside, value, 0.0), minlength=len(lengths))
    count = np.bincount(series, weights=inside.astype(np.float64), minlength=len(lengths))
    centre = np.repeat(total / np.maximum(count, 1.0), lengths)
    new_value = centre + factor * (value - centre) + shift
    new_min = new_value - factor * (value - vmin)
    new_max = new_value + factor * (vmax - value)
    return (np.where(inside, new_value, value), np.where(inside, new_min, vmin), np.where(inside, new_max, vmax))
