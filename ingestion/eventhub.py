"""Azure Event Hubs as a source of readings (the ``azure`` extra; the only module that imports
``azure.eventhub``).

Each event body is a JSON object with ``TS``, ``Device``, ``Sensor`` (or ``Tag``) and ``Value``, like a
line of a JSON-lines file. A received batch goes through the same validation, windowing, lateness and
quarantine as files, and the partition's checkpoint (offset and sequence number of the batch's last
event) is written to ``eventhub_checkpoints`` IN THE SAME TRANSACTION as the windows. So after a crash
the consumer resumes from the last committed batch: nothing is lost, and events delivered again (the
SDK delivers at least once) are recognised by their sequence number and skipped, so nothing is counted
twice. :class:`SqlCheckpointStore` exposes the table through the SDK's ``CheckpointStore`` interface.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
from azure.eventhub import CheckpointStore, EventData, EventHubConsumerClient

from fleetscore.errors import ConfigError, FleetscoreError, ServiceUnavailable
from fleetscore.ingestion.ingest import InputIngest, InputReport
from fleetscore.ingestion.sources import FIELDS, RawChunk
from fleetscore.ingestion.store import SensorStore
from fleetscore.ingestion.windowing import validate
from fleetscore.ingestion.writer import open_writer

log = logging.getLogger(__name__)


def _record_fields(record: Any) -> list[str | None] | None:
    if not isinstance(record, dict):
        return None
    out: list[str | None] = []
    for key in FIELDS:
        found = record.get(key)
        if found is None and key == "Sensor":
            found = record.get("Tag")
        out.append(None if found is None else found if isinstance(found, str) else json.dumps(found))
    return out


def events_chunk(events: list[EventData]) -> tuple[RawChunk, list[str]]:
    """Event bodies as a raw chunk; "line" ``i`` (1-based) is the ``i``-th event of the batch."""
    values: dict[str, list[str | None]] = {f: [] for f in FIELDS}
    lines: list[int] = []
    raws: list[str] = []
    rejected: list[tuple[int, str, str, str]] = []
    for index, event in enumerate(events, start=1):
        try:
            raw = event.body_as_str(encoding="utf-8")
        except (TypeError, ValueError, UnicodeDecodeError):
            raw = repr(event.body)
        raws.append(raw)
        try:
            fields = _record_fields(json.loads(raw))
        except json.JSONDecodeError as exc:
            rejected.append((index, raw, "bad_row", f"not JSON: {exc.msg}"))
            continue
        if fields is None:
            rejected.append((index, raw, "bad_row", "not a JSON object"))
            continue
        for key, value in zip(FIELDS, fields, strict=True):
            values[key].append(value)
        lines.append(index)
    chunk = RawChunk(ts=pa.array(values["TS"], pa.string()), device=pa.array(values["Device"], pa.string()),
                     sensor=pa.array(values["Sensor"], pa.string()), value=pa.array(values["Value"], pa.string()),
                     lines=np.asarray(lines, dtype=np.int64), block=b"", first_line=1, rejected=rejected,
                     rows_read=len(events))
    return chunk, raws


class EventHubIngest:
    """The ``on_event_batch`` handler: one transaction per batch, checkpoint included."""

    def __init__(self, database_url: str, window: timedelta = timedelta(seconds=5),
                 allowed_lateness: timedelta = timedelta(hours=1)) -> None:
        self.store = SensorStore(database_url)
        self.store.create_schema()
        self.window = window
        self.allowed_lateness = allowed_lateness
        self.events = 0
        self.skipped = 0

    def on_event_batch(self, partition_context: Any, events: list[EventData]) -> None:
        """Store a batch of events and the partition's checkpoint atomically."""
        if not events:
            return
        namespace = partition_context.fully_qualified_namespace
        hub = partition_context.eventhub_name
        group = partition_context.consumer_group
        partition = str(partition_context.partition_id)
        name = f"eventhub:{hub}/{partition}"
        with open_writer(self.store) as writer:
            done = writer.checkpoints(namespace, hub, group).get(partition)
            last_seq = done[1] if done else -1
            fresh = [e for e in events if e.sequence_number is None or e.sequence_number > last_seq]
            self.skipped += len(events) - len(fresh)
            if not fresh:
                return
            chunk, raws = events_chunk(fresh)
            report = InputReport(name=name)
            feeder = InputIngest(writer, report, self.window, False, self.allowed_lateness, layout="jsonl")
            readings, rejects = validate(chunk)
            feeder.add(readings, rejects, lambda lines: [raws[int(i) - 1] for i in lines], chunk.rows_read)
            last = fresh[-1]
            if last.sequence_number is not None:
                writer.set_checkpoint(namespace, hub, group, partition, str(last.offset),
                                      int(last.sequence_number))
        self.events += len(fresh)
        if report.quarantined:
            log.warning("%s: %d of %d events quarantined (%s)", name, report.quarantined_total, len(fresh),
                        ", ".join(f"{k} {v}" for k, v in sorted(report.quarantined.items())))


class SqlCheckpointStore(CheckpointStore):  # type: ignore[misc]
    """The SDK's checkpoint store interface over ``eventhub_checkpoints`` (checkpoints are written by
    :class:`EventHubIngest` in the windows' transaction). Ownership is kept in memory: one consumer
    process per consumer group."""

    def __init__(self, database_url: str) -> None:
        self.store = SensorStore(database_url)
        self._ownership: dict[tuple[str, str, str, str], dict[str, Any]] = {}

    def list_ownership(self, fully_qualified_namespace: str, eventhub_name: str, consumer_group: str,
                       **kwargs: Any) -> Iterable[dict[str, Any]]:
        """Ownership records of this process."""
        return [dict(v) for k, v in self._ownership.items()
                if k[:3] == (fully_qualified_namespace, eventhub_name, consumer_group)]

    def claim_ownership(self, ownership_list: Iterable[dict[str, Any]], **kwargs: Any) -> Iterable[dict[str, Any]]:
        """Grant every claim (a single consumer)."""
        claimed = []
        for item in ownership_list:
            record = dict(item)
            record["last_modified_time"] = datetime.now(UTC).timestamp()
            record["etag"] = str(record["last_modified_time"])
            key = (record["fully_qualified_namespace"], record["eventhub_name"], record["consumer_group"],
                   record["partition_id"])
            self._ownership[key] = record
            claimed.append(record)
        return claimed

    def update_checkpoint(self, checkpoint: dict[str, Any], **kwargs: Any) -> None:
        """Store a checkpoint outside a batch (the handler normally writes it with the windows)."""
        with open_writer(self.store) as writer:
            writer.set_checkpoint(str(checkpoint["fully_qualified_namespace"]), str(checkpoint["eventhub_name"]),
                                  str(checkpoint["consumer_group"]), str(checkpoint["partition_id"]),
                                  str(checkpoint["offset"]), int(checkpoint["sequence_number"]))

    def list_checkpoints(self, fully_qualified_namespace: str, eventhub_name: str, consumer_group: str,
                         **kwargs: Any) -> Iterable[dict[str, Any]]:
        """The stored checkpoints, where the consumer resumes."""
        with open_writer(self.store) as writer:
            found = writer.checkpoints(fully_qualified_namespace, eventhub_name, consumer_group)
        return [{"fully_qualified_namespace": fully_qualified_namespace, "eventhub_name": eventhub_name,
                 "consumer_group": consumer_group, "partition_id": partition, "offset": offset,
                 "sequence_number": sequence}
                for partition, (offset, sequence) in sorted(found.items())]


CONNECT_GRACE_S = 30.0  # beyond --max-wait: time for the first connection (retries included)
RETRY_TOTAL = 3


def consume(database_url: str, connection_string: str, eventhub_name: str, consumer_group: str, *,
            window: timedelta, allowed_lateness: timedelta, max_wait_time: float | None = None,
            connect_timeout: float = CONNECT_GRACE_S) -> int:
    """Consume readings from Event Hubs into the store until interrupted (or, with ``max_wait_time``,
    until no event came for that many seconds). Returns the number of events processed.

    With ``max_wait_time`` every wait has a deadline: when the service has not answered at all (no
    batch, not even an empty one) within ``max_wait_time + connect_timeout`` seconds, the client is
    closed and :class:`ServiceUnavailable` names the namespace and the last error the SDK reported.
    """
    if not connection_string:
        raise ConfigError("ingest.eventhub_connection_string: not set "
                          "(environment FLEETSCORE_INGEST__EVENTHUB_CONNECTION_STRING)")
    handler = EventHubIngest(database_url, window, allowed_lateness)
    client = EventHubConsumerClient.from_connection_string(
        connection_string, consumer_group, eventhub_name=eventhub_name or None,
        checkpoint_store=SqlCheckpointStore(database_url), retry_total=RETRY_TOTAL,
        auth_timeout=connect_timeout, socket_timeout=min(connect_timeout, 20.0),
    )
    state: dict[str, Any] = {"answered": False, "error": None, "failure": None, "last": time.monotonic()}

    def on_batch(context: Any, events: list[EventData]) -> None:
        state["answered"], state["last"] = True, time.monotonic()
        if not events and max_wait_time is not None:
            client.close()
            return
        handler.on_event_batch(context, events)

    def on_error(context: Any, error: Exception) -> None:
        state["error"] = error
        log.info("event hubs: %s", _one_line(error))

    def receive() -> None:
        try:
            client.receive_batch(on_event_batch=on_batch, on_error=on_error, max_wait_time=max_wait_time,
                                 starting_position="-1")
        except Exception as exc:  # noqa: BLE001 - carried to the calling thread and raised there
            state["failure"] = exc

    worker = threading.Thread(target=receive, name="eventhub-receive", daemon=True)
    try:
        with client:
            worker.start()
            while worker.is_alive():
                worker.join(0.2)
                if max_wait_time is None or state["answered"]:
                    continue
                if time.monotonic() - state["last"] > max_wait_time + connect_timeout:
                    client.close()
                    worker.join(10)
                    raise ServiceUnavailable(
                        f"Event Hubs {_namespace(connection_string)}: no answer within "
                        f"{max_wait_time + connect_timeout:g}s"
                        + (f" ({_one_line(state['error'])})" if state["error"] is not None else ""))
    except KeyboardInterrupt:
        client.close()
        log.info("interrupted; checkpoints are committed with each batch")
    if state["failure"] is not None and not isinstance(state["failure"], FleetscoreError):
        raise ServiceUnavailable(f"Event Hubs {_namespace(connection_string)}: "
                                 f"{_one_line(state['failure'])}") from state["failure"]
    if state["failure"] is not None:
        raise state["failure"]
    return handler.events


def _namespace(connection_string: str) -> str:
    """The namespace host of a connection string (never its keys)."""
    for part in connection_string.split(";"):
        key, _, value = part.partition("=")
        if key.strip().lower() == "endpoint":
            return value.strip().removeprefix("sb://").rstrip("/")
    return "(no Endpoint in the connection string)"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__
