"""The retrain policy: ``release --only KINDS`` every period, run by the scheduler beside scoring.

``fleetscore retrain-policy set --every 1d --only drifted,new`` stores it (``retrain_policies`` in SQL);
:func:`run_if_due` is what the scheduler calls after each pass over its scoring windows: when the policy
is due (never run, or last run ``every`` ago or more) it runs the release function and records the
outcome, whether it released, found nothing to retrain, or failed. ``publish --target azureml``
publishes the same policy as a second Azure ML schedule (``pipelines.azureml``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fleetscore.errors import FleetscoreError, NothingToRetrain
from fleetscore.ingestion.ops_store import OpsStore
from fleetscore.ingestion.timeutil import parse_duration, utcnow
from fleetscore.pipelines.selection import check_only
from fleetscore.pipelines.settings import Settings

log = logging.getLogger(__name__)

ReleaseFn = Callable[[Settings, list[str]], Any]  # (settings, only) -> an outcome with .summary


def set_policy(settings: Settings, every: str, only: str, now: datetime | None = None) -> dict[str, Any]:
    """Validate and store the policy; returns it."""
    parse_duration(every, "--every")
    kinds = ",".join(check_only(only))
    store = OpsStore(settings.database_url)
    store.set_policy(every, kinds, now or utcnow())
    policy = store.policy()
    assert policy is not None
    return policy


def default_release(settings: Settings, only: list[str]) -> Any:
    """The release the policy runs: ``fleetscore release --only ONLY`` over all stored data."""
    from fleetscore.pipelines.release import run_release

    return run_release(settings, only=only)


def run_if_due(settings: Settings, release: ReleaseFn = default_release, now: datetime | None = None) -> str | None:
    """Run the policy's release if it is due; the outcome's one line (None when not due or no policy)."""
    store = OpsStore(settings.database_url)
    policy = store.policy()
    if policy is None:
        return None
    now = now or utcnow()
    every = parse_duration(policy["every"], "retrain policy every")
    if policy["last_run_at"] is not None and now - policy["last_run_at"] < every:
        return None
    try:
        outcome = release(settings, policy["only"].split(","))
        line = str(getattr(outcome, "summary", outcome))
    except NothingToRetrain as exc:
        line = f"nothing to retrain: {exc}"
    except FleetscoreError as exc:
        line = f"failed: {exc}"
        log.warning("retrain policy: %s", exc)
    store.policy_ran(int(policy["id"]), now, line)
    return line
