"""The gate on the committed fixtures, on SQLite and on a real PostgreSQL server.

Each bad set is the good fleet broken in one way; it must fail exactly the check it was made for and
no other. Fleet-level failures stop the pipeline; series-level failures exclude just that series.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from fleetscore.data_checks import ValidationReport, load_report, run_validation
from fleetscore.errors import ValidationFailed
from tests.data_checks.conftest import CONFIG, END, FIXTURES, LOOSE_SETS, START, WINDOW, load_csv

ALL_CHECKS = ["schema", "not_empty", "nulls", "unique", "freshness", "volume",
              "completeness", "gaps", "stuck", "finite", "range", "range_warnings"]
FLEET_SETS = ["schema", "not_empty", "nulls", "unique", "freshness", "volume"]
# series-level bad sets -> (the series broken, how the reason starts)
SERIES_SETS = {
    "completeness": (("d2", "rpm"), "incomplete: 15 of 60 expected windows (25% < 50%)"),
    "gaps": (("d1", "rpm"), "gap: longest gap 16m >= max_gap 10m"),
    "stuck": (("d3", "temp"), "stuck: constant 21 over the whole range (60 windows)"),
    "finite": (("d1", "temp"), "non-finite: 1 of 60 windows NaN, infinite or NULL"),
    "range": (("d2", "temp"), "out of range: 60 of 60 windows outside [0, 50] (100% > 50%)"),
}


def validate(url: str, name: str, tmp_path: Path, **kwargs: object) -> ValidationReport:
    load_csv(url, FIXTURES / f"{name}.csv", strict=name.removeprefix("bad_") not in LOOSE_SETS)
    return run_validation(url, START, END, CONFIG, report_dir=tmp_path / "reports", window=WINDOW, **kwargs)  # type: ignore[arg-type]


def results(report: ValidationReport) -> dict[str, bool | None]:
    return {c.name: c.passed for c in report.checks}


@pytest.mark.parametrize("strict", [True, False], ids=["schema", "loose-table"])
def test_good_set_passes_every_check(db_url: str, tmp_path: Path, strict: bool) -> None:
    load_csv(db_url, FIXTURES / "good.csv", strict=strict)
    report = run_validation(db_url, START, END, CONFIG, report_dir=tmp_path, window=WINDOW)
    assert results(report) == dict.fromkeys(ALL_CHECKS, True)
    assert report.fleet_ok
    report.raise_if_failed()
    # the short anomalies in the range (a one-window spike, a 30-window level shift, a 20-window
    # stuck run) are what the models detect: nothing is excluded or warned for them
    assert report.excluded == {} and report.warnings == []
    assert (report.rows, report.series) == (360, 6)
    unique = next(c for c in report.checks if c.name == "unique")
    assert ("primary key" in unique.detail) is strict  # without a key, GX ran the duplicates query


@pytest.mark.parametrize("name", FLEET_SETS)
def test_fleet_bad_set_fails_exactly_its_check(db_url: str, tmp_path: Path, name: str) -> None:
    report = validate(db_url, f"bad_{name}", tmp_path)
    failed = [c.name for c in report.checks if c.passed is False]
    assert failed == [name]
    assert not report.fleet_ok
    assert report.excluded == {}
    with pytest.raises(ValidationFailed) as caught:
        report.raise_if_failed()
    assert str(caught.value).startswith(f"validation failed: {name}: ")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name", sorted(SERIES_SETS))
def test_series_bad_set_excludes_just_that_series(db_url: str, tmp_path: Path, name: str) -> None:
    report = validate(db_url, f"bad_{name}", tmp_path)
    failed = [c.name for c in report.checks if c.passed is False]
    assert failed == [name]
    assert report.fleet_ok
    series, reason = SERIES_SETS[name]
    assert report.excluded == {series: reason}
    assert report.series == 6  # the other five are kept
    report.raise_if_failed()


def test_a_few_windows_out_of_range_warn_and_exclude_nothing(db_url: str, tmp_path: Path) -> None:
    report = validate(db_url, "bad_range_warnings", tmp_path)
    assert [c.name for c in report.checks if c.passed is False] == ["range_warnings"]
    assert report.fleet_ok and report.excluded == {}
    assert report.warnings == ["device d3 sensor temp: 3 of 60 windows outside [0, 50]"]


def test_fleet_failure_messages_say_how_far_off(sqlite_url: str, tmp_path: Path) -> None:
    stale = validate(sqlite_url, "bad_freshness", tmp_path)
    with pytest.raises(ValidationFailed) as caught:
        stale.raise_if_failed()
    assert str(caught.value) == ("validation failed: freshness: newest window 2024-01-01 02:39:00 is 21m older than "
                                 "the range end 2024-01-01 03:00:00 (max_age 15m)")


def test_volume_drop_message(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    report = validate(url, "bad_volume", tmp_path)
    assert report.failed_checks[0].detail == ("120 windows is a drop of 67% against the median 360 of the "
                                              "2 previous ranges (allowed [180, 540])")


def test_wrong_column_type_fails_schema(db_url: str, tmp_path: Path) -> None:
    from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, create_engine

    engine = create_engine(db_url)
    Table("windows", MetaData(), Column("device", String(64)), Column("sensor", String(64)), Column("ts", DateTime),
          Column("value", Text), Column("value_min", Text), Column("value_max", Text),
          Column("value_count", Integer), Column("updated_at", DateTime)).create(engine)
    engine.dispose()
    report = run_validation(db_url, START, END, CONFIG, report_dir=tmp_path, window=WINDOW)
    assert [c.name for c in report.checks if c.passed is False] == ["schema"]
    assert report.failed_checks[0].detail == ("table windows: value is TEXT, expected float; value_min is TEXT, "
                                              "expected float; value_max is TEXT, expected float")


def test_missing_table_fails_schema(sqlite_url: str, tmp_path: Path) -> None:
    report = run_validation(sqlite_url, None, None, CONFIG, report_dir=tmp_path)
    with pytest.raises(ValidationFailed) as caught:
        report.raise_if_failed()
    assert str(caught.value) == f"validation failed: schema: table windows not found in {sqlite_url}"


def test_series_missing_from_the_range_is_excluded(sqlite_url: str, tmp_path: Path) -> None:
    from sqlalchemy import create_engine, delete

    from fleetscore.ingestion.schema import windows

    load_csv(sqlite_url, FIXTURES / "good.csv")
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(delete(windows).where(windows.c.device == "d3", windows.c.sensor == "rpm", windows.c.ts >= START))
    engine.dispose()
    report = run_validation(sqlite_url, START, END, CONFIG, report_dir=tmp_path, window=WINDOW)
    assert report.fleet_ok
    assert report.excluded == {("d3", "rpm"): "missing: no windows in the range (seen in the previous ranges)"}


def test_devices_limit_every_check(sqlite_url: str, tmp_path: Path) -> None:
    load_csv(sqlite_url, FIXTURES / "bad_stuck.csv")  # d3/temp is stuck
    report = run_validation(sqlite_url, START, END, CONFIG, report_dir=tmp_path, window=WINDOW, devices=["d1", "d2"])
    assert report.fleet_ok and report.excluded == {}
    assert (report.rows, report.series) == (240, 4)


def test_report_is_written_and_loads_back(sqlite_url: str, tmp_path: Path) -> None:
    report = validate(sqlite_url, "bad_stuck", tmp_path)
    path = tmp_path / "reports" / f"{report.id}.json"
    assert report.path == str(path) and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    again = load_report(report.id, tmp_path / "reports")
    assert again.to_dict() == report.to_dict()
    assert again.excluded == {("d3", "temp"): SERIES_SETS["stuck"][1]}
    assert load_report(path, "elsewhere").id == report.id
    assert report.to_dict()["excluded"] == [{"device": "d3", "sensor": "temp", "reason": SERIES_SETS["stuck"][1]}]


def test_unknown_report_is_a_one_line_error(tmp_path: Path) -> None:
    from fleetscore.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^validation report nope: not found in .*reports$"):
        load_report("nope", tmp_path / "reports")


def test_data_docs(sqlite_url: str, tmp_path: Path) -> None:
    report = validate(sqlite_url, "bad_gaps", tmp_path, docs_dir=tmp_path / "docs")
    index = tmp_path / "docs" / "index.html"
    assert report.docs_index == str(index) and index.is_file()
    pages = list((tmp_path / "docs" / "validations").rglob("*.html"))
    assert len(pages) == 2  # the schema suite and the range suite
    range_page = next(p for p in pages if "fleetscore_range" in str(p)).read_text()
    assert "values must never be null" in range_page  # GX's rendering of the nulls expectations


def test_bad_threshold_is_a_config_error(sqlite_url: str, tmp_path: Path) -> None:
    from dataclasses import replace

    from fleetscore.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^data_checks.max_age: expected a duration such as 5s, 10m, 1h or 2d, "
                                          r"got 'soon'$"):
        run_validation(sqlite_url, None, None, replace(CONFIG, max_age="soon"), report_dir=tmp_path)


def test_unreachable_database_is_a_store_error(tmp_path: Path) -> None:
    from fleetscore.errors import StoreError
    from tests.fixtures.postgres import free_port

    url = f"postgresql+psycopg://u:secret@127.0.0.1:{free_port()}/fleet"
    with pytest.raises(StoreError) as caught:
        run_validation(url, None, None, CONFIG, report_dir=tmp_path)
    assert str(caught.value).startswith(f"database postgresql+psycopg://u:***@127.0.0.1:{url.split(':')[3]}")
    assert "secret" not in str(caught.value)
    assert not (tmp_path / "reports").exists()


def test_start_after_end(sqlite_url: str, tmp_path: Path) -> None:
    from fleetscore.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^validation range: start 2024-01-01 03:00:00 is not before end"):
        run_validation(sqlite_url, END, START, CONFIG, report_dir=tmp_path)


def test_empty_table_without_range(sqlite_url: str, tmp_path: Path) -> None:
    from sqlalchemy import create_engine

    from fleetscore.ingestion.schema import metadata

    metadata.create_all(create_engine(sqlite_url))
    report = run_validation(sqlite_url, None, None, CONFIG, report_dir=tmp_path)
    with pytest.raises(ValidationFailed, match=r"^validation failed: not_empty: no windows in the checked range$"):
        report.raise_if_failed()
    assert isinstance(report.created_at, datetime)
