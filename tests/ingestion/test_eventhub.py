"""The Event Hubs source at the SDK boundary: real EventData objects, a stand-in PartitionContext."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from azure.eventhub import CheckpointStore, EventData
from azure.eventhub._constants import PROP_OFFSET, PROP_SEQ_NUMBER

from fleetscore.errors import ConfigError
from fleetscore.ingestion.eventhub import EventHubIngest, SqlCheckpointStore, consume
from fleetscore.ingestion.store import SensorStore


@dataclass
class Context:
    """The attributes of azure.eventhub.PartitionContext the handler reads."""

    partition_id: str
    fully_qualified_namespace: str = "fleet.servicebus.windows.net"
    eventhub_name: str = "readings"
    consumer_group: str = "$Default"


def _event(sequence: int, body: dict[str, object] | str) -> EventData:
    event = EventData(body if isinstance(body, str) else json.dumps(body))
    # what the SDK sets on a received event
    event.raw_amqp_message.annotations[PROP_SEQ_NUMBER] = sequence
    event.raw_amqp_message.annotations[PROP_OFFSET] = str(sequence * 100).encode()
    return event


def _events() -> list[EventData]:
    out = []
    for i in range(10):
        out.append(_event(i, {"TS": f"2024-01-01 00:00:0{i}", "Device": "d1", "Sensor": "1", "Value": float(i)}))
    out.append(_event(10, {"TS": "2024-01-01 00:00:09", "Device": "d1", "Tag": "2", "Value": "x"}))
    out.append(_event(11, "not json"))
    out.append(_event(12, {"TS": "2024-01-01 00:00:09", "Device": "", "Sensor": "2", "Value": 1}))
    return out


def _checkpoints(url: str) -> list[tuple[str, str, int]]:
    with SensorStore(url).engine.connect() as conn:
        rows = conn.execute(sa.text('SELECT partition_id, "offset", sequence_number FROM eventhub_checkpoints '
                                    "ORDER BY partition_id")).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def test_batch_is_aggregated_quarantined_and_checkpointed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'eh.db'}"
    handler = EventHubIngest(url)
    events = _events()
    handler.on_event_batch(Context("0"), events[:7])
    handler.on_event_batch(Context("0"), events[7:])
    windows = SensorStore(url).read_windows()
    assert list(windows.ts) == [pd.Timestamp("2024-01-01 00:00:00"), pd.Timestamp("2024-01-01 00:00:05")]
    assert list(windows.value) == [2.0, 7.0] and list(windows.value_count) == [5, 5]
    assert (windows.value_min.tolist(), windows.value_max.tolist()) == ([0.0, 5.0], [4.0, 9.0])
    assert SensorStore(url).quarantine_counts() == {"bad_row": 1, "bad_value": 1, "empty_device": 1}
    assert _checkpoints(url) == [("0", "1200", 12)]
    assert handler.events == 13


def test_restart_redelivers_without_double_counting(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'eh.db'}"
    events = _events()
    EventHubIngest(url).on_event_batch(Context("3"), events[:6])
    # the process dies; the SDK resumes from the checkpoint but may deliver events again (at least once)
    restarted = EventHubIngest(url)
    restarted.on_event_batch(Context("3"), events[4:])
    assert restarted.skipped == 2
    windows = SensorStore(url).read_windows()
    assert list(windows.value_count) == [5, 5] and list(windows.value) == [2.0, 7.0]
    assert _checkpoints(url) == [("3", "1200", 12)]
    store = SqlCheckpointStore(url)
    assert isinstance(store, CheckpointStore)
    assert list(store.list_checkpoints("fleet.servicebus.windows.net", "readings", "$Default")) == [
        {"fully_qualified_namespace": "fleet.servicebus.windows.net", "eventhub_name": "readings",
         "consumer_group": "$Default", "partition_id": "3", "offset": "1200", "sequence_number": 12}]


def test_failed_batch_stores_nothing_not_even_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'eh.db'}"
    handler = EventHubIngest(url)
    handler.on_event_batch(Context("1"), _events()[:3])
    from fleetscore.ingestion import writer

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("connection lost")

    monkeypatch.setattr(writer.StoreWriter, "set_checkpoint", crash)
    with pytest.raises(RuntimeError):
        handler.on_event_batch(Context("1"), _events()[3:])
    assert SensorStore(url).read_windows().value_count.tolist() == [3]
    assert _checkpoints(url) == [("1", "200", 2)]


def test_partitions_and_ownership(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'eh.db'}"
    handler = EventHubIngest(url)
    handler.on_event_batch(Context("0"), _events()[:2])
    handler.on_event_batch(Context("1"), _events()[:2])  # same sequence numbers, another partition
    assert SensorStore(url).read_windows().value_count.tolist() == [4]
    store = SqlCheckpointStore(url)
    claim = {"fully_qualified_namespace": "ns", "eventhub_name": "hub", "consumer_group": "g", "partition_id": "0",
             "owner_id": "me"}
    assert [c["owner_id"] for c in store.claim_ownership([claim])] == ["me"]
    assert [o["partition_id"] for o in store.list_ownership("ns", "hub", "g")] == ["0"]
    store.update_checkpoint({**claim, "offset": "5", "sequence_number": 5})
    assert [c["sequence_number"] for c in store.list_checkpoints("ns", "hub", "g")] == [5]


def test_consume_needs_a_connection_string(tmp_path: Path) -> None:
    from datetime import timedelta

    with pytest.raises(ConfigError) as info:
        consume(f"sqlite:///{tmp_path / 'x.db'}", "", "hub", "$Default", window=timedelta(seconds=5),
                allowed_lateness=timedelta(hours=1))
    assert str(info.value) == ("ingest.eventhub_connection_string: not set "
                               "(environment FLEETSCORE_INGEST__EVENTHUB_CONNECTION_STRING)")
