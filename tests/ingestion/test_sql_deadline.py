"""A database server that takes the connection and never answers: a command ends within the connect
deadline with one line naming the database (password masked), instead of waiting forever."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy.engine import make_url

from fleetscore.ingestion.engine import CONNECT_TIMEOUT_S, with_connect_timeout

FLEETSCORE = Path(sys.executable).with_name("fleetscore")


def test_ingest_against_a_silent_postgresql_ends_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "readings.csv").write_text("TS,Device,Sensor,Value\n2026-01-05T00:00:00,d1,s1,1.5\n")
    with socket.socket() as server:  # the kernel completes the connections (backlog); nobody answers
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        port = server.getsockname()[1]
        env = {**os.environ, "FLEETSCORE_DATABASE_URL": f"postgresql://fleet:hunter2@127.0.0.1:{port}/fleet"}
        started = time.monotonic()
        done = subprocess.run([str(FLEETSCORE), "ingest", "readings.csv"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        took = time.monotonic() - started
    assert done.returncode == 1
    assert done.stderr == (f"Error: postgresql://fleet:****@127.0.0.1:{port}/fleet: cannot connect: "
                           "(psycopg.errors.ConnectionTimeout) connection timeout expired\n")
    assert took < CONNECT_TIMEOUT_S + 30  # was: still waiting after 60 s
    assert "hunter2" not in done.stdout + done.stderr


def test_a_url_s_own_connect_timeout_wins() -> None:
    assert with_connect_timeout(make_url("postgresql+psycopg://u@h/db")).query == {"connect_timeout": "10"}
    assert with_connect_timeout(make_url("postgresql://u@h/db?connect_timeout=3")).query == {"connect_timeout": "3"}
