"""The real reference data (../shared/reference-data) through the gate with the DEFAULT configuration."""

from __future__ import annotations

import csv
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, update

from fleetscore.data_checks import CheckConfig, learn_ranges, run_validation
from fleetscore.ingestion.schema import windows
from tests.data_checks.conftest import load_reference

FIVE_S = timedelta(seconds=5)


def count_rows(reference_data: Path, device: str, sensor: str, start: str = "", end: str = "9") -> int:
    """Rows of one series in the reference CSV (optionally in [start, end), ISO text)."""
    with (reference_data / "sensor_data.csv").open(newline="") as handle:
        return sum(1 for r in csv.DictReader(handle)
                   if (r["Device"], r["Sensor"]) == (device, sensor) and start <= r["TS"] < end)


@pytest.mark.parametrize("span", [(None, None), (datetime(2018, 8, 29, 2), datetime(2018, 8, 29, 3))],
                         ids=["all-data", "02:00-03:00"])
def test_reference_data_passes_with_defaults(db_url: str, reference_data: Path, tmp_path: Path,
                                             span: tuple[datetime | None, datetime | None]) -> None:
    rows = load_reference(db_url, reference_data)
    report = run_validation(db_url, *span, CheckConfig(), report_dir=tmp_path, window=FIVE_S)
    assert report.fleet_ok
    assert report.excluded == {} and report.warnings == []
    assert [c.name for c in report.checks if c.passed is False] == []
    assert report.series == 15
    if span[0] is None:
        assert report.rows == rows == 17768
    else:  # freshness and volume are evaluated on a bounded range
        checks = {c.name: c for c in report.checks}
        assert checks["freshness"].passed and checks["volume"].passed
        with (reference_data / "sensor_data.csv").open(newline="") as handle:
            hours = [r["TS"][:13] for r in csv.DictReader(handle)]
        median = (hours.count("2018-08-29 00") + hours.count("2018-08-29 01")) / 2
        assert checks["volume"].detail.endswith(f"(median {median:g} of the 2 previous ranges)")


def test_stuck_sensor_is_excluded_and_the_rest_kept(db_url: str, reference_data: Path, tmp_path: Path) -> None:
    load_reference(db_url, reference_data)
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(update(windows).where(windows.c.device == "2", windows.c.sensor == "3").values(value=62.5))
    engine.dispose()
    report = run_validation(db_url, None, None, CheckConfig(), report_dir=tmp_path, window=FIVE_S)
    assert report.fleet_ok
    n = count_rows(reference_data, "2", "3")
    assert report.excluded == {("2", "3"): f"stuck: constant 62.5 over the whole range ({n} windows)"}
    assert report.series == 15  # 14 series kept


def test_learned_ranges_exclude_a_sensor_that_drifted_out(sqlite_url: str, reference_data: Path,
                                                          tmp_path: Path) -> None:
    load_reference(sqlite_url, reference_data)
    learned = learn_ranges(sqlite_url, None, datetime(2018, 8, 29, 1), CheckConfig())
    assert {r.sensor: (r.observed_min, r.observed_max) for r in learned}["1"] == (10.0, 15.0)
    assert {r.sensor: (r.low, r.high) for r in learned}["1"] == pytest.approx((9.5, 15.5))
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:  # device 3 sensor 5 drifts from [100, 110] to [150, 160] after 01:00
        conn.execute(update(windows).where(windows.c.device == "3", windows.c.sensor == "5",
                                           windows.c.ts >= datetime(2018, 8, 29, 1)).values(value=windows.c.value + 50))
    engine.dispose()
    report = run_validation(sqlite_url, datetime(2018, 8, 29, 2), datetime(2018, 8, 29, 3), CheckConfig(),
                            report_dir=tmp_path, window=FIVE_S)
    assert report.fleet_ok
    assert list(report.excluded) == [("3", "5")]
    n = count_rows(reference_data, "3", "5", "2018-08-29 02:00", "2018-08-29 03:00")
    assert report.excluded[("3", "5")] == f"out of range: {n} of {n} windows outside [99.011, 110.999] (100% > 50%)"
    assert report.ranges["5"]["source"] == "learned"
    # a configured range wins over the learned one
    wide = CheckConfig(sensor_ranges={"5": (0.0, 200.0)})
    again = run_validation(sqlite_url, datetime(2018, 8, 29, 2), datetime(2018, 8, 29, 3), wide,
                           report_dir=tmp_path, window=FIVE_S)
    assert again.excluded == {} and again.ranges["5"] == {"low": 0.0, "high": 200.0, "source": "config"}
