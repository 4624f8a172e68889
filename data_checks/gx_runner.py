"""Run the fleet-level suites with Great Expectations 1.x against the SQL table itself.

One ephemeral context per validation run (no files, no analytics, no progress bars). The schema suite
runs on a table asset of ``windows``; the range suite on a query asset limited to the checked range,
so every expectation is a query in the database and no rows are pulled into memory. With ``docs_dir``
the context also builds Great Expectations' own HTML Data Docs there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Select, column, event, literal_column, select, table
from sqlalchemy.engine import Engine

from fleetscore.data_checks.gx_imports import (
    DataContextConfig,
    GreatExpectationsError,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
    gx,
)
from fleetscore.data_checks.plan import RANGE_CHECKS, RangePlan
from fleetscore.data_checks.report import FLEET, CheckResult
from fleetscore.data_checks.suite import range_suite, schema_suite, summarize_range, summarize_schema
from fleetscore.errors import StoreError, one_line

log = logging.getLogger(__name__)

DOCS_SITE = "fleetscore"


@dataclass
class FleetOutcome:
    """The fleet-level checks, in report order, and where the Data Docs were built (if asked)."""

    checks: list[CheckResult] = field(default_factory=list)
    docs_index: str | None = None

    @property
    def schema_ok(self) -> bool:
        """The table has the expected columns and types (the other checks ran)."""
        return any(c.name == "schema" and c.passed for c in self.checks)

    @property
    def rows(self) -> int:
        """Windows in the checked range (0 when not counted)."""
        for check in self.checks:
            if check.name == "not_empty" and isinstance(check.observed, int):
                return check.observed
        return 0


def range_query(engine: Engine, table_name: str, start: datetime | None, end: datetime | None,
                devices: list[str] | None) -> str:
    """``SELECT * FROM windows WHERE ...`` for the range, rendered for the engine's dialect."""
    ts = column("ts", DateTime)
    query: Select[Any] = select(literal_column("*")).select_from(table(table_name))
    if start is not None:
        query = query.where(ts >= start)
    if end is not None:
        query = query.where(ts < end)
    if devices is not None:
        query = query.where(column("device").in_(devices))
    return str(query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))


def run_fleet_checks(engine: Engine, table_name: str, start: datetime | None, end: datetime | None,
                     devices: list[str] | None, plan: RangePlan, docs_dir: str | Path | None) -> FleetOutcome:
    """Run the schema suite, then (if the schema holds) the range suite; build Data Docs if asked."""
    context = _context(docs_dir)
    url = engine.url.render_as_string(hide_password=False)
    backend = engine.url.get_backend_name()
    try:
        source: Any
        if backend == "sqlite":
            source = context.data_sources.add_sqlite(name="fleetscore", connection_string=url)
        elif backend == "postgresql":
            source = context.data_sources.add_postgres(name="fleetscore", connection_string=url)
        else:
            source = context.data_sources.add_sql(name="fleetscore", connection_string=url)
        table_asset = source.add_table_asset(name=table_name, table_name=table_name)
        schema_def = context.validation_definitions.add(gx.ValidationDefinition(
            name="schema", data=table_asset.add_batch_definition_whole_table("whole table"),
            suite=context.suites.add(schema_suite())))
        outcome = FleetOutcome()
        schema_result = schema_def.run(result_format="BASIC")
        outcome.checks.append(summarize_schema(schema_result.results))
        if outcome.schema_ok:
            query = range_query(engine, table_name, start, end, devices)
            log.debug("range asset: %s", query)
            range_asset = source.add_query_asset(name="checked range", query=query)
            range_def = context.validation_definitions.add(gx.ValidationDefinition(
                name="range", data=range_asset.add_batch_definition_whole_table("range"),
                suite=context.suites.add(range_suite(plan))))
            with _columns_without_rows(query):
                range_result = range_def.run(result_format={"result_format": "BASIC", "partial_unexpected_count": 5})
            outcome.checks.extend(summarize_range(range_result.results, plan))
        else:
            outcome.checks.extend(CheckResult(name, FLEET, None, detail="skipped: schema check failed")
                                  for name in RANGE_CHECKS)
        if docs_dir is not None:
            sites = context.build_data_docs(site_names=[DOCS_SITE])
            outcome.docs_index = str(Path(docs_dir) / "index.html") if sites else None
    except GreatExpectationsError as exc:
        shown = engine.url.render_as_string(hide_password=True)
        first = one_line(exc)
        raise StoreError(f"database {shown}: Great Expectations could not run the suite: {first}") from exc
    return outcome


@contextmanager
def _columns_without_rows(query: str) -> Iterator[None]:
    """While GX runs the range suite, make its column reflection of the range query fetch no rows.

    GX 1.24 learns the columns of a query asset by executing the bare query
    (``column_reflection_fallback``); SQLite steps to the first row only, but a client-side cursor
    (psycopg's default) transfers the whole range into memory: 2.4 GB at 10M windows. Every metric
    query wraps the asset's query in a subquery, so only that reflection runs it bare; it gets
    ``LIMIT 0`` (columns, no rows). GX builds its engines itself, hence a listener on the Engine class
    that matches this exact statement only, removed when the suite is done.
    """
    bare = query.strip()

    def limit_bare_query(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                         executemany: bool) -> tuple[str, Any]:
        if statement.strip() == bare:
            return f"SELECT * FROM ({bare}) AS columns_only LIMIT 0", parameters
        return statement, parameters

    event.listen(Engine, "before_cursor_execute", limit_bare_query, retval=True)
    try:
        yield
    finally:
        event.remove(Engine, "before_cursor_execute", limit_bare_query)


def _context(docs_dir: str | Path | None) -> gx.data_context.AbstractDataContext:
    sites = {}
    if docs_dir is not None:
        Path(docs_dir).mkdir(parents=True, exist_ok=True)
        sites[DOCS_SITE] = {
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(Path(docs_dir).resolve())},
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
        data_docs_sites=sites,
    )
    return gx.get_context(project_config=config, mode="ephemeral")
