"""The SQLite write lock: a bounded wait that says who holds it.

SQLite lets one writer in at a time. A second ``fleetscore ingest`` (or a scheduler's run) during a long
one used to wait SQLite's busy timeout in silence and then fail with ``database is locked``. Here a
writer tries ``BEGIN IMMEDIATE`` in one-second steps, logs a progress line every few seconds naming the
holder, and past ``[ingest] lock_timeout`` raises :class:`StoreLockTimeout` naming the database and
the holder's command.

The holder is known from a small note beside the database (``<file>.writer``: pid, command, since)
that a fleetscore writer leaves while it holds the lock; a note of a process that is gone is ignored.
PostgreSQL keeps its row-level locking and needs none of this.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from pathlib import Path

from fleetscore.errors import StoreError, one_line
from fleetscore.ingestion.timeutil import utcnow
from fleetscore.processes import pid_alive
from fleetscore.redact import redact

log = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT = timedelta(minutes=2)
_TRY_MS = 1000  # each BEGIN IMMEDIATE waits this long in SQLite before we look again
_NOTE_EVERY_S = 10.0
_FIRST_NOTE_S = 2.0
MAKE_WAY_S = 5.0  # how long a writer between two parts waits for waiters to get the lock
_BUSY_MS = 60_000  # the connection's busy timeout outside this wait (see ingestion.engine)


class StoreLockTimeout(StoreError):
    """The SQLite write lock stayed taken past ``[ingest] lock_timeout``."""


def note_path(database: Path) -> Path:
    """The holder's note beside a SQLite file."""
    return database.with_name(database.name + ".writer")


def holder(database: Path) -> str:
    """Who holds the write lock, as far as fleetscore knows: ``pid N (command), since T``."""
    try:
        note = json.loads(note_path(database).read_text())
        pid = int(note["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return "a writer that left no note (not a fleetscore ingest)"
    if not pid_alive(pid):
        return "a writer that left no note (not a fleetscore ingest)"
    return f"pid {pid} ({note.get('command', '?')}), since {note.get('since', '?')}"


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 1 else f"{value:g} s"


@contextmanager
def sqlite_write_lock(conn: sqlite3.Connection, database: Path, timeout: timedelta) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` on ``conn`` within ``timeout``, leaving the holder's note while inside.

    The caller commits or rolls back; the note is removed on the way out. Raises
    :class:`StoreLockTimeout` naming ``database`` and the holder when the lock stays taken.
    """
    limit = max(timeout.total_seconds(), 0.0)
    started = time.monotonic()
    next_note = started + _FIRST_NOTE_S
    conn.execute(f"PRAGMA busy_timeout={int(min(_TRY_MS, limit * 1000))}")
    waiting: Path | None = None  # our note among the waiters, left once the first try found the lock taken
    try:
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise StoreError(f"{database}: cannot begin a write: {one_line(exc)}") from exc
                if waiting is None:
                    waiting = _waiting_path(database)
                    _touch(waiting)
                now = time.monotonic()
                if now - started >= limit:
                    raise StoreLockTimeout(
                        f"{database}: the write lock stayed taken for {_seconds(limit)} "
                        f"([ingest] lock_timeout), held by {holder(database)}; try again when it is done"
                    ) from exc
                if now >= next_note:
                    log.warning("%s: waiting for the write lock, held by %s (%s of %s)", database,
                                holder(database), _seconds(now - started), _seconds(limit))
                    next_note = now + _NOTE_EVERY_S
    finally:
        conn.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
        if waiting is not None:
            with suppress(OSError):
                waiting.unlink()
    note = note_path(database)
    _write_note(note)
    try:
        yield
    finally:
        _remove_note(note)


def _waiting_path(database: Path) -> Path:
    return database.with_name(f"{database.name}.waiting-{os.getpid()}")


def _touch(path: Path) -> None:
    try:
        path.touch()
    except OSError as exc:  # a read-only folder: the holder only cannot make way
        log.debug("cannot leave the waiter's note %s: %s", path, exc)


def make_way(database: Path, deadline_s: float = MAKE_WAY_S) -> None:
    """Between the parts of a long write: while other writers wait for the lock (their notes
    ``<file>.waiting-PID``), pause until they got it, up to ``deadline_s``. Without this the holder
    would take the lock again at once, before a waiter's next try, and the waiter would starve."""
    until = time.monotonic() + deadline_s
    prefix = f"{database.name}.waiting-"
    while time.monotonic() < until:
        try:
            names = [p.name for p in database.parent.iterdir() if p.name.startswith(prefix)]
        except OSError:
            return
        pids = [int(n[len(prefix):]) for n in names if n[len(prefix):].isdigit()]
        if not any(pid != os.getpid() and pid_alive(pid) for pid in pids):
            return
        time.sleep(0.02)


def _write_note(note: Path) -> None:
    """Leave the holder's note (best effort: a read-only folder only loses the holder's name)."""
    body = {"pid": os.getpid(), "command": redact(" ".join(Path(sys.argv[0]).name if i == 0 else a
                                                           for i, a in enumerate(sys.argv)))[:300],
            "since": utcnow().isoformat(timespec="seconds") + "Z"}
    partial = note.with_name(f"{note.name}.{os.getpid()}.tmp")
    try:
        partial.write_text(json.dumps(body))
        partial.replace(note)
    except OSError as exc:
        log.debug("cannot leave the writer's note %s: %s", note, exc)


def _remove_note(note: Path) -> None:
    with suppress(OSError, ValueError, KeyError, TypeError):
        if int(json.loads(note.read_text())["pid"]) == os.getpid():
            note.unlink()
