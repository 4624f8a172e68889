"""Score every model of a release bundle on a windows DataFrame at once (vectorised RBF kernel).

For model ``m`` with scaler ``(mu, s)``, support vectors ``v_j``, dual coefficients ``a_j > 0``,
intercept ``b`` and ``gamma = g``, the decision function of a window with features ``x`` is

    f(x) = sum_j a_j exp(-g ||z - v_j||^2) + b,   z = (x - mu) / s

which is expanded as ``exp(z . (2 g v_j) + (log a_j - g ||v_j||^2) - g ||z||^2)``. Models are grouped
into blocks (sorted by support-vector count, so little padding); per block the rows and support
vectors are padded, then ONE batched matrix product and ONE ``np.exp`` give every kernel value. The
Python loop runs once per block, never per row.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from training.bundle import ReleaseBundle
from training.features import compute_features, series_starts

# padded kernel values per block (rows x support vectors x models); ~ 8 MB of float64, cache-sized
BLOCK_ELEMENTS = 1_000_000
MAX_BLOCK_MODELS = 256
_PAD = -1e300  # exponent of a padded support vector
_FLOOR = -700.0  # exponents are clipped here: exp(-700) ~ 1e-304, far below the 1e-9 tolerance

OUTPUT_COLUMNS = ("device", "sensor", "ts", "value", "score", "prediction")


def _series(bundle: ReleaseBundle, windows: pd.DataFrame) -> tuple[np.ndarray, list[tuple[str, str]], np.ndarray]:
    """Series starts, their keys, and each series' model index (-1 when not in the bundle)."""
    starts = series_starts(windows)
    if len(windows) == 0:
        return starts, [], np.zeros(0, dtype=np.int64)
    first = starts[:-1]
    devices = windows["device"].take(first).to_numpy()
    sensors = windows["sensor"].take(first).to_numpy()
    keys = [(str(d), str(s)) for d, s in zip(devices, sensors, strict=True)]
    model = np.empty(len(keys), dtype=np.int64)
    for i, (d, s) in enumerate(keys):
        try:
            model[i] = bundle.index(d, s)
        except KeyError:
            model[i] = -1
    return starts, keys, model


def missing_series(bundle: ReleaseBundle, windows: pd.DataFrame) -> list[tuple[str, str]]:
    """The (device, sensor) series of ``windows`` that have no model in ``bundle`` (not scored)."""
    _, keys, model = _series(bundle, windows)
    return [key for key, m in zip(keys, model, strict=True) if m < 0]


def kernel_evaluations(bundle: ReleaseBundle, windows: pd.DataFrame) -> int:
    """Sum over the bundle's series in ``windows`` of rows x support vectors (the kernel's work)."""
    starts, _, model = _series(bundle, windows)
    rows = np.diff(starts)
    present = model >= 0
    return int((rows[present] * bundle.n_support[model[present]]).sum())


def score_windows(bundle: ReleaseBundle, windows: pd.DataFrame, start: datetime | None = None) -> pd.DataFrame:
    """Decision function and label of every window of the bundle's series with ``ts >= start``.

    ``windows`` has the ingestion shape, sorted by device, sensor, ts, and may hold
    ``bundle.context_windows`` windows before ``start`` per series (read for the features, not
    returned). Returns columns device, sensor, ts, value, score (float64, negative = anomaly) and
    prediction (int8, 1 = anomaly) in input order. Series with no model are left out: find them with
    :func:`missing_series`.
    """
    starts, _, model = _series(bundle, windows)
    feats = compute_features(windows, bundle.features, bundle.rolling_window, starts=starts)
    lengths = np.diff(starts)
    row_model = np.repeat(model, lengths)
    keep = row_model >= 0
    if start is not None:
        keep &= windows["ts"].to_numpy() >= np.datetime64(pd.Timestamp(start).to_datetime64())
    rows = np.flatnonzero(keep)
    scores = _decision(bundle, feats[rows], row_model[rows])
    out = windows.iloc[rows][["device", "sensor", "ts", "value"]].reset_index(drop=True)
    out["score"] = scores
    out["prediction"] = (scores < 0).astype(np.int8)
    return out


def decision_function(bundle: ReleaseBundle, features: np.ndarray, row_model: np.ndarray) -> np.ndarray:
    """Decision values of feature rows (``(n, F)``) under the models ``row_model`` (``(n,)``, indices
    into the bundle). Rows of a model must be contiguous."""
    return _decision(bundle, np.asarray(features, dtype=np.float64), np.asarray(row_model, dtype=np.int64))


def _decision(bundle: ReleaseBundle, feats: np.ndarray, row_model: np.ndarray) -> np.ndarray:
    n = feats.shape[0]
    scores = np.empty(n, dtype=np.float64)
    if n == 0:
        return scores
    # contiguous runs of one model
    change = np.flatnonzero(np.diff(row_model)) + 1
    run_start = np.concatenate([[0], change]).astype(np.int64)
    run_len = np.diff(np.append(run_start, n))
    run_model = row_model[run_start]
    n_sv = bundle.n_support[run_model]
    order = np.argsort(n_sv, kind="stable")
    feats_t = np.ascontiguousarray(feats.T)
    i = 0
    while i < len(order):
        # the largest block from i whose padded size (models x rows x support vectors) fits BLOCK_ELEMENTS;
        # n_sv grows along `order`, so the padded size grows with the block
        cand = order[i:i + MAX_BLOCK_MODELS]
        max_rows_acc = np.maximum.accumulate(run_len[cand])
        size = np.arange(1, len(cand) + 1) * max_rows_acc * np.maximum(n_sv[cand], 1)
        take = max(1, int(np.searchsorted(size, BLOCK_ELEMENTS, side="right")))
        j = i + take
        max_rows, max_sv = int(max_rows_acc[take - 1]), int(n_sv[cand[take - 1]])
        runs = order[i:j]
        scores_block = _block(bundle, feats_t, run_start[runs], run_len[runs], run_model[runs], max_rows, max_sv)
        mask = np.arange(max_rows)[None, :] < run_len[runs][:, None]
        idx = run_start[runs][:, None] + np.arange(max_rows)[None, :]
        scores[idx[mask]] = scores_block[mask]
        i = j
    return scores


def _block(
    bundle: ReleaseBundle,
    feats_t: np.ndarray,
    run_start: np.ndarray,
    run_len: np.ndarray,
    models: np.ndarray,
    max_rows: int,
    max_sv: int,
) -> np.ndarray:
    """Decision values ``(B, max_rows)`` of one block of models (padded rows are garbage).

    Exponents are ``W @ Z`` with ``W = [2 g v, log a - g |v|^2, 1]`` per support vector (``(B, S, F + 2)``)
    and ``Z = [z, 1, -g |z|^2]`` per row (``(B, F + 2, R)``): one matrix product, one ``exp``, one sum.
    """
    b = len(models)
    n_feat = feats_t.shape[0]
    gamma = bundle.gamma[models]
    intercept = bundle.intercept[models]
    if max_sv == 0:
        return np.broadcast_to(intercept[:, None], (b, max_rows)).copy()
    r = np.arange(max_rows)
    row_idx = run_start[:, None] + np.minimum(r[None, :], run_len[:, None] - 1)  # pad with the last row
    zt = np.empty((b, n_feat + 2, max_rows), dtype=np.float64)
    norm = zt[:, n_feat + 1, :]
    norm[...] = 0.0
    for f in range(n_feat):  # scaler folded in, feature by feature (F is small)
        zf = zt[:, f, :]
        np.take(feats_t[f], row_idx, out=zf)
        zf -= bundle.mean[models, f][:, None]
        zf /= bundle.scale[models, f][:, None]
        norm += zf * zf
    norm *= -gamma[:, None]
    zt[:, n_feat, :] = 1.0
    s = np.arange(max_sv)
    counts = bundle.n_support[models]
    sv_mask = s[None, :] < counts[:, None]
    sv_idx = np.where(sv_mask, bundle.sv_offsets[models][:, None] + s[None, :], 0)
    sv = bundle.support_vectors[sv_idx]  # (B, S, F)
    w = np.zeros((b, max_sv, n_feat + 2), dtype=np.float64)
    w[:, :, :n_feat] = sv * (2.0 * gamma)[:, None, None]
    with np.errstate(divide="ignore"):
        const = np.log(bundle.dual_coef[sv_idx]) - gamma[:, None] * np.einsum("bsf,bsf->bs", sv, sv)
    w[:, :, n_feat] = const
    w[:, :, n_feat + 1] = 1.0
    w[~sv_mask] = 0.0
    w[:, :, n_feat][~sv_mask] = _PAD
    expo = np.matmul(w, zt)  # (B, S, R)
    np.maximum(expo, _FLOOR, out=expo)  # exp() of subnormal results is slow; exp(-700) ~ 1e-304
    np.exp(expo, out=expo)
    result: np.ndarray = np.matmul(np.ones(max_sv), expo)  # sum over support vectors
    result += intercept[:, None]
    return result
