"""Drift per series: the population stability index (PSI) of scored windows' features against training.

At training time each model keeps, per feature, the decile edges of its training rows and the share of
those rows in each of the 10 bins the edges bound (``ReleaseBundle.ref_edges`` / ``ref_expected``;
the shares are measured, not assumed 10%, so ties such as a constant ``spread`` stay exact). At scoring
time the scored rows of each series are put in the same bins and

    PSI = sum over bins of (actual - expected) * ln(actual / expected)

(shares floored at ``EPS``). A series' drift is its largest PSI over the features, with that feature's
name. Only features of one window alone (``WINDOW_FEATURES``) count: a smoothed feature such as
``recent_mean`` spreads over fewer deciles in a short span than in training with no change in the
signal. Everything is vectorised over the fleet: one pass per edge, one ``bincount``. Conventional
reading: below 0.1 no shift, 0.1-0.25 moderate, above 0.25 a significant one (``drift_threshold``).
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from fleetscore.training.bundle import REFERENCE_EDGES, ReleaseBundle
from fleetscore.training.features import WINDOW_FEATURES, compute_features, series_starts

QUANTILES = np.linspace(0.1, 0.9, REFERENCE_EDGES)
BINS = REFERENCE_EDGES + 1
EPS = 1e-4


def _bins(feats: np.ndarray, edges: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Bin (0..9) of every row and feature; ``edges`` per series ``(S, F, 9)``, rows grouped by series."""
    out = np.zeros(feats.shape, dtype=np.int64)
    for k in range(edges.shape[2]):
        out += feats > np.repeat(edges[:, :, k], lengths, axis=0)
    return out


def _shares(bins: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Share of each series' rows in each bin, ``(S, F, BINS)``."""
    n_series = len(lengths)
    owner = np.repeat(np.arange(n_series), lengths)
    shares = np.empty((n_series, bins.shape[1], BINS), dtype=np.float64)
    for f in range(bins.shape[1]):
        counts = np.bincount(owner * BINS + bins[:, f], minlength=n_series * BINS).reshape(n_series, BINS)
        shares[:, f] = counts / np.maximum(lengths, 1)[:, None]
    return shares


def reference(feats: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per series (rows ``starts[i]:starts[i + 1]``), the decile edges ``(S, F, 9)`` of each feature and
    the share of the rows in each bin ``(S, F, 10)``."""
    lengths = np.diff(starts)
    n_series, n_feat = len(lengths), feats.shape[1]
    edges = np.full((n_series, n_feat, REFERENCE_EDGES), np.nan)
    if n_series == 0 or len(feats) == 0:
        return edges, np.full((n_series, n_feat, BINS), np.nan)
    owner = np.repeat(np.arange(n_series), lengths)
    first = starts[:-1]
    for f in range(n_feat):
        order = np.lexsort((feats[:, f], owner))  # by series, then value
        ordered = feats[order, f]
        for k, q in enumerate(QUANTILES):
            pos = first + np.floor(q * np.maximum(lengths - 1, 0)).astype(np.int64)
            edges[:, f, k] = ordered[np.minimum(pos, len(ordered) - 1)]
    return edges, _shares(_bins(feats, edges, lengths), lengths)


def attach_reference(bundle: ReleaseBundle, windows: pd.DataFrame) -> None:
    """Fill ``bundle``'s drift reference from its training ``windows`` (sorted; series not in the bundle
    are ignored)."""
    if len(bundle) == 0 or len(windows) == 0:
        return
    starts = series_starts(windows)
    first = starts[:-1]
    keys = list(zip(windows["device"].take(first).astype(str), windows["sensor"].take(first).astype(str),
                    strict=True))
    feats = compute_features(windows, bundle.features, bundle.rolling_window, starts=starts)
    edges, expected = reference(feats, starts)
    for i, key in enumerate(keys):
        try:
            m = bundle.index(*key)
        except KeyError:
            continue
        assert bundle.ref_edges is not None and bundle.ref_expected is not None
        bundle.ref_edges[m] = edges[i]
        bundle.ref_expected[m] = expected[i]


def psi(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """The population stability index over the last axis (shares floored at ``EPS``)."""
    a = np.maximum(actual, EPS)
    e = np.maximum(expected, EPS)
    result: np.ndarray = ((a - e) * np.log(a / e)).sum(axis=-1)
    return result


def series_drift(bundle: ReleaseBundle, windows: pd.DataFrame, scored: pd.DataFrame,
                 start: datetime | None = None, feats: np.ndarray | None = None) -> pd.DataFrame:
    """Drift of every scored series: columns device, sensor, drift (largest PSI over the features, NaN
    when the model has no reference), feature, rows, anomalies.

    ``windows`` is what was scored (with context rows), ``scored`` the kernel's output for it (same series
    order, rows ``ts >= start``); ``bundle`` resolves each series to the model that scored it. ``feats``:
    the features of ``windows`` when the caller has them."""
    columns = ["device", "sensor", "drift", "feature", "rows", "anomalies"]
    if len(scored) == 0:
        return pd.DataFrame({c: pd.Series([], dtype=object if c in ("device", "sensor", "feature") else float)
                             for c in columns})
    starts = series_starts(windows)
    if feats is None:
        feats = compute_features(windows, bundle.features, bundle.rolling_window, starts=starts)
    keep = np.ones(len(windows), dtype=bool)
    if start is not None:
        keep = windows["ts"].to_numpy() >= np.datetime64(pd.Timestamp(start).to_datetime64())
    first = starts[:-1]
    keys = list(zip(windows["device"].take(first).astype(str), windows["sensor"].take(first).astype(str),
                    strict=True))
    model = np.array([_model(bundle, k) for k in keys], dtype=np.int64)
    owner = np.repeat(np.arange(len(keys)), np.diff(starts))
    keep &= model[owner] >= 0
    feats, owner = feats[keep], owner[keep]
    lengths = np.bincount(owner, minlength=len(keys))
    present = lengths > 0
    local = np.cumsum(present) - 1  # series index among those scored
    lengths = lengths[present]
    models = model[present]
    assert bundle.ref_edges is not None and bundle.ref_expected is not None
    actual = _shares(_bins(feats, bundle.ref_edges[models], lengths), lengths)
    with np.errstate(invalid="ignore"):
        values = psi(actual, bundle.ref_expected[models])  # (S, F), NaN without a reference
    smoothed = np.array([f not in WINDOW_FEATURES for f in bundle.features])
    if not smoothed.all():  # a model of smoothed features only is judged on them
        values[:, smoothed] = np.nan
    known = ~np.isnan(values).all(axis=1)
    best = np.where(known[:, None], np.nan_to_num(values, nan=-1.0), 0.0).argmax(axis=1)
    drift = np.where(known, values[np.arange(len(values)), best], np.nan)
    flags = scored["prediction"].to_numpy(dtype=np.float64)  # the kernel keeps the input order of these rows
    anomalies = np.bincount(local[owner], weights=flags, minlength=len(lengths))
    present_keys = [k for k, p in zip(keys, present, strict=True) if p]
    return pd.DataFrame({
        "device": [k[0] for k in present_keys], "sensor": [k[1] for k in present_keys],
        "drift": drift, "feature": [bundle.features[b] if ok else "" for b, ok in zip(best, known, strict=True)],
        "rows": lengths.astype(np.int64), "anomalies": anomalies[: len(lengths)].astype(np.int64),
    })


def _model(bundle: ReleaseBundle, key: tuple[str, str]) -> int:
    try:
        return bundle.index(*key)
    except KeyError:
        return -1

