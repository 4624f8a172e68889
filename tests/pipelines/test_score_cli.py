"""``fleetscore score``, ``runs``, ``report`` on the real reference data, through the CLI (and a killed run)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import polars as pl
import pytest
from click.testing import CliRunner
from deltalake import DeltaTable

from fleetscore.pipelines.cli import main
from fleetscore.pipelines.settings import load_settings
from fleetscore.scoring import table, writer
from tests.scoring.fleet import fit_release, store_windows

REF_START, REF_END = "2018-08-28T23:00:00", "2018-08-29T03:15:00"
ROOT = Path(__file__).resolve().parents[2]
FLEETSCORE = str(Path(sys.executable).with_name("fleetscore"))


def _reference_windows(reference_data: Path) -> pd.DataFrame:
    df = pd.read_csv(reference_data / "sensor_data.csv", dtype={"Device": str, "Sensor": str})
    return pd.DataFrame({"device": df["Device"], "sensor": df["Sensor"], "ts": pd.to_datetime(df["TS"]),
                         "value": df["Value"], "value_min": df["Value"], "value_max": df["Value"],
                         "value_count": 1})


@pytest.fixture()
def reference_home(home: Path, reference_data: Path) -> Path:
    """The reference data in the store (as aggregated windows) and a release bundle fitted on it."""
    settings = load_settings({"home": str(home / ".fleetscore")}, environ={})
    frame = _reference_windows(reference_data)
    store_windows(settings.database_url, frame)
    fit_release(frame, nu=0.01, gamma=0.5).save(home / "release")
    (home / "fleetscore.toml").write_text("workers = 2\n[scoring]\nlog_to_mlflow = false\n")
    return home


def test_reference_data_scored_end_to_end_in_the_reference_format(reference_home: Path, reference_data: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["score", "--start", REF_START, "--end", REF_END, "--release", "path:release",
                                  "--csv"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    match = re.fullmatch(r"run (\S+): 17,768 predictions, ([\d,]+) anomalies \(([\d.]+)%\), release v1, "
                         r"window 2018-08-28 23:00:00 \.\. 2018-08-29 03:15:00", lines[0])
    assert match, lines[0]
    run_id = match.group(1)
    run_dir = reference_home / ".fleetscore" / "blob" / writer.run_prefix(pd.Timestamp(REF_START), run_id)
    assert lines[1] == f"predictions: {reference_home / '.fleetscore' / 'blob' / 'predictions'}@v0"
    assert lines[2] == f"manifest: {run_dir / 'manifest.json'}"

    source = pd.read_csv(reference_data / "sensor_data.csv", dtype={"Device": str, "Sensor": str})
    csv = pd.concat([pd.read_csv(p, dtype={"Device": str, "Sensor": str}) for p in sorted(run_dir.glob("*.csv"))])
    assert list(csv.columns) == ["TS", "Device", "Sensor", "Val", "Prediction"]
    keys = ["TS", "Device", "Sensor"]
    merged = source.merge(csv, on=keys, how="outer", indicator=True)
    assert (merged["_merge"] == "both").all() and len(merged) == len(source) == 17_768
    assert (merged["Value"] == merged["Val"]).all()
    assert set(csv["Prediction"]) <= {0, 1}
    assert (run_dir / "validation.json").exists()

    again = runner.invoke(main, ["score", "--start", REF_START, "--end", REF_END, "--release", "path:release",
                                 "--csv"])
    assert again.output.splitlines()[0] == (
        f"skipped: window 2018-08-28 23:00:00 .. 2018-08-29 03:15:00 was already scored by run {run_id} "
        "(release v1, same data); use --force to rescore")

    listed = runner.invoke(main, ["runs", "list"]).output.splitlines()
    assert listed[0].split() == ["RUN", "ID", "WINDOW", "START", "WINDOW", "END", "RELEASE", "STATUS", "ROWS",
                                 "ANOMALIES", "SHARDS", "SECONDS"]
    assert [line.split()[6] for line in listed[1:]] == ["skipped", "done"]
    shown = runner.invoke(main, ["runs", "show", run_id]).output
    assert "status:           done\n" in shown and "rows:             17768\n" in shown
    assert "table_version:    0\n" in shown

    out = reference_home / "r.html"
    report = runner.invoke(main, ["report", run_id, "--out", str(out)])
    assert report.output == f"report: {out}\n"
    page = out.read_text()
    assert page.count("<img alt='plot' src='data:image/png;base64,") == 3
    assert "<h2>Anomalous episodes (" in page and "<th>reason</th>" in page
    assert "<script" not in page and "http" not in page.replace(str(run_dir), "")


def test_cli_errors_are_one_line(reference_home: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["runs", "show", "nope"])
    assert result.exit_code == 1
    assert result.output == "Error: no scoring run nope in sqlite:///.fleetscore/fleetscore.db\n"
    result = runner.invoke(main, ["report", "nope"])
    assert result.output == "Error: no scoring run nope in the run log\n"
    result = runner.invoke(main, ["score", "--release", "path:nowhere"])
    assert result.exit_code == 1
    assert result.output == (f"Error: --release path:nowhere: {reference_home / 'nowhere'} is not a release "
                             "bundle folder (no manifest.json)\n")
    result = runner.invoke(main, ["score", "--start", "2018-08-29T05:00", "--end", "2018-08-29T04:00"])
    assert result.output == "Error: --start 2018-08-29T05:00 is not before --end 2018-08-29T04:00\n"


def test_a_run_whose_process_died_after_its_manifest_is_recorded_done(reference_home: Path) -> None:
    from mlflow.tracking import MlflowClient

    from fleetscore.records.run_log import RunLog

    # an absolute home: MLflow caches its store per tracking URI in a process, and a relative URI seen by an
    # earlier test of this process would point at that test's folder
    (reference_home / "fleetscore.toml").write_text(f'home = "{reference_home / ".fleetscore"}"\nworkers = 2\n'
                                                    "[scoring]\nlog_to_mlflow = true\n")
    settings = load_settings({"home": str(reference_home / ".fleetscore")}, environ={})
    runner = CliRunner()
    done = runner.invoke(main, ["score", "--start", REF_START, "--end", REF_END, "--release", "path:release",
                                "--skip-validation"])
    assert done.exit_code == 0, done.output
    run_id = done.output.split()[1].rstrip(":")
    runs = RunLog(settings.database_url)
    finished = runs.get(run_id)
    assert finished is not None and finished["mlflow_run_id"]
    gone = subprocess.Popen(["true"])
    gone.wait()
    # what kill -9 between the manifest (after the table commit) and the record's update leaves behind
    runs.update(run_id, status="running", rows=0, anomalies=0, table_version=None, mlflow_run_id="",
                finished_at=None, owner=f"{finished['owner'].split(':')[0]}:{gone.pid}:")
    listed = runner.invoke(main, ["runs", "list", "--json"])
    [record] = json.loads(listed.stdout)["runs"]
    assert (record["status"], record["rows"], record["anomalies"], record["table_version"]) == (
        "done", 17_768, finished["anomalies"], finished["table_version"])
    assert record["mlflow_run_id"] and record["mlflow_run_id"] != finished["mlflow_run_id"]
    logged = MlflowClient(settings.tracking_uri).get_run(record["mlflow_run_id"])
    assert logged.info.status == "FINISHED" and logged.data.metrics["rows"] == 17_768
    report = runner.invoke(main, ["report", run_id, "--out", str(reference_home / "r.html")])
    assert report.exit_code == 0, report.output  # a complete run: its report is written
    again = runner.invoke(main, ["score", "--start", REF_START, "--end", REF_END, "--release", "path:release",
                                 "--skip-validation"])
    assert again.output.startswith("skipped: window")


def test_two_scores_of_one_window_started_together_publish_once(reference_home: Path) -> None:
    args = ["score", "--start", REF_START, "--end", REF_END, "--release", "path:release", "--shards", "2",
            "--skip-validation", "--part-delay", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLEETSCORE_WORKERS": "1"}
    procs = [subprocess.Popen([FLEETSCORE, *args], cwd=reference_home, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    firsts = sorted(out.splitlines()[0].split(":")[0].split()[0] for out, _ in outputs)
    assert firsts == ["run", "skipped"], outputs  # one published, the other is its duplicate
    blob = reference_home / ".fleetscore" / "blob"
    assert [entry["version"] for entry in DeltaTable(str(blob / "predictions")).history()] == [0]
    assert len(pl.read_delta(str(blob / "predictions"))) == 17_768
    records = json.loads(subprocess.run([FLEETSCORE, "runs", "list", "--json"], cwd=reference_home, env=env,
                                        capture_output=True, text=True, timeout=120).stdout)["runs"]
    assert sorted(r["status"] for r in records) == ["done", "skipped"]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_kill_9_of_the_command_alone_takes_its_fork_server_and_workers(reference_home: Path) -> None:
    args = ["score", "--start", REF_START, "--end", REF_END, "--release", "path:release", "--shards", "3",
            "--skip-validation", "--part-delay", "60"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLEETSCORE_WORKERS": "2"}
    proc = subprocess.Popen([FLEETSCORE, *args], cwd=reference_home, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    blob = reference_home / ".fleetscore" / "blob"
    try:
        deadline = time.monotonic() + 120
        while not list(blob.rglob("part-00000.json")) and time.monotonic() < deadline:
            assert proc.poll() is None
            time.sleep(0.05)
        children = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) >= 3  # the command, the fork server and the shards' workers
        os.kill(proc.pid, signal.SIGKILL)  # the command only, as a user's kill -9 PID
        proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _group_alive(proc.pid), subprocess.run(["ps", "-o", "pid,ppid,cmd", "-g", str(proc.pid)],
                                                          capture_output=True, text=True).stdout
        assert proc.stdout is not None and proc.stdout.read() == b""  # nobody holds its output any more
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)


def test_killed_run_is_invisible_and_the_rerun_completes_it(reference_home: Path) -> None:
    args = ["score", "--start", REF_START, "--end", REF_END, "--release", "path:release", "--shards", "3",
            "--skip-validation"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLEETSCORE_WORKERS": "1"}
    proc = subprocess.Popen([FLEETSCORE, *args, "--part-delay", "30"],
                            cwd=reference_home, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    blob = reference_home / ".fleetscore" / "blob"
    deadline = time.monotonic() + 120
    while not list(blob.rglob("part-00000.json")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9 of the run and any worker
    proc.wait()
    assert table.read_predictions(str(blob)).empty  # nothing a reader takes for a result
    assert not DeltaTable.is_deltatable(str(blob / "predictions"))  # no commit: no table for any Delta reader
    assert not list(blob.rglob("manifest.json")) and not (blob / "predictions").exists()
    listed = subprocess.run([FLEETSCORE, "runs", "list", "--json"], cwd=reference_home, env=env,
                            capture_output=True, text=True, timeout=120)
    [killed] = json.loads(listed.stdout)["runs"]
    assert killed["status"] == "abandoned"  # its process is gone: not `running` forever
    assert killed["error"] == (f"its process ({killed['owner']}) died before the run finished; fleetscore score "
                               "on the same window resumes it")
    assert killed["owner"].split(":")[1] == str(proc.pid)

    resumed = subprocess.run([FLEETSCORE, *args], cwd=reference_home, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert " (resumed): 17,768 predictions" in resumed.stdout
    assert f"run {killed['run_id']} (resumed)" in resumed.stdout  # the abandoned run, completed
    clean = subprocess.run([FLEETSCORE, *args, "--force"], cwd=reference_home, env=env,
                           capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr
    output = (resumed.stdout + clean.stdout).splitlines()
    run_ids = [line.split()[1].rstrip(":") for line in output if line.startswith("run ")]
    a, b = (table.read_run(str(blob), r).sort_values(["Device", "Sensor", "TS"]).reset_index(drop=True)
            for r in run_ids)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 17_768
    current = pl.read_delta(str(blob / "predictions"))  # the rescore replaced the resumed run's rows
    assert current.height == 17_768 and current.select(["Device", "Sensor", "TS"]).is_unique().all()
    assert [v.run_id for v in table.history(str(blob))] == list(reversed(run_ids))
