"""Per-sensor value ranges learned from a reference window, stored in the database with the data.

``fleetscore validate --learn-ranges --start T --end T`` computes each sensor's observed ``[min, max]``
over the fleet in that window (one grouped query), widens it by ``learn_margin`` of its span on each
side, and stores it in the ``fleetscore_sensor_ranges`` table. Later validations of the same database
use these ranges for sensors that ``[data_checks] sensor_ranges`` does not set.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Column, DateTime, Float, Integer, MetaData, String, Table, and_, delete, func, inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from fleetscore.data_checks.config import CheckConfig
from fleetscore.data_checks.series_checks import MAX_FLOAT, Ranges
from fleetscore.errors import ConfigError, StoreError, one_line
from fleetscore.ingestion.engine import make_engine
from fleetscore.ingestion.schema import windows
from fleetscore.ingestion.timeutil import utcnow

log = logging.getLogger(__name__)

metadata = MetaData()
sensor_ranges = Table(
    "fleetscore_sensor_ranges",
    metadata,
    Column("sensor", String(64), primary_key=True),
    Column("low", Float, nullable=False),
    Column("high", Float, nullable=False),
    Column("observed_min", Float, nullable=False),
    Column("observed_max", Float, nullable=False),
    Column("windows", Integer, nullable=False),
    Column("learned_start", DateTime, nullable=True),
    Column("learned_end", DateTime, nullable=True),
    Column("learned_at", DateTime, nullable=False),
)


@dataclass(frozen=True)
class LearnedRange:
    """One sensor's learned range and what it was learned from."""

    sensor: str
    low: float
    high: float
    observed_min: float
    observed_max: float
    windows: int


def learn_ranges(database_url: str, start: datetime | None, end: datetime | None, config: CheckConfig,
                 devices: Sequence[str] | None = None) -> list[LearnedRange]:
    """Learn every sensor's range from ``[start, end)`` and store it (replacing earlier ranges of those sensors)."""
    if config.learn_margin < 0:
        raise ConfigError(f"data_checks.learn_margin: must be >= 0, got {config.learn_margin}")
    engine = make_engine(database_url)
    w = windows.c
    conds: list[Any] = [w.value.between(-MAX_FLOAT, MAX_FLOAT), w.sensor.is_not(None)]
    if start is not None:
        conds.append(w.ts >= start)
    if end is not None:
        conds.append(w.ts < end)
    if devices is not None:
        conds.append(w.device.in_(list(devices)))
    query = select(w.sensor, func.min(w.value), func.max(w.value), func.count()).where(and_(*conds)).group_by(w.sensor)
    shown = engine.url.render_as_string(hide_password=True)
    try:
        with engine.begin() as conn:
            rows = conn.execute(query).all()
            if not rows:
                raise ConfigError(f"--learn-ranges: no finite windows in {shown} between {start} and {end}")
            learned = [_widen(str(sensor), float(lo), float(hi), int(n), config.learn_margin)
                       for sensor, lo, hi, n in rows]
            metadata.create_all(conn)
            conn.execute(delete(sensor_ranges).where(sensor_ranges.c.sensor.in_([r.sensor for r in learned])))
            now = utcnow()
            conn.execute(sensor_ranges.insert(), [
                {"sensor": r.sensor, "low": r.low, "high": r.high, "observed_min": r.observed_min,
                 "observed_max": r.observed_max, "windows": r.windows, "learned_start": start,
                 "learned_end": end, "learned_at": now} for r in learned])
    except SQLAlchemyError as exc:
        reason = one_line(getattr(exc, "orig", None) or exc)
        raise StoreError(f"database {shown}: cannot learn sensor ranges: {reason}") from exc
    log.info("learned the ranges of %d sensors", len(learned))
    return learned


def _widen(sensor: str, low: float, high: float, n: int, margin: float) -> LearnedRange:
    pad = margin * (high - low) if high > low else margin * max(abs(low), 1.0)
    return LearnedRange(sensor, low - pad, high + pad, low, high, n)


def load_learned_ranges(engine: Engine) -> dict[str, tuple[float, float]]:
    """The learned ranges stored in the database (empty when none were learned)."""
    if not inspect(engine).has_table(sensor_ranges.name):
        return {}
    with engine.connect() as conn:
        rows = conn.execute(select(sensor_ranges.c.sensor, sensor_ranges.c.low, sensor_ranges.c.high)).all()
    return {str(s): (float(lo), float(hi)) for s, lo, hi in rows}


def resolve_ranges(config: CheckConfig, learned: dict[str, tuple[float, float]]) -> Ranges:
    """Configured ranges win over learned ones; other sensors use ``default_range``."""
    for sensor, (low, high) in config.sensor_ranges.items():
        if not low <= high:
            raise ConfigError(f"data_checks.sensor_ranges: sensor {sensor}: low {low} is above high {high}")
    by_sensor = {**learned, **{str(k): (float(lo), float(hi)) for k, (lo, hi) in config.sensor_ranges.items()}}
    source = {s: "config" if s in config.sensor_ranges else "learned" for s in by_sensor}
    low, high = config.default_range
    return Ranges(by_sensor=by_sensor, source=source, default=(float(low), float(high)))

