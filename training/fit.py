"""Fitting one ``StandardScaler + OneClassSVM`` per (device, sensor) series.

:class:`SeriesModel` is a scikit-learn style estimator for one series (hyperparameters in
``__init__``, ``fit`` returns ``self``, learned state ends in ``_``). :func:`fit_shard` is the pure
function that the release pipeline runs over shards of devices: windows in, a partial
:class:`~training.bundle.ReleaseBundle` plus per-series metrics and skip reasons out.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from training.bundle import ReleaseBundle
from training.config import TrainingConfig
from training.features import check_features, compute_features, series_starts

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]


class SeriesModel(OutlierMixin, BaseEstimator):  # type: ignore[misc]
    """``StandardScaler + OneClassSVM(kernel="rbf")`` for one series, with an optional calibrated offset.

    ``threshold_quantile``: after fitting, the SVM's offset is moved so that this share of the training
    rows lies below the boundary (``None`` keeps libsvm's own offset, about ``nu`` of them). The offset
    only ever moves outward (fewer false alarms), never past the decision function's floor.
    """

    def __init__(self, nu: float = 0.01, gamma: float | str = "scale", threshold_quantile: float | None = None):
        self.nu = nu
        self.gamma = gamma
        self.threshold_quantile = threshold_quantile

    def fit(self, X: np.ndarray, y: Any = None) -> SeriesModel:
        """Fit the scaler and the SVM on the feature rows ``X`` (``(n, F)``)."""
        x = np.asarray(X, dtype=np.float64)
        scaler = StandardScaler()
        mean = x.mean(axis=0)
        var = x.var(axis=0)
        scale = np.sqrt(var)
        scale[scale < 10 * np.finfo(np.float64).eps * np.maximum(np.abs(mean), 1.0)] = 1.0  # like sklearn
        scaler.mean_, scaler.var_, scaler.scale_ = mean, var, scale
        scaler.n_samples_seen_, scaler.n_features_in_ = len(x), x.shape[1]
        z = (x - mean) / scale
        svm = OneClassSVM(kernel="rbf", nu=self.nu, gamma=self.gamma)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Solver terminated early": recorded below as fit_status
            svm.fit(z)
        self.train_decision_ = svm.decision_function(z)
        self.shift_ = 0.0
        if self.threshold_quantile is not None:
            q = float(np.quantile(self.train_decision_, self.threshold_quantile))
            floor = float(svm._intercept_[0])  # f(x) -> intercept far from every support vector
            shift = min(q, 0.0)
            shift = max(shift, floor / 2)  # stay well above the floor: distant points must still flag
            if shift < 0:
                svm._intercept_ = svm._intercept_ - shift
                svm.intercept_ = svm._intercept_.copy()
                svm.offset_ = -svm._intercept_
                self.train_decision_ = self.train_decision_ - shift
                self.shift_ = shift
        self.pipeline_ = Pipeline([("scaler", scaler), ("svm", svm)])
        self.n_support_ = len(svm.support_vectors_)
        self.fit_status_ = int(svm.fit_status_)
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Signed distance to the boundary; negative = anomaly."""
        result: np.ndarray = self.pipeline_.decision_function(X)
        return result

    def predict(self, X: np.ndarray) -> np.ndarray:
        """scikit-learn's convention: -1 = anomaly, 1 = normal."""
        result: np.ndarray = self.pipeline_.predict(X)
        return result


@dataclass
class ShardFit:
    """What one shard of training returns (plain data: picklable, no estimator objects)."""

    bundle: ReleaseBundle  # the fitted series, manifest["series"] holds each one's record
    skipped: dict[tuple[str, str], str] = field(default_factory=dict)  # series -> reason
    failed: dict[tuple[str, str], str] = field(default_factory=dict)  # series -> error
    rows: int = 0
    seconds: float = 0.0


def data_hash(frame: pd.DataFrame) -> str:
    """A short content hash of one series' windows (ts and value columns)."""
    digest = hashlib.sha256()
    digest.update(frame["ts"].to_numpy(dtype="datetime64[ns]").astype(np.int64).tobytes())
    for column in ("value", "value_min", "value_max"):
        digest.update(frame[column].to_numpy(dtype=np.float64).tobytes())
    return digest.hexdigest()[:16]


def _hash_rows(ts: np.ndarray, values: np.ndarray) -> str:
    digest = hashlib.sha256(ts.astype(np.int64).tobytes())
    digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()[:16]


def _calibrate(bundle: ReleaseBundle, feats: np.ndarray, spans: list[tuple[int, int]], quantile: float | None) -> None:
    """Per model, move the offset out to ``quantile`` of its training scores (as :class:`SeriesModel`
    does), for all models at once with the vectorised kernel; record the shift and the training flag rate."""
    from training.kernel import decision_function

    rows = np.concatenate([np.arange(a, b) for a, b in spans])
    owner = np.repeat(np.arange(len(spans)), [b - a for a, b in spans])
    scores = decision_function(bundle, feats[rows], owner)
    bounds = np.cumsum([0] + [b - a for a, b in spans])
    for m, record in enumerate(bundle.manifest["series"]):
        own = scores[bounds[m]:bounds[m + 1]]
        shift = 0.0
        if quantile is not None:
            floor = float(bundle.intercept[m])
            shift = max(min(float(np.quantile(own, quantile)), 0.0), floor / 2)
            if shift < 0:
                bundle.intercept[m] -= shift
            else:
                shift = 0.0
        record["metrics"].update(offset_shift=shift, train_flag_rate=float(((own - shift) < 0).mean()))


def fit_shard(
    windows: pd.DataFrame,
    config: TrainingConfig,
    exclude: frozenset[tuple[str, str]] | set[tuple[str, str]] = frozenset(),
    version: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> ShardFit:
    """Fit one model per (device, sensor) series of ``windows`` (sorted by device, sensor, ts).

    Series in ``exclude`` are skipped (reason ``excluded by validation``), as are series with fewer than
    ``config.min_rows`` windows. A series whose fit raises is recorded in ``failed``; the others go on.
    """
    import time

    started = time.perf_counter()
    check_features(config.features, config.rolling_window)
    starts = series_starts(windows)
    feats = compute_features(windows, config.features, config.rolling_window, starts=starts)
    first = starts[:-1]
    devices = windows["device"].take(first).to_numpy() if len(windows) else np.array([])
    sensors = windows["sensor"].take(first).to_numpy() if len(windows) else np.array([])
    ts = windows["ts"].to_numpy(dtype="datetime64[ns]")
    values = np.vstack([windows[c].to_numpy(dtype=np.float64) for c in ("value", "value_min", "value_max")]) if len(
        windows) else np.zeros((3, 0))
    keys: list[tuple[str, str]] = []
    pipelines: list[Pipeline] = []
    records: list[dict[str, Any]] = []
    spans: list[tuple[int, int]] = []
    result = ShardFit(bundle=ReleaseBundle.empty(config.features, config.rolling_window), rows=len(windows))
    total = len(first)
    for i in range(total):
        key = (str(devices[i]), str(sensors[i]))
        a, b = int(starts[i]), int(starts[i + 1])
        if key in exclude:
            result.skipped[key] = "excluded by validation"
        elif b - a < config.min_rows:
            result.skipped[key] = f"{b - a} windows, fewer than min_rows={config.min_rows}"
        else:
            try:
                # the offset is calibrated below for the whole shard at once (the vectorised kernel)
                model = SeriesModel(config.nu, config.gamma, None).fit(feats[a:b])
            except (ValueError, ArithmeticError) as exc:
                result.failed[key] = f"{type(exc).__name__}: {exc}"
                log.warning("series %s/%s: fit failed: %s", key[0], key[1], exc)
            else:
                keys.append(key)
                pipelines.append(model.pipeline_)
                spans.append((a, b))
                records.append({
                    "device": key[0], "sensor": key[1], "trained_in": version,
                    "train_start": str(pd.Timestamp(ts[a])), "train_end": str(pd.Timestamp(ts[b - 1])),
                    "rows": b - a, "data_hash": _hash_rows(ts[a:b], values[:, a:b]),
                    "metrics": {"n_support": model.n_support_, "fit_status": model.fit_status_},
                })
        if on_progress is not None:
            on_progress(i + 1, total)
    if keys:
        bundle = ReleaseBundle.from_sklearn(keys, pipelines, config.features, config.rolling_window,
                                            manifest={"series": records})
        _calibrate(bundle, feats, spans, config.threshold_quantile)
        result.bundle = bundle
    result.seconds = time.perf_counter() - started
    return result
