"""Per-series checks: ONE grouped SQL query per range, then a pure decision per (device, sensor).

Great Expectations runs one query per expectation, which does not scale to one expectation per series
for 10,000 series. So the per-series metrics (windows, first/last window, longest gap, min/max value,
non-finite and out-of-range windows) come from one grouped query with a window function for the gaps
(SQLite and PostgreSQL), and :func:`decide` turns them into exclusions and warnings.

Only broken series are excluded. Short anomalies (a one-window spike, a level shift or a stuck run of
12-60 windows inside a longer range) are what the models must detect, so none of these checks fires on
them: "stuck" means constant over the WHOLE range, "out of range" means most of the range.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Integer,
    and_,
    case,
    cast,
    distinct,
    func,
    inspect,
    literal,
    literal_column,
    not_,
    or_,
    select,
    tuple_,
)
from sqlalchemy.engine import Connection, Engine

from fleetscore.data_checks.report import SERIES, WARNING, CheckResult, format_duration
from fleetscore.ingestion.schema import windows
from fleetscore.ingestion.series_metrics import METRIC_COLUMNS

MAX_FLOAT = 1.7976931348623157e308
SERIES_CHECKS = ("completeness", "gaps", "stuck", "finite", "range")
_SHOWN = 5  # series named in a check's detail
KEYED_QUERY_MAX = 500  # a follow-up query names at most this many series; past it, it computes all
EPOCH = datetime(1970, 1, 1)


@dataclass(frozen=True)
class SeriesStats:
    """The metrics of one (device, sensor) series in the checked range."""

    device: str
    sensor: str
    count: int
    first: datetime
    last: datetime
    max_gap_s: float  # longest distance between consecutive window starts; 0 when below max_gap / 2
    min_value: float | None
    max_value: float | None
    non_finite: int
    out_of_range: int
    value_sum: float = 0.0  # sum(value), sum(value_count) and newest updated_at: for the data fingerprint
    count_sum: int = 0
    newest_update: datetime | None = None


@dataclass(frozen=True)
class Ranges:
    """The expected value range of each sensor and where it came from (config, learned, default)."""

    by_sensor: dict[str, tuple[float, float]]
    source: dict[str, str]
    default: tuple[float, float]

    def of(self, sensor: str) -> tuple[float, float]:
        """The range of ``sensor`` (the default range when none is set or learned)."""
        return self.by_sensor.get(sensor, self.default)


@dataclass(frozen=True)
class SeriesThresholds:
    """The series-level thresholds, parsed from :class:`~data_checks.config.CheckConfig`."""

    min_completeness: float
    completeness_basis: str
    max_gap: timedelta
    max_out_of_range: float
    window: timedelta


@dataclass
class SeriesOutcome:
    """What the series checks decided."""

    checks: list[CheckResult]
    excluded: dict[tuple[str, str], str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _seconds_since(engine: Engine, ts: Any, anchor: datetime) -> ColumnElement[Any]:
    backend = engine.url.get_backend_name()
    if backend == "sqlite":
        return (func.julianday(ts) - func.julianday(literal(anchor, DateTime))) * 86400.0
    if backend == "postgresql":
        return func.extract("epoch", ts - literal(anchor, DateTime))
    return func.datediff(literal_column("second"), literal(anchor, DateTime), ts)  # mssql


def _bucket(engine: Engine, ts: Any, anchor: datetime, seconds: float) -> ColumnElement[Any]:
    seconds_since = _seconds_since(engine, ts, anchor) / seconds
    if engine.url.get_backend_name() == "sqlite":  # CAST truncates; ts >= anchor, so it floors
        return cast(seconds_since, Integer)
    return cast(func.floor(seconds_since), Integer)


def _filters(start: datetime | None, end: datetime | None, devices: Sequence[str] | None,
             ts: Any = None) -> list[Any]:
    ts = windows.c.ts if ts is None else ts
    conds: list[Any] = [windows.c.device.is_not(None), windows.c.sensor.is_not(None), windows.c.ts.is_not(None)]
    if start is not None:
        conds.append(ts >= start)
    if end is not None:
        conds.append(ts < end)
    if devices is not None:
        conds.append(windows.c.device.in_(list(devices)))
    return conds


def query_series_stats(engine: Engine, start: datetime | None, end: datetime | None,
                       devices: Sequence[str] | None, ranges: Ranges, max_gap: timedelta) -> list[SeriesStats]:
    """The metrics of every series in the range, in one grouped query (rows stay in the database).

    The grouped query keeps to plain aggregates, each a fraction of a second per million rows on SQLite.
    What would cost a conditional or a window function on every row is settled from them instead, and
    computed exactly only for the few series where they leave it open (from a second query, limited to
    those series):

    - gaps: the query counts the distinct ``max_gap / 2`` buckets of each series; when every bucket
      between its first and last window holds a window, no gap reaches ``max_gap``;
    - non-finite and out-of-range windows: none when the series' minimum and maximum are finite and
      inside its sensor's range, and every value is non-null.
    """
    w = windows.c
    anchor = start or EPOCH
    half = max_gap.total_seconds() / 2
    prefix = _text_bucket(engine, half)
    if prefix is not None:  # SQLite: buckets are prefixes of the time text, counted without parsing it
        size, length = prefix
        distinct_buckets: ColumnElement[Any] = func.count(distinct(func.substr(w.ts, 1, length)))
        spanned: ColumnElement[Any] = literal(0)  # from first and last, below

        def holes(row: Any) -> bool:
            first, last = _as_time(row[3]), _as_time(row[4])
            return int(row[8]) < (_epoch_s(last) // size) - (_epoch_s(first) // size) + 1
    else:
        distinct_buckets = func.count(distinct(_bucket(engine, w.ts, anchor, half)))
        # the bucket is monotonic in ts: its max and min are those of max(ts) and min(ts)
        spanned = _bucket(engine, func.max(w.ts), anchor, half) - _bucket(engine, func.min(w.ts), anchor, half) + 1

        def holes(row: Any) -> bool:
            return int(row[8]) < int(row[9])
    # NULL values are counted only where the column allows them (each aggregate costs a pass)
    non_null = func.count(w.value) if _nullable(engine, "value") else func.count()
    query = (select(w.device, w.sensor, func.count().label("n"), func.min(w.ts), func.max(w.ts),
                    func.min(w.value), func.max(w.value), non_null, distinct_buckets, spanned,
                    func.sum(w.value), func.sum(w.value_count), func.max(w.updated_at))
             .group_by(w.device, w.sensor).order_by(w.device, w.sensor))
    with engine.connect() as conn:
        # "+ts" (SQLite): a range condition that cannot use the ts index, so the key index is walked
        ts = literal_column(f"+{windows.name}.ts", DateTime) if _key_order(conn, engine, start, end) else None
        query = query.where(and_(*_filters(start, end, devices, ts)))
        if engine.url.get_backend_name() == "sqlite" and _sqlite_version(engine) >= (3, 35):
            # materialized: SQLite does the whole aggregation in the first step, with the GIL released;
            # streamed, each of the 10,000s of groups would wait for the GIL (the gate's GX import holds it)
            grouped = query.order_by(None).cte("series_stats").prefix_with("MATERIALIZED")
            query = select(grouped).order_by(*grouped.c[:2])
        rows = conn.execute(query).all()
        holed = [(str(r[0]), str(r[1])) for r in rows if holes(r)]
        gaps = _exact_gaps(conn, engine, start, end, devices, holed) if holed else {}
        suspect = [(str(r[0]), str(r[1])) for r in rows if not _values_clean(r[5], r[6], int(r[7]), int(r[2]),
                                                                             ranges.of(str(r[1])))]
        bad_values = _value_counts(conn, start, end, devices, ranges, suspect) if suspect else {}
    stats = []
    for d, s, n, first, last, lo, hi, _, _, _, total, counts, newest in rows:
        key = (str(d), str(s))
        non_finite, out_of_range = bad_values.get(key, (0, 0))
        stats.append(SeriesStats(key[0], key[1], int(n), first, last, gaps.get(key, 0.0),
                                 None if lo is None else float(lo), None if hi is None else float(hi),
                                 non_finite, out_of_range, float(total or 0.0), int(counts or 0), newest))
    return stats


def stats_from_metrics(engine: Engine, metrics: Any, start: datetime | None, end: datetime | None,
                       devices: Sequence[str] | None, ranges: Ranges) -> list[SeriesStats]:
    """The stats of :func:`query_series_stats` from metrics computed outside the database
    (``ingestion.series_metrics``: the scoring shards compute them from the rows they read).

    As in the SQL way, a series whose min and max are finite and in range, with no NULL value, has no
    bad value; the others get exact counts from one query limited to them. ``max_gap_s`` is exact for
    every series (the SQL way gives 0 where no gap can reach ``max_gap``: the same decisions).
    """
    rows = list(metrics[list(METRIC_COLUMNS)].itertuples(index=False))
    rows.sort(key=lambda r: (str(r[0]), str(r[1])))

    def value(v: Any) -> float | None:
        return None if v is None or v != v else float(v)  # NaN: no non-NULL value

    suspect = [(str(r[0]), str(r[1])) for r in rows
               if not _values_clean(value(r[6]), value(r[7]), int(r[8]), int(r[2]), ranges.of(str(r[1])))]
    bad_values: dict[tuple[str, str], tuple[int, int]] = {}
    if suspect:
        with engine.connect() as conn:
            bad_values = _value_counts(conn, start, end, devices, ranges, suspect)
    stats = []
    for d, s, n, first, last, gap, lo, hi, _, total, counts, newest in rows:
        key = (str(d), str(s))
        non_finite, out_of_range = bad_values.get(key, (0, 0))
        stats.append(SeriesStats(key[0], key[1], int(n), _as_datetime(first), _as_datetime(last), float(gap),
                                 value(lo), value(hi), non_finite, out_of_range, float(total), int(counts),
                                 None if newest is None or newest != newest else _as_datetime(newest)))
    return stats


def _as_datetime(value: Any) -> datetime:
    """A naive ``datetime`` (what SQLAlchemy gives for the same column) from a pandas or numpy time."""
    return value.to_pydatetime() if hasattr(value, "to_pydatetime") else _as_time(value)


# bucket sizes (seconds) that are a prefix of SQLite's time text "YYYY-MM-DD HH:MM:SS.ffffff"
_TEXT_BUCKETS = ((86400, 10), (3600, 13), (600, 15), (60, 16), (10, 18), (1, 19))


def _text_bucket(engine: Engine, half: float) -> tuple[int, int] | None:
    """On SQLite, the largest text-prefix bucket ``(seconds, prefix length)`` not over ``half``."""
    if engine.url.get_backend_name() != "sqlite":
        return None
    return next((b for b in _TEXT_BUCKETS if b[0] <= half), None)


def _as_time(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def _epoch_s(ts: datetime) -> int:
    return int((ts - EPOCH).total_seconds() // 1)


def _sqlite_version(engine: Engine) -> tuple[int, ...]:
    """The SQLite library's version (``MATERIALIZED`` needs 3.35)."""
    return tuple(getattr(engine.dialect.dbapi, "sqlite_version_info", (0,)))


def _nullable(engine: Engine, column: str) -> bool:
    """Whether the table lets ``column`` hold NULL (True when it cannot tell)."""
    for col in inspect(engine).get_columns(windows.name):
        if col["name"] == column:
            return bool(col.get("nullable", True))
    return True


def _values_clean(low: Any, high: Any, non_null: int, count: int, bounds: tuple[float, float]) -> bool:
    """No NULL, NaN, infinite or out-of-range value, judged from the series' min and max alone."""
    if low is None or high is None or non_null < count:
        return False
    low, high = float(low), float(high)
    return math.isfinite(low) and math.isfinite(high) and bounds[0] <= low and high <= bounds[1]


def _value_counts(conn: Connection, start: datetime | None, end: datetime | None, devices: Sequence[str] | None,
                  ranges: Ranges, keys: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, int]]:
    """Non-finite (or NULL) and out-of-range windows of the given series."""
    w = windows.c
    value = w.value
    non_finite = or_(value.is_(None), not_(value.between(-MAX_FLOAT, MAX_FLOAT)))
    out_of_range = and_(not_(non_finite), or_(value < _per_sensor(w.sensor, ranges, 0),
                                              value > _per_sensor(w.sensor, ranges, 1)))
    conds = _filters(start, end, devices)
    if len(keys) <= KEYED_QUERY_MAX:
        conds.append(tuple_(w.device, w.sensor).in_(keys))
    query = (select(w.device, w.sensor, func.sum(case((non_finite, 1), else_=0)),
                    func.sum(case((out_of_range, 1), else_=0)))
             .where(and_(*conds)).group_by(w.device, w.sensor))
    return {(str(d), str(s)): (int(bad or 0), int(out or 0)) for d, s, bad, out in conn.execute(query)}


def _key_order(conn: Connection, engine: Engine, start: datetime | None, end: datetime | None) -> bool:
    """On SQLite, whether to walk the primary key (device, sensor, ts) rather than the ``ts`` index.

    Without statistics SQLite answers a time range through the ``ts`` index, one table lookup per row
    and then a sort for the GROUP BY: right for an hour out of months, but 3x slower than walking the
    key (already grouped) when the range holds most of the table, as when a fresh store is scored whole.
    """
    if engine.url.get_backend_name() != "sqlite":
        return False
    # two queries: SQLite answers a lone min() or max() from the index, both at once by a full scan
    first = conn.execute(select(func.min(windows.c.ts))).scalar()
    last = conn.execute(select(func.max(windows.c.ts))).scalar()
    if first is None or last is None:
        return False
    lo, hi = max(start or first, first), min(end or last, last)
    span = (last - first).total_seconds()
    return span <= 0 or (hi - lo).total_seconds() >= 0.5 * span


def fingerprint(stats: Sequence[SeriesStats]) -> str:
    """A hash of the windows the stats were computed from (count, sums, newest ``updated_at``, first and
    last window): the same text as ``records.run_log.window_fingerprint`` hashes, from the one scan the
    series checks make anyway. ``""`` without stats."""
    if not stats:
        return ""
    updates = [s.newest_update for s in stats if s.newest_update is not None]
    text = (f"{sum(s.count for s in stats)}|{sum(s.count_sum for s in stats)}|"
            f"{round(math.fsum(s.value_sum for s in stats), 6)}|{max(updates) if updates else None}|"
            f"{min(s.first for s in stats)}|{max(s.last for s in stats)}")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _exact_gaps(conn: Connection, engine: Engine, start: datetime | None, end: datetime | None,
                devices: Sequence[str] | None, keys: list[tuple[str, str]]) -> dict[tuple[str, str], float]:
    """The longest gap between consecutive windows of the given series (a window function)."""
    w = windows.c
    prev = func.lag(w.ts).over(partition_by=(w.device, w.sensor), order_by=w.ts)
    conds = _filters(start, end, devices)
    if len(keys) <= KEYED_QUERY_MAX:
        conds.append(tuple_(w.device, w.sensor).in_(keys))
    inner = select(w.device, w.sensor, w.ts, prev.label("prev")).where(and_(*conds)).subquery("g")
    gap = _seconds_since(engine, inner.c.ts, EPOCH) - _seconds_since(engine, inner.c.prev, EPOCH)
    query = select(inner.c.device, inner.c.sensor, func.max(gap)).group_by(inner.c.device, inner.c.sensor)
    return {(str(d), str(s)): float(g or 0.0) for d, s, g in conn.execute(query)}


def _per_sensor(sensor: Any, ranges: Ranges, i: int) -> Any:
    if not ranges.by_sensor:
        return ranges.default[i]
    return case({name: bounds[i] for name, bounds in ranges.by_sensor.items()}, value=sensor,
                else_=ranges.default[i])


@dataclass(frozen=True)
class History:
    """Row counts of the previous ranges of the same length, and the series seen in them."""

    counts: list[int]  # per previous range, newest first; only ranges fully after the data began
    known: set[tuple[str, str]]


def query_history(engine: Engine, start: datetime, end: datetime, ranges_back: int,
                  devices: Sequence[str] | None) -> History:
    """Count the windows of the ``ranges_back`` ranges before ``[start, end)`` in one grouped query."""
    span = end - start
    bounds = [start - k * span for k in range(1, ranges_back + 1)]
    w = windows.c
    bucket = case(*[(w.ts >= b, k) for k, b in enumerate(bounds)], else_=len(bounds) - 1).label("bucket")
    query = (select(w.device, w.sensor, bucket, func.count())
             .where(and_(*_filters(bounds[-1], start, devices))).group_by(w.device, w.sensor, bucket))
    with engine.connect() as conn:
        began = conn.execute(select(func.min(w.ts))).scalar()
        rows = conn.execute(query).all()
    counts = [0] * len(bounds)
    known: set[tuple[str, str]] = set()
    for device, sensor, k, n in rows:
        counts[int(k)] += int(n)
        known.add((str(device), str(sensor)))
    full = [c for c, b in zip(counts, bounds, strict=True) if began is not None and began <= b and c > 0]
    return History(counts=full, known=known)


def decide(stats: Sequence[SeriesStats], known: set[tuple[str, str]], thresholds: SeriesThresholds,
           ranges: Ranges, range_start: datetime | None, range_end: datetime | None) -> SeriesOutcome:
    """Exclude the broken series, with one reason each; report a few out-of-range windows as warnings.

    Gaps at the edges are measured to the fleet's first and last window in the range (not to the range
    bounds), so stale data fails freshness alone. ``known`` series without any window in the range are
    excluded as missing.
    """
    if not stats:
        return SeriesOutcome([CheckResult(name, SERIES, None, detail="skipped: no windows")
                              for name in (*SERIES_CHECKS, "range_warnings")])
    fleet_first = min(s.first for s in stats)
    fleet_last = max(s.last for s in stats)
    span_s = ((range_end or fleet_last + thresholds.window) - (range_start or fleet_first)).total_seconds()
    grid = max(1.0, span_s / thresholds.window.total_seconds())
    expected = grid if thresholds.completeness_basis == "grid" else min(grid, statistics.median(s.count for s in stats))
    reasons: dict[str, dict[tuple[str, str], str]] = {name: {} for name in SERIES_CHECKS}
    warnings: list[str] = []
    max_gap_s = thresholds.max_gap.total_seconds()
    present = {(s.device, s.sensor) for s in stats}
    for key in sorted(known - present):
        reasons["completeness"][key] = "missing: no windows in the range (seen in the previous ranges)"
    for s in stats:
        key = (s.device, s.sensor)
        share = s.count / expected
        if share < thresholds.min_completeness:
            reasons["completeness"][key] = (f"incomplete: {s.count} of {expected:.0f} expected windows "
                                            f"({share:.0%} < {thresholds.min_completeness:.0%})")
        gap = max(s.max_gap_s, (s.first - fleet_first).total_seconds(), (fleet_last - s.last).total_seconds())
        if gap >= max_gap_s:
            reasons["gaps"][key] = f"gap: longest gap {format_duration(gap)} >= max_gap {format_duration(max_gap_s)}"
        if s.non_finite:
            reasons["finite"][key] = f"non-finite: {s.non_finite} of {s.count} windows NaN, infinite or NULL"
        elif s.count >= 2 and s.min_value is not None and s.min_value == s.max_value:
            reasons["stuck"][key] = f"stuck: constant {s.min_value:g} over the whole range ({s.count} windows)"
        low, high = ranges.of(s.sensor)
        out_share = s.out_of_range / s.count
        if out_share > thresholds.max_out_of_range:
            reasons["range"][key] = (f"out of range: {s.out_of_range} of {s.count} windows outside "
                                     f"[{low:g}, {high:g}] ({out_share:.0%} > {thresholds.max_out_of_range:.0%})")
        elif s.out_of_range:
            warnings.append(f"device {s.device} sensor {s.sensor}: {s.out_of_range} of {s.count} windows "
                            f"outside [{low:g}, {high:g}]")
    excluded: dict[tuple[str, str], str] = {}
    for name in SERIES_CHECKS:
        for key, reason in reasons[name].items():
            excluded[key] = f"{excluded[key]}; {reason}" if key in excluded else reason
    total = len(present | known)
    checks = [_series_check(name, reasons[name], total, _EXPECTED[name](thresholds)) for name in SERIES_CHECKS]
    checks.append(CheckResult("range_warnings", WARNING, not warnings, len(warnings), 0,
                              f"{len(warnings)} series with a few windows out of range" if warnings
                              else "no window out of range"))
    return SeriesOutcome(checks, dict(sorted(excluded.items())), warnings)


_EXPECTED: dict[str, Callable[[SeriesThresholds], Any]] = {
    "completeness": lambda t: f">= {t.min_completeness:.0%} of the {t.completeness_basis} expected windows",
    "gaps": lambda t: f"< {format_duration(t.max_gap)}",
    "stuck": lambda t: "values vary over the range",
    "finite": lambda t: "no NaN, infinite or NULL value",
    "range": lambda t: f"<= {t.max_out_of_range:.0%} of windows out of range",
}


def _series_check(name: str, failed: dict[tuple[str, str], str], total: int, expected: Any) -> CheckResult:
    if not failed:
        return CheckResult(name, SERIES, True, 0, expected, f"all {total} series pass")
    shown = ", ".join(f"{d}/{s}" for d, s in list(failed)[:_SHOWN])
    more = f" and {len(failed) - _SHOWN} more" if len(failed) > _SHOWN else ""
    return CheckResult(name, SERIES, False, len(failed), expected,
                       f"{len(failed)} of {total} series excluded: {shown}{more}")
