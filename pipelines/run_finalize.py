"""The end of a scoring run: collect the shards' outcomes, write the manifest, record the run.

:func:`finalize_run` is the last step of every way a run is scored (in process, overlapped with the
gate, and the Azure ML pipeline's ``finalize`` step, ``pipelines.azureml_steps``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fleetscore.errors import FleetscoreError, ScoringError
from fleetscore.ingestion.timeutil import utcnow
from fleetscore.pipelines import run_ops
from fleetscore.pipelines.adapters import storage_spec_for
from fleetscore.pipelines.publish_once import acquire_publish
from fleetscore.pipelines.settings import Settings
from fleetscore.records.run_log import RunLog
from fleetscore.scoring import table, writer
from fleetscore.scoring.contracts import FAILED, RUN_LOG, RunPlan, ShardOutcome
from fleetscore.scoring.shard import load_bundle

log = logging.getLogger("fleetscore.pipelines.scoring_pipeline")  # one logger for the whole run's messages


@dataclass
class ScoringResult:
    """What a scoring run did: ``status`` is ``done``, ``skipped`` (duplicate) or ``failed``."""

    run_id: str
    status: str
    start: datetime
    end: datetime
    release_version: int
    rows: int = 0
    anomalies: int = 0
    location: str = ""
    duplicate_of: str = ""
    resumed: bool = False
    failures: dict[str, str] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    table_version: int | None = None  # the predictions table's version this run committed
    run_folder: str = ""  # the run's plan, manifest, log and CSV export


def note(journal: list[str], message: str, *args: Any) -> None:
    """Log ``message % args`` at INFO and add it, timestamped, to the run's journal (its ``run.log``)."""
    log.info(message, *args)
    journal.append(f"{utcnow().isoformat(timespec='milliseconds')} {message % args if args else message}")


def finalize_run(  # noqa: PLR0915  the run's closing steps in order: outcomes, commit, manifest, log
    settings: Settings,
    run_id: str,
    plan: RunPlan,
    *,
    shard_failures: dict[int, str] | None = None,
    timings: dict[str, float] | None = None,
    started: float | None = None,
    resumed: bool = False,
    journal: list[str] | None = None,
    force: bool = False,
) -> ScoringResult:
    """Collect the shards' outcomes, apply ``max_failed_fraction``, commit the staged data files to the
    predictions table in one transaction, write the manifest and record the run."""
    spec = storage_spec_for(settings)
    storage = spec.open()
    start, end = plan.start, plan.end
    prefix = writer.run_prefix(start, run_id)
    runs = RunLog(settings.database_url)
    version = plan.release_version
    outcomes = {shard: ShardOutcome.from_json(data) for shard, data in writer.shard_outcomes(storage, prefix).items()}
    failures = dict(shard_failures or {})
    for shard in range(plan.n_shards):
        if shard not in outcomes and shard not in failures:
            failures[shard] = "no part written"
    failed_series: dict[str, str] = {}
    for outcome in outcomes.values():
        failed_series.update(outcome.failed)
    bundle = load_bundle(plan.bundle_dir)
    sensors_of: dict[str, int] = {}
    for device, _ in bundle.keys:
        sensors_of[device] = sensors_of.get(device, 0) + 1
    lost = sum(max(1, sensors_of.get(d, 1)) for shard in failures for d in plan.shards[shard])
    scored = sum(o.series for o in outcomes.values())
    total = scored + len(failed_series) + lost
    fraction = (len(failed_series) + lost) / total if total else 0.0
    rows = sum(o.rows for o in outcomes.values())
    anomalies = sum(o.anomalies for o in outcomes.values())
    per_sensor: dict[str, list[int]] = {}
    for outcome in outcomes.values():
        for sensor, (n, a) in outcome.per_sensor.items():
            acc = per_sensor.setdefault(sensor, [0, 0])
            acc[0] += n
            acc[1] += a
    timings = dict(timings or {})
    all_failures = {**{f"shard {i}": err for i, err in sorted(failures.items())}, **failed_series}
    journal = list(journal or [])
    for key, reason in all_failures.items():
        note(journal, "failed: %s: %s", key, reason)
    common = {"rows": rows, "anomalies": anomalies, "shards_done": len(outcomes), "series_failed":
              len(failed_series) + lost, "timings": timings}
    if fraction > settings.scoring.max_failed_fraction:
        message = (f"run {run_id}: {len(failed_series) + lost} of {total} series failed "
                   f"({fraction:.1%} > max_failed_fraction {settings.scoring.max_failed_fraction:.1%}): "
                   + "; ".join(f"{k}: {v}" for k, v in list(all_failures.items())[:5])
                   + (f"; and {len(all_failures) - 5} more" if len(all_failures) > 5 else ""))
        note(journal, "%s", message)
        storage.write_bytes(f"{prefix}/{RUN_LOG}", ("\n".join(journal) + "\n").encode())
        writer.write_json(storage, f"{prefix}/{FAILED}", {"run_id": run_id, "error": message,
                                                               "failures": all_failures})
        runs.update(run_id, status="failed", error=message, finished_at=utcnow(), **common)
        raise ScoringError(message)
    claim = acquire_publish(settings, run_id, plan, force=force)
    if claim.duplicate_of:
        return _record_duplicate(settings, runs, run_id, plan, claim.duplicate_of, journal, common)
    try:
        staged = writer.staged_files(prefix, outcomes)
        t0 = time.perf_counter()
        version_of_table = table.commit_run(
            spec, staged, start, end, plan.devices,
            {"run_id": run_id, "release_version": version, "data_hash": plan.data_hash,
             "code_version": plan.code_version, "validation_id": plan.validation_id})
        timings["commit"] = time.perf_counter() - t0
        location = f"{table.table_uri(spec)}@v{version_of_table}"
        note(journal, "run %s: %d rows, %d anomalies, %d series failed; committed as table version %d",
             run_id, rows, anomalies, len(failed_series) + lost, version_of_table)
        storage.write_bytes(f"{prefix}/{RUN_LOG}", ("\n".join(journal) + "\n").encode())
        timings["total"] = time.perf_counter() - started if started is not None else 0.0
        stored = plan.to_json()
        manifest = {
            **{k: v for k, v in stored.items() if k not in ("shards",)},
            "window": {"start": stored["start"], "end": stored["end"]},
            "status": "complete", "resumed": resumed,
            "rows": rows, "anomalies": anomalies,
            "anomaly_rate": anomalies / rows if rows else 0.0,
            "anomaly_rate_per_sensor": {s: (a / n if n else 0.0) for s, (n, a) in sorted(per_sensor.items())},
            "rows_per_sensor": {s: n for s, (n, _) in sorted(per_sensor.items())},
            "series_scored": scored,
            "table": table.table_uri(spec), "table_version": version_of_table,
            "files": [table.data_path(run_id, item) for item in staged],  # added to the table, under its root
            "csv_parts": [writer.part_name(i, "csv") for i in sorted(outcomes)] if plan.csv else [],
            "shards": {str(i): {"devices": o.devices, "rows": o.rows, "anomalies": o.anomalies,
                                "timings": dict(o.timings)} for i, o in sorted(outcomes.items())},
            "failures": all_failures,
            "failed_fraction": fraction,
            "unscored": {k: v for o in outcomes.values() for k, v in o.unscored.items()},
            "kernel_evaluations": sum(o.kernel_evaluations for o in outcomes.values()),
            "timings": timings,
            "completed_at": utcnow().isoformat(),
        }
        t0 = time.perf_counter()
        manifest.update(run_ops.summary(outcomes, settings.training.drift_threshold))
        manifest["events"] = run_ops.record(settings, run_id, plan, outcomes)
        timings["operations"] = time.perf_counter() - t0
        writer.publish(storage, start, run_id, manifest)
    finally:
        claim.release()
    from fleetscore.pipelines import telemetry

    telemetry.record_run(manifest)
    runs.update(run_id, status="done", finished_at=utcnow(), seconds=timings["total"], location=location,
                table_version=version_of_table, **common)
    if settings.scoring.log_to_mlflow:
        log_to_mlflow(settings, runs, run_id, manifest)
    return ScoringResult(run_id, "done", start, end, version, rows, anomalies, location,
                         resumed=resumed, failures=all_failures, manifest=manifest, table_version=version_of_table,
                         run_folder=storage.display(prefix))


def _record_duplicate(settings: Settings, runs: RunLog, run_id: str, plan: RunPlan, first: str, journal: list[str],
                      common: dict[str, Any]) -> ScoringResult:
    """Another run published the same window, release, data and devices while this one scored: record
    this one as its duplicate, publish nothing, and mark the folder so that no later run resumes it."""
    from fleetscore.pipelines.run_planning import committed_location  # run_planning imports this module

    storage = storage_spec_for(settings).open()
    prefix = writer.run_prefix(plan.start, run_id)
    note(journal, "run %s published the same window, release and data first: nothing published", first)
    storage.write_bytes(f"{prefix}/{RUN_LOG}", ("\n".join(journal) + "\n").encode())
    writer.write_json(storage, f"{prefix}/{FAILED}", {"run_id": run_id, "error": f"duplicate of run {first}"})
    runs.update(run_id, status="skipped", error=f"duplicate of run {first}", finished_at=utcnow(), **common)
    return ScoringResult(run_id, "skipped", plan.start, plan.end, plan.release_version, duplicate_of=first,
                         location=committed_location(settings, first), run_folder=storage.display(prefix))


def log_to_mlflow(settings: Settings, runs: RunLog, run_id: str, manifest: dict[str, Any]) -> None:
    """Log a completed run (its manifest) to MLflow; a failure to do so is a warning, never the run's."""
    from fleetscore.training.registry import log_run

    metrics: dict[str, float] = {key: manifest[key] for key in (
        "rows", "anomalies", "anomaly_rate", "failed_fraction", "series_scored")}
    metrics.update({f"anomaly_rate.sensor_{s}": r for s, r in manifest["anomaly_rate_per_sensor"].items()})
    metrics.update({f"seconds.{k}": v for k, v in manifest["timings"].items()})
    params = {"window_start": manifest["start"], "window_end": manifest["end"],
              "release_version": manifest["release_version"], "n_shards": manifest["n_shards"],
              "data_hash": manifest["data_hash"], "table_version": manifest["table_version"]}
    tags = {"fleetscore.run_id": run_id, "fleetscore.validation_id": manifest["validation_id"],
            "fleetscore.code_version": manifest["code_version"], "fleetscore.kind": "scoring"}
    try:
        mlflow_id = log_run(settings.tracking_uri, settings.scoring.experiment, run_id, params, metrics, tags)
    except FleetscoreError as exc:
        log.warning("run %s: not logged to MLflow: %s", run_id, exc)
        return
    runs.update(run_id, mlflow_run_id=mlflow_id)
