"""Read-only commands on a fresh folder: name the missing store and the command that creates it.

Opening a SQLite URL or a local MLflow store creates the file; a command that only reads (``runs list``,
``models list``, ``validate``...) would leave an empty database behind and then report "nothing" or a
schema error. These checks run first and raise a one-line error instead. Servers (PostgreSQL, an MLflow
server, Azure) are left to their own errors: nothing is created by asking them.
"""

from __future__ import annotations

from pathlib import Path

from fleetscore.errors import ReleaseNotFound, StoreError
from fleetscore.pipelines.settings import Settings

__all__ = ["require_registry", "require_store"]


def _sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` URL (query string dropped); None for other URLs and memory."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def require_store(settings: Settings) -> None:
    """Raise :class:`StoreError` when the sensor store is a SQLite file that does not exist yet."""
    path = _sqlite_file(settings.database_url)
    if path is not None and not path.exists():
        raise StoreError(f"no sensor store at {settings.database_url}: ingest readings first "
                         "(fleetscore ingest PATH, or fleetscore simulate --ingest)")


def require_registry(settings: Settings) -> None:
    """Raise :class:`ReleaseNotFound` when the registry is a local SQLite MLflow store that does not exist."""
    path = _sqlite_file(settings.tracking_uri)
    if path is not None and not path.exists():
        raise ReleaseNotFound(f"no model registry at {settings.tracking_uri}: fleetscore release creates it")
