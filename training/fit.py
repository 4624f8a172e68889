"""Fitting one ``StandardScaler + OneClassSVM`` per (device, sensor) series.

:func:`fit_shard` is the pure function that the release pipeline runs over shards of devices: windows
in, a partial :class:`~training.bundle.ReleaseBundle` plus per-series metrics and skip reasons out.
It fits the models without scikit-learn's per-call overhead (input validation, estimator objects):
the scalers of every series are computed at once with numpy, and each SVM is one call of the libsvm
routine that ``OneClassSVM.fit`` calls, with the arguments it would pass. The fitted arrays are the
ones scikit-learn learns (``tests/training/test_fit.py`` compares them to ``1e-12``).
:class:`SeriesModel` is the scikit-learn style estimator for one series, on the same code.

Released models score in the log form (``score_form = "log"``): ``log(sum_j a_j K(x, v_j)) + intercept``,
which keeps decreasing far from the data (the kernel sum itself flattens at 0), so far-out windows rank
above near ones. The threshold of each series is calibrated (:func:`calibrate`): two SVMs fitted on
alternate blocks of its training windows score the other blocks, and the threshold is the
``target_false_alarm_rate`` quantile of those out-of-fold scores. With ``target_false_alarm_rate = 0``
it is libsvm's own boundary moved out by ``offset_margin`` of itself (``(1 - margin) * rho``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.svm import _libsvm

from fleetscore.errors import ConfigError
from fleetscore.progress import ProgressCallback
from fleetscore.training.bundle import ReleaseBundle
from fleetscore.training.config import TrainingConfig
from fleetscore.training.features import check_features, compute_features, fill_unknown, series_starts

log = logging.getLogger(__name__)


_ONE_CLASS = 2  # libsvm's svm_type: sklearn.svm._base.LIBSVM_IMPL.index("one_class")
_EMPTY = np.empty(0, dtype=np.float64)
_EPS = float(np.finfo(np.float64).eps)
_TINY = 1e-300
CALIBRATION_BLOCK = 60  # windows per calibration block (5 minutes of 5 s windows); blocks alternate folds
MIN_CALIBRATION_ROWS = 20  # per fold: fewer, and the series keeps libsvm's boundary


# -- the numeric core -------------------------------------------------------------------------------


def scaler_moments(x: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per series (rows ``starts[i]:starts[i + 1]`` of ``x``), what ``StandardScaler().fit`` learns:
    ``mean_``, ``var_`` and ``scale_`` (1 for a constant feature), each ``(series, F)``, in one pass
    over the whole shard (the corrected two-pass variance scikit-learn uses)."""
    lengths = np.diff(starts)
    if len(lengths) == 0 or len(x) == 0:
        empty = np.zeros((0, x.shape[1]))
        return empty, empty.copy(), empty.copy()
    first = starts[:-1]
    n = lengths.astype(np.float64)[:, None]
    mean = np.add.reduceat(x, first, axis=0) / n
    temp = x - np.repeat(mean, lengths, axis=0)
    correction = np.add.reduceat(temp, first, axis=0)
    temp *= temp
    var = (np.add.reduceat(temp, first, axis=0) - correction ** 2 / n) / n
    constant = var <= n * _EPS * var + (n * mean * _EPS) ** 2  # sklearn's _is_constant_feature
    scale = np.where(constant, 1.0, np.sqrt(var))
    return mean, var, scale


def resolve_gamma(gamma: float | str, z: np.ndarray) -> float:
    """The kernel width ``OneClassSVM`` uses for ``gamma`` on the (scaled) rows ``z``."""
    if isinstance(gamma, str):
        if gamma == "scale":
            x_var = float(z.var())
            return 1.0 / (z.shape[1] * x_var) if x_var != 0 else 1.0
        if gamma == "auto":
            return 1.0 / z.shape[1]
        raise ConfigError(f"training.gamma: expected a number, 'scale' or 'auto', got {gamma!r}")
    if isinstance(gamma, Real) and not isinstance(gamma, bool) and gamma > 0:
        return float(gamma)
    raise ConfigError(f"training.gamma: must be positive, got {gamma!r}")


@dataclass
class SVMFit:
    """What ``OneClassSVM(kernel="rbf").fit`` learns, as arrays (names as scikit-learn's attributes)."""

    support: np.ndarray  # (S,) int32
    support_vectors: np.ndarray  # (S, F)
    dual_coef: np.ndarray  # (S,)
    intercept: float  # _intercept_[0] = -offset_
    nu: float
    gamma: float
    fit_status: int
    n_iter: int


def fit_svm(z: np.ndarray, nu: float, gamma: float) -> SVMFit:
    """``OneClassSVM(kernel="rbf", nu=nu, gamma=gamma).fit(z)`` without the estimator: the same libsvm call
    with the same arguments (defaults tol 1e-3, shrinking, cache 200 MB). ``z``: C-contiguous float64."""
    _libsvm.set_verbosity_wrap(0)  # libsvm prints to stdout unless told not to
    support, support_vectors, _, dual_coef, intercept, _, _, fit_status, n_iter = _libsvm.fit(
        z, np.ones(z.shape[0]), svm_type=_ONE_CLASS, sample_weight=_EMPTY, class_weight=_EMPTY, kernel="rbf",
        C=0.0, nu=nu, probability=False, degree=3, shrinking=True, tol=1e-3, cache_size=200, coef0=0.0,
        gamma=gamma, epsilon=0.0, max_iter=-1, random_seed=0,  # the seed only serves probability estimates
    )
    if not (np.isfinite(intercept).all() and np.isfinite(dual_coef).all()):
        raise ValueError("the dual coefficients or intercept are not finite")
    return SVMFit(support=support, support_vectors=support_vectors, dual_coef=dual_coef.ravel(),
                  intercept=float(intercept[0]), nu=nu, gamma=gamma, fit_status=int(fit_status), n_iter=int(n_iter[0]))


def check_config(config: TrainingConfig) -> None:
    """Raise :class:`ConfigError` for a feature set or hyperparameter that cannot be fitted."""
    check_features(config.features, config.rolling_window)
    if not 0 < config.nu <= 1:
        raise ConfigError(f"training.nu: must be in (0, 1], got {config.nu}")
    if not 0 <= config.offset_margin < 1:
        raise ConfigError(f"training.offset_margin: must be in [0, 1), got {config.offset_margin}")
    if not 0 <= config.target_false_alarm_rate < 0.5:
        raise ConfigError("training.target_false_alarm_rate: must be in [0, 0.5), got "
                          f"{config.target_false_alarm_rate}")
    resolve_gamma(config.gamma, np.ones((2, 1)))


def _bundle(keys: list[tuple[str, str]], features: tuple[str, ...], rolling_window: int, margin: float,
            moments: tuple[np.ndarray, np.ndarray, np.ndarray], rows: list[int], fits: list[SVMFit],
            records: list[dict[str, Any]], score_form: str = "log") -> ReleaseBundle:
    """Pack fitted series into a bundle (``moments``: their scalers' mean, var, scale); the offset margin
    is applied here (in the log form: ``intercept = -log((1 - margin) * rho)``)."""
    mean, var, scale = moments
    counts = np.array([len(f.support) for f in fits], dtype=np.int64)
    intercept = np.array([f.intercept for f in fits], dtype=np.float64) * (1.0 - margin)
    if score_form == "log":  # sum - (1 - m) rho < 0  <=>  log(sum) - log((1 - m) rho) < 0
        intercept = -np.log(np.maximum(-intercept, _TINY))
    return ReleaseBundle(
        keys=keys, features=features, rolling_window=rolling_window,
        mean=mean, scale=scale, var=var, n_samples=np.array(rows, dtype=np.int64),
        sv_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        support_vectors=np.concatenate([f.support_vectors for f in fits]).astype(np.float64, copy=False),
        support=np.concatenate([f.support for f in fits]).astype(np.int32, copy=False),
        dual_coef=np.concatenate([f.dual_coef for f in fits]).astype(np.float64, copy=False),
        intercept=intercept,
        gamma=np.array([f.gamma for f in fits], dtype=np.float64),
        nu=np.array([f.nu for f in fits], dtype=np.float64),
        n_iter=np.array([f.n_iter for f in fits], dtype=np.int64),
        manifest={"series": records}, score_form=score_form,
    )


# -- one series: the scikit-learn estimator ----------------------------------------------------------


class SeriesModel(OutlierMixin, BaseEstimator):  # type: ignore[misc]
    """``StandardScaler + OneClassSVM(kernel="rbf")`` for one series, its offset moved out by ``offset_margin``.

    ``fit`` learns ``pipeline_`` (the equivalent fitted scikit-learn ``Pipeline``), ``n_support_`` and
    ``fit_status_``; ``offset_margin = 0`` gives exactly ``Pipeline([StandardScaler(), OneClassSVM()])``.
    """

    def __init__(self, nu: float = 0.02, gamma: float | str = 0.2, offset_margin: float = 0.0):
        self.nu = nu
        self.gamma = gamma
        self.offset_margin = offset_margin

    def fit(self, X: np.ndarray, y: Any = None) -> SeriesModel:
        """Fit the scaler and the SVM on the feature rows ``X`` (``(n, F)``)."""
        x = np.ascontiguousarray(X, dtype=np.float64)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"expected a non-empty 2-D feature matrix, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("the feature rows hold NaN or infinity")
        starts = np.array([0, len(x)], dtype=np.int64)
        mean, var, scale = scaler_moments(x, starts)
        z = (x - mean) / scale
        svm = fit_svm(z, self.nu, resolve_gamma(self.gamma, z))
        features = tuple(f"x{j}" for j in range(x.shape[1]))
        bundle = _bundle([("", "")], features, 2, self.offset_margin, (mean, var, scale), [len(x)], [svm], [{}],
                         score_form="kernel")
        self.pipeline_ = bundle.to_sklearn("", "")
        self.pipeline_.steps[-1][1].fit_status_ = svm.fit_status
        self.n_support_ = len(svm.support)
        self.fit_status_ = svm.fit_status
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Signed distance to the boundary; negative = anomaly."""
        result: np.ndarray = self.pipeline_.decision_function(X)
        return result

    def predict(self, X: np.ndarray) -> np.ndarray:
        """scikit-learn's convention: -1 = anomaly, 1 = normal."""
        result: np.ndarray = self.pipeline_.predict(X)
        return result


# -- a shard of series ---------------------------------------------------------------------------------


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


def hash_rows(ts: np.ndarray, values: np.ndarray) -> str:
    digest = hashlib.sha256(ts.astype(np.int64).tobytes())
    digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()[:16]


def _train_flag_rates(bundle: ReleaseBundle, feats: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """Per model, the share of its own training windows it flags (vectorised kernel, all models at once)."""
    from fleetscore.training.kernel import decision_function, predictions

    lengths = np.array([b - a for a, b in spans], dtype=np.int64)
    begins = np.array([a for a, _ in spans], dtype=np.int64)
    rows = np.repeat(begins - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) + np.arange(lengths.sum())
    owner = np.repeat(np.arange(len(spans)), lengths)
    flagged = predictions(decision_function(bundle, feats[rows], owner)).astype(np.float64)
    result: np.ndarray = np.add.reduceat(flagged, np.concatenate([[0], np.cumsum(lengths)[:-1]])) / lengths
    return result


def fit_shard(
    windows: pd.DataFrame,
    config: TrainingConfig,
    exclude: frozenset[tuple[str, str]] | set[tuple[str, str]] = frozenset(),
    version: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> ShardFit:
    """Fit one model per (device, sensor) series of ``windows`` (sorted by device, sensor, ts) with the
    detector family ``config.detector`` (see :mod:`training.detectors`)."""
    from fleetscore.training.detectors import get_detector

    return get_detector(config.detector).fit_shard(windows, config, frozenset(exclude), version, on_progress)


def fit_ocsvm_shard(  # noqa: PLR0915  one pass over the shard's series; its state stays local on the hot path
    windows: pd.DataFrame,
    config: TrainingConfig,
    exclude: frozenset[tuple[str, str]] | set[tuple[str, str]] = frozenset(),
    version: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> ShardFit:
    """Fit one model per (device, sensor) series of ``windows`` (sorted by device, sensor, ts).

    Series in ``exclude`` are skipped (reason ``excluded by validation``), as are series with fewer than
    ``config.min_rows`` windows. A series that cannot be fitted (non-finite features, a libsvm failure)
    is recorded in ``failed``; the others go on.
    """
    started = time.perf_counter()
    check_config(config)
    starts = series_starts(windows)
    feats = fill_unknown(compute_features(windows, config.features, config.rolling_window, starts=starts), starts)
    first = starts[:-1]
    lengths = np.diff(starts)
    result = ShardFit(bundle=ReleaseBundle.empty(config.features, config.rolling_window), rows=len(windows))
    if len(windows) == 0:
        result.seconds = time.perf_counter() - started
        return result
    devices = windows["device"].take(first).to_numpy()
    sensors = windows["sensor"].take(first).to_numpy()
    ts = windows["ts"].to_numpy(dtype="datetime64[ns]")
    values = np.vstack([windows[c].to_numpy(dtype=np.float64) for c in ("value", "value_min", "value_max")])
    with np.errstate(invalid="ignore", over="ignore"):
        mean, var, scale = scaler_moments(feats, starts)
        z = (feats - np.repeat(mean, lengths, axis=0)) / np.repeat(scale, lengths, axis=0)
    # unknown features were filled in; a NaN reading is bad data and fails its series
    finite = np.logical_and.reduceat(np.isfinite(z).all(axis=1) & np.isfinite(values).all(axis=0), first)
    keys: list[tuple[str, str]] = []
    fits: list[SVMFit] = []
    fitted: list[int] = []
    records: list[dict[str, Any]] = []
    total = len(first)
    for i in range(total):
        key = (str(devices[i]), str(sensors[i]))
        a, b = int(starts[i]), int(starts[i + 1])
        if key in exclude:
            result.skipped[key] = "excluded by validation"
        elif b - a < config.min_rows:
            result.skipped[key] = f"{b - a} windows, fewer than min_rows={config.min_rows}"
        elif not finite[i]:
            result.failed[key] = "ValueError: a feature is NaN or infinite in the training windows"
            log.warning("series %s/%s: not fitted: a feature is NaN or infinite", key[0], key[1])
        else:
            try:
                svm = fit_svm(z[a:b], config.nu, resolve_gamma(config.gamma, z[a:b]))
            except (ValueError, ArithmeticError) as exc:
                result.failed[key] = f"{type(exc).__name__}: {exc}"
                log.warning("series %s/%s: fit failed: %s", key[0], key[1], exc)
            else:
                keys.append(key)
                fits.append(svm)
                fitted.append(i)
                records.append({
                    "device": key[0], "sensor": key[1], "trained_in": version,
                    "train_start": str(pd.Timestamp(ts[a])), "train_end": str(pd.Timestamp(ts[b - 1])),
                    "rows": b - a, "data_hash": hash_rows(ts[a:b], values[:, a:b]),
                    "metrics": {"n_support": len(svm.support), "fit_status": svm.fit_status},
                })
        if on_progress is not None:
            on_progress(i + 1, total)
    if keys:
        idx = np.array(fitted, dtype=np.int64)
        bundle = _bundle(keys, tuple(config.features), config.rolling_window, config.offset_margin,
                         (mean[idx], var[idx], scale[idx]), [int(lengths[i]) for i in fitted], fits, records)
        spans = [(int(starts[i]), int(starts[i + 1])) for i in fitted]
        if config.target_false_alarm_rate > 0:
            calibrate(bundle, z, spans, config)
        for record, rate in zip(records, _train_flag_rates(bundle, feats, spans), strict=True):
            record["metrics"]["train_flag_rate"] = float(rate)
        result.bundle = bundle
    result.seconds = time.perf_counter() - started
    return result


# -- calibration -------------------------------------------------------------------------------------


def calibration_folds(length: int, block: int = CALIBRATION_BLOCK) -> np.ndarray:
    """Fold (0 or 1) of each of a series' ``length`` training windows: blocks of ``block`` windows alternate,
    so both folds cover the whole training range (cycles, setpoints) and neighbours share a fold."""
    return (np.arange(length) // block % 2).astype(np.int8)


def _normalised_log_scores(z: np.ndarray, svm: SVMFit) -> np.ndarray:
    """``log(sum_j a_j K(z, v_j) / sum_j a_j)`` of the scaled rows ``z`` (a logsumexp: exact far out)."""
    diff = z[:, None, :] - svm.support_vectors[None, :, :]
    exponent = np.log(svm.dual_coef)[None, :] - svm.gamma * np.einsum("rsf,rsf->rs", diff, diff)
    top = exponent.max(axis=1)
    result: np.ndarray = top + np.log(np.exp(exponent - top[:, None]).sum(axis=1)) - math.log(svm.dual_coef.sum())
    return result


def calibrate(bundle: ReleaseBundle, z: np.ndarray, spans: list[tuple[int, int]], config: TrainingConfig) -> None:
    """Set each model's threshold (``intercept``) to the ``target_false_alarm_rate`` quantile of its
    cross-fitted scores, and record the target and the rate reached on the calibration windows in its
    manifest record (``metrics.calibration``). A series too short for two folds keeps its boundary."""
    target = config.target_false_alarm_rate
    records = bundle.manifest["series"]
    for i, (a, b) in enumerate(spans):
        folds = calibration_folds(b - a)
        rows = z[a:b]
        if min(int((folds == 0).sum()), int((folds == 1).sum())) < MIN_CALIBRATION_ROWS:
            records[i]["metrics"]["calibration"] = {"target": target, "reached": None, "windows": 0}
            continue
        scores = np.empty(b - a)
        for fold in (0, 1):
            part = folds == fold
            try:
                svm = fit_svm(np.ascontiguousarray(rows[part]), config.nu, float(bundle.gamma[i]))
            except (ValueError, ArithmeticError):
                break
            scores[~part] = _normalised_log_scores(rows[~part], svm)
        else:
            threshold = float(np.quantile(scores, target))
            v0, v1 = int(bundle.sv_offsets[i]), int(bundle.sv_offsets[i + 1])
            bundle.intercept[i] = -math.log(float(bundle.dual_coef[v0:v1].sum())) - threshold
            records[i]["metrics"]["calibration"] = {"target": target, "reached": float((scores < threshold).mean()),
                                                    "windows": b - a}
            continue
        records[i]["metrics"]["calibration"] = {"target": target, "reached": None, "windows": 0}
