"""Score every model of a release bundle on a windows DataFrame at once (vectorised RBF kernel).

For model ``m`` with scaler ``(mu, s)``, support vectors ``v_j``, dual coefficients ``a_j > 0``,
intercept ``b`` and ``gamma = g``, the decision function of a window with features ``x`` is

    f(x) = sum_j a_j exp(-g ||z - v_j||^2) + b,   z = (x - mu) / s

with the exponent expanded as ``W . Z``: ``W = [2 g v / s, -g |v|^2, -g]`` per support vector and
``Z = [x - mu, 1, |z|^2]`` per row. Models are grouped into blocks (sorted by support-vector count, so
little padding). A block gathers its rows into ``Z``; then, a few models at a time (so that the
exponents stay in the core's cache through their three passes), ONE batched matrix product gives the
exponents, ONE ``np.exp`` in place the kernel values and ONE product with the dual coefficients (zero
for padded support vectors) the sums. The Python loops run per block and per chunk of models, never
per row or per model; scratch arrays are reused (fresh large arrays cost page faults).
"""

from __future__ import annotations

import logging
import math
from datetime import datetime

import numpy as np
import pandas as pd

from fleetscore.training.bundle import ReleaseBundle
from fleetscore.training.features import compute_features, series_starts

log = logging.getLogger(__name__)

# padded kernel values (rows x support vectors x models) per block, whose rows are gathered at once, and
# per chunk of it, whose exponents go through their three passes at once: 512 KB of float64 stays in
# the core's L2 cache. The sizes were chosen by benchmarks/score.py on a 2-core Xeon (2 MB L2 per core).
BLOCK_ELEMENTS = 1_048_576
INNER_ELEMENTS = 65_536
MAX_BLOCK_MODELS = 2048
_FLOOR = -700.0  # exponents are clipped here: exp(-700) ~ 1e-304, far below the 1e-9 tolerance
_LOG_EXACT = 1e-250  # log form: a kernel sum below this is recomputed as an exact logsumexp

OUTPUT_COLUMNS = ("device", "sensor", "ts", "value", "score", "prediction", "reason")


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


def score_windows(bundle: ReleaseBundle, windows: pd.DataFrame, start: datetime | None = None,
                  feats: np.ndarray | None = None) -> pd.DataFrame:
    """Decision function and label of every window of the bundle's series with ``ts >= start``.

    ``windows`` has the ingestion shape, sorted by device, sensor, ts, and may hold
    ``bundle.context_windows`` windows before ``start`` per series (read for the features, not
    returned). Returns columns device, sensor, ts, value, score (float64, negative = anomaly),
    prediction (int8, 1 = anomaly) and reason (the feature that drove the score, :func:`reasons`) in
    input order. Series with no model are left out: find them with
    :func:`missing_series`. ``feats``: the bundle's features of ``windows`` when the caller has them.
    """
    starts, _, model = _series(bundle, windows)
    if feats is None:
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
    from fleetscore.training.detectors import get_detector

    moments = window_moments(windows) if get_detector(bundle.detector).by_window and total else None
    if total:
        with np.errstate(over="ignore", invalid="ignore"):  # a huge value: handled in the kernel (fmax/fmin)
            _score_runs(bundle, feats, run_start, run_len, model[present], out_start, scores, moments)
    columns = ["device", "sensor", "ts", "value"]
    rows = np.repeat(run_start - out_start, run_len) + np.arange(total)
    if total == len(windows):
        out = windows[columns].reset_index(drop=True)
    else:
        out = windows.take(rows)[columns].reset_index(drop=True)
    out["score"] = scores
    out["prediction"] = predictions(scores)
    out["reason"] = reasons(bundle, feats[rows], np.repeat(model[present], run_len),
                            None if moments is None else moments[rows])
    if total and not np.isfinite(scores).all():
        bad = out.loc[~np.isfinite(scores), ["device", "sensor"]].drop_duplicates()
        first = bad.iloc[0]
        log.warning("%d non-finite scores in %d series (first %s/%s): flagged as anomalies",
                    int((~np.isfinite(scores)).sum()), len(bad), first["device"], first["sensor"])
    return out


def reasons(bundle: ReleaseBundle, feats: np.ndarray, row_model: np.ndarray,
            moments: np.ndarray | None = None) -> np.ndarray:
    """What drove each row's score, as the bundle's family explains it (``Detector.reasons``): the
    feature furthest from the series' training centre, or ``sensor:feature`` for a family that judges
    a device's sensors together. An object array, one name per row."""
    from fleetscore.training.detectors import get_detector

    return get_detector(bundle.detector).reasons(bundle, feats, row_model, moments)


def window_moments(windows: pd.DataFrame) -> np.ndarray:
    """An id per row of ``windows``, the same for the rows of one device and window start."""
    device = pd.factorize(windows["device"].to_numpy())[0].astype(np.int64)
    ts = pd.factorize(windows["ts"].to_numpy())[0].astype(np.int64)
    moments: np.ndarray = device * (int(ts.max(initial=0)) + 1) + ts
    return moments


def predictions(scores: np.ndarray) -> np.ndarray:
    """Labels of decision values (int8, 1 = anomaly): negative, and NaN too, is an anomaly.

    The kernel gives no NaN for finite features; should one come (a feature that overflows), the
    window is flagged, never written as a normal prediction."""
    with np.errstate(invalid="ignore"):
        return np.logical_not(scores >= 0).astype(np.int8)


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
    _score_runs(bundle, feats, run_start, run_len, row_model[run_start], run_start, scores)
    return scores


def _score_runs(  # noqa: PLR0915  the vectorised kernel: its scratch arrays are reused within one frame
    bundle: ReleaseBundle,
    feats: np.ndarray,
    run_start: np.ndarray,
    run_len: np.ndarray,
    run_model: np.ndarray,
    out_start: np.ndarray,
    scores: np.ndarray,
    moments: np.ndarray | None = None,
) -> None:
    """Score run ``k`` (rows ``run_start[k]:+run_len[k]`` of ``feats``, model ``run_model[k]``) into
    ``scores[out_start[k]:+run_len[k]]``, a block of models at a time.

    The kernel value of a row and a support vector ``v`` is ``exp(W . Z)`` with ``Z = [u, 1, |z|^2]``
    (``u = x - mean``, ``z = u / s``) and ``W = [2 g v / s, -g |v|^2, -g]``, so that
    ``W . Z = -g ||z - v||^2``. ``W`` of every support vector is computed once. Runs are ordered by
    support-vector count and their per-model terms gathered once, so a block slices them. A block
    gathers its rows into ``Z``; then, a few models at a time (so that the exponents stay in the core's
    cache through their three passes), one batched matrix product gives the exponents, one ``exp`` in
    place the kernel values and one product with the dual coefficients (zero for padded support
    vectors, which masks them exactly) the sums. Scratch arrays are reused (:class:`_Workspace`).
    """
    feats = _fill_unknown(bundle, feats, run_start, run_len, run_model)
    if bundle.detector != "ocsvm":  # another family scores its own arrays
        from fleetscore.training.detectors import get_detector

        within = np.arange(int(run_len.sum())) - np.repeat(np.cumsum(run_len) - run_len, run_len)
        owner = np.repeat(run_model, run_len)
        rows = np.repeat(run_start, run_len) + within
        scores[np.repeat(out_start, run_len) + within] = get_detector(bundle.detector).decision(
            bundle, feats[rows], owner, None if moments is None else moments[rows])
        return
    n_feat = feats.shape[1]
    w_all, coef_all, reach_sv = _support_terms(bundle)
    pad_row = len(w_all) - 1  # the zero row of W, with coefficient 0
    # one contiguous array per feature (free when the features are column-major, as computed)
    columns = feats.T if feats.flags.f_contiguous else np.ascontiguousarray(feats.T)
    order = np.argsort(bundle.n_support[run_model], kind="stable")
    # per-run terms in block order: a block slices them
    model = run_model[order]
    length = run_len[order]
    n_sv = bundle.n_support[model]
    first_row = run_start[order]
    first_out = out_start[order]
    mean = bundle.mean[model]
    inv_var = 1.0 / (bundle.scale[model] * bundle.scale[model])
    log_form = bundle.score_form == "log"
    # the log form adds its intercept after the log of the sums (_to_log)
    intercept = np.zeros(len(model)) if log_form else bundle.intercept[model]
    gamma, reach = bundle.gamma[model], reach_sv[model]
    sv_first = bundle.sv_offsets[model]
    r_all, s_all = np.arange(int(length.max())), np.arange(int(n_sv.max()) + 1)
    work = _Workspace()
    # the usual fleet: runs of one length at one spacing, written in order; a block then copies whole
    # rows of strided views instead of gathering (and scattering) element by element
    uniform = _uniform_layout(run_start, run_len, out_start)
    if uniform:
        rows_per_run, spacing = uniform
        itemsize = columns.itemsize
        views = [np.lib.stride_tricks.as_strided(columns[f][run_start[0]:], shape=(len(run_len), rows_per_run),
                                                 strides=(spacing * itemsize, itemsize), writeable=False)
                 for f in range(n_feat)]
        scores_by_run = scores[: len(run_len) * rows_per_run].reshape(len(run_len), rows_per_run)
    for a, b in _blocks(length, n_sv):
        n_runs, max_rows, max_sv = b - a, int(length[a:b].max()), int(n_sv[b - 1])
        r = r_all[:max_rows]
        padded = int(length[a:b].min()) != max_rows
        if padded:  # a short run repeats its last row; its extra scores are not written
            offset = np.minimum(r[None, :], length[a:b, None] - 1)
        if max_sv == 0:
            block = np.broadcast_to(intercept[a:b, None], (n_runs, max_rows))
        else:
            # Z = [u, 1, |z|^2] of the block's rows (u = x - mean, z = u / scale), feature-major
            # (F + 2, B, R): every pass runs over one contiguous array
            if not uniform:
                rows = work.array("rows", (n_runs, max_rows), np.int64)
                np.add(first_row[a:b, None], offset if padded else r, out=rows)
            zt = work.array("z", (n_feat + 2, n_runs, max_rows), np.float64)
            norm, square = zt[n_feat + 1], work.array("square", (n_runs, max_rows), np.float64)
            for f in range(n_feat):  # the 1 / scale of z = u / scale is folded into W
                uf = zt[f]
                # valid indices: mode "raise" would buffer `out`
                if uniform:
                    np.take(views[f], order[a:b], axis=0, out=uf, mode="clip")
                else:
                    np.take(columns[f], rows, out=uf, mode="clip")
                uf -= mean[a:b, f, None]
                np.multiply(uf, uf, out=square if f else norm)
                (square if f else norm).__imul__(inv_var[a:b, f, None])
                if f:
                    norm += square
            zt[n_feat] = 1.0
            # padded slots point at the zero row appended to W (exponent 0, kernel value 1) and a zero
            # coefficient: never at another model's support vector, whose exponent for this model's rows
            # can pass 709 (exp = inf, 0 * inf = NaN) when the two series' scales differ a lot
            sv_mask = s_all[None, :max_sv] < n_sv[a:b, None]
            sv_idx = np.where(sv_mask, sv_first[a:b, None] + s_all[None, :max_sv], pad_row)
            w_block, z_block = w_all[sv_idx], zt.transpose(1, 0, 2)  # (B, S, F + 2), (B, F + 2, R)
            coef = coef_all[sv_idx][:, None, :]  # (B, 1, S)
            # exp() of a result below ~1e-308 (exponent < -708) takes a slow path (100x slower); such terms
            # are far below the tolerance: clip the exponents, only in blocks where a row can be that far
            far = np.sqrt(norm.max(axis=1)) + reach[a:b]
            clip = float((gamma[a:b] * far * far).max()) > -_FLOOR
            sums = work.array("sums", (n_runs, 1, max_rows), np.float64)
            step = max(1, INNER_ELEMENTS // (max_sv * max_rows))
            exponents = work.array("exponents", (min(step, n_runs), max_sv, max_rows), np.float64)
            for c in range(0, n_runs, step):
                d = min(c + step, n_runs)
                expo = exponents[: d - c]
                np.matmul(w_block[c:d], z_block[c:d], out=expo)  # (b, S, R): -g ||z - v||^2 <= 0
                if clip:  # a far row: the exponent is -g|z - v|^2 <= 0; fmax/fmin also map the NaN of
                    # inf - inf (|z|^2 overflowing for a huge finite value) to the floor
                    np.fmax(expo, _FLOOR, out=expo)
                    np.fmin(expo, 0.0, out=expo)
                np.exp(expo, out=expo)
                np.matmul(coef[c:d], expo, out=sums[c:d])  # the dual-coefficient-weighted sum
            block = sums[:, 0, :]
            block += intercept[a:b, None]
        if padded:
            keep = r[None, :] < length[a:b, None]
            scores[(first_out[a:b, None] + r[None, :])[keep]] = block[keep]
        elif uniform:
            scores_by_run[order[a:b]] = block
        else:
            scores[first_out[a:b, None] + r[None, :]] = block
    if log_form:
        _to_log(bundle, feats, run_start, run_len, run_model, out_start, scores)


def _fill_unknown(bundle: ReleaseBundle, feats: np.ndarray, run_start: np.ndarray, run_len: np.ndarray,
                  run_model: np.ndarray) -> np.ndarray:
    """``feats`` with each unknown (NaN) feature of a scored row read as its model's mean (a z of 0);
    a copy when there is one (the caller's array is left alone)."""
    unknown = np.isnan(feats)
    if not unknown.any():
        return feats
    owner = np.full(len(feats), -1, dtype=np.int64)
    within = np.arange(int(run_len.sum())) - np.repeat(np.cumsum(run_len) - run_len, run_len)
    owner[np.repeat(run_start, run_len) + within] = np.repeat(run_model, run_len)
    rows, cols = np.nonzero(unknown & (owner >= 0)[:, None])
    filled = feats.copy(order="K")
    filled[rows, cols] = bundle.mean[owner[rows], cols]
    return filled


def _to_log(bundle: ReleaseBundle, feats: np.ndarray, run_start: np.ndarray, run_len: np.ndarray,
            run_model: np.ndarray, out_start: np.ndarray, scores: np.ndarray) -> None:
    """Turn the kernel sums written for the runs into ``log(sum) + intercept``. A sum below
    ``_LOG_EXACT`` (its terms near or under the exponent floor) is recomputed exactly as a logsumexp of
    that row's terms, so the score keeps falling however far the window is (no floor, no NaN)."""
    within = np.arange(int(run_len.sum())) - np.repeat(np.cumsum(run_len) - run_len, run_len)
    out = np.repeat(out_start, run_len) + within
    owner = np.repeat(run_model, run_len)
    sums = scores[out]
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(sums)
    far = np.flatnonzero(~(sums >= _LOG_EXACT))
    if len(far):
        rows = (np.repeat(run_start, run_len) + within)[far]
        logs[far] = _exact_log_sums(bundle, feats[rows], owner[far])
    scores[out] = logs + bundle.intercept[owner]


def _exact_log_sums(bundle: ReleaseBundle, feats: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """``log(sum_j a_j exp(-g ||z - v_j||^2))`` of rows ``feats`` under models ``owner``, by logsumexp
    (one model at a time: these are the few far-out rows)."""
    out = np.empty(len(owner), dtype=np.float64)
    for m in np.unique(owner):
        pick = np.flatnonzero(owner == m)
        a, b = int(bundle.sv_offsets[m]), int(bundle.sv_offsets[m + 1])
        if a == b:
            out[pick] = -np.inf
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            z = (feats[pick] - bundle.mean[m]) / bundle.scale[m]
            diff = z[:, None, :] - bundle.support_vectors[None, a:b, :]
            exponent = np.log(bundle.dual_coef[a:b])[None, :] - bundle.gamma[m] * np.einsum("rsf,rsf->rs", diff, diff)
        top = exponent.max(axis=1)
        finite = np.isfinite(top)
        with np.errstate(invalid="ignore", over="ignore"):
            total = top + np.log(np.exp(exponent - top[:, None]).sum(axis=1))
        out[pick] = np.where(finite, total, -np.inf)  # beyond float range: -inf, flagged
    return out


def _uniform_layout(run_start: np.ndarray, run_len: np.ndarray, out_start: np.ndarray) -> tuple[int, int] | None:
    """``(rows per run, spacing)`` when every run has the same length, the runs start at a fixed spacing
    (at least that length) and are written back to back in order; else None."""
    if len(run_len) < 2:
        return None
    rows, spacing = int(run_len[0]), int(run_start[1] - run_start[0])
    if spacing < rows or not (run_len == rows).all() or not (np.diff(run_start) == spacing).all():
        return None
    if not (out_start == np.arange(len(run_len)) * rows).all():
        return None
    return rows, spacing


def _blocks(length: np.ndarray, n_sv: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive runs ``[a, b)`` per block: from each ``a`` the most runs whose padded size (runs x
    longest run x most support vectors) fits :data:`BLOCK_ELEMENTS` (at least one run). ``n_sv`` is
    ascending, so the padded size grows with the block."""
    blocks = []
    a, n = 0, len(length)
    while a < n:
        cand = slice(a, min(a + MAX_BLOCK_MODELS, n))
        size = np.arange(1, cand.stop - a + 1) * np.maximum.accumulate(length[cand]) * np.maximum(n_sv[cand], 1)
        b = a + max(1, int(np.searchsorted(size, BLOCK_ELEMENTS, side="right")))
        blocks.append((a, b))
        a = b
    return blocks


class _Workspace:
    """Scratch arrays reused from block to block: a fresh array of a block's size (hundreds of KB) is
    mapped anew by the allocator each time, and its first writes page-fault (half the kernel's time)."""

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def array(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        """A C-contiguous array of ``shape``, its contents undefined, valid until the next call for ``name``."""
        size = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < size or buffer.dtype != dtype:
            buffer = self._buffers[name] = np.empty(max(size, 1), dtype=dtype)
        return buffer[:size].reshape(shape)


def _support_terms(bundle: ReleaseBundle) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``W = [2 g v / s, -g |v|^2, -g]`` of every support vector (``(S + 1, F + 2)``, ``s`` its model's
    scale, so that ``W`` applies to ``u = x - mean``; the last row is zero, for padded slots), the dual
    coefficients (``(S + 1,)``, the last one 0), and per model the largest ``|v|`` (to know when an
    exponent can underflow)."""
    sv = bundle.support_vectors
    n_feat = sv.shape[1]
    n_support = bundle.n_support
    gamma = np.repeat(bundle.gamma, n_support)
    scale = np.repeat(bundle.scale, n_support, axis=0)
    w = np.zeros((len(sv) + 1, n_feat + 2), dtype=np.float64)
    sv_norm = np.zeros(len(sv), dtype=np.float64)
    for f in range(n_feat):  # column by column: broadcasting over a short inner axis is slow
        v = sv[:, f]
        sv_norm += v * v
        w[:-1, f] = 2.0 * gamma * v / scale[:, f]
    w[:-1, n_feat] = -gamma * sv_norm
    w[:-1, n_feat + 1] = -gamma
    reach = np.zeros(len(bundle.keys), dtype=np.float64)
    has = n_support > 0
    if has.any():
        reach[has] = np.sqrt(np.maximum.reduceat(sv_norm, bundle.sv_offsets[:-1][has]))
    coef = np.zeros(len(sv) + 1, dtype=np.float64)
    coef[:-1] = bundle.dual_coef
    return w, coef, reach
