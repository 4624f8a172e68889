"""``fleetscore validate`` end to end: exit codes, the one-line error, the report and the table."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from fleetscore.pipelines.cli import main
from tests.data_checks.conftest import FIXTURES, load_csv, load_reference


def home_db(home: Path) -> str:
    """The URL of the default database of ``home`` (its folder created)."""
    (home / ".fleetscore").mkdir(exist_ok=True)
    return f"sqlite:///{home / '.fleetscore' / 'fleetscore.db'}"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), prog_name="fleetscore")
    return result.exit_code, result.stdout, result.stderr


def test_reference_data_validates(home: Path, reference_data: Path) -> None:
    load_reference(home_db(home), reference_data)
    code, out, err = run("validate")
    assert (code, err) == (0, "")
    assert "17768 windows, 15 series" in out
    report_line = out.strip().splitlines()[-1]
    assert report_line.startswith("fleet OK; report: .fleetscore/reports/validation/")
    report = json.loads(Path(report_line.split("report: ")[1]).read_text())
    assert report["fleet_ok"] is True and report["excluded"] == []


def test_stale_range_fails_with_one_line(home: Path, reference_data: Path) -> None:
    load_reference(home_db(home), reference_data)
    code, out, err = run("validate", "--start", "2018-08-29T02:12:25", "--end", "2018-08-29T06:24:25",
                         "--devices", "1")
    assert code == 1
    assert err == ("Error: validation failed: freshness: newest window 2018-08-29 03:12:25 is 3h12m older than the "
                   "range end 2018-08-29 06:24:25 (max_age 1h)\n")
    assert "fleet FAILED; report: .fleetscore/reports/validation/" in out


def test_excluded_series_are_listed_and_exit_zero(home: Path) -> None:
    (home / "fleetscore.toml").write_text('[ingest]\nwindow = "1m"\n[data_checks]\nmax_gap = "10m"\n'
                                          'max_age = "15m"\nvolume_history = 2\n'
                                          'sensor_ranges = { temp = [0, 50], rpm = [500, 3000] }\n')
    load_csv(home_db(home), FIXTURES / "bad_stuck.csv")
    code, out, err = run("validate", "--start", "2024-01-01T02:00", "--end", "2024-01-01T03:00")
    assert (code, err) == (0, "")
    assert ("Excluded series (1):\n"
            "  device d3 sensor temp: stuck: constant 21 over the whole range (60 windows)\n") in out


def test_json_output(home: Path) -> None:
    load_csv(home_db(home), FIXTURES / "good.csv")
    code, out, _ = run("validate", "--json", "--end", "2024-01-01T03:00")
    assert code == 0
    report = json.loads(out)
    assert report["rows"] == 1080 and report["fleet_ok"] is True
    assert {c["name"]: c["passed"] for c in report["checks"]}["freshness"] is True
    assert Path(report["path"]).is_file()


def test_learn_ranges(home: Path, reference_data: Path) -> None:
    load_reference(home_db(home), reference_data)
    code, out, _ = run("validate", "--learn-ranges", "--end", "2018-08-29T01:00")
    assert code == 0
    assert out.splitlines()[:2] == ["Learned the ranges of 5 sensors:",
                                    "  sensor 1: [9.5, 15.5] (observed [10, 15] in 1721 windows)"]


def test_a_missing_store_is_named_with_the_command_that_creates_it(home: Path) -> None:
    code, _, err = run("validate")
    assert code == 1
    assert err == ("Error: no sensor store at sqlite:///.fleetscore/fleetscore.db: ingest readings first "
                   "(fleetscore ingest PATH, or fleetscore simulate --ingest)\n")
    assert not (home / ".fleetscore").exists()  # nothing was created


def test_bad_range_flags(home: Path) -> None:
    code, _, err = run("validate", "--start", "2024-01-01", "--last", "1h")
    assert (code, err) == (2, "Error: give either --start/--end or --last, not both\n")
