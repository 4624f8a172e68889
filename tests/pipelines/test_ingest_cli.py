"""``fleetscore ingest`` and ``fleetscore simulate``: exact summaries and one-line errors."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from fleetscore.ingestion.store import SensorStore
from fleetscore.pipelines.cli import main

DB = "sqlite:///.fleetscore/fleetscore.db"


def _run(args: list[str], stdin: bytes | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, args, input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_ingest_reference_then_again(home: Path, reference_data: Path) -> None:
    path = str(reference_data / "sensor_data.csv")
    code, out, err = _run(["ingest", path, "--aggregated"])
    assert (code, err) == (0, "")
    assert out == (f"{path}: 17,768 rows read, 17,768 windows written, 0 late updates, 0 quarantined\n"
                   f"database: {DB}\n")
    code, out, _ = _run(["ingest", path, "--aggregated"])
    assert code == 0
    assert out == f"{path}: skipped (already ingested)\ndatabase: {DB}\n"
    assert len(SensorStore(DB).list_series()) == 15


def test_ingest_stdin(home: Path, reference_data: Path) -> None:
    code, out, _ = _run(["ingest", "-", "--aggregated"], stdin=(reference_data / "sensor_data.csv").read_bytes())
    assert code == 0
    assert out.startswith("<stdin>: 17,768 rows read, 17,768 windows written")


def test_missing_file_is_one_line_error_and_others_still_ingested(home: Path, reference_data: Path) -> None:
    path = str(reference_data / "sensor_data_tag_header.csv")
    code, out, err = _run(["ingest", "missing.csv", path, "--aggregated"])
    assert code == 1
    assert err == "Error: missing.csv: no such file\n"
    assert out == (f"missing.csv: not ingested\n"
                   f"{path}: 17,768 rows read, 17,768 windows written, 0 late updates, 0 quarantined\n"
                   f"total: 17,768 rows read, 17,768 windows written, 0 late updates, 0 quarantined\n"
                   f"database: {DB}\n")


def test_unknown_header(home: Path) -> None:
    Path("x.csv").write_text("time,id,val\n1,2,3\n")
    code, _, err = _run(["ingest", "x.csv"])
    assert code == 1
    assert err == ("Error: x.csv: unknown header 'time,id,val' (expected TS,Device,Sensor,Value or "
                   "TS,Device,Tag,Value)\n")


def test_too_many_bad_rows(home: Path) -> None:
    Path("bad.csv").write_text("TS,Device,Sensor,Value\n2024-01-01 00:00:00,d,1,1\n2024-01-01 00:00:01,d,1,x\n"
                               "nope,d,1,1\n")
    code, out, err = _run(["ingest", "bad.csv"])
    assert code == 1
    assert out == ("bad.csv: 3 rows read, 1 windows written, 0 late updates, 2 quarantined\n"
                   "quarantined by reason: bad_timestamp 1, bad_value 1\n"
                   f"database: {DB}\n")
    assert err == ("Error: bad.csv: 2 of 3 rows quarantined (66.7%), more than --max-bad-fraction 0.01; "
                   "good rows were stored, see the quarantine table\n")
    assert SensorStore(DB).count_windows() == 1


def test_bad_option_values(home: Path) -> None:
    code, _, err = _run(["ingest", "x.csv", "--window", "soon"])
    assert (code, err) == (2, "Error: --window: expected a duration such as 5s, 10m, 1h or 2d, got 'soon'\n")
    code, _, err = _run(["ingest"])
    assert code == 2 and "give at least one PATH (- for standard input), or --eventhub" in err


def test_simulate_to_files_and_store(home: Path) -> None:
    code, out, err = _run(["simulate", "--devices", "2", "--sensors", "3", "--duration", "90m", "--seed", "4",
                           "--anomaly-rate", "0.05", "--out", "sim.csv.gz", "--labels", "labels.csv", "--ingest"])
    assert (code, err) == (0, ""), err
    lines = out.splitlines()
    assert lines[0].startswith("simulated 32,400 readings: 2 devices x 3 sensors, ")
    assert lines[1:3] == ["readings: sim.csv.gz", "labels: labels.csv"]
    assert lines[3] == ("simulate:seed=4,devices=2,sensors=3: 32,400 rows read, 6,480 windows written, "
                        "0 late updates, 0 quarantined")
    assert Path("labels.csv").read_text().startswith("Device,Sensor,Kind,Start,End,Label,Visible\n")
    code, out, _ = _run(["ingest", "sim.csv.gz", "--allowed-lateness", "2h"])  # the same readings again: late
    assert code == 0 and "32,400 rows read, 0 windows written, 6,480 late updates" in out
    assert int(SensorStore(DB).read_windows().value_count.max()) == 10


def test_simulate_needs_a_destination(home: Path) -> None:
    code, _, err = _run(["simulate"])
    assert code == 2 and "give --out FILE and/or --ingest" in err
    code, _, err = _run(["simulate", "--out", "x.txt"])
    assert (code, err) == (2, "Error: x.txt: --out must end in .csv, .jsonl, .csv.gz or .jsonl.gz\n")
