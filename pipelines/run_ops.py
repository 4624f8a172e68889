"""A scoring run's operational records: cold-start counts, drift per series, anomaly events and alerts.

:func:`summary` (pure) adds to the run's manifest what its shards found: series scored by a fleet
model, series left unscored, and the drift of every series against its training reference (the series
past ``[training] drift_threshold`` listed); :func:`record` writes the drift rows to SQL (the run
records ``fleetscore drift`` reads) and folds the anomalous windows into anomaly events, notifying the
alert sinks. Both run in :func:`pipelines.run_finalize.finalize_run`, before the manifest is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from fleetscore.ingestion.timeutil import utcnow
from fleetscore.pipelines.settings import Settings
from fleetscore.scoring.contracts import RunPlan, ShardOutcome

TOP = 20  # drifted series listed in the manifest by name beyond the count (all of them are in SQL)


def summary(outcomes: Mapping[int, ShardOutcome], threshold: float) -> dict[str, Any]:
    """The manifest's ``cold_start`` and ``drift`` sections from the shards' outcomes."""
    fleet = sorted(k for o in outcomes.values() for k in o.fleet_scored)
    unscored = sorted(k for o in outcomes.values() for k in o.unscored)
    rows = [r for o in outcomes.values() for r in o.drift]
    known = [r for r in rows if r[2] is not None]
    drifted = sorted((r for r in known if r[2] > threshold), key=lambda r: -r[2])
    return {
        "cold_start": {"fleet_scored_series": len(fleet), "fleet_scored": fleet,
                       "unscored_series": len(unscored)},
        "drift": {
            "threshold": threshold, "series": len(known),
            "mean": sum(r[2] for r in known) / len(known) if known else 0.0,
            "max": max((r[2] for r in known), default=0.0),
            "drifted_series": len(drifted),
            "drifted": {f"{d}/{s}": {"drift": v, "feature": f, "rows": n, "anomaly_rate": a / n if n else 0.0}
                        for d, s, v, f, n, a, _scope in drifted[:TOP]},
        },
    }


def record(settings: Settings, run_id: str, plan: RunPlan, outcomes: Mapping[int, ShardOutcome],
           now: datetime | None = None) -> dict[str, Any]:
    """Write the run's drift rows to SQL and its anomalies as events (notifying the sinks); returns
    the manifest's ``events`` section."""
    from fleetscore.ingestion.ops_store import OpsStore
    from fleetscore.pipelines.alerts import sinks_from
    from fleetscore.pipelines.events import record_events

    now = now or utcnow()
    drift = [{"device": d, "sensor": s, "drift": float("nan") if v is None else v, "feature": f, "rows": n,
              "anomalies": a, "model_scope": scope}
             for o in outcomes.values() for d, s, v, f, n, a, scope in o.drift]
    OpsStore(settings.database_url).record_drift(run_id, plan.release_version, plan.start, plan.end, now, drift)
    anomalous = [r for o in outcomes.values() for r in o.anomalous]
    outcome = record_events(settings.database_url, settings.alerts, run_id, anomalous,
                            sinks_from(settings.alerts), now)
    return outcome.as_dict()

