"""Score every model of a release bundle on a windows DataFrame at once (vectorised RBF kernel).

For model ``m`` with scaler ``(mu, s)``, support vectors ``v_j``, dual coefficients ``a_j > 0``,
intercept ``b`` and ``gamma = g``, the decision function of a window with features ``x`` is

    f(x) = sum_j a_j exp(-g ||z - v_j||^2) + b,   z = (x - mu) / s

with the exponent expanded as ``W . Z``: ``W = [2 g v / s, -g |v|^2, -g]`` per support vector and
``Z = [x - mu, 1, |z|^2]`` per row. Models are grouped into cache-sized blocks (sorted by support-vector
count, so little padding); per block ONE batched matrix product gives every exponent, ONE ``np.exp`` in
place every kernel value, and ONE product with the dual coefficients (zero for padded support vectors)
the sums. The Python loop runs once per block, never per row or per model; temporaries stay
block-sized (fresh large arrays cost page faults).
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from training.bundle import ReleaseBundle
from training.features import compute_features, series_starts

# padded kernel values per block (rows x support vectors x models): 2 MB of float64, the L2 cache
BLOCK_ELEMENTS = 262_144
MAX_BLOCK_MODELS = 512
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
    # rows scored per series: those with ts >= start, a suffix of each series (sorted by ts)
    kept = lengths.copy()
    if start is not None and len(windows):
        late = windows["ts"].to_numpy() >= np.datetime64(pd.Timestamp(start).to_datetime64())
        kept = np.add.reduceat(late, starts[:-1]).astype(np.int64)
    kept[model < 0] = 0
    present = kept > 0
    run_len = kept[present]
    run_start = starts[1:][present] - run_len
    out_start = np.concatenate([[0], np.cumsum(run_len)[:-1]]).astype(np.int64)
    total = int(run_len.sum())
    scores = np.empty(total, dtype=np.float64)
    if total:
        _score_runs(bundle, feats, run_start, run_len, model[present], out_start, scores)
    columns = ["device", "sensor", "ts", "value"]
    if total == len(windows):
        out = windows[columns].reset_index(drop=True)
    else:
        rows = np.repeat(run_start - out_start, run_len) + np.arange(total)
        out = windows.take(rows)[columns].reset_index(drop=True)
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
    change = np.flatnonzero(row_model[1:] != row_model[:-1]) + 1  # a bool pass, not an int64 diff
    run_start = np.concatenate([[0], change]).astype(np.int64)
    run_len = np.diff(np.append(run_start, n))
    _score_runs(bundle, np.ascontiguousarray(feats), run_start, run_len, row_model[run_start], run_start, scores)
    return scores


def _score_runs(
    bundle: ReleaseBundle,
    feats: np.ndarray,
    run_start: np.ndarray,
    run_len: np.ndarray,
    run_model: np.ndarray,
    out_start: np.ndarray,
    scores: np.ndarray,
) -> None:
    """Score run ``k`` (rows ``run_start[k]:+run_len[k]`` of ``feats``, model ``run_model[k]``) into
    ``scores[out_start[k]:+run_len[k]]``, a cache-sized block of models at a time.

    The kernel value of row ``z`` (scaled features) and support vector ``v`` is ``exp(W . Z)`` with
    ``Z = [z, 1, |z|^2]`` and ``W = [2 g v, -g |v|^2, -g]``, so ``W . Z = -g ||z - v||^2``. ``W`` of every
    support vector is computed once; a block gathers its rows and vectors, then does one matrix product,
    one ``exp`` in place and one product with the dual coefficients (zero for padded support vectors,
    which masks them exactly). Temporaries stay block-sized: fresh large arrays cost page faults.
    """
    n_feat = feats.shape[1]
    w_all, coef_all, reach_sv = _support_terms(bundle)
    inv_var = 1.0 / (bundle.scale * bundle.scale)
    flat = np.ascontiguousarray(feats).reshape(-1)
    n_support = bundle.n_support
    n_sv = n_support[run_model]
    order = np.argsort(n_sv, kind="stable")
    i = 0
    while i < len(order):
        # the largest block from i whose padded size (models x rows x support vectors) fits BLOCK_ELEMENTS;
        # n_sv grows along `order`, so the padded size grows with the block
        cand = order[i:i + MAX_BLOCK_MODELS]
        max_rows_acc = np.maximum.accumulate(run_len[cand])
        size = np.arange(1, len(cand) + 1) * max_rows_acc * np.maximum(n_sv[cand], 1)
        take = max(1, int(np.searchsorted(size, BLOCK_ELEMENTS, side="right")))
        runs = order[i:i + take]
        i += take
        max_rows, max_sv = int(max_rows_acc[take - 1]), int(n_sv[cand[take - 1]])
        models, lengths = run_model[runs], run_len[runs]
        r = np.arange(max_rows)
        padded = bool((lengths != max_rows).any())
        offset = (np.minimum(r[None, :], lengths[:, None] - 1) if padded else r[None, :])  # pad: the last row
        if max_sv == 0:
            block = np.broadcast_to(bundle.intercept[models][:, None], (len(runs), max_rows))
        else:
            # Z = [u, 1, |z|^2] of the block's rows (u = x - mean, z = u / scale), feature-major
            # (F + 2, B, R): every pass runs over one contiguous array
            flat_rows = (run_start[runs][:, None] + offset) * n_feat
            zt = np.empty((n_feat + 2, len(runs), max_rows), dtype=np.float64)
            norm = zt[n_feat + 1]
            for f in range(n_feat):  # u = x - mean; the 1 / scale of z = u / scale is folded into W
                uf = zt[f]
                if f:
                    flat_rows += 1
                np.take(flat, flat_rows, out=uf)
                uf -= bundle.mean[models, f][:, None]
                if f == 0:
                    np.multiply(uf, uf, out=norm)
                    norm *= inv_var[models, f][:, None]
                else:
                    norm += uf * uf * inv_var[models, f][:, None]
            zt[n_feat] = 1.0
            s = np.arange(max_sv)
            sv_mask = s[None, :] < n_sv[runs][:, None]
            sv_idx = np.where(sv_mask, bundle.sv_offsets[models][:, None] + s[None, :], 0)
            expo = np.matmul(w_all[sv_idx], zt.transpose(1, 0, 2))  # (B, S, R): -g ||z - v||^2 <= 0
            # exp() of a result below ~1e-308 (exponent < -708) takes a slow path (100x slower); such terms
            # are far below the tolerance: clip the exponents, only in blocks where a row can be that far
            gamma = bundle.gamma[models]
            reach = np.sqrt(norm.max(axis=1)) + reach_sv[models]
            if float((gamma * reach * reach).max()) > -_FLOOR:
                np.maximum(expo, _FLOOR, out=expo)
            np.exp(expo, out=expo)
            coef = np.where(sv_mask, coef_all[sv_idx], 0.0)[:, None, :]  # (B, 1, S)
            block = np.matmul(coef, expo)[:, 0, :]  # dual-coefficient-weighted sum over support vectors
            block += bundle.intercept[models][:, None]
        idx = out_start[runs][:, None] + r[None, :]
        if padded:
            mask = r[None, :] < lengths[:, None]
            scores[idx[mask]] = block[mask]
        else:
            scores[idx] = block


def _support_terms(bundle: ReleaseBundle) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``W = [2 g v / s, -g |v|^2, -g]`` of every support vector (``(S, F + 2)``, ``s`` its model's scale,
    so that ``W`` applies to ``u = x - mean``), the dual coefficients, and per model the largest ``|v|``
    (to know when an exponent can underflow)."""
    sv = bundle.support_vectors
    n_feat = sv.shape[1]
    n_support = bundle.n_support
    gamma = np.repeat(bundle.gamma, n_support)
    sv_norm = np.einsum("sf,sf->s", sv, sv)
    w = np.empty((len(sv), n_feat + 2), dtype=np.float64)
    np.multiply(sv, (2.0 * gamma)[:, None], out=w[:, :n_feat])
    w[:, :n_feat] /= np.repeat(bundle.scale, n_support, axis=0)
    w[:, n_feat] = -gamma * sv_norm
    w[:, n_feat + 1] = -gamma
    reach = np.zeros(len(bundle.keys), dtype=np.float64)
    has = n_support > 0
    if has.any():
        reach[has] = np.sqrt(np.maximum.reduceat(sv_norm, bundle.sv_offsets[:-1][has]))
    return w, np.asarray(bundle.dual_coef, dtype=np.float64), reach
