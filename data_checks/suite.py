"""The fleet-level expectation suite, as code (Great Expectations 1.x).

Two suites run against the SQL table itself, so every expectation is a query in the database:

- ``fleetscore_schema`` on the whole ``windows`` table: the expected columns and their types;
- ``fleetscore_range`` on the checked range (a query asset): not empty, no nulls in the key columns,
  ``(device, sensor, ts)`` unique, fresh, and a row count within the volume band.

Each expectation carries ``meta = {"check": NAME}``; :func:`summarize` folds the results of one check
into a :class:`~data_checks.report.CheckResult` whose detail says how far off it was. Per-series checks
are not expectations: one grouped query computes them for the whole fleet (``series_checks``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from fleetscore.data_checks.gx_imports import gx, gxe
from fleetscore.data_checks.plan import RANGE_CHECKS, RangePlan
from fleetscore.data_checks.report import FLEET, CheckResult, format_duration

SCHEMA_SUITE = "fleetscore_schema"
RANGE_SUITE = "fleetscore_range"
KEY_COLUMNS = ("device", "sensor", "ts")
DUPLICATES_QUERY = ("SELECT device, sensor, ts, COUNT(*) AS copies FROM {batch} "
                    "GROUP BY device, sensor, ts HAVING COUNT(*) > 1")

# column -> type names accepted for it. GX compares SQLite types as SQLAlchemy classes of the dialect
# (names it does not define are ignored) and PostgreSQL types as case-insensitive strings.
_TEXT = ["VARCHAR", "NVARCHAR", "TEXT", "CHAR", "NCHAR", "CHARACTER VARYING"]
_FLOAT = ["FLOAT", "REAL", "DOUBLE", "DOUBLE_PRECISION", "DOUBLE PRECISION"]
_TIME = ["DATETIME", "TIMESTAMP", "DATETIME2", "TIMESTAMP WITHOUT TIME ZONE"]
COLUMN_TYPES: dict[str, list[str]] = {
    "device": _TEXT,
    "sensor": _TEXT,
    "ts": _TIME,
    "value": _FLOAT,
    "value_min": _FLOAT,
    "value_max": _FLOAT,
    "value_count": ["INTEGER", "BIGINT", "SMALLINT"],
    "updated_at": _TIME,
}
_TYPE_WORDS = {"device": "text", "sensor": "text", "ts": "timestamp", "value": "float", "value_min": "float",
               "value_max": "float", "value_count": "integer", "updated_at": "timestamp"}

def schema_suite() -> gx.ExpectationSuite:
    """Columns present and typed as the ``windows`` table of ``ingestion.schema``."""
    suite = gx.ExpectationSuite(name=SCHEMA_SUITE)
    suite.add_expectation(gxe.ExpectTableColumnsToMatchSet(
        column_set=list(COLUMN_TYPES), exact_match=False, meta={"check": "schema"}))
    for column, types in COLUMN_TYPES.items():
        suite.add_expectation(gxe.ExpectColumnValuesToBeInTypeList(
            column=column, type_list=types, meta={"check": "schema"}))
    return suite


def range_suite(plan: RangePlan) -> gx.ExpectationSuite:
    """The fleet-level expectations on the rows of the checked range."""
    suite = gx.ExpectationSuite(name=RANGE_SUITE)
    suite.add_expectation(gxe.ExpectTableRowCountToBeBetween(min_value=1, meta={"check": "not_empty"}))
    # a scan of the range per column; not needed, and not run, when the table's NOT NULL constraints
    # already guarantee it (as for the unique key below)
    if not plan.not_null_enforced_by:
        for column in KEY_COLUMNS:
            suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=column, meta={"check": "nulls"}))
    # one GROUP BY in the database (GX's ExpectCompoundColumnsToBeUnique joins the table with its own
    # grouped counts and then fetches samples: 5-7x slower on SQLite); not needed, and not run, when a
    # primary key or unique constraint of the table already enforces it
    if not plan.unique_enforced_by:
        suite.add_expectation(gxe.UnexpectedRowsExpectation(
            unexpected_rows_query=DUPLICATES_QUERY, description="(device, sensor, ts) is unique",
            meta={"check": "unique"}))
    if plan.end is not None:
        suite.add_expectation(gxe.ExpectColumnMaxToBeBetween(
            column="ts", min_value=plan.end - plan.max_age, meta={"check": "freshness"}))
    if plan.volume_band is not None:
        low, high = plan.volume_band
        suite.add_expectation(gxe.ExpectTableRowCountToBeBetween(
            min_value=low, max_value=high, meta={"check": "volume"}))
    return suite


def summarize_schema(results: Sequence[Any]) -> CheckResult:
    """One ``schema`` check from the schema suite's expectation results."""
    missing: list[str] = []
    wrong: list[str] = []
    observed_columns: list[str] = []
    for res in results:
        kind = res.expectation_config.type
        if kind == "expect_table_columns_to_match_set":
            observed_columns = list(res.result.get("observed_value") or [])
            missing = [c for c in COLUMN_TYPES if c not in observed_columns]
        elif not res.success:
            column = res.expectation_config.kwargs["column"]
            got = res.result.get("observed_value") or _exception(res) or "unknown"
            if column in missing or _type_name_ok(column, got):
                continue
            wrong.append(f"{column} is {got}, expected {_TYPE_WORDS[column]}")
    problems = ([f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}"] if missing else []) + wrong
    return CheckResult(
        name="schema", level=FLEET, passed=not problems, observed=observed_columns,
        expected={c: _TYPE_WORDS[c] for c in COLUMN_TYPES},
        detail=("table windows: " + "; ".join(problems)) if problems else "columns and types as expected",
    )


def summarize_range(results: Sequence[Any], plan: RangePlan) -> list[CheckResult]:
    """The range suite's results as ``not_empty``, ``nulls``, ``unique``, ``freshness``, ``volume``."""
    by_check: dict[str, list[Any]] = {name: [] for name in RANGE_CHECKS}
    for res in results:
        by_check[res.expectation_config.meta["check"]].append(res)
    out: list[CheckResult] = []
    rows = None
    for res in by_check["not_empty"]:
        rows = res.result.get("observed_value")
        out.append(CheckResult("not_empty", FLEET, bool(res.success), rows, ">= 1",
                               f"{rows} windows in the range" if res.success else
                               _error_or(res, "no windows in the checked range")))
    empty = not rows
    nulls = [(r.expectation_config.kwargs["column"], r) for r in by_check["nulls"]]
    bad = [f"{col}: {r.result.get('unexpected_count')} nulls" if not _exception(r) else f"{col}: {_exception(r)}"
           for col, r in nulls if not r.success]
    if plan.not_null_enforced_by:
        out.append(CheckResult("nulls", FLEET, None if empty else True, dict.fromkeys(KEY_COLUMNS, 0), 0,
                               "skipped: no windows" if empty else
                               f"enforced by the table's {plan.not_null_enforced_by}"))
    else:
        out.append(CheckResult("nulls", FLEET, None if empty else not bad,
                               {col: r.result.get("unexpected_count") for col, r in nulls}, 0,
                               "skipped: no windows" if empty else ("; ".join(bad) + " in key columns") if bad
                               else "no nulls in device, sensor, ts"))
    for res in by_check["unique"]:
        keys = res.result.get("observed_value")
        out.append(CheckResult("unique", FLEET, None if empty else bool(res.success), keys, 0,
                               "skipped: no windows" if empty else
                               "(device, sensor, ts) unique" if res.success else
                               _error_or(res, f"{keys} (device, sensor, ts) keys appear more than once")))
    if plan.unique_enforced_by:
        out.append(CheckResult("unique", FLEET, True, 0, 0, f"enforced by the table's {plan.unique_enforced_by}"))
    out.append(_freshness(by_check["freshness"], plan, empty))
    out.append(_volume(by_check["volume"], plan, empty))
    return out


def _freshness(results: list[Any], plan: RangePlan, empty: bool) -> CheckResult:
    if plan.end is None:
        return CheckResult("freshness", FLEET, None, None, None, "skipped: no range end given")
    oldest_ok = plan.end - plan.max_age
    if empty:
        return CheckResult("freshness", FLEET, None, None, oldest_ok, "skipped: no windows")
    res = results[0]
    newest = _as_datetime(res.result.get("observed_value"))
    if res.success:
        detail = f"newest window {newest} within max_age {format_duration(plan.max_age)} of the range end"
    elif newest is None:
        detail = _error_or(res, "newest window unknown")
    else:
        detail = (f"newest window {newest} is {format_duration(plan.end - newest)} older than the range end "
                  f"{plan.end} (max_age {format_duration(plan.max_age)})")
    return CheckResult("freshness", FLEET, bool(res.success), newest, oldest_ok, detail)


def _volume(results: list[Any], plan: RangePlan, empty: bool) -> CheckResult:
    if plan.volume_band is None:
        return CheckResult("volume", FLEET, None, None, None, f"skipped: {plan.volume_detail}")
    if empty:
        return CheckResult("volume", FLEET, None, 0, list(plan.volume_band), "skipped: no windows")
    res = results[0]
    rows = res.result.get("observed_value")
    low, high = plan.volume_band
    expected = plan.volume_expected or 0
    if res.success:
        detail = f"{rows} windows, within [{low}, {high}] ({plan.volume_detail})"
    elif rows is None:
        detail = _error_or(res, "row count unknown")
    else:
        change = (rows - expected) / expected if expected else 0.0
        direction = "drop" if rows < low else "spike"
        detail = (f"{rows} windows is a {direction} of {abs(change):.0%} against the {plan.volume_detail} "
                  f"(allowed [{low}, {high}])")
    return CheckResult("volume", FLEET, bool(res.success), rows, [low, high], detail)


def _type_name_ok(column: str, observed: str) -> bool:
    """GX 1.24 compares SQLite's reflected ``sqltypes.DATETIME`` with the SQLite dialect's own DATETIME
    subclass, so a SQLite timestamp never matches by class; accept an observed type by its name."""
    return str(observed).upper().split("(")[0].strip() in COLUMN_TYPES[column]


def _exception(res: Any) -> str | None:
    info = res.exception_info or {}
    if info.get("raised_exception"):
        return str(info.get("exception_message") or "error").splitlines()[0]
    for value in info.values():  # GX 1.x keys several exceptions by metric
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message") or "error").splitlines()[0]
    return None


def _error_or(res: Any, text: str) -> str:
    error = _exception(res)
    return f"could not be evaluated: {error}" if error else text


def _as_datetime(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None
