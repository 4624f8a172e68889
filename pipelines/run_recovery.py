"""Runs left ``running`` by a process that died: completed from their manifest, or marked ``abandoned``.

A scoring run records the process that runs it (``owner``: host, pid, start time). When that process is
gone (``kill -9``, a crash, a reboot) its record would stay ``running`` forever. Before a command reads
or writes run records (``score``, ``runs list``, ``runs show``, ``report``), :func:`reconcile_runs`
looks at the runs of this host whose process is gone:

- a run whose manifest exists had committed its rows (the manifest is written after the table commit):
  its record is completed from the manifest (``done``, rows, anomalies, table version) and, with
  ``[scoring] log_to_mlflow``, its MLflow run is logged then, finished;
- any other is ``abandoned``, with the error naming its process; its folder is not a result to any
  reader, and ``fleetscore score`` on the same window, release and data resumes it.

Runs of another host (an Azure ML step, another machine sharing the database) are left to that host.
"""

from __future__ import annotations

import logging
from datetime import datetime

from fleetscore.errors import StorageError
from fleetscore.ingestion.timeutil import utcnow
from fleetscore.pipelines.adapters import storage_for
from fleetscore.pipelines.run_finalize import log_to_mlflow
from fleetscore.pipelines.settings import Settings
from fleetscore.records.run_log import RunLog
from fleetscore.scoring import writer
from fleetscore.scoring.contracts import MANIFEST

log = logging.getLogger(__name__)


def reconcile_runs(settings: Settings, runs: RunLog | None = None) -> dict[str, str]:
    """Complete or abandon the runs of this host whose process is gone; returns run id -> new status."""
    runs = runs or RunLog(settings.database_url)
    orphans = runs.orphaned()
    if not orphans:
        return {}
    storage = storage_for(settings)
    changed: dict[str, str] = {}
    for record in orphans:
        run_id, owner = str(record["run_id"]), str(record["owner"])
        path = f"{writer.run_prefix(record['window_start'], run_id)}/{MANIFEST}"
        try:
            manifest = writer.read_json(storage, path) if storage.exists(path) else None
        except StorageError as exc:
            log.warning("run %s: its manifest cannot be read (%s); left as it is", run_id, exc)
            continue
        if manifest is not None:
            runs.update(run_id, status="done", rows=int(manifest["rows"]), anomalies=int(manifest["anomalies"]),
                        table_version=manifest.get("table_version"), seconds=manifest["timings"].get("total"),
                        location=f"{manifest['table']}@v{manifest['table_version']}",
                        finished_at=_completed_at(manifest.get("completed_at")),
                        error="")
            if settings.scoring.log_to_mlflow and not record.get("mlflow_run_id"):
                log_to_mlflow(settings, runs, run_id, manifest)
            log.warning("run %s: its process (%s) died after its manifest; recorded as done", run_id, owner)
            changed[run_id] = "done"
        else:
            runs.update(run_id, status="abandoned", finished_at=utcnow(),
                        error=f"its process ({owner}) died before the run finished; fleetscore score on the "
                              "same window resumes it")
            log.warning("run %s: its process (%s) is gone; marked abandoned", run_id, owner)
            changed[run_id] = "abandoned"
    return changed


def _completed_at(value: object) -> datetime:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).replace(tzinfo=None)
        except ValueError:
            pass
    return utcnow()
