"""Anomaly events and alert sinks: a real HTTP receiver on loopback, Event Grid's SDK objects, the SQL table."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from azure.core.messaging import CloudEvent

from fleetscore.ingestion.ops_store import OpsStore
from fleetscore.pipelines.alerts import EventGridSink, WebhookSink, verify
from fleetscore.pipelines.alerts_config import AlertsConfig
from fleetscore.pipelines.events import acknowledge, record_events

SECRET = "s3cret"
T = datetime(2026, 1, 5, 1, 0)


class Receiver:
    """An HTTP server on loopback that records every POST and answers with ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((dict(self.headers), body))
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _rows(device: str, minutes: list[int], score: float = -1.0) -> list[list[Any]]:
    """Anomalous windows as the shards report them: every 5 s over the given minutes' first 20 s."""
    out = []
    for m in minutes:
        for s in range(0, 20, 5):
            ts = T + timedelta(minutes=m, seconds=s)
            out.append([device, "1", ts.strftime("%Y-%m-%dT%H:%M:%S.%f"), score, "value"])
    return out


def test_webhook_signature_verifies_and_one_notification_per_event(tmp_path: Path, receiver: Receiver) -> None:
    db = f"sqlite:///{tmp_path / 'ops.db'}"
    sink = WebhookSink(receiver.url, SECRET, retries=0)
    config = AlertsConfig(event_gap="15s")
    outcome = record_events(db, config, "run-a", _rows("7", [0, 5]), [sink])
    assert (outcome.new, outcome.notified) == (2, 2)  # two episodes five minutes apart: two events
    for headers, body in receiver.requests:
        assert verify(body, SECRET, headers["X-Fleetscore-Signature"])
        assert not verify(body, "wrong", headers["X-Fleetscore-Signature"])
        payload = json.loads(body)
        assert payload["kind"] == "new" and payload["device"] == "7" and payload["windows"] == 4
    # the same windows again (a rescore): no new event, no notification
    again = record_events(db, config, "run-b", _rows("7", [0, 5]), [sink])
    assert (again.new, again.notified) == (0, 0) and len(receiver.requests) == 2
    events = OpsStore(db).list_events()
    assert len(events) == 2 and all(e["runs"] == ["run-a", "run-b"] for e in events)


def test_escalation_notifies_but_an_acknowledged_event_sends_nothing(tmp_path: Path, receiver: Receiver) -> None:
    db = f"sqlite:///{tmp_path / 'ops.db'}"
    sink = WebhookSink(receiver.url, SECRET, retries=0)
    config = AlertsConfig(event_gap="15s", escalate_factor=2.0)
    record_events(db, config, "run-a", _rows("7", [0]) + _rows("8", [0]), [sink])
    assert len(receiver.requests) == 2
    acked = next(e for e in OpsStore(db).list_events() if e["device"] == "8")
    acknowledge(db, acked["id"])
    # both episodes grow and get three times as severe: only the open one is notified again
    record_events(db, config, "run-b", _rows("7", [0], -3.0) + _rows("8", [0], -3.0), [sink])
    assert len(receiver.requests) == 3
    last = json.loads(receiver.requests[-1][1])
    assert (last["kind"], last["device"], last["peak_score"]) == ("escalated", "7", -3.0)
    assert OpsStore(db).list_events(open_only=True)[0]["device"] == "7"


def test_failing_receiver_is_retried_then_dead_lettered(tmp_path: Path) -> None:
    failing = Receiver(status=503)
    try:
        db = f"sqlite:///{tmp_path / 'ops.db'}"
        sink = WebhookSink(failing.url, SECRET, retries=2, backoff=0.01)
        outcome = record_events(db, AlertsConfig(), "run-a", _rows("7", [0]), [sink])
    finally:
        failing.close()
    assert len(failing.requests) == 3  # the first attempt and two retries
    assert (outcome.notified, outcome.dead_lettered) == (0, 1)
    letters = OpsStore(db).dead_letters()
    assert len(letters) == 1 and letters[0]["sink"] == "webhook" and "503" in letters[0]["error"]
    assert json.loads(letters[0]["payload"])["device"] == "7"


def test_event_grid_sink_sends_a_cloud_event(tmp_path: Path) -> None:
    sent: list[list[Any]] = []

    class FakeClient:  # stands in for EventGridPublisherClient: its send() takes a list of events
        def send(self, events: list[Any]) -> None:
            sent.append(events)

    sink = EventGridSink("https://topic.westeurope-1.eventgrid.azure.net/api/events", client=FakeClient())
    db = f"sqlite:///{tmp_path / 'ops.db'}"
    outcome = record_events(db, AlertsConfig(), "run-a", _rows("7", [0]), [sink])
    assert outcome.notified == 1 and len(sent) == 1
    event = sent[0][0]
    assert isinstance(event, CloudEvent)
    assert (event.source, event.type, event.subject) == ("fleetscore", "fleetscore.anomaly.new", "devices/7/sensors/1")
    assert event.data["windows"] == 4 and event.data["runs"] == ["run-a"]
