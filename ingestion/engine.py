"""The SQLAlchemy engine for a database URL: SQLite (WAL), PostgreSQL, Azure SQL (mssql+pyodbc)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from fleetscore.errors import ConfigError

_ENGINES: list[Engine] = []


def _close_pools_before_fork() -> None:
    """Close pooled connections before this process forks: SQLite forbids carrying an open connection
    into a child (it corrupts, or fails with "disk I/O error"), and sockets must not be shared."""
    for engine in _ENGINES:
        engine.dispose()


os.register_at_fork(before=_close_pools_before_fork)


@functools.lru_cache(maxsize=16)
def make_engine(url: str) -> Engine:
    """Create (once per process and URL) an engine for ``url``.

    SQLite files get their folder created, WAL journaling and a busy timeout, so that a scheduler and
    a CLI command can use the same file at once.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"database_url: not a SQLAlchemy URL: {url!r}") from exc
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 60}
    elif parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 is the driver we ship
    try:
        engine = create_engine(parsed, pool_pre_ping=True, **kwargs)
    except (NoSuchModuleError, ImportError) as exc:
        shown = parsed.render_as_string(hide_password=True)
        raise ConfigError(f"database_url {shown}: driver not installed ({exc})") from exc
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    _ENGINES.append(engine)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()
