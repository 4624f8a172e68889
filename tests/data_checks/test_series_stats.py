"""The per-series metrics behind the series checks: exact where the grouped query only screens.

The grouped query screens for gaps with buckets of at most ``max_gap / 2`` and for bad values with each
series' min and max; the series it cannot clear get exact figures from a second query. These tests put
series right at those edges, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from sqlalchemy import create_engine

from fleetscore.data_checks.series_checks import (
    Ranges,
    SeriesThresholds,
    decide,
    fingerprint,
    query_series_stats,
    stats_from_metrics,
)
from fleetscore.ingestion.schema import metadata, windows
from fleetscore.ingestion.series_metrics import series_metrics
from fleetscore.ingestion.store import SensorStore

T0 = datetime(2024, 1, 1, 0, 0, 7)  # off the minute: buckets never line up with the windows
RANGES = Ranges(by_sensor={"temp": (0.0, 50.0)}, source={"temp": "config"}, default=(-1e9, 1e9))


def _series(device: str, times: list[datetime], values: list[float] | None = None) -> list[dict[str, object]]:
    values = values or [20.0 + (i % 7) for i in range(len(times))]
    return [{"device": device, "sensor": "temp", "ts": t, "value": v, "value_min": v, "value_max": v,
             "value_count": 1, "updated_at": T0} for t, v in zip(times, values, strict=True)]


def _every(step_s: float, n: int, start: datetime = T0) -> list[datetime]:
    return [start + timedelta(seconds=step_s * i) for i in range(n)]


@pytest.fixture
def filled_db(db_url: str) -> str:
    regular = _every(60, 120)
    rows = [
        *_series("regular", regular),
        # one gap of 9m59s, just under max_gap 10m: more than twice the 1-minute text bucket
        *_series("under", _every(60, 30) + _every(60, 30, T0 + timedelta(minutes=38, seconds=59))),
        # one gap of exactly max_gap
        *_series("at", _every(60, 30) + _every(60, 30, T0 + timedelta(minutes=39))),
        # irregular spacing (pre-aggregated input), no gap near max_gap
        *_series("irregular", [T0 + timedelta(seconds=s) for s in range(0, 7200, 37)]),
        *_series("inf", regular, [20.0] * 60 + [math.inf] + [21.0] * 59),
        *_series("high", regular, [20.0] * 100 + [60.0] * 20),
    ]
    engine = create_engine(db_url)
    try:
        metadata.create_all(engine, tables=[windows])
        with engine.begin() as conn:
            conn.execute(windows.insert(), rows)
    finally:
        engine.dispose()
    return db_url


@pytest.fixture
def stats(filled_db: str) -> dict[str, object]:
    engine = create_engine(filled_db)
    try:
        got = query_series_stats(engine, None, None, None, RANGES, timedelta(minutes=10))
    finally:
        engine.dispose()
    return {s.device: s for s in got}


def test_gaps_are_exact_at_the_edges(stats: dict[str, object]) -> None:
    gap = {d: s.max_gap_s for d, s in stats.items()}  # type: ignore[attr-defined]
    assert gap["regular"] == 0.0 and gap["irregular"] == 0.0
    assert gap["under"] == pytest.approx(599.0)
    assert gap["at"] == pytest.approx(600.0)


def test_bad_values_are_counted_exactly(stats: dict[str, object]) -> None:
    counts = {d: (s.non_finite, s.out_of_range) for d, s in stats.items()}  # type: ignore[attr-defined]
    assert counts == {"regular": (0, 0), "under": (0, 0), "at": (0, 0), "irregular": (0, 0),
                      "inf": (1, 0), "high": (0, 20)}
    assert stats["high"].count == 120 and stats["high"].max_value == 60.0  # type: ignore[attr-defined]


def test_metrics_of_the_rows_read_give_the_stats_and_verdicts_of_the_query(filled_db: str) -> None:
    """The scoring shards compute the metrics from the rows they read: the same stats (exact gaps where the
    query only screens them), so the same exclusions and the same data fingerprint."""
    start, end = T0, T0 + timedelta(hours=3)
    engine = create_engine(filled_db)
    try:
        in_sql = query_series_stats(engine, start, end, None, RANGES, timedelta(minutes=10))
        rows = SensorStore(filled_db).read_windows(start, end, with_updated_at=True)
        from_rows = stats_from_metrics(engine, series_metrics(rows, start, end), start, end, None, RANGES)
    finally:
        engine.dispose()
    assert [s.device for s in from_rows] == [s.device for s in in_sql]
    assert {s.device: s.max_gap_s for s in from_rows} == pytest.approx(
        {"regular": 60.0, "under": 599.0, "at": 600.0, "irregular": 37.0, "inf": 60.0, "high": 60.0})
    for mine, theirs in zip(from_rows, in_sql, strict=True):
        assert mine == replace(theirs, max_gap_s=mine.max_gap_s, value_sum=mine.value_sum)
        assert mine.value_sum == pytest.approx(theirs.value_sum, rel=1e-12)
    assert fingerprint(from_rows) == fingerprint(in_sql)
    thresholds = SeriesThresholds(0.5, "fleet", timedelta(minutes=10), 0.1, timedelta(minutes=1))
    verdict = [decide(stats, set(), thresholds, RANGES, start, end) for stats in (from_rows, in_sql)]
    assert verdict[0].excluded == verdict[1].excluded
    assert set(verdict[0].excluded) == {("under", "temp"), ("at", "temp"), ("inf", "temp"), ("high", "temp")}
