"""The data-checks gate: run the suite on a range of the SQL table and write the validation report.

Fleet-level failures (schema broken, range empty, nulls in key columns, duplicates, stale data, volume
out of band) set ``fleet_ok=False``: :meth:`ValidationReport.raise_if_failed` then stops the pipeline
with one line. Series-level failures exclude just those ``(device, sensor)`` series, with the reason.
Warnings are reported and exclude nothing.
"""

from __future__ import annotations

import logging
import secrets
import statistics
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from fleetscore.data_checks.config import CheckConfig
from fleetscore.data_checks.plan import RANGE_CHECKS, RangePlan
from fleetscore.data_checks.report import FLEET, CheckResult, ValidationReport
from fleetscore.data_checks.series_checks import (
    KEYED_QUERY_MAX,
    SERIES_CHECKS,
    History,
    Ranges,
    SeriesOutcome,
    SeriesStats,
    SeriesThresholds,
    decide,
    fingerprint,
    query_history,
    query_series_stats,
    stats_from_metrics,
)
from fleetscore.errors import ConfigError, StoreError
from fleetscore.ingestion.engine import make_engine
from fleetscore.ingestion.schema import windows
from fleetscore.ingestion.timeutil import parse_duration, utcnow

log = logging.getLogger(__name__)


def run_validation(database_url: str, start: datetime | None, end: datetime | None, config: CheckConfig, *,
                   report_dir: str | Path, docs_dir: str | Path | None = None,
                   window: timedelta = timedelta(seconds=5),
                   devices: Sequence[str] | None = None) -> ValidationReport:
    """Validate the windows in ``[start, end)`` (``None``: unbounded) and write ``<report_dir>/<id>.json``.

    Fleet-level checks run with Great Expectations as queries in the database; per-series checks run
    as one grouped query. Raises :class:`StoreError` when the database cannot be reached; a failing
    check never raises here (call ``raise_if_failed`` on the report).
    """
    return _validate(database_url, start, end, config, report_dir, docs_dir, window, devices, series_in_sql=True)


def run_fleet_validation(database_url: str, start: datetime | None, end: datetime | None, config: CheckConfig, *,
                         report_dir: str | Path, window: timedelta = timedelta(seconds=5),
                         devices: Sequence[str] | None = None) -> PendingValidation:
    """:func:`run_validation` without its per-series query: the fleet checks run, and the series checks
    wait for metrics computed from rows read elsewhere (the scoring shards read every row anyway).

    ``pending.report.fleet_ok`` is the fleet verdict already. Finish with :func:`complete_validation`,
    which writes the report.
    """
    return _validate(database_url, start, end, config, report_dir, None, window, devices, series_in_sql=False)


@dataclass
class PendingValidation:
    """A validation whose fleet checks ran and whose series checks wait for their stats."""

    report: ValidationReport
    database_url: str
    report_dir: str
    docs_index: str | None
    thresholds: SeriesThresholds
    ranges: Ranges | None  # None: no series checks to run (schema broken or no windows)
    known: set[tuple[str, str]] = field(default_factory=set)  # series seen in the previous ranges


def complete_validation(pending: PendingValidation, stats: list[SeriesStats] | None = None, *, metrics: Any = None,
                        sql_devices: Sequence[str] = (), skipped: str = "") -> ValidationReport:
    """Run the series checks of ``pending`` and write the report.

    The series stats are ``stats``, plus those of ``metrics`` (a frame of ``ingestion.series_metrics``,
    with exact follow-up counts where needed), plus the SQL query's for the devices in ``sql_devices``.
    ``skipped`` skips the series checks with that reason.
    """
    report = pending.report
    try:
        if pending.ranges is None or skipped:
            why = skipped or "no windows to check"
            outcome = SeriesOutcome([CheckResult(n, "series", None, detail=f"skipped: {why}") for n in SERIES_CHECKS])
        else:
            combined = list(stats or [])
            if metrics is not None or sql_devices:
                engine = make_engine(pending.database_url)
                if metrics is not None:
                    combined += stats_from_metrics(engine, metrics, report.start, report.end, report.devices,
                                                   pending.ranges)
                if sql_devices:
                    combined += _stats_of(engine, report.start, report.end, report.devices, pending.ranges,
                                          pending.thresholds.max_gap, sql_devices)
                combined.sort(key=lambda s: (s.device, s.sensor))
            outcome = decide(combined, pending.known, pending.thresholds, pending.ranges, report.start, report.end)
            report.series = len(combined)
            report.data_hash = fingerprint(combined)
    except SQLAlchemyError as exc:
        raise _store_error(exc, report.database) from exc
    report.checks += outcome.checks
    report.excluded = outcome.excluded
    report.warnings = outcome.warnings
    return _finish(report, pending.docs_index, pending.report_dir)


def series_stats_in_sql(database_url: str, start: datetime | None, end: datetime | None, config: CheckConfig, *,
                        keep: Sequence[str], window: timedelta = timedelta(seconds=5),
                        devices: Sequence[str] | None = None) -> list[SeriesStats]:
    """The gate's per-series stats of the devices ``keep``, from its SQL query (for the series that no
    shard computes metrics for); pass them to :func:`complete_validation` as ``stats``."""
    engine = make_engine(database_url)
    try:
        from fleetscore.data_checks.ranges import load_learned_ranges, resolve_ranges

        ranges = resolve_ranges(config, load_learned_ranges(engine))
        return _stats_of(engine, start, end, devices, ranges, _thresholds(config, window).max_gap, keep)
    except SQLAlchemyError as exc:
        raise _store_error(exc, engine.url.render_as_string(hide_password=True)) from exc


def _stats_of(engine: Engine, start: datetime | None, end: datetime | None, devices: Sequence[str] | None,
              ranges: Ranges, max_gap: timedelta, keep: Sequence[str]) -> list[SeriesStats]:
    """The SQL query's stats of the devices ``keep``: named in the query up to KEYED_QUERY_MAX devices;
    past that, the whole range (of ``devices``), kept to them."""
    wanted = set(keep)
    named = sorted(wanted) if len(wanted) <= KEYED_QUERY_MAX else devices
    return [s for s in query_series_stats(engine, start, end, named, ranges, max_gap) if s.device in wanted]


def _validate(database_url: str, start: datetime | None, end: datetime | None, config: CheckConfig,
              report_dir: str | Path, docs_dir: str | Path | None, window: timedelta,
              devices: Sequence[str] | None, series_in_sql: bool) -> Any:
    thresholds = _thresholds(config, window)
    max_age = parse_duration(config.max_age, "data_checks.max_age")
    if start is not None and end is not None and start >= end:
        raise ConfigError(f"validation range: start {start} is not before end {end}")
    device_list = list(devices) if devices is not None else None
    engine = make_engine(database_url)
    shown = engine.url.render_as_string(hide_password=True)
    created = utcnow()
    report = ValidationReport(
        id=f"{created:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}", created_at=created, start=start, end=end,
        database=shown, fleet_ok=False, checks=[], devices=device_list,
        config={**asdict(config), "window": window.total_seconds()},
    )
    pending = PendingValidation(report, database_url, str(report_dir), None, thresholds, None)
    try:
        if not inspect(engine).has_table(windows.name):
            report.checks = [CheckResult("schema", FLEET, False, None, windows.name,
                                         f"table {windows.name} not found in {shown}")]
            report.checks += [CheckResult(n, FLEET, None, detail="skipped: schema check failed") for n in RANGE_CHECKS]
            return _finish(report, None, report_dir) if series_in_sql else pending
        from fleetscore.data_checks.ranges import load_learned_ranges, resolve_ranges

        ranges = resolve_ranges(config, load_learned_ranges(engine))
        report.ranges = {s: {"low": lo, "high": hi, "source": ranges.source[s]}
                         for s, (lo, hi) in ranges.by_sensor.items()}
        report.ranges["*"] = {"low": ranges.default[0], "high": ranges.default[1], "source": "default"}
        history = None
        if start is not None and end is not None and config.volume_history > 0:
            history = query_history(engine, start, end, config.volume_history, device_list)
        # what the table's constraints guarantee is not scanned for again; Data Docs show the whole suite
        plan = replace(_range_plan(end, max_age, config, history), unique_enforced_by=_unique_constraint(engine),
                       not_null_enforced_by=_not_null_constraints(engine) if docs_dir is None else "")

        # The series query (seconds of SQL on a large range) runs in a thread while this one imports
        # Great Expectations (~3 s) and runs the fleet suites: the database works with the GIL released.
        with ThreadPoolExecutor(1, thread_name_prefix="series-checks") as pool:
            series_query = pool.submit(query_series_stats, engine, start, end, device_list, ranges,
                                       thresholds.max_gap) if series_in_sql else None
            try:
                from fleetscore.data_checks.gx_runner import run_fleet_checks

                fleet = run_fleet_checks(engine, windows.name, start, end, device_list, plan, docs_dir)
            except BaseException:
                if series_query is not None:
                    series_query.cancel()
                raise
            report.checks = list(fleet.checks)
            report.rows = fleet.rows
            report.fleet_ok = not report.failed_checks
            pending.docs_index = fleet.docs_index
            if fleet.schema_ok and fleet.rows:
                pending.ranges = ranges
                pending.known = history.known if history else set()
            if not series_in_sql:
                return pending
            stats = None
            if pending.ranges is not None and series_query is not None:
                stats = series_query.result()
            elif series_query is not None and series_query.exception() is not None:
                # the query may well have failed on a broken schema: that is the schema check's to say
                log.debug("series query on a failed schema: %s", series_query.exception())
        return complete_validation(pending, stats)
    except SQLAlchemyError as exc:
        raise _store_error(exc, shown) from exc


def _store_error(exc: SQLAlchemyError, shown: str) -> StoreError:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return StoreError(f"database {shown}: validation query failed: {text.splitlines()[0] if text else exc}")


def _finish(report: ValidationReport, docs_index: str | None, report_dir: str | Path) -> ValidationReport:
    report.fleet_ok = not report.failed_checks
    report.docs_index = docs_index or ""
    report.write(report_dir)
    log.info("validation %s: fleet_ok=%s, %d series excluded, report %s", report.id, report.fleet_ok,
             len(report.excluded), report.path)
    return report


def _unique_constraint(engine: Engine) -> str:
    """``"primary key (device, sensor, ts)"`` when the database itself keeps the key unique, else ``""``."""
    key = {"device", "sensor", "ts"}
    inspector = inspect(engine)
    if set(inspector.get_pk_constraint(windows.name).get("constrained_columns") or []) == key:
        return "primary key (device, sensor, ts)"
    constraints: list[Any] = [*inspector.get_unique_constraints(windows.name), *inspector.get_indexes(windows.name)]
    for constraint in constraints:
        if set(constraint.get("column_names") or []) == key and constraint.get("unique", True):
            return f"unique constraint {constraint.get('name') or ''}".strip() + " (device, sensor, ts)"
    return ""


def _not_null_constraints(engine: Engine) -> str:
    """``"NOT NULL constraints (device, sensor, ts)"`` when the database keeps the key columns non-null."""
    columns = {c["name"]: c for c in inspect(engine).get_columns(windows.name)}
    if all(name in columns and not columns[name].get("nullable", True) for name in ("device", "sensor", "ts")):
        return "NOT NULL constraints (device, sensor, ts)"
    return ""


def _thresholds(config: CheckConfig, window: timedelta) -> SeriesThresholds:
    for name in ("min_completeness", "max_out_of_range", "volume_band"):
        value = getattr(config, name)
        if not 0 <= value <= (1 if name != "volume_band" else float("inf")):
            raise ConfigError(f"data_checks.{name}: must be a share between 0 and 1, got {value}")
    if config.completeness_basis not in ("fleet", "grid"):
        raise ConfigError("data_checks.completeness_basis: expected 'fleet' or 'grid', "
                          f"got {config.completeness_basis!r}")
    if config.volume_history < 0:
        raise ConfigError(f"data_checks.volume_history: must be >= 0, got {config.volume_history}")
    if window <= timedelta(0):
        raise ConfigError(f"window: must be positive, got {window}")
    return SeriesThresholds(
        min_completeness=config.min_completeness, completeness_basis=config.completeness_basis,
        max_gap=parse_duration(config.max_gap, "data_checks.max_gap"),
        max_out_of_range=config.max_out_of_range, window=window,
    )


def _range_plan(end: datetime | None, max_age: timedelta, config: CheckConfig, history: History | None) -> RangePlan:
    if history is None:
        why = "no range start and end given" if config.volume_history > 0 else "volume_history = 0"
        return RangePlan(end, max_age, None, None, why)
    if not history.counts:
        return RangePlan(end, max_age, None, None, f"no data in the {config.volume_history} previous ranges")
    expected = float(statistics.median(history.counts))
    low = int(expected * (1 - config.volume_band))
    high = int(expected * (1 + config.volume_band) + 0.999999)
    what = f"median {expected:g} of the {len(history.counts)} previous ranges"
    return RangePlan(end, max_age, (low, high), float(expected), what)
