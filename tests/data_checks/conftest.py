"""Helpers of the data-checks tests: load the committed fixture CSVs into a real database."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Column, MetaData, Table, create_engine

from fleetscore.data_checks import CheckConfig
from fleetscore.ingestion.schema import metadata, windows

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# the fixtures' checked range and window (see fixtures/make_fixtures.py)
START, END = datetime(2024, 1, 1, 2), datetime(2024, 1, 1, 3)
WINDOW = timedelta(minutes=1)
CONFIG = CheckConfig(sensor_ranges={"temp": (0.0, 50.0), "rpm": (500.0, 3000.0)}, max_age="15m", max_gap="10m",
                     volume_history=2)
# bad sets that the strict schema (primary key, NOT NULL, all columns) could not even hold
LOOSE_SETS = {"schema", "nulls", "unique"}


def _parse(column: str, text: str) -> object:
    if text == "":
        return None
    if column in ("ts", "updated_at"):
        return datetime.fromisoformat(text)
    if column == "value_count":
        return int(text)
    if column in ("value", "value_min", "value_max"):
        return float(text)  # "inf" -> math.inf
    return text


def load_csv(url: str, path: Path, strict: bool = True) -> int:
    """Create the windows table (the real schema, or a loose copy without keys and NOT NULL that has
    only the CSV's columns) and insert the CSV's rows. Returns the number of rows."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        rows = [{c: _parse(c, r[c]) for c in columns} for r in reader]
    engine = create_engine(url)
    try:
        if strict:
            metadata.create_all(engine, tables=[windows])
            table = windows
        else:
            loose = MetaData()
            table = Table(windows.name, loose, *[Column(c, windows.c[c].type, nullable=True) for c in columns])
            loose.create_all(engine)
        with engine.begin() as conn:
            conn.execute(table.insert(), rows)
    finally:
        engine.dispose()
    return len(rows)


def load_reference(url: str, reference_data: Path) -> int:
    """The reference readings (already 5 s windows) as count-1 windows in the real schema."""
    rows = []
    with (reference_data / "sensor_data.csv").open(newline="") as handle:
        for r in csv.DictReader(handle):
            ts = datetime.fromisoformat(r["TS"])
            value = float(r["Value"])
            assert math.isfinite(value)
            rows.append({"device": r["Device"], "sensor": r["Sensor"], "ts": ts, "value": value,
                         "value_min": value, "value_max": value, "value_count": 1, "updated_at": ts})
    engine = create_engine(url)
    try:
        metadata.create_all(engine, tables=[windows])
        with engine.begin() as conn:
            conn.execute(windows.insert(), rows)
    finally:
        engine.dispose()
    return len(rows)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleet.db'}"
    else:
        yield request.getfixturevalue("postgres_url")


@pytest.fixture()
def sqlite_url(tmp_path: Path) -> str:
    """An empty SQLite database file."""
    return f"sqlite:///{tmp_path / 'fleet.db'}"
