"""Family ``device``: every sensor of a device judged together, window by window.

Per (device, sensor), as in ``robust``: the median and robust scale (1.4826 x MAD) of each feature over
the training windows; a row's *sensor z* is its largest robust z over the features. Per device and
window, the *joint z* is the root mean square of the sensor z of the device's sensors in that window,
each capped at ``JOINT_CAP``: a device whose sensors all move a little at once stands out though no
sensor alone does, and one sensor far out does not decide it alone. A row's score is

    min(series_threshold - sensor_z, device_threshold - joint_z)

(negative = anomaly). Both thresholds are calibrated on the training windows: each is the
``1 - target_false_alarm_rate / 2`` quantile of its statistic (of the series' windows, of the device's
windows), at least ``MIN_SERIES_THRESHOLD`` / ``MIN_DEVICE_THRESHOLD``; with a target of 0 both are
``robust_threshold``. The reason of a row names the sensor and the feature: its own when its sensor z
decides, else those of the device's most deviant sensor in that window (``"vibration:log_spread"``).

Bundle arrays: ``mean`` holds the medians, ``scale`` the robust scales, ``intercept`` the series
threshold, ``gamma`` the device threshold (the same for every sensor of a device fitted together);
there are no support vectors. Scoring needs the rows' windows (device and time) to group them: rows
scored without them (``decision`` with no ``moments``) are each their own group.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from fleetscore.training.detectors.robust import ShardSeries, fit_series_shard, robust_z

if TYPE_CHECKING:
    import pandas as pd

    from fleetscore.progress import ProgressCallback
    from fleetscore.training.bundle import ReleaseBundle
    from fleetscore.training.config import TrainingConfig
    from fleetscore.training.fit import ShardFit

log = logging.getLogger(__name__)

JOINT_CAP = 6.0  # a sensor's z counts at most this much in its device's joint z
MIN_SERIES_THRESHOLD = 3.0
MIN_DEVICE_THRESHOLD = 1.5


def grouped_quantile(x: np.ndarray, groups: np.ndarray, q: float) -> np.ndarray:
    """Per group code ``0 .. groups.max()``, the lower ``q`` quantile of ``x`` (every code present)."""
    order = np.lexsort((x, groups))
    counts = np.bincount(groups)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    picked: np.ndarray = x[order][first + np.floor(q * (counts - 1)).astype(np.int64)]
    return picked


def joint_z(sensor_z: np.ndarray, moments: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's joint z (RMS of its window's capped sensor z) and its window's most deviant row."""
    n = len(sensor_z)
    if moments is None:
        return np.minimum(sensor_z, JOINT_CAP), np.arange(n)
    _, group = np.unique(moments, return_inverse=True)
    group = group.reshape(-1)
    capped = np.minimum(sensor_z, JOINT_CAP)
    count = np.bincount(group).astype(np.float64)
    joint = np.sqrt(np.bincount(group, weights=capped * capped) / count)[group]
    order = np.lexsort((sensor_z, group))  # within each window, the largest z last
    last = np.concatenate([np.flatnonzero(np.diff(group[order])), [n - 1]])
    top = np.empty(len(last), dtype=np.int64)
    top[group[order][last]] = order[last]
    return joint, top[group]


def _sensor_z(bundle: ReleaseBundle, feats: np.ndarray, row_model: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.nan_to_num(robust_z(bundle, np.asarray(feats, dtype=np.float64), row_model), nan=0.0,
                      posinf=np.finfo(np.float64).max)
    return z.max(axis=1), z.argmax(axis=1)


class DeviceDetector:
    """Per-sensor robust z, combined per device and window."""

    name = "device"
    version = 1
    by_window = True

    def fit_shard(self, windows: pd.DataFrame, config: TrainingConfig, exclude: frozenset[tuple[str, str]],
                  version: int | None, on_progress: ProgressCallback | None) -> ShardFit:
        """Medians, robust scales and calibrated thresholds of every series with enough finite windows."""
        target = config.target_false_alarm_rate

        def finish(bundle: ReleaseBundle, data: ShardSeries) -> list[dict[str, Any]]:
            import pandas as pd

            rows = data.rows
            owner = np.repeat(np.arange(len(bundle)), data.lengths)
            device_code = pd.factorize(data.devices[data.fitted])[0][owner]
            moments = device_code * (1 << 40) + pd.factorize(data.ts[rows])[0]
            self._calibrate(bundle, data.feats[rows], owner, device_code, moments, target)
            flagged = (self.decision(bundle, data.feats[rows], owner, moments) < 0).astype(np.float64)
            rates = np.bincount(owner, weights=flagged, minlength=len(bundle)) / data.lengths
            return [{"train_flag_rate": float(r), "calibration": {"target": target, "reached": float(r),
                                                                  "windows": int(n)}}
                    for r, n in zip(rates, data.lengths, strict=True)]

        return fit_series_shard(self.name, windows, config, exclude, version, on_progress, finish)

    @staticmethod
    def _calibrate(bundle: ReleaseBundle, feats: np.ndarray, owner: np.ndarray, device_code: np.ndarray,
                   moments: np.ndarray, target: float) -> None:
        """Set the series and device thresholds to their statistics' ``1 - target / 2`` quantiles."""
        if target <= 0:
            return
        own, _ = _sensor_z(bundle, feats, owner)
        joint, _ = joint_z(own, moments)
        q = 1.0 - target / 2.0
        bundle.intercept[:] = np.maximum(grouped_quantile(own, owner, q), MIN_SERIES_THRESHOLD)
        per_device = np.maximum(grouped_quantile(joint, device_code, q), MIN_DEVICE_THRESHOLD)
        first_row = np.concatenate([[0], np.flatnonzero(np.diff(owner)) + 1])
        bundle.gamma[:] = per_device[device_code[first_row]]

    def decision(self, bundle: ReleaseBundle, feats: np.ndarray, row_model: np.ndarray,
                 moments: np.ndarray | None = None) -> np.ndarray:
        """``min(series threshold - sensor z, device threshold - joint z)`` of every row; ``moments``
        gives the rows of one device and window the same id."""
        row_model = np.asarray(row_model, dtype=np.int64)
        if len(row_model) == 0:
            return np.zeros(0)
        own, _ = _sensor_z(bundle, feats, row_model)
        joint, _ = joint_z(own, moments)
        score: np.ndarray = np.minimum(bundle.intercept[row_model] - own, bundle.gamma[row_model] - joint)
        return score

    def reasons(self, bundle: ReleaseBundle, feats: np.ndarray, row_model: np.ndarray,
                moments: np.ndarray | None = None) -> np.ndarray:
        """``sensor:feature`` of each row: its own when its sensor z decides its score, else that of its
        device's most deviant sensor in the window."""
        row_model = np.asarray(row_model, dtype=np.int64)
        if len(row_model) == 0:
            return np.zeros(0, dtype=object)
        own, feature = _sensor_z(bundle, feats, row_model)
        joint, top = joint_z(own, moments)
        by_device = bundle.gamma[row_model] - joint < bundle.intercept[row_model] - own
        source = np.where(by_device, top, np.arange(len(row_model)))
        sensors = np.asarray([s for _, s in bundle.keys], dtype=object)[row_model[source]]
        names = np.asarray(bundle.features, dtype=object)[feature[source]]
        out: np.ndarray = sensors + ":" + names
        return out

    def describe(self, bundle: ReleaseBundle, index: int) -> dict[str, Any]:
        """Median and robust scale per feature and both thresholds of model ``index``."""
        return {"detector": self.name, "series_threshold": float(bundle.intercept[index]),
                "device_threshold": float(bundle.gamma[index]),
                "median": dict(zip(bundle.features, bundle.mean[index].tolist(), strict=True)),
                "scale": dict(zip(bundle.features, bundle.scale[index].tolist(), strict=True))}
