"""Fault campaign: kill -9 at random points, concurrent commands and bad input, on a simulated fleet.

    .venv/bin/python benchmarks/faults.py [--devices 200] [--kills 30] [--seed 0] [--work DIR]

Everything runs the real ``fleetscore`` command in its own process group, on loopback-free local
defaults (SQLite, a local blob folder, a local MLflow store). Per campaign it prints the cases, the
outputs equal to a clean run, the rows accounted for, the tracebacks (target 0), the hangs past the
deadline (target 0) and the processes left behind by a killed command (target 0).

- ``kill ingest``: ingest a file, kill it at a random moment, ingest it again: the windows must equal a
  clean ingest's (rows read = rows in windows + quarantined).
- ``kill score``: score a window, kill it at a random moment, score again: the published rows must equal a
  clean run's, and nothing must be readable as a result in between.
- ``kill release``: release, kill it at a random moment, release again: the champion must resolve and
  score.
- ``concurrent``: two ingests of different files at once (both complete, every row accounted for) and
  two scores of one window at once (one publishes).
- ``bad input``: files of many kinds of bad input: a one-line error or quarantined rows, never a
  traceback, and every data line accounted for.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).with_name("fleetscore")
DEADLINE_S = 600.0
START = "2026-01-05T00:00"
TRAIN_END = "2026-01-05T00:10"
END = "2026-01-05T00:15"


@dataclass
class Campaign:
    """The tallies of one campaign."""

    name: str
    cases: int = 0
    equal: int = 0
    rows_ok: int = 0
    tracebacks: int = 0
    hangs: int = 0
    leftovers: int = 0
    notes: list[str] = field(default_factory=list)
    counts_rows: bool = True  # whether "rows ok" applies (ingest campaigns)


def run(home: Path, *args: str, timeout: float = DEADLINE_S) -> tuple[int | None, str, str]:
    """Run ``fleetscore ARGS`` in ``home``; rc None when it passed the deadline (then killed)."""
    proc = subprocess.Popen([str(BIN), *args], cwd=home, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return None, out, err
    return proc.returncode, out, err


def kill_at_random(home: Path, rng: random.Random, longest: float, *args: str) -> int:
    """Start ``fleetscore ARGS``, kill -9 its process alone at a random moment; returns the processes
    of its group still alive 10 s later (the fork server and workers must follow it)."""
    proc = subprocess.Popen([str(BIN), *args], cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    time.sleep(rng.uniform(0.3, longest))
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    left: list[str] = []
    while time.monotonic() < deadline:
        left = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
        if not left:
            break
        time.sleep(0.2)
    if left:
        os.killpg(proc.pid, signal.SIGKILL)
    return len(left)


def windows_digest(home: Path) -> tuple[str, int, int]:
    """(digest of the windows table, readings counted in windows, quarantined rows)."""
    with sqlite3.connect(home / ".fleetscore" / "fleetscore.db") as conn:
        rows = conn.execute("SELECT device, sensor, ts, round(value, 9), value_min, value_max, value_count "
                            "FROM windows ORDER BY device, sensor, ts").fetchall()
        quarantined = conn.execute("SELECT count(*) FROM quarantine").fetchone()[0]
    return hashlib.sha256(repr(rows).encode()).hexdigest(), sum(r[6] for r in rows), int(quarantined)


def predictions_digest(home: Path) -> str:
    """A digest of the predictions table's current rows ('' when there is no table)."""
    import polars as pl

    table = home / ".fleetscore" / "blob" / "predictions"
    if not (table / "_delta_log").exists():
        return ""
    frame = pl.read_delta(str(table)).select("Device", "Sensor", "TS", "Val", "Prediction").sort(
        "Device", "Sensor", "TS")
    return hashlib.sha256(frame.write_csv().encode()).hexdigest()


def traceback_in(*texts: str) -> bool:
    return any("Traceback (most recent call last)" in t for t in texts)


def setup(work: Path, devices: int) -> tuple[Path, Path]:
    """A home with the readings ingested and a release, and a spare copy of the readings file."""
    home = work / "base"
    home.mkdir(parents=True)
    (home / "fleetscore.toml").write_text("[scoring]\nlog_to_mlflow = false\n")
    for args in (["simulate", "--devices", str(devices), "--duration", "15m", "--clean", "10m", "--start",
                  "2026-01-05", "--out", "readings.csv"], ["ingest", "readings.csv"],
                 ["release", "--start", START, "--end", TRAIN_END]):
        rc, _, err = run(home, *args)
        if rc != 0:
            raise SystemExit(f"setup: fleetscore {' '.join(args)} failed: {err.strip().splitlines()[-1:]}")
    return home, home / "readings.csv"


def fresh(work: Path, base: Path, name: str, with_store: bool = True) -> Path:
    home = work / name
    shutil.copytree(base, home, ignore=None if with_store else shutil.ignore_patterns(".fleetscore"))
    return home


def kill_ingest(work: Path, base: Path, rng: random.Random, kills: int) -> Campaign:
    c = Campaign("kill ingest")
    clean = fresh(work, base, "ingest-clean", with_store=False)
    run(clean, "ingest", "readings.csv")
    want = windows_digest(clean)
    for i in range(kills):
        home = fresh(work, base, f"ingest-{i}", with_store=False)
        c.cases += 1
        c.leftovers += kill_at_random(home, rng, 6.0, "ingest", "readings.csv")
        rc, out, err = run(home, "ingest", "readings.csv")
        c.tracebacks += traceback_in(out, err)
        c.hangs += rc is None
        got = windows_digest(home)
        c.equal += got == want
        c.rows_ok += got[1] + got[2] == want[1] + want[2]
        shutil.rmtree(home)
    return c


def kill_score(work: Path, base: Path, rng: random.Random, kills: int) -> Campaign:
    c = Campaign("kill score", counts_rows=False)
    clean = fresh(work, base, "score-clean")
    run(clean, "score", "--start", TRAIN_END, "--end", END)
    want = predictions_digest(clean)
    for i in range(kills):
        home = fresh(work, base, f"score-{i}")
        c.cases += 1
        c.leftovers += kill_at_random(home, rng, 15.0, "score", "--start", TRAIN_END, "--end", END)
        between = predictions_digest(home)
        if between not in ("", want):
            c.notes.append(f"case {i}: a partial result was readable after the kill")
        rc, out, err = run(home, "score", "--start", TRAIN_END, "--end", END)
        c.tracebacks += traceback_in(out, err)
        c.hangs += rc is None
        c.equal += rc == 0 and predictions_digest(home) == want
        listed = run(home, "runs", "list", "--status", "running", "--json")[1]
        if json.loads(listed or '{"runs": []}')["runs"]:
            c.notes.append(f"case {i}: a run stayed running")
        shutil.rmtree(home)
    return c


def kill_release(work: Path, base: Path, rng: random.Random, kills: int) -> Campaign:
    c = Campaign("kill release", counts_rows=False)
    for i in range(kills):
        home = fresh(work, base, f"release-{i}")
        c.cases += 1
        c.leftovers += kill_at_random(home, rng, 30.0, "release", "--start", START, "--end", TRAIN_END)
        rc, out, err = run(home, "release", "--start", START, "--end", TRAIN_END)
        c.tracebacks += traceback_in(out, err)
        c.hangs += rc is None
        scored, sout, serr = run(home, "score", "--start", TRAIN_END, "--end", END)
        c.tracebacks += traceback_in(sout, serr)
        c.equal += rc == 0 and scored == 0
        shutil.rmtree(home)
    return c


def concurrent(work: Path, base: Path) -> Campaign:
    c = Campaign("concurrent")
    home = fresh(work, base, "concurrent", with_store=False)
    lines = (home / "readings.csv").read_text().splitlines(keepends=True)
    half = len(lines) // 2
    (home / "a.csv").write_text("".join(lines[:half]))
    (home / "b.csv").write_text(lines[0] + "".join(lines[half:]))
    procs = [subprocess.Popen([str(BIN), "ingest", name], cwd=home, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for name in ("a.csv", "b.csv")]
    results = [p.communicate(timeout=DEADLINE_S) for p in procs]
    c.cases += 1
    c.tracebacks += sum(traceback_in(*r) for r in results)
    _, counted, quarantined = windows_digest(home)
    c.rows_ok += counted + quarantined == len(lines) - 1
    c.equal += all(p.returncode == 0 for p in procs)
    shutil.rmtree(home)
    home = fresh(work, base, "concurrent-score")
    procs = [subprocess.Popen([str(BIN), "score", "--start", TRAIN_END, "--end", END], cwd=home,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=DEADLINE_S) for p in procs]
    c.cases += 1
    c.tracebacks += sum(traceback_in(*r) for r in results)
    firsts = sorted(out.split(" ", 1)[0] for out, _ in results)
    c.equal += firsts == ["run", "skipped:"]
    shutil.rmtree(home)
    return c


def bad_inputs() -> dict[str, bytes]:
    """At least 50 kinds of bad input, each a whole file."""
    head = b"TS,Device,Sensor,Value\n"
    good = b"2026-01-05T00:20:00,d1,s1,1.5\n"
    rows = {
        "empty value": b"2026-01-05T00:20:00,d1,s1,\n", "text value": b"2026-01-05T00:20:00,d1,s1,abc\n",
        "nan": b"2026-01-05T00:20:00,d1,s1,nan\n", "inf": b"2026-01-05T00:20:00,d1,s1,inf\n",
        "huge pair": b"2026-01-05T00:20:00,d1,s1,1.7e308\n2026-01-05T00:20:01,d1,s1,1.7e308\n",
        "1e70000": b"2026-01-05T00:20:00,d1,s1,1" + b"0" * 70_000 + b"\n",
        "year 9999": b"9999-12-31T23:59:59,d1,s1,1\n", "year 2200": b"2200-01-01T00:00:00,d1,s1,1\n",
        "year 1000": b"1000-01-01T00:00:00,d1,s1,1\n", "us date": b"05/01/2026,d1,s1,1\n",
        "no time": b",d1,s1,1\n", "bad time": b"yesterday,d1,s1,1\n", "too late": b"2020-01-01T00:00:00,d1,s1,1\n",
        "empty device": b"2026-01-05T00:20:00,,s1,1\n", "empty sensor": b"2026-01-05T00:20:00,d1,,1\n",
        "long id": b"2026-01-05T00:20:00," + b"d" * 70 + b",s1,1\n", "nul id": b"2026-01-05T00:20:00,d\x00,s1,1\n",
        "escape id": b"2026-01-05T00:20:00,d\x1b[31m,s1,1\n", "del id": b"2026-01-05T00:20:00,d\x7f,s1,1\n",
        "not utf8": b"2026-01-05T00:20:00,d\xff,s1,1\n", "bare cr": b"2026-01-05T00:20:00,d1\r,s1,1\n",
        "three fields": b"2026-01-05T00:20:00,d1,1\n", "five fields": b"2026-01-05T00:20:00,d1,s1,1,2\n",
        "quoted comma": b'2026-01-05T00:20:00,"d,1",s1,1\n', "open quote": b'2026-01-05T00:20:00,"d1,s1,1\n',
        "only commas": b",,,\n", "garbage": b"\x00\x01\x02\x03\n", "long line": b"x" * 1_100_000 + b"\n",
        "offset time": b"2026-01-05T01:20:00+01:00,d1,s1,1\n", "space in time": b"2026-01-05 00:20:00,d1,s1,1\n",
        "crlf": b"2026-01-05T00:20:00,d1,s1,1\r\n", "blank lines": b"\n\n\n",
        "tabs": b"2026-01-05T00:20:00\td1\ts1\t1\n", "negative zero": b"2026-01-05T00:20:00,d1,s1,-0\n",
        "hex value": b"2026-01-05T00:20:00,d1,s1,0x10\n", "unicode id": "2026-01-05T00:20:00,dé,s1,1\n".encode(),
        "slash id": b"2026-01-05T00:20:00,a/b,s1,1\n", "emoji": "2026-01-05T00:20:00,d1,s\U0001f600,1\n".encode(),
    }
    files = {f"csv: {name}": head + good + body + good for name, body in rows.items()}
    files.update({
        "empty file": b"", "header only": head, "unknown header": b"time,device,value\n1,2,3\n",
        "bom": b"\xef\xbb\xbf" + head + good, "binary": b"\x00\x01\x02" * 100,
        "no newline in 64k": b"x" * 70_000, "gzip truncated": b"\x1f\x8b\x08\x00" + b"\x00" * 20,
        "json: not an object": b"[1, 2]\n", "json: missing key": b'{"TS": "2026-01-05T00:20:00", "Device": "d1"}\n',
        "json: bad value": b'{"TS": "2026-01-05T00:20:00", "Device": "d1", "Sensor": "s1", "Value": "x"}\n',
        "json: broken": b'{"TS": "2026-01-05T00:20:00", "Device"\n',
        "json: nested": b'{"TS": "2026-01-05T00:20:00", "Device": {"a": 1}, "Sensor": "s1", "Value": 1}\n',
        "json: number ts": b'{"TS": 1767571200, "Device": "d1", "Sensor": "s1", "Value": 1}\n',
    })
    return files


def bad_input(work: Path, base: Path) -> Campaign:
    c = Campaign("bad input")
    home = fresh(work, base, "bad")
    for i, (name, body) in enumerate(bad_inputs().items()):
        path = home / f"bad-{i}.{'jsonl' if name.startswith('json') else 'csv'}"
        path.write_bytes(body)
        before = windows_digest(home)
        rc, out, err = run(home, "ingest", path.name, "--max-bad-fraction", "1", timeout=120)
        c.cases += 1
        c.hangs += rc is None
        tb = traceback_in(out, err)
        c.tracebacks += tb
        after = windows_digest(home)
        lines = body.split(b"\n")
        data = [line for line in lines[1 if body.startswith(b"TS,") else 0:] if line.strip(b"\r \t")]
        one_line_error = rc == 1 and err.strip().count("\n") == 0 and err.startswith("Error: ")
        accounted = (after[1] + after[2]) - (before[1] + before[2])
        if (rc == 0 and accounted == len(data)) or (one_line_error and accounted == 0):
            c.rows_ok += 1
            c.equal += 1
        else:
            c.notes.append(f"{name}: rc {rc}, {accounted} of {len(data)} rows accounted, {err.strip()[-120:]!r}")
    return c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--kills", type=int, default=30, help="kills in all (ingest, score, release)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temp folder)")
    options = parser.parse_args()
    rng = random.Random(options.seed)
    work = options.work or Path(tempfile.mkdtemp(prefix="fleetscore-faults-"))
    t0 = time.perf_counter()
    base, _ = setup(work, options.devices)
    print(f"fleet: {options.devices} devices x 5 sensors, 15 min of 1 s readings ({time.perf_counter() - t0:.0f} s)")
    n_release = max(1, options.kills // 6)
    n_ingest = (options.kills - n_release) // 2
    n_score = options.kills - n_release - n_ingest
    campaigns = [bad_input(work, base), concurrent(work, base), kill_ingest(work, base, rng, n_ingest),
                 kill_score(work, base, rng, n_score), kill_release(work, base, rng, n_release)]
    print(f"{'campaign':<14} {'cases':>5} {'equal':>5} {'rows ok':>7} {'tracebacks':>10} {'hangs':>5} "
          f"{'leftover':>8}")
    for c in campaigns:
        rows = str(c.rows_ok) if c.counts_rows else "-"
        print(f"{c.name:<14} {c.cases:>5} {c.equal:>5} {rows:>7} {c.tracebacks:>10} {c.hangs:>5} "
              f"{c.leftovers:>8}")
    for c in campaigns:
        for line in c.notes:
            print(f"  {c.name}: {line}")
    kills = n_ingest + n_score + n_release
    print(f"{kills} kills, {campaigns[0].cases} kinds of bad input, {time.perf_counter() - t0:.0f} s in all")
    if not options.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
