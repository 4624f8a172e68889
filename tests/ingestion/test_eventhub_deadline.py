"""``ingest --eventhub --max-wait`` returns within its deadline when Event Hubs cannot be reached (issue
15). The real SDK client is used against a namespace that refuses connections (loopback, nothing on the
AMQP port) and one whose name does not resolve: no Event Hubs service is needed."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleetscore.errors import ServiceUnavailable
from fleetscore.ingestion.eventhub import consume

SECRET = "c2VjcmV0LWtleS1kby1ub3QtcHJpbnQ="


def _connection(host: str) -> str:
    return f"Endpoint=sb://{host}/;SharedAccessKeyName=listen;SharedAccessKey={SECRET};EntityPath=readings"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("host", ["127.0.0.1", "nosuch.invalid"])
def test_an_unreachable_namespace_is_reported_within_the_deadline(tmp_path: Path, host: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(ServiceUnavailable, match=f"Event Hubs {host}: no answer within 5s") as caught:
        consume(f"sqlite:///{tmp_path / 'f.db'}", _connection(host), "", "$Default", window=timedelta(seconds=5),
                allowed_lateness=timedelta(hours=1), max_wait_time=2, connect_timeout=3)
    assert time.monotonic() - t0 < 15
    assert SECRET not in str(caught.value)


@pytest.mark.timeout(120)
def test_the_cli_exits_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fleetscore.pipelines.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLEETSCORE_INGEST__EVENTHUB_CONNECTION_STRING", _connection("127.0.0.1"))
    t0 = time.monotonic()
    result = CliRunner().invoke(main, ["ingest", "--eventhub", "--max-wait", "5"])
    assert time.monotonic() - t0 < 60
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: Event Hubs 127.0.0.1: no answer within 35s")
    assert SECRET not in result.output
