"""Anomaly events and their alert sinks (the ``[alerts]`` section of fleetscore.toml). The webhook's signing
secret and the Event Grid key come from the environment (``FLEETSCORE_ALERTS__WEBHOOK_SECRET``,
``FLEETSCORE_ALERTS__EVENTGRID_KEY``), never from files in the repository; ``fleetscore config`` masks them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AlertsConfig:
    """How anomalous windows become events and where events are sent. See docs/operations.md."""

    # anomalous windows of a series at most this far apart (start to start) are one event
    event_gap: str = "15s"
    # an event already notified is notified again when its peak score gets this many times as negative
    escalate_factor: float = 2.0
    webhook_url: str = ""  # empty: no webhook
    webhook_secret: str = ""  # the HMAC-SHA256 key (environment only)
    webhook_signature_header: str = "X-Fleetscore-Signature"
    webhook_timeout_s: float = 5.0
    webhook_retries: int = 3  # retries after the first attempt
    webhook_backoff_s: float = 0.5  # urllib3's backoff factor: 0.5, 1, 2 s ... between retries
    eventgrid_endpoint: str = ""  # an Event Grid topic endpoint; empty: none
    eventgrid_key: str = ""  # the topic's access key (environment only); empty: DefaultAzureCredential
    eventgrid_schema: str = "cloudevent"  # or eventgrid
