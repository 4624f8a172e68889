"""Claims to publish a scoring run's rows (table ``publish_claims``): one row per window, release, data
and devices while a run commits them, so that two runs of the same window started at the same instant
publish once. Written by :mod:`pipelines.publish_once`; all its SQL is here."""

from __future__ import annotations

from sqlalchemy import Column, MetaData, String, Table, delete, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from fleetscore.errors import StoreError, one_line
from fleetscore.ingestion.engine import ensure_tables
from fleetscore.ingestion.schema import UtcDateTime
from fleetscore.ingestion.timeutil import utcnow
from fleetscore.processes import this_process

metadata = MetaData()

publish_claims = Table(
    "publish_claims",
    metadata,
    Column("claim", String(64), primary_key=True),  # sha256 of window, release, data and devices
    Column("run_id", String(64), nullable=False),
    Column("owner", String(160), nullable=False),  # host:pid:start of the claiming process
    Column("claimed_at", UtcDateTime, nullable=False),
)


class PublishClaims:
    """The claims in the database at ``database_url``."""

    def __init__(self, database_url: str) -> None:
        self.engine = ensure_tables(database_url, metadata, "publish_claims")

    def take(self, claim: str, run_id: str) -> tuple[str, str] | None:
        """Claim ``claim`` for ``run_id``; None when it is now this run's, else the holder's (run id, owner)."""
        c = publish_claims.c
        try:
            try:
                with self.engine.begin() as conn:
                    conn.execute(publish_claims.insert().values(claim=claim, run_id=run_id, owner=this_process(),
                                                                claimed_at=utcnow()))
                return None
            except IntegrityError:
                with self.engine.connect() as conn:
                    row = conn.execute(select(c.run_id, c.owner).where(c.claim == claim)).first()
        except SQLAlchemyError as exc:
            raise StoreError(f"publish_claims: cannot claim for run {run_id}: {one_line(exc)}") from exc
        if row is None:  # released between our insert and our look: try again
            return self.take(claim, run_id)
        if row[0] == run_id:
            return None
        return str(row[0]), str(row[1])

    def steal(self, claim: str, holder_run_id: str, run_id: str) -> bool:
        """Take over the claim of a run whose process is gone; False when someone else changed it first."""
        c = publish_claims.c
        try:
            with self.engine.begin() as conn:
                done = conn.execute(update(publish_claims).where(c.claim == claim, c.run_id == holder_run_id)
                                    .values(run_id=run_id, owner=this_process(), claimed_at=utcnow()))
        except SQLAlchemyError as exc:
            raise StoreError(f"publish_claims: cannot take over for run {run_id}: {one_line(exc)}") from exc
        return bool(done.rowcount)

    def release(self, claim: str, run_id: str) -> None:
        """Drop this run's claim (after its manifest, or when it failed)."""
        c = publish_claims.c
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(publish_claims).where(c.claim == claim, c.run_id == run_id))
        except SQLAlchemyError as exc:
            raise StoreError(f"publish_claims: cannot release run {run_id}'s claim: {one_line(exc)}") from exc
