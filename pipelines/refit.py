"""Fitting device shards, and the refit of a release's promoted models on its whole range.

The gate judges each challenger on the holdout it was not fitted on. The models a release then ships
are fitted again on the whole range, holdout included (``[training] refit_after_gate``, on by
default): a release's models are otherwise blind to its most recent windows, and a slow cycle or a
drift in them reads as anomalous (on the industrial simulator: false alarms 2.7% with the holdout
left out of the released models, 1.4% with it in). The gate's decisions stand; only the arrays of
the promoted and new series change, and their manifest records say ``refit: true`` with the range
they were fitted on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pandas as pd

from fleetscore.pipelines.executors import ShardFailure, default_workers, run_shards
from fleetscore.pipelines.settings import Settings
from fleetscore.progress import ProgressCallback
from fleetscore.training.bundle import ReleaseBundle
from fleetscore.training.config import TrainingConfig
from fleetscore.training.fit import ShardFit, fit_shard

log = logging.getLogger(__name__)

MIN_DEVICES_PER_SHARD = 50  # about 0.3 s of fitting at 5 sensors a device: worth a process
REFIT_FIELDS = ("train_start", "train_end", "rows", "data_hash", "metrics")  # what a refit changes in a record


def fit_devices(database_url: str, start: datetime, end: datetime, devices: list[str], config: TrainingConfig,
                exclude: frozenset[tuple[str, str]], series: frozenset[tuple[str, str]] | None = None,
                sample: bool = True) -> tuple[ShardFit, dict[str, Any]]:
    """One shard of training (top level: runs in a worker process or on a Dask worker): the fit of the
    shard's series (only ``series`` when given) and its sample of rows for the fleet models."""
    from fleetscore.ingestion.store import SensorStore
    from fleetscore.training.coldstart import fleet_sample
    from fleetscore.training.drift import attach_reference

    windows = SensorStore(database_url).read_windows(start, end, devices)
    rows = fleet_sample(windows, config, exclude) if sample else {}
    if series is not None and len(windows):
        keys = pd.MultiIndex.from_frame(windows[["device", "sensor"]].astype(str))
        windows = windows[keys.isin(list(series))].reset_index(drop=True)
    fit = fit_shard(windows, config, exclude)
    attach_reference(fit.bundle, windows)
    return fit, rows


def device_shards(settings: Settings, devices: Sequence[str]) -> list[list[str]]:
    """The devices cut into shards: a few per worker, none smaller than ``MIN_DEVICES_PER_SHARD``."""
    from fleetscore.ingestion.sharding import shard_devices

    workers = settings.workers or default_workers()
    # a worker pool costs seconds to start: small fleets train in one shard in this process
    return shard_devices(list(devices), max(1, min(workers * 4, -(-len(devices) // MIN_DEVICES_PER_SHARD))))


def refit_full_range(settings: Settings, bundle: ReleaseBundle, decisions: dict[tuple[str, str], str],
                     start: datetime, end: datetime, on_progress: ProgressCallback | None = None) -> ReleaseBundle:
    """``bundle`` with its ``promoted`` and ``new`` series fitted again on ``[start, end)``.

    A series whose refit fails or is skipped keeps the model the gate judged (logged). The other
    models, the order and every record's gate fields are unchanged."""
    wanted = frozenset(k for k, d in decisions.items() if d in ("promoted", "new"))
    if not wanted:
        return bundle
    devices = sorted({d for d, _ in wanted})
    args: list[tuple[Any, ...]] = [
        (settings.database_url, start, end, shard, settings.training, frozenset(), wanted, False)
        for shard in device_shards(settings, devices)]
    parts = []
    for result in run_shards(fit_devices, args, settings.executor, settings.workers, on_progress):
        if isinstance(result, ShardFailure):
            log.warning("refit on the whole range: a shard failed (%s); its series keep the gate's models",
                        result.error)
            continue
        fit: ShardFit = result.value[0]
        if len(fit.bundle):
            parts.append(fit.bundle)
    if not parts:
        return bundle
    refit = ReleaseBundle.concat(parts, manifest={})
    position = {key: i for i, key in enumerate(refit.keys) if key in wanted}
    kept = [i for i, key in enumerate(bundle.keys) if key not in position]
    taken = [position[key] for key in bundle.keys if key in position]
    joined = ReleaseBundle.concat([bundle.subset(kept), refit.subset(taken)], manifest=dict(bundle.manifest))
    where = {key: i for i, key in enumerate(joined.keys)}
    out = joined.subset([where[key] for key in bundle.keys])  # the gate bundle's order
    old, new = bundle.manifest.get("series", []), refit.manifest.get("series", [])
    records = []
    for i, key in enumerate(bundle.keys):
        if key in position:
            fitted = new[position[key]]
            records.append({**old[i], **{k: fitted[k] for k in REFIT_FIELDS if k in fitted}, "refit": True})
        else:
            records.append(old[i])
    out.manifest = {**bundle.manifest, "series": records}
    missing = len(wanted) - len(position)
    if missing:
        log.warning("refit on the whole range: %d series could not be refitted; they keep the gate's models", missing)
    return out
