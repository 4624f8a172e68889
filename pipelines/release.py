"""The release pipeline: validate -> train (sharded) -> gate -> register -> promote; rollbacks.

``fleetscore train`` runs :func:`train_candidate` (no registration), ``fleetscore release`` runs
:func:`run_release`, ``fleetscore rollback`` runs :func:`rollback`, ``fleetscore models`` reads
:func:`list_releases` and :func:`show_release`. Settings are resolved by the command and passed in.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from fleetscore import provenance
from fleetscore.errors import ReleaseNotFound, TrainingError
from fleetscore.ingestion.timeutil import parse_duration, utcnow
from fleetscore.pipelines.executors import ShardFailure, run_shards
from fleetscore.pipelines.refit import device_shards, fit_devices, refit_full_range
from fleetscore.pipelines.settings import Settings
from fleetscore.progress import ProgressCallback
from fleetscore.training.bundle import ReleaseBundle
from fleetscore.training.coldstart import FLEET_DEVICE
from fleetscore.training.fit import ShardFit

log = logging.getLogger(__name__)



@dataclass
class Candidate:
    """What training produced: the bundle (saved at ``path``), its range and what was left out."""

    bundle: ReleaseBundle
    path: Path
    start: datetime
    end: datetime
    split: datetime  # windows from here to ``end`` are the gate's holdout
    validation_id: str
    skipped: dict[tuple[str, str], str] = field(default_factory=dict)
    failed: dict[tuple[str, str], str] = field(default_factory=dict)
    rows: int = 0
    seconds: float = 0.0
    data_hash: str = ""
    fleet: ReleaseBundle | None = None  # the per-sensor fleet fallback models (cold start), if fitted

    @property
    def models_per_second(self) -> float:
        """Training throughput."""
        return len(self.bundle) / self.seconds if self.seconds else 0.0


@dataclass
class ReleaseOutcome:
    """A registered release: its version, the one-line summary and the per-decision counts."""

    version: int
    summary: str
    counts: dict[str, int]
    champion_before: int | None
    run_id: str
    candidate: Candidate


@dataclass
class RollbackOutcome:
    """A rollback: the one-line summary, the champion before and after; with ``new_release`` a release
    was registered that took ``series`` series from version ``series_from``."""

    summary: str
    champion_before: int
    champion: int
    new_release: bool = False
    series: int = 0
    series_from: int | None = None


IMAGE_TAG = "fleetscore.image_tag"  # version tag: the scoring image built for the release's commit


def release_image_tag(settings: Settings, release: str = "champion") -> tuple[int, str]:
    """The version of ``release`` and the scoring image tag recorded with it; raises
    :class:`ReleaseNotFound` when it records none (released without ``--image-tag``)."""
    from fleetscore.training.registry import version_tags

    version, tags = version_tags(settings.tracking_uri, settings.training.model_name, release)
    tag = tags.get(IMAGE_TAG, "")
    if not tag:
        raise ReleaseNotFound(f"model {settings.training.model_name} v{version} records no scoring image "
                              f"({IMAGE_TAG}): release it with --image-tag, or publish with --image-tag")
    return version, tag


# -- training ------------------------------------------------------------------------------------------

def _window(settings: Settings) -> timedelta:
    return parse_duration(settings.ingest.window, "ingest.window")


def _validate(settings: Settings, start: datetime, end: datetime, devices: Sequence[str] | None) -> Any:
    from fleetscore.data_checks import run_validation

    report = run_validation(settings.database_url, start, end, settings.data_checks,
                            report_dir=Path(settings.home) / "reports" / "validation", window=_window(settings),
                            devices=devices)
    report.raise_if_failed()
    return report


def train_candidate(  # noqa: PLR0915  the candidate's steps in order: select, read, fit, compose
    settings: Settings,
    start: datetime | None = None,
    end: datetime | None = None,
    devices: Sequence[str] | None = None,
    skip_validation: bool = False,
    on_progress: ProgressCallback | None = None,
    series: frozenset[tuple[str, str]] | None = None,
) -> Candidate:
    """Validate the range, fit every (device, sensor) series over device shards, save the bundle.

    With ``series`` only those series are fitted (a selective release; ``devices`` should name their
    devices) and no fleet model is fitted; otherwise the per-sensor fleet fallback models are fitted
    on a sample of every shard's rows (:mod:`training.coldstart`).

    The last ``training.gate_holdout_fraction`` of the range is held out for the gate (not fitted).
    Series excluded by validation or with fewer than ``training.min_rows`` windows are skipped with the
    reason in the manifest; a shard that fails marks its series failed, the other shards go on.
    """
    from fleetscore.ingestion.store import SensorStore

    config = settings.training
    window = _window(settings)
    bounds = SensorStore(settings.database_url).fill_range(start, end, window)
    if bounds is None:
        raise TrainingError("nothing to train on: the sensor store holds no windows (run fleetscore ingest first)")
    start, end = bounds
    holdout = max(0.0, min(config.gate_holdout_fraction, 0.9))
    split = start + (end - start) * (1 - holdout)
    split = start + ((split - start) // window) * window
    excluded: dict[tuple[str, str], str] = {}
    validation_id = "skipped"
    if not skip_validation:
        report = _validate(settings, start, end, devices)
        excluded, validation_id = dict(report.excluded), report.id
    fleet = list(devices) if devices else SensorStore(settings.database_url).devices()
    if not fleet:
        raise TrainingError(f"nothing to train on: no windows in [{start}, {end})")
    shards = device_shards(settings, fleet)
    started = time.perf_counter()
    args = [(settings.database_url, start, split, shard, config, frozenset(excluded), series, series is None)
            for shard in shards]
    results = run_shards(fit_devices, args, settings.executor, settings.workers, on_progress)
    parts: list[ReleaseBundle] = []
    skipped: dict[tuple[str, str], str] = {}
    failed: dict[tuple[str, str], str] = {}
    rows = 0
    samples = []
    for shard, result in zip(shards, results, strict=True):
        if isinstance(result, ShardFailure):
            for device in shard:
                failed[(device, "*")] = f"shard failed: {result.error}"
            continue
        fit: ShardFit = result.value[0]
        samples.append(result.value[1])
        parts.append(fit.bundle)
        skipped.update(fit.skipped)
        failed.update(fit.failed)
        rows += fit.rows
    seconds = time.perf_counter() - started
    nonempty = [p for p in parts if len(p)]
    if not nonempty:
        raise TrainingError(f"no series could be trained in [{start}, {split}): "
                            f"{len(skipped)} skipped, {len(failed)} failed")
    bundle = ReleaseBundle.concat(nonempty, manifest={})
    trained_at = utcnow().isoformat()
    for record in bundle.manifest["series"]:
        record.update(scope="series", trained_at=trained_at)
    fleet_models: ReleaseBundle | None = None
    if series is None and bundle.detector == "ocsvm":  # the fleet fallback models are OneClassSVMs
        from fleetscore.training.coldstart import fit_fleet_models, merge_samples

        fleet_models = fit_fleet_models(merge_samples(samples), config)
        for record in fleet_models.manifest.get("series", []):
            record.update(trained_at=trained_at)
    data_hash = hashlib.sha256("|".join(sorted(
        f"{r['device']}/{r['sensor']}:{r['data_hash']}" for r in bundle.manifest["series"])).encode()).hexdigest()[:16]
    bundle.manifest.update(
        window_seconds=window.total_seconds(), train_start=str(start), train_end=str(split), holdout_end=str(end),
        validation_id=validation_id, skip_validation=skip_validation, data_hash=data_hash,
        hyperparameters={"detector": config.detector, "nu": config.nu, "gamma": config.gamma,
                         "offset_margin": config.offset_margin, "robust_threshold": config.robust_threshold,
                         "min_rows": config.min_rows},
        skipped=[{"device": d, "sensor": s, "reason": r} for (d, s), r in sorted(skipped.items())],
        failed=[{"device": d, "sensor": s, "reason": r} for (d, s), r in sorted(failed.items())],
    )
    path = Path(settings.home) / "candidates" / f"{utcnow():%Y%m%dT%H%M%S}-{data_hash[:6]}-{secrets.token_hex(3)}"
    with_fleet(bundle, fleet_models).save(path)
    return Candidate(bundle=bundle, path=path, start=start, end=end, split=split, validation_id=validation_id,
                     skipped=skipped, failed=failed, rows=rows, seconds=seconds, data_hash=data_hash,
                     fleet=fleet_models)


def with_fleet(bundle: ReleaseBundle, fleet: ReleaseBundle | None) -> ReleaseBundle:
    """``bundle`` with the fleet fallback models appended (as it is when there are none)."""
    if fleet is None or len(fleet) == 0:
        return bundle
    manifest = {k: v for k, v in bundle.manifest.items() if k != "series"}
    return ReleaseBundle.concat([bundle, fleet], manifest=manifest)


def split_fleet(bundle: ReleaseBundle) -> tuple[ReleaseBundle, ReleaseBundle]:
    """A release's per-series models and its fleet fallback models, as two bundles."""
    from fleetscore.training.coldstart import is_fleet_key

    own = [i for i, k in enumerate(bundle.keys) if not is_fleet_key(k)]
    fleet = [i for i, k in enumerate(bundle.keys) if is_fleet_key(k)]
    return bundle.subset(own), bundle.subset(fleet)


# -- releasing ---------------------------------------------------------------------------------------


def git_commit() -> str:
    """The commit of the code that runs (``unknown`` outside a git checkout)."""
    return provenance.git_commit() or "unknown"


def _champion(settings: Settings) -> tuple[ReleaseBundle | None, int | None]:
    from fleetscore.training.registry import resolve_release

    try:
        resolved = resolve_release(settings.tracking_uri, settings.training.model_name, "champion")
    except ReleaseNotFound:
        return None, None
    return ReleaseBundle.load(resolved.bundle_dir), resolved.version


def _per_series_table(bundle: ReleaseBundle, folder: Path) -> Path:
    rows = []
    for rec in bundle.manifest.get("series", []):
        row = {k: v for k, v in rec.items() if k not in ("metrics", "gate")}
        row.update({f"metric_{k}": v for k, v in (rec.get("metrics") or {}).items()})
        for side in ("challenger", "champion"):
            row.update({f"{side}_{k}": v for k, v in ((rec.get("gate") or {}).get(side) or {}).items()})
        rows.append(row)
    path = folder / "per_series_metrics.parquet"
    pd.DataFrame(rows).astype({"trained_in": "Int64"}, errors="ignore").to_parquet(path, index=False)
    return path


def _register(settings: Settings, bundle: ReleaseBundle, run_name: str, params: dict[str, Any],
              metrics: dict[str, float], tags: dict[str, Any]) -> tuple[int, str]:
    from fleetscore.training.registry import register_release

    with tempfile.TemporaryDirectory(prefix="fleetscore-release-") as tmp:
        folder = Path(tmp)
        bundle.save(folder / "bundle")
        table = _per_series_table(bundle, folder)
        return register_release(settings.tracking_uri, settings.training.model_name, folder / "bundle", run_name,
                                params, metrics, tags, tables={"metrics": table},
                                experiment=settings.training.experiment)


def _move(settings: Settings, alias: str, version: int, reason: str) -> None:
    from fleetscore.records.alias_log import AliasLog
    from fleetscore.training.registry import move_alias

    move = move_alias(settings.tracking_uri, settings.training.model_name, alias, version, reason)
    AliasLog(settings.database_url).record(datetime.fromisoformat(move.time), move.user,
                                           settings.training.model_name, alias, move.from_version,
                                           move.to_version, reason)


def run_release(
    settings: Settings,
    start: datetime | None = None,
    end: datetime | None = None,
    devices: Sequence[str] | None = None,
    force: bool = False,
    skip_validation: bool = False,
    on_progress: ProgressCallback | None = None,
    only: Sequence[str] = ("all",),
    image_tag: str | None = None,
) -> ReleaseOutcome:
    """Validate, train, gate against the champion, register the release and make it the champion.

    The outcome is always explicit: every series is promoted, kept from the champion or new; a series
    that could not be trained keeps its champion model (or is counted failed when it has none).
    ``only`` (``drifted``, ``new``, ``failed``, ``stale``, ``all``) retrains just the series so selected
    (:mod:`pipelines.selection`); every other series keeps its champion model and the champion's fleet
    models are kept; raises :class:`NothingToRetrain` when none is selected. ``image_tag`` (the scoring
    image built for this commit) is recorded as the version tag ``fleetscore.image_tag``, which
    ``publish --release-image`` and a rollback reuse.
    """
    from fleetscore.pipelines.selection import check_only, select_series
    from fleetscore.training.evaluation import run_gate

    kinds = check_only(only)
    champion, champion_version = _champion(settings)
    selection: dict[tuple[str, str], str] | None = None
    if "all" not in kinds:
        selection = select_series(settings, champion, champion_version, kinds, start, end, devices)
        if not selection:
            from fleetscore.errors import NothingToRetrain

            raise NothingToRetrain(f"release --only {','.join(kinds)}: no series to retrain")
        devices = sorted({d for d, _ in selection})
    candidate = train_candidate(settings, start, end, devices, skip_validation, on_progress,
                                series=frozenset(selection) if selection is not None else None)
    if selection is not None:
        for record in candidate.bundle.manifest.get("series", []):
            record["selected_as"] = selection.get((record["device"], record["sensor"]), "")
    champ_own, champ_fleet = split_fleet(champion) if champion is not None else (None, None)
    holdout = _holdout(settings, candidate, devices)
    gate = run_gate(candidate.bundle, champ_own, holdout, settings.training, champion_version, force=force)
    released = gate.bundle
    if settings.training.refit_after_gate and candidate.split < candidate.end:
        released = refit_full_range(settings, gate.bundle, gate.decisions, candidate.start, candidate.end, on_progress)
    fleet = candidate.fleet
    if (fleet is None or len(fleet) == 0) and champ_fleet is not None and len(champ_fleet):
        fleet = champ_fleet.subset(range(len(champ_fleet)))
        fleet.manifest["series"] = [{**r, "decision": "kept", "kept_from": champion_version,
                                     "trained_in": r.get("trained_in") or champion_version}
                                    for r in fleet.manifest["series"]]
    elif fleet is not None:
        for record in fleet.manifest.get("series", []):
            record.setdefault("decision", "new")
    bundle = with_fleet(released, fleet)
    bundle.manifest.update({k: v for k, v in candidate.bundle.manifest.items() if k != "series"})
    bundle.manifest.update(parent_champion=champion_version, force=force, kind="release", only=list(kinds))
    failed = len([k for k in candidate.failed if k not in gate.decisions])
    skipped = len([k for k in candidate.skipped if k not in gate.decisions])
    pending = gate.summary(0, failed, skipped)
    params = {"start": candidate.start, "end": candidate.end, "train_end": candidate.split,
              "features": ",".join(settings.training.features), "nu": settings.training.nu,
              "gamma": settings.training.gamma, "offset_margin": settings.training.offset_margin,
              "rolling_window": settings.training.rolling_window, "min_rows": settings.training.min_rows,
              "devices": ",".join(devices) if devices else "all", "force": force, "only": ",".join(kinds),
              "skip_validation": skip_validation}
    metrics = {**_fleet_metrics(candidate, gate.counts, failed, skipped), **gate.holdout_summary()}
    tags = {"fleetscore.git_commit": git_commit(), "fleetscore.train_start": str(candidate.start),
            "fleetscore.train_end": str(candidate.split), "fleetscore.holdout_end": str(candidate.end),
            "fleetscore.data_hash": candidate.data_hash, "fleetscore.validation_id": candidate.validation_id,
            "fleetscore.skip_validation": str(skip_validation).lower(),
            "fleetscore.parent_champion": str(champion_version) if champion_version is not None else "none",
            "fleetscore.kind": "release", "fleetscore.models": str(len(bundle)),
            "fleetscore.refit": str(released is not gate.bundle).lower()}
    if image_tag:
        tags[IMAGE_TAG] = image_tag
    version, run_id = _register(settings, bundle, f"release-{utcnow():%Y%m%dT%H%M%S}", params, metrics, tags)
    summary = pending.replace("released v0:", f"released v{version}:", 1)
    from fleetscore.training.registry import set_version_tags

    set_version_tags(settings.tracking_uri, settings.training.model_name, version,
                     {"fleetscore.gate_summary": summary, **{f"fleetscore.gate.{k}": v for k, v in gate.counts.items()},
                      "fleetscore.gate.failed": failed})
    _move(settings, "challenger", version, f"candidate of release v{version}")
    _move(settings, "champion", version, summary)
    return ReleaseOutcome(version=version, summary=summary, counts=gate.counts, champion_before=champion_version,
                          run_id=run_id, candidate=candidate)


def _holdout(settings: Settings, candidate: Candidate, devices: Sequence[str] | None) -> pd.DataFrame:
    from fleetscore.ingestion.store import SensorStore

    windows = SensorStore(settings.database_url).read_windows(candidate.split, candidate.end, devices)
    if candidate.skipped or candidate.failed:
        excluded = set(candidate.skipped) | set(candidate.failed)
        keys = pd.Series(list(zip(windows["device"], windows["sensor"], strict=True)), dtype=object)
        windows = windows[~keys.isin(excluded).to_numpy()].reset_index(drop=True)
    return windows


def _fleet_metrics(candidate: Candidate, counts: dict[str, int], failed: int, skipped: int) -> dict[str, float]:
    series = candidate.bundle.manifest.get("series", [])
    n_sv = [r["metrics"]["n_support"] for r in series if "n_support" in r.get("metrics", {})]
    return {"models": float(len(candidate.bundle)), "rows": float(candidate.rows),
            "train_seconds": candidate.seconds, "models_per_second": candidate.models_per_second,
            "mean_support_vectors": float(sum(n_sv) / len(n_sv)) if n_sv else 0.0,
            **{k: float(v) for k, v in counts.items()}, "failed": float(failed), "skipped": float(skipped)}


# -- rollback ------------------------------------------------------------------------------------


def rollback(
    settings: Settings,
    to_version: int | None = None,
    device: str | None = None,
    sensor: str | None = None,
    reason: str = "",
) -> RollbackOutcome:
    """Move ``champion`` back (default: to the previous champion), or, with ``device``, make a new
    release that takes that device's series (or one ``sensor`` of it) from ``to_version`` and every
    other series from the champion."""
    from fleetscore.training.registry import alias_history, resolve_release, resolve_version

    name = settings.training.model_name
    current = resolve_version(settings.tracking_uri, name, "champion")
    if device is None:
        if sensor is not None:
            raise TrainingError("rollback --sensor needs --device")
        if to_version is None:
            previous = [m.from_version for m in alias_history(settings.tracking_uri, name)
                        if m.alias == "champion" and m.to_version == current and m.from_version is not None]
            if not previous:
                raise ReleaseNotFound(f"model {name}: champion v{current} has no previous champion to roll back to")
            to_version = previous[-1]
        target = resolve_version(settings.tracking_uri, name, str(to_version))
        if target == current:
            return RollbackOutcome(f"champion is already v{current}", current, current)
        _move(settings, "champion", target, reason or f"rollback from v{current}")
        return RollbackOutcome(f"champion: v{current} -> v{target}", current, target)
    if to_version is None:
        raise TrainingError("rollback --device needs --to VERSION")
    old = resolve_release(settings.tracking_uri, name, str(to_version))
    champ = resolve_release(settings.tracking_uri, name, "champion")
    old_bundle, champ_bundle = ReleaseBundle.load(old.bundle_dir), ReleaseBundle.load(champ.bundle_dir)
    wanted = [i for i, (d, s) in enumerate(old_bundle.keys) if d == device and (sensor is None or s == sensor)]
    if not wanted:
        what = f"device {device}" + (f" sensor {sensor}" if sensor else "")
        raise ReleaseNotFound(f"model {name} v{old.version}: no model for {what}")
    taken = {old_bundle.keys[i] for i in wanted}
    from_old = old_bundle.subset(wanted)
    from_old.manifest["series"] = [{**r, "decision": "rolled_back", "kept_from": old.version,
                                    "trained_in": r.get("trained_in") or old.version}
                                   for r in from_old.manifest["series"]]
    rest_idx = [i for i, k in enumerate(champ_bundle.keys) if k not in taken]
    rest = champ_bundle.subset(rest_idx)
    rest.manifest["series"] = [{**r, "decision": "kept", "kept_from": champ.version,
                                "trained_in": r.get("trained_in") or champ.version} for r in rest.manifest["series"]]
    manifest = {k: v for k, v in champ_bundle.manifest.items() if k != "series"}
    manifest.update(kind="rollback", parent_champion=champ.version, rolled_back_from=old.version,
                    rolled_back_series=[{"device": d, "sensor": s} for d, s in sorted(taken)])
    bundle = ReleaseBundle.concat([from_old, rest], manifest=manifest)
    what = f"device {device}" + (f" sensor {sensor}" if sensor else "")
    tags = {"fleetscore.git_commit": git_commit(), "fleetscore.kind": "rollback",
            "fleetscore.parent_champion": str(champ.version), "fleetscore.rolled_back_from": str(old.version),
            "fleetscore.rolled_back": what, "fleetscore.models": str(len(bundle))}
    for key in ("fleetscore.train_start", "fleetscore.train_end", "fleetscore.data_hash", "fleetscore.validation_id",
                IMAGE_TAG):  # the champion's image scores this release: the code did not change
        if key in champ.tags:
            tags[key] = champ.tags[key]
    params = {"rollback_of": what, "to_version": old.version, "champion": champ.version}
    version, _ = _register(settings, bundle, f"rollback-{utcnow():%Y%m%dT%H%M%S}", params,
                           {"models": float(len(bundle)), "rolled_back_series": float(len(taken))}, tags)
    summary = (f"released v{version}: {what} ({len(taken)} series) from v{old.version}, "
               f"{sum(1 for i in rest_idx if champ_bundle.keys[i][0] != FLEET_DEVICE):,} kept from v{champ.version}")
    from fleetscore.training.registry import set_version_tags

    set_version_tags(settings.tracking_uri, name, version, {"fleetscore.gate_summary": summary})
    _move(settings, "champion", version, reason or f"rollback of {what} to v{old.version}")
    return RollbackOutcome(summary, champ.version, version, new_release=True, series=len(taken),
                           series_from=old.version)


# -- reading the registry ------------------------------------------------------------------------


def list_releases(settings: Settings) -> list[dict[str, Any]]:
    """Every release of the fleet's model, newest first (version, created, aliases, summary, tags)."""
    from fleetscore.training.registry import list_versions

    return list_versions(settings.tracking_uri, settings.training.model_name)


def show_release(settings: Settings, ref: str = "champion") -> dict[str, Any]:
    """One release: version, aliases, tags, the alias history, and per-series provenance."""
    from fleetscore.records.alias_log import AliasLog
    from fleetscore.training.registry import alias_history, list_versions, resolve_release

    name = settings.training.model_name
    resolved = resolve_release(settings.tracking_uri, name, ref)
    bundle = ReleaseBundle.load(resolved.bundle_dir)
    versions = {v["version"]: v for v in list_versions(settings.tracking_uri, name)}
    series, fleet = [], []
    for rec in bundle.manifest.get("series", []):
        if rec.get("device") == FLEET_DEVICE:
            fleet.append({"sensor": rec["sensor"], "decision": rec.get("decision", ""), "rows": rec.get("rows"),
                          "trained_in": rec.get("trained_in") or resolved.version})
            continue
        series.append({"device": rec["device"], "sensor": rec["sensor"], "decision": rec.get("decision", ""),
                       "trained_in": rec.get("trained_in") or resolved.version, "rows": rec.get("rows"),
                       "train_start": rec.get("train_start"), "train_end": rec.get("train_end"),
                       "data_hash": rec.get("data_hash"), "kept_from": rec.get("kept_from"),
                       "selected_as": rec.get("selected_as", "")})
    return {
        "version": resolved.version,
        "aliases": versions.get(resolved.version, {}).get("aliases", []),
        "created": versions.get(resolved.version, {}).get("created"),
        "tags": resolved.tags,
        "alias_history": [asdict(m) for m in alias_history(settings.tracking_uri, name)],
        "alias_history_sql": AliasLog(settings.database_url).history(name),
        "series": series,
        "fleet_models": fleet,
        "skipped": bundle.manifest.get("skipped", []),
        "features": list(bundle.features),
    }

