"""Publish once: two runs of the same window, release, data and devices never both commit.

Two ``fleetscore score`` of one window started at the same instant both find no earlier run, both score,
and used to both commit their rows to the predictions table. Before committing, a run now takes the
publish claim of its window, release, data and devices (a SQL row, :mod:`records.publish_claims`):

- the claim is free: it takes it, checks once more that no run completed the same work meanwhile, commits,
  writes its manifest and drops the claim;
- another run holds it: it waits (at most :data:`PUBLISH_WAIT_S`) for that run to finish, then records
  itself as a duplicate of it (``skipped``) and publishes nothing; a holder whose process is gone is
  taken over.

``--force`` (score again on purpose) takes no claim.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass

from fleetscore.errors import ScoringError
from fleetscore.pipelines.adapters import storage_for
from fleetscore.pipelines.settings import Settings
from fleetscore.processes import owner_gone
from fleetscore.records.publish_claims import PublishClaims
from fleetscore.scoring.contracts import RunPlan

log = logging.getLogger(__name__)

PUBLISH_WAIT_S = 600.0  # how long a run waits for another run's commit of the same work
_POLL_S = 0.5


def publish_key(plan: RunPlan) -> str:
    """The claim of a plan: its window, release, data and devices (the work, not the run)."""
    work = [plan.start.isoformat(), plan.end.isoformat(), plan.release_version, plan.data_hash,
            sorted(plan.devices) if plan.devices is not None else None, sorted(map(list, plan.excluded_ids))]
    return hashlib.sha256(json.dumps(work).encode()).hexdigest()


@dataclass
class PublishClaim:
    """The outcome of :func:`acquire_publish`: this run may publish (``duplicate_of`` empty; call
    :meth:`release` after its manifest), or ``duplicate_of`` published the same work first."""

    key: str
    run_id: str
    claims: PublishClaims | None
    duplicate_of: str = ""

    def release(self) -> None:
        """Drop the claim, if this run holds one."""
        if self.claims is not None and not self.duplicate_of:
            self.claims.release(self.key, self.run_id)


def acquire_publish(settings: Settings, run_id: str, plan: RunPlan, *, force: bool = False,
                    wait_s: float = PUBLISH_WAIT_S) -> PublishClaim:
    """Take the publish claim of ``plan`` for ``run_id`` (see the module docstring).

    Raises :class:`ScoringError` naming the other run when it holds the claim past ``wait_s``."""
    key = publish_key(plan)
    if force:
        return PublishClaim(key, run_id, None)
    claims = PublishClaims(settings.database_url)
    deadline = time.monotonic() + wait_s
    waiting = False
    while True:
        holder = claims.take(key, run_id)
        if holder is None:
            first = _completed_same_work(settings, plan)
            if first and first != run_id:
                claims.release(key, run_id)
                return PublishClaim(key, run_id, claims, duplicate_of=first)
            return PublishClaim(key, run_id, claims)
        other, owner = holder
        if owner_gone(owner) is True and claims.steal(key, other, run_id):
            log.warning("run %s: run %s claimed the same window, release and data but its process (%s) is "
                        "gone; publishing instead", run_id, other, owner)
            continue
        if time.monotonic() >= deadline:
            raise ScoringError(f"run {run_id}: run {other} of the same window, release and data is still "
                               f"publishing after {wait_s:g} s; try again when it is done")
        if not waiting:
            log.warning("run %s: run %s is publishing the same window, release and data; waiting for it",
                        run_id, other)
            waiting = True
        time.sleep(_POLL_S)


def _completed_same_work(settings: Settings, plan: RunPlan) -> str:
    """The run id of a complete, current run of the same work, or ''."""
    from fleetscore.pipelines.run_planning import find_duplicate

    duplicate = find_duplicate(settings, storage_for(settings), plan.start, plan.end, plan.release_version,
                               plan.data_hash, list(plan.devices) if plan.devices is not None else None)
    return str(duplicate["run_id"]) if duplicate else ""
