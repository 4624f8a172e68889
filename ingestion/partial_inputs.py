"""Inputs ingested in several commits: how far the committed part of each reaches, and who owns it.

A long input is committed every ``[ingest] commit_every`` (so other SQLite writers get the lock between
its parts). Each part's transaction also writes the input's row in ``partial_sources``: the last line
committed, the counts so far and the ingest's ``updated_at`` stamp. A rerun after a crash resumes after
that line with the same stamp and counts, so the store ends as a clean run leaves it. The row goes in the
transaction that records the input in ``sources``.

Only inputs whose content hash is known before reading (files) are committed in parts; standard input
stays one transaction (its hash is known at its end only).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from fleetscore.ingestion.timeutil import utcnow
from fleetscore.ingestion.writer import StoreWriter
from fleetscore.processes import owner_gone, this_process

log = logging.getLogger(__name__)

STALE_AFTER_MIN = timedelta(minutes=5)  # an owner of another host is taken as gone past this (or 10 parts)


@dataclass(frozen=True)
class PartialInput:
    """The committed part of an input: every line up to ``lines_done``, with the counts so far."""

    content_hash: str
    name: str
    owner: str
    lines_done: int
    rows: int
    windows_written: int
    late_updates: int
    quarantined: dict[str, int]
    stamp: datetime
    heartbeat: datetime
    prefix_sha256: str = ""

    def taken(self, commit_every: timedelta, now: datetime | None = None) -> bool:
        """Whether another ingest that is still running owns this input (so it must not be resumed)."""
        if self.owner == this_process():
            return False
        gone = owner_gone(self.owner)
        if gone is not None:
            return not gone
        return (now or utcnow()) - self.heartbeat < max(STALE_AFTER_MIN, 10 * commit_every)


_COLUMNS = ("content_hash, name, owner, lines_done, rows, windows_written, late_updates, quarantined, stamp, "
            "heartbeat, prefix_sha256")


def _part(row: tuple[object, ...]) -> PartialInput:
    return PartialInput(str(row[0]), str(row[1]), str(row[2]), int(row[3]), int(row[4]),  # type: ignore[call-overload]
                        int(row[5]), int(row[6]),  # type: ignore[call-overload]
                        {str(k): int(v) for k, v in json.loads(str(row[7])).items()},
                        datetime.fromisoformat(str(row[8])), datetime.fromisoformat(str(row[9])), str(row[10] or ""))


def load_partial(writer: StoreWriter, content_hash: str) -> PartialInput | None:
    """The committed part of the input with ``content_hash``, if an ingest of it stopped or runs."""
    rows = writer.execute(f"SELECT {_COLUMNS} FROM partial_sources WHERE content_hash = {writer.store.placeholder(1)}",
                          (content_hash,))
    return _part(rows[0]) if rows else None


def partials_named(writer: StoreWriter, name: str) -> list[PartialInput]:
    """The committed parts of earlier versions of the input called ``name`` (newest first)."""
    rows = writer.execute(f"SELECT {_COLUMNS} FROM partial_sources WHERE name = {writer.store.placeholder(1)}",
                          (name,))
    return sorted((_part(row) for row in rows), key=lambda part: part.heartbeat, reverse=True)


def save_partial(writer: StoreWriter, part: PartialInput) -> None:
    """Record ``part`` as the committed part of its input (in the writer's transaction)."""
    p = writer.store.placeholder
    writer.execute(f"DELETE FROM partial_sources WHERE content_hash = {p(1)}", (part.content_hash,))
    marks = ", ".join(p(i) for i in range(1, 12))
    writer.execute(
        f"INSERT INTO partial_sources ({_COLUMNS}) VALUES ({marks})",
        (part.content_hash, part.name, part.owner, part.lines_done, part.rows, part.windows_written,
         part.late_updates, json.dumps(part.quarantined, sort_keys=True), part.stamp.isoformat(),
         part.heartbeat.isoformat(), part.prefix_sha256))


def drop_partial(writer: StoreWriter, content_hash: str) -> None:
    """Forget the committed part of an input (it is recorded whole in ``sources`` now)."""
    writer.execute(f"DELETE FROM partial_sources WHERE content_hash = {writer.store.placeholder(1)}",
                   (content_hash,))
