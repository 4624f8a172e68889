"""The SQLAlchemy engine for a database URL: SQLite (WAL), PostgreSQL, Azure SQL (mssql+pyodbc).

SQLite and two copies of its library: Python's ``sqlite3`` (which SQLAlchemy uses) links the system
libsqlite3, ADBC's SQLite driver links its own copy. Two copies with the same file open in one process
is SQLite's documented corruption case ("How To Corrupt An SQLite Database File", 2.2.1): POSIX locks of
one process never conflict, and closing a file drops every lock the process holds on it. A connection of
one copy then takes itself for the last one and deletes the WAL under the other copy's connections (or
another process does, once this process's locks are gone): committed rows vanish. So every ``sqlite3``
connection of the engines made here counts itself per file (:class:`TrackedConnection`), and the other
copy may open a file only inside :func:`single_sqlite_copy`, which closes the idle pooled connections and
holds off new ones while it runs. Writes never use the other copy.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from fleetscore.errors import ConfigError, StoreError, one_line

CONNECT_TIMEOUT_S = 10  # seconds to connect to PostgreSQL / Azure SQL (a URL's own connect_timeout wins)
_ENGINES: list[Engine] = []
_SQLITE_ENGINES: dict[str, list[Engine]] = {}  # SQLite file (real path) -> the engines on it


class _FileGuard:
    """Per SQLite file: how many ``sqlite3`` connections of this process are open on it, and the lock
    that :func:`single_sqlite_copy` holds (new connections wait on it)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.count_lock = threading.Lock()
        self.open = 0


_GUARDS: dict[str, _FileGuard] = {}
_GUARDS_LOCK = threading.Lock()


def _file_key(database: Any) -> str:
    return os.path.realpath(os.fspath(database))


def _guard(key: str) -> _FileGuard:
    with _GUARDS_LOCK:
        return _GUARDS.setdefault(key, _FileGuard())


class TrackedConnection(sqlite3.Connection):
    """A ``sqlite3`` connection that counts itself open on its file, and waits to open while another
    SQLite library copy has the file open (see the module docstring)."""

    def __init__(self, database: Any, *args: Any, **kwargs: Any) -> None:
        guard = _guard(_file_key(database))
        with guard.lock:
            super().__init__(database, *args, **kwargs)
            with guard.count_lock:
                guard.open += 1
        self._fs_guard: _FileGuard | None = guard

    def close(self) -> None:
        """Close the connection and stop counting it."""
        super().close()
        self._uncount()

    def _uncount(self) -> None:
        guard, self._fs_guard = getattr(self, "_fs_guard", None), None
        if guard is not None:
            with guard.count_lock:
                guard.open -= 1

    def __del__(self) -> None:
        self._uncount()


@contextmanager
def single_sqlite_copy(database: str) -> Iterator[bool]:
    """Let another SQLite library copy (ADBC) open ``database`` inside this block, when it is safe.

    Closes the idle pooled ``sqlite3`` connections on that file and holds off new ones until the block
    ends; yields True when no ``sqlite3`` connection of this process is left open on it (one is checked
    out, e.g. a transaction up the stack: yields False, and the caller must read through ``sqlite3``).
    """
    key = _file_key(database)
    guard = _guard(key)
    with guard.lock:
        engines = _SQLITE_ENGINES.get(key, [])
        if not any(_checked_out(engine) for engine in engines):  # else they stay open: no use closing
            for engine in engines:
                engine.dispose()  # closes the idle pooled connections
        with guard.count_lock:
            alone = guard.open == 0
        yield alone


def _checked_out(engine: Engine) -> int:
    count = getattr(engine.pool, "checkedout", None)
    return int(count()) if callable(count) else 0


def _close_pools_before_fork() -> None:
    """Close pooled connections before this process forks: SQLite forbids carrying an open connection
    into a child (it corrupts, or fails with "disk I/O error"), and sockets must not be shared."""
    for engine in _ENGINES:
        engine.dispose()


def _fresh_guards_in_child() -> None:
    """A forked child holds none of its parent's connections, and no lock another thread held."""
    global _GUARDS, _GUARDS_LOCK
    _GUARDS, _GUARDS_LOCK = {}, threading.Lock()


os.register_at_fork(before=_close_pools_before_fork, after_in_child=_fresh_guards_in_child)


def make_engine(url: str) -> Engine:
    """The engine for ``url``, created once per process and database.

    SQLite files get their folder created, WAL journaling and a busy timeout, so that a scheduler and
    a CLI command can use the same file at once. A relative SQLite path is resolved against the current
    directory first, so the same file always gets the same engine and a later change of directory never
    sends a pooled connection to the previous directory's file.
    """
    return _engine(absolute_database_url(url))


def absolute_database_url(url: str) -> str:
    """``url`` with a relative SQLite file resolved against the current directory (other URLs as they are).

    The one place a database URL is parsed and made absolute: the same file must mean the same engine
    in this process, and a later change of directory must not send a connection to another file.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"database_url: not a SQLAlchemy URL: {url!r}") from exc
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:" \
            and not parsed.database.startswith("file:"):
        return parsed.set(database=str(Path(parsed.database).resolve())).render_as_string(hide_password=False)
    return url


@functools.lru_cache(maxsize=16)
def _engine(url: str) -> Engine:
    parsed = make_url(url)
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 60, "factory": TrackedConnection}
    elif parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 is the driver we ship
        parsed = with_connect_timeout(parsed)
    elif parsed.get_backend_name() == "mssql" and parsed.get_driver_name() == "pyodbc":
        kwargs["fast_executemany"] = True  # executemany as one array-bound round trip, not one per row
        kwargs["connect_args"] = {"timeout": CONNECT_TIMEOUT_S}  # the ODBC login timeout
    try:
        engine = create_engine(parsed, pool_pre_ping=True, **kwargs)
    except (NoSuchModuleError, ImportError) as exc:
        shown = parsed.render_as_string(hide_password=True)
        raise ConfigError(f"database_url {shown}: driver not installed ({one_line(exc)}){_install_hint(parsed)}") \
            from exc
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        if parsed.database and parsed.database != ":memory:":
            _SQLITE_ENGINES.setdefault(_file_key(parsed.database), []).append(engine)
    _ENGINES.append(engine)
    return engine


def with_connect_timeout(parsed: URL) -> URL:
    """A PostgreSQL URL with libpq's ``connect_timeout`` (:data:`CONNECT_TIMEOUT_S`) unless it sets one:
    a server that takes the connection and never answers is an error within it, not a wait forever."""
    if "connect_timeout" in parsed.query:
        return parsed
    return parsed.update_query_dict({"connect_timeout": str(CONNECT_TIMEOUT_S)})


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()



def _install_hint(parsed: Any) -> str:
    """How to install the driver a URL needs, for the drivers fleetscore documents."""
    if parsed.get_backend_name() == "mssql" and parsed.get_driver_name() == "pyodbc":
        return ("; install pyodbc (pip install 'fleetscore[azure]') and Microsoft's ODBC Driver 18 for "
                "SQL Server, which brings unixODBC's libodbc.so.2 (docs/deploy-azure.md)")
    return ""


_CREATED: set[tuple[int, str]] = set()


def ensure_tables(database_url: str, metadata: MetaData, what: str) -> Engine:
    """The engine of ``database_url`` with ``metadata``'s tables created, once per process and database.

    Keyed by the resolved database (not the URL text), so the same relative URL in another directory
    gets its tables too. ``what`` names the tables in the one-line error.
    """
    engine = make_engine(database_url)
    key = (id(metadata), engine.url.render_as_string(hide_password=False))
    if key not in _CREATED:
        try:
            metadata.create_all(engine)
        except SQLAlchemyError:
            try:  # another process created the tables between our check and our CREATE
                metadata.create_all(engine)
            except SQLAlchemyError as exc:
                first = one_line(exc)
                raise StoreError(f"{what}: cannot create the tables: {first}") from exc
        _CREATED.add(key)
    return engine
