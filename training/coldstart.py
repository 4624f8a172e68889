"""Cold start: one fallback model per sensor, fitted across the fleet, for series with no model of their own.

A new device, or a series with fewer than ``min_rows`` training windows, has no model in a release. The
release therefore also holds, per sensor, a model fitted on a sample of every trained series' feature
rows of that sensor: its key is ``(FLEET_DEVICE, sensor)`` and its manifest record says
``scope: fleet``. Scoring uses it for the series of that sensor that have no model (their predictions
say ``ModelScope = fleet``) until a release gives them their own.

Training runs in device shards, so each shard draws a bounded sample per sensor
(:func:`fleet_sample`), and the release pools the shards' samples and fits (:func:`fit_fleet_models`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from fleetscore.training.bundle import ReleaseBundle
from fleetscore.training.config import TrainingConfig
from fleetscore.training.drift import reference
from fleetscore.training.features import compute_features, fill_unknown, series_starts

FLEET_DEVICE = "*"  # never a real device id: device ids come from readings, where "*" is refused
SCOPE_SERIES = "series"
SCOPE_FLEET = "fleet"
SAMPLE_ROWS = 2000  # feature rows per sensor the fleet model is fitted on (libsvm's cost grows as n^2)


def fleet_sample(
    windows: pd.DataFrame,
    config: TrainingConfig,
    exclude: Iterable[tuple[str, str]] = (),
    max_rows: int = SAMPLE_ROWS,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Per sensor, up to ``max_rows`` feature rows drawn evenly from the series of ``windows`` that
    have at least ``min_rows`` windows (features computed per series, so no row mixes two devices)."""
    if len(windows) == 0:
        return {}
    starts = series_starts(windows)
    # an unknown feature (a spread of one reading) reads as its series' mean, as it does when fitting
    feats = fill_unknown(compute_features(windows, config.features, config.rolling_window, starts=starts), starts)
    lengths = np.diff(starts)
    sensors = windows["sensor"].take(starts[:-1]).astype(str).to_numpy()
    devices = windows["device"].take(starts[:-1]).astype(str).to_numpy()
    skip = set(exclude)
    usable = (lengths >= config.min_rows) & np.array(
        [(d, s) not in skip for d, s in zip(devices, sensors, strict=True)], dtype=bool)
    finite = np.isfinite(feats).all(axis=1)
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for sensor in np.unique(sensors[usable]):
        idx = np.flatnonzero(usable & (sensors == sensor))
        rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in idx])
        rows = rows[finite[rows]]
        if len(rows) > max_rows:
            rows = np.sort(rng.choice(rows, max_rows, replace=False))
        out[str(sensor)] = np.ascontiguousarray(feats[rows])
    return out


def merge_samples(samples: Iterable[Mapping[str, np.ndarray]], max_rows: int = SAMPLE_ROWS,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Pool the shards' samples per sensor, down to ``max_rows`` rows each."""
    pooled: dict[str, list[np.ndarray]] = {}
    for sample in samples:
        for sensor, rows in sample.items():
            pooled.setdefault(sensor, []).append(rows)
    rng = np.random.default_rng(seed)
    out = {}
    for sensor, parts in sorted(pooled.items()):
        rows = np.concatenate(parts)
        if len(rows) > max_rows:
            rows = rows[np.sort(rng.choice(len(rows), max_rows, replace=False))]
        out[sensor] = np.ascontiguousarray(rows)
    return out


def fit_fleet_models(samples: Mapping[str, np.ndarray], config: TrainingConfig,
                     version: int | None = None) -> ReleaseBundle:
    """One model per sensor of ``samples`` (keys ``(FLEET_DEVICE, sensor)``), the release's fallback."""
    from fleetscore.training.fit import _bundle, fit_svm, resolve_gamma, scaler_moments

    keys, fits, rows, means, vars_, scales, records = [], [], [], [], [], [], []
    for sensor, x in sorted(samples.items()):
        if len(x) < max(2, config.min_rows):
            continue
        mean, var, scale = scaler_moments(x, np.array([0, len(x)], dtype=np.int64))
        z = np.ascontiguousarray((x - mean) / scale)
        try:
            svm = fit_svm(z, config.nu, resolve_gamma(config.gamma, z))
        except (ValueError, ArithmeticError):
            continue
        keys.append((FLEET_DEVICE, sensor))
        fits.append(svm)
        rows.append(len(x))
        means.append(mean)
        vars_.append(var)
        scales.append(scale)
        records.append({"device": FLEET_DEVICE, "sensor": sensor, "scope": SCOPE_FLEET, "trained_in": version,
                        "rows": len(x), "metrics": {"n_support": len(svm.support), "fit_status": svm.fit_status}})
    if not keys:
        return ReleaseBundle.empty(config.features, config.rolling_window)
    bundle = _bundle(keys, tuple(config.features), config.rolling_window, config.offset_margin,
                     (np.vstack(means), np.vstack(vars_), np.vstack(scales)), rows, fits, records)
    for i, (_, sensor) in enumerate(keys):
        x = samples[sensor]
        edges, expected = reference(x, np.array([0, len(x)], dtype=np.int64))
        assert bundle.ref_edges is not None and bundle.ref_expected is not None
        bundle.ref_edges[i], bundle.ref_expected[i] = edges[0], expected[0]
    return bundle


def is_fleet_key(key: tuple[str, str]) -> bool:
    """Whether a bundle key is a fleet fallback model."""
    return key[0] == FLEET_DEVICE


def own_keys(bundle: ReleaseBundle) -> list[tuple[str, str]]:
    """The bundle's per-series keys (fleet fallbacks left out)."""
    return [k for k in bundle.keys if not is_fleet_key(k)]


def with_fallback(bundle: ReleaseBundle,
                  missing: Sequence[tuple[str, str]]) -> tuple[ReleaseBundle, list[tuple[str, str]]]:
    """A view of ``bundle`` in which each ``missing`` series whose sensor has a fleet model resolves to
    it; returns the view and the series so covered (the others stay unscored)."""
    fleet = {s for d, s in bundle.keys if d == FLEET_DEVICE}
    aliases = {(d, s): (FLEET_DEVICE, s) for d, s in missing if s in fleet}
    if not aliases:
        return bundle, []
    return bundle.aliased(aliases), sorted(aliases)


def scope_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Manifest series records with their ``scope`` filled in (``series`` unless fleet)."""
    return [{**r, "scope": r.get("scope") or (SCOPE_FLEET if r.get("device") == FLEET_DEVICE else SCOPE_SERIES)}
            for r in records]
