"""The SQL record of model alias moves (table ``alias_moves``), written by the release pipeline.

MLflow keeps no history of its aliases; the registry adapter records every move in the registered
model's tags and the release pipeline records it here too: time, user, model, alias, from, to, reason.
The table is created on first use. All SQL of alias records lives here; callers get plain dicts back.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, insert, select
from sqlalchemy.exc import SQLAlchemyError

from fleetscore.errors import StoreError
from fleetscore.ingestion.engine import absolute_database_url, make_engine

metadata = MetaData()

alias_moves = Table(
    "alias_moves",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("moved_at", DateTime, nullable=False),
    Column("user", String(128), nullable=False),
    Column("model", String(256), nullable=False),
    Column("alias", String(64), nullable=False),
    Column("from_version", Integer, nullable=True),
    Column("to_version", Integer, nullable=False),
    Column("reason", Text, nullable=False, default=""),
)

_COLUMNS = ("moved_at", "user", "model", "alias", "from_version", "to_version", "reason")


class AliasLog:
    """Alias moves in the database at ``database_url``."""

    def __init__(self, database_url: str) -> None:
        self.database_url = absolute_database_url(database_url)
        self._ready = False

    def _engine(self) -> Any:
        engine = make_engine(self.database_url)
        if not self._ready:
            try:
                metadata.create_all(engine, checkfirst=True)
            except SQLAlchemyError as exc:
                raise StoreError(f"database {self._shown()}: cannot create table alias_moves: {exc}") from exc
            self._ready = True
        return engine

    def _shown(self) -> str:
        return make_engine(self.database_url).url.render_as_string(hide_password=True)

    def record(self, moved_at: datetime, user: str, model: str, alias: str, from_version: int | None,
               to_version: int, reason: str) -> None:
        """Append one move."""
        row = {"moved_at": moved_at, "user": user, "model": model, "alias": alias,
               "from_version": from_version, "to_version": to_version, "reason": reason}
        try:
            with self._engine().begin() as conn:
                conn.execute(insert(alias_moves).values(**row))
        except SQLAlchemyError as exc:
            raise StoreError(f"database {self._shown()}: cannot record alias move: {exc}") from exc

    def history(self, model: str, alias: str | None = None) -> list[dict[str, Any]]:
        """The moves of ``model`` (one alias or all), oldest first."""
        query = select(*(alias_moves.c[c] for c in _COLUMNS)).where(alias_moves.c.model == model)
        if alias is not None:
            query = query.where(alias_moves.c.alias == alias)
        try:
            with self._engine().connect() as conn:
                rows = conn.execute(query.order_by(alias_moves.c.id)).mappings().all()
        except SQLAlchemyError as exc:
            raise StoreError(f"database {self._shown()}: cannot read alias moves: {exc}") from exc
        return [dict(r) for r in rows]
