"""Family ``robust``: per series and feature, the median and a robust scale (1.4826 x MAD) of the
training windows. A window's robust z of a feature is ``|x - median| / scale``; its score is
``threshold - max_z`` over the features (``threshold`` = ``[training] robust_threshold``), so, as for
every family, a negative score is an anomaly: a window is flagged when one feature lies more than
``threshold`` robust z from its median.

Bundle arrays: ``mean`` holds the medians, ``scale`` the robust scales, ``intercept`` the threshold;
there are no support vectors. A feature whose MAD is 0 (more than half the windows equal) falls back to
its standard deviation, and a constant feature to ``1e-9 * max(1, |median|)``, so any change flags.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fleetscore.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from fleetscore.progress import ProgressCallback
    from fleetscore.training.bundle import ReleaseBundle
    from fleetscore.training.config import TrainingConfig
    from fleetscore.training.fit import ShardFit

log = logging.getLogger(__name__)

MAD_TO_STD = 1.4826  # the MAD of a normal distribution times this is its standard deviation
_FLOOR = 1e-9


def grouped_median(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per group of consecutive rows (``lengths``, each > 0), the median of each column of ``x``
    (``(n, F)``), as ``np.median`` gives it (mean of the two middle values for an even count)."""
    n_groups = len(lengths)
    out = np.empty((n_groups, x.shape[1]))
    if n_groups == 0:
        return out
    owner = np.repeat(np.arange(n_groups), lengths)
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    lo, hi = first + (lengths - 1) // 2, first + lengths // 2
    for f in range(x.shape[1]):
        ordered = x[np.lexsort((x[:, f], owner)), f]
        out[:, f] = 0.5 * (ordered[lo] + ordered[hi])
    return out


def robust_fit(x: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Medians and robust scales ``(groups, F)`` of consecutive row groups of ``x`` (finite rows)."""
    if len(lengths) == 0:
        return np.zeros((0, x.shape[1])), np.ones((0, x.shape[1]))
    median = grouped_median(x, lengths)
    dev = np.abs(x - np.repeat(median, lengths, axis=0))
    scale = MAD_TO_STD * grouped_median(dev, lengths)
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    n = lengths.astype(np.float64)[:, None]
    mean = np.add.reduceat(x, first, axis=0) / n
    std = np.sqrt(np.add.reduceat((x - np.repeat(mean, lengths, axis=0)) ** 2, first, axis=0) / n)
    scale = np.where(scale > 0, scale, std)
    scale = np.where(scale > 0, scale, _FLOOR * np.maximum(1.0, np.abs(median)))
    return median, scale


def robust_z(bundle: ReleaseBundle, feats: np.ndarray, row_model: np.ndarray) -> np.ndarray:
    """``|x - median| / scale`` of every row and feature under its model, ``(n, F)``."""
    with np.errstate(over="ignore", invalid="ignore"):
        z: np.ndarray = np.abs(feats - bundle.mean[row_model]) / bundle.scale[row_model]
    return z


@dataclass
class ShardSeries:
    """A shard's windows prepared for a per-series robust fit: features, and the series to fit."""

    starts: np.ndarray  # series starts in the shard's rows (and the end)
    feats: np.ndarray  # (rows, F), unknown features filled with their series' mean
    values: np.ndarray  # (3, rows): value, value_min, value_max
    devices: np.ndarray  # per series
    sensors: np.ndarray  # per series
    ts: np.ndarray  # per row, datetime64[ns]
    fitted: np.ndarray  # the series to fit (indices)

    @property
    def lengths(self) -> np.ndarray:
        """Windows per fitted series."""
        return np.diff(self.starts)[self.fitted]

    @property
    def rows(self) -> np.ndarray:
        """The rows of the fitted series, in order."""
        return np.concatenate([np.arange(self.starts[i], self.starts[i + 1]) for i in self.fitted])


def shard_series(windows: pd.DataFrame, config: TrainingConfig, exclude: frozenset[tuple[str, str]],
                 result: ShardFit) -> ShardSeries:
    """Compute the shard's features and pick the series to fit; the others go to ``result.skipped``
    (excluded, too short) or ``result.failed`` (a non-finite feature), with the reason."""
    from fleetscore.training.features import compute_features, fill_unknown, series_starts

    starts = series_starts(windows)
    feats = fill_unknown(compute_features(windows, config.features, config.rolling_window, starts=starts), starts)
    first, lengths = starts[:-1], np.diff(starts)
    values = np.vstack([windows[c].to_numpy(dtype=np.float64) for c in ("value", "value_min", "value_max")])
    finite = np.logical_and.reduceat(np.isfinite(feats).all(axis=1) & np.isfinite(values).all(axis=0), first)
    devices = windows["device"].take(first).astype(str).to_numpy()
    sensors = windows["sensor"].take(first).astype(str).to_numpy()
    fitted: list[int] = []
    for i in range(len(first)):
        key = (devices[i], sensors[i])
        if key in exclude:
            result.skipped[key] = "excluded by validation"
        elif lengths[i] < config.min_rows:
            result.skipped[key] = f"{lengths[i]} windows, fewer than min_rows={config.min_rows}"
        elif not finite[i]:
            result.failed[key] = "ValueError: a feature is NaN or infinite in the training windows"
            log.warning("series %s/%s: not fitted: a feature is NaN or infinite", key[0], key[1])
        else:
            fitted.append(i)
    return ShardSeries(starts, feats, values, devices, sensors, windows["ts"].to_numpy(dtype="datetime64[ns]"),
                       np.array(fitted, dtype=np.int64))


def robust_bundle(data: ShardSeries, config: TrainingConfig, detector: str) -> ReleaseBundle:
    """The fitted series' medians and robust scales as a bundle of ``detector`` (thresholds at
    ``robust_threshold`` in ``intercept`` and ``gamma``)."""
    from fleetscore.training.bundle import ReleaseBundle

    median, scale = robust_fit(data.feats[data.rows], data.lengths)
    m, f = median.shape
    return ReleaseBundle(
        keys=[(data.devices[i], data.sensors[i]) for i in data.fitted], features=tuple(config.features),
        rolling_window=config.rolling_window, mean=median, scale=scale, var=scale ** 2,
        n_samples=data.lengths.astype(np.int64), sv_offsets=np.zeros(m + 1, dtype=np.int64),
        support_vectors=np.zeros((0, f)), support=np.zeros(0, dtype=np.int32), dual_coef=np.zeros(0),
        intercept=np.full(m, float(config.robust_threshold)), gamma=np.full(m, float(config.robust_threshold)),
        nu=np.zeros(m), n_iter=np.zeros(m, dtype=np.int64), detector=detector,
    )


def series_records(data: ShardSeries, version: int | None, metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The manifest records of the fitted series (``metrics``: one dict per fitted series)."""
    import pandas as pd

    from fleetscore.training.fit import hash_rows

    records = []
    for j, i in enumerate(data.fitted):
        a, b = int(data.starts[i]), int(data.starts[i + 1])
        records.append({
            "device": data.devices[i], "sensor": data.sensors[i], "trained_in": version,
            "train_start": str(pd.Timestamp(data.ts[a])), "train_end": str(pd.Timestamp(data.ts[b - 1])),
            "rows": b - a, "data_hash": hash_rows(data.ts[a:b], data.values[:, a:b]), "metrics": metrics[j],
        })
    return records


def fit_series_shard(detector: str, windows: pd.DataFrame, config: TrainingConfig,
                     exclude: frozenset[tuple[str, str]], version: int | None, on_progress: ProgressCallback | None,
                     finish: Callable[[ReleaseBundle, ShardSeries], list[dict[str, Any]]]) -> ShardFit:
    """Fit a shard with per-series medians and robust scales (:func:`robust_bundle`); ``finish`` sets the
    family's thresholds on the bundle and returns each fitted series' metrics for its manifest record."""
    from fleetscore.training.bundle import ReleaseBundle
    from fleetscore.training.features import check_features
    from fleetscore.training.fit import ShardFit

    started = time.perf_counter()
    check_features(config.features, config.rolling_window)
    if not config.robust_threshold > 0:
        raise ConfigError(f"training.robust_threshold: must be positive, got {config.robust_threshold}")
    result = ShardFit(bundle=ReleaseBundle.empty(config.features, config.rolling_window, detector), rows=len(windows))
    if len(windows):
        data = shard_series(windows, config, exclude, result)
        if len(data.fitted):
            bundle = robust_bundle(data, config, detector)
            bundle.manifest = {"series": series_records(data, version, finish(bundle, data))}
            result.bundle = bundle
        if on_progress is not None:
            on_progress(len(data.starts) - 1, len(data.starts) - 1)
    result.seconds = time.perf_counter() - started
    return result


class RobustDetector:
    """Per-feature median/MAD residuals per series, fitted for the whole shard at once."""

    name = "robust"
    version = 1
    by_window = False

    def fit_shard(self, windows: pd.DataFrame, config: TrainingConfig, exclude: frozenset[tuple[str, str]],
                  version: int | None, on_progress: ProgressCallback | None) -> ShardFit:
        """Medians and robust scales of every series with at least ``min_rows`` finite windows."""
        return fit_series_shard(self.name, windows, config, exclude, version, on_progress, self._finish)

    def _finish(self, bundle: ReleaseBundle, data: ShardSeries) -> list[dict[str, Any]]:
        bundle.gamma[:] = 0.0
        owner = np.repeat(np.arange(len(bundle)), data.lengths)
        flagged = (self.decision(bundle, data.feats[data.rows], owner) < 0).astype(np.float64)
        rates = np.bincount(owner, weights=flagged, minlength=len(bundle)) / data.lengths
        return [{"train_flag_rate": float(r)} for r in rates]

    def reasons(self, bundle: ReleaseBundle, feats: np.ndarray, row_model: np.ndarray,
                moments: np.ndarray | None = None) -> np.ndarray:
        """The feature with the largest robust z."""
        from fleetscore.training.detectors.explain import feature_reasons

        return feature_reasons(bundle, feats, row_model)

    def decision(self, bundle: ReleaseBundle, feats: np.ndarray, row_model: np.ndarray,
                 moments: np.ndarray | None = None) -> np.ndarray:
        """``threshold - max robust z`` of every row (NaN when a feature is NaN: flagged)."""
        z = robust_z(bundle, np.asarray(feats, dtype=np.float64), np.asarray(row_model, dtype=np.int64))
        if z.shape[0] == 0:
            return np.zeros(0)
        with np.errstate(invalid="ignore"):
            worst = np.where(np.isnan(z).any(axis=1), np.nan, np.max(np.nan_to_num(z, nan=0.0), axis=1))
        score: np.ndarray = bundle.intercept[row_model] - worst
        return score

    def describe(self, bundle: ReleaseBundle, index: int) -> dict[str, Any]:
        """Median, robust scale per feature and the threshold of model ``index``."""
        return {"detector": self.name, "threshold": float(bundle.intercept[index]),
                "median": dict(zip(bundle.features, bundle.mean[index].tolist(), strict=True)),
                "scale": dict(zip(bundle.features, bundle.scale[index].tolist(), strict=True))}
