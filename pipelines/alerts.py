"""Alert sinks: where new and escalated anomaly events are sent. Several of a kind: a Protocol, one class each.

- :class:`WebhookSink`: an HTTP POST of the event as JSON, signed with HMAC-SHA256 of the exact body
  (header ``X-Fleetscore-Signature: sha256=<hex>``); retried with exponential backoff by urllib3's
  ``Retry`` on connection errors and 429/5xx answers, each attempt with a timeout.
- :class:`EventGridSink`: the event as a CloudEvent (or EventGridEvent) on an Azure Event Grid topic,
  through the ``azure-eventgrid`` SDK (its own retry policy).

:func:`deliver` returns None or the error text; the caller dead-letters what kept failing.
:func:`sinks_from` builds the sinks that ``[alerts]`` configures.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any, Protocol

from fleetscore.errors import AlertError
from fleetscore.pipelines.alerts_config import AlertsConfig

RETRY_STATUSES = (429, 500, 502, 503, 504)


class AlertSink(Protocol):
    """Sends one event's JSON payload; raises on failure (after its own retries)."""

    name: str

    def send(self, payload: dict[str, Any]) -> None:
        """Deliver ``payload`` or raise."""


def sign(body: bytes, secret: str) -> str:
    """``sha256=<hex>``: the HMAC-SHA256 of ``body`` under ``secret`` (what a receiver recomputes)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, signature: str) -> bool:
    """Whether ``signature`` is the HMAC-SHA256 of ``body`` under ``secret`` (constant-time compare)."""
    return hmac.compare_digest(sign(body, secret), signature)


class WebhookSink:
    """POST the event JSON to ``url``, signed, with retries and backoff (urllib3 ``Retry``)."""

    name = "webhook"

    def __init__(self, url: str, secret: str, header: str = "X-Fleetscore-Signature", timeout: float = 5.0,
                 retries: int = 3, backoff: float = 0.5) -> None:
        import urllib3

        self.url, self.secret, self.header = url, secret, header
        self.timeout = urllib3.Timeout(total=timeout)
        self.retry = urllib3.Retry(total=retries, connect=retries, read=retries, status=retries,
                                   backoff_factor=backoff, backoff_max=30.0, status_forcelist=RETRY_STATUSES,
                                   allowed_methods=frozenset({"POST"}), raise_on_status=True)
        self.pool = urllib3.PoolManager()

    def send(self, payload: dict[str, Any]) -> None:
        """POST ``payload``; raises :class:`AlertError` when it still fails after the retries."""
        import urllib3

        body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", self.header: sign(body, self.secret),
                   "User-Agent": "fleetscore-alerts"}
        try:
            response = self.pool.request("POST", self.url, body=body, headers=headers, retries=self.retry,
                                         timeout=self.timeout)
        except urllib3.exceptions.HTTPError as exc:
            raise AlertError(f"webhook {self.url}: {type(exc).__name__}: {_one_line(exc)}") from exc
        if not 200 <= response.status < 300:
            raise AlertError(f"webhook {self.url}: HTTP {response.status}")


class EventGridSink:
    """Publish the event to an Azure Event Grid topic (CloudEvent schema by default)."""

    name = "eventgrid"

    def __init__(self, endpoint: str, key: str = "", schema: str = "cloudevent", client: Any = None) -> None:
        if schema not in ("cloudevent", "eventgrid"):
            raise AlertError(f"alerts.eventgrid_schema: expected cloudevent or eventgrid, got {schema!r}")
        self.endpoint, self.schema = endpoint, schema
        if client is None:
            from azure.eventgrid import EventGridPublisherClient

            if key:
                from azure.core.credentials import AzureKeyCredential

                credential: Any = AzureKeyCredential(key)
            else:
                from azure.identity import DefaultAzureCredential

                credential = DefaultAzureCredential()
            client = EventGridPublisherClient(endpoint, credential)
        self.client = client

    def event(self, payload: dict[str, Any]) -> Any:
        """The SDK object sent for ``payload``."""
        subject = f"devices/{payload['device']}/sensors/{payload['sensor']}"
        kind = f"fleetscore.anomaly.{payload['kind']}"
        if self.schema == "cloudevent":
            from azure.core.messaging import CloudEvent

            return CloudEvent(source="fleetscore", type=kind, data=payload, subject=subject)
        from azure.eventgrid import EventGridEvent

        return EventGridEvent(subject=subject, event_type=kind, data=payload, data_version="1.0")

    def send(self, payload: dict[str, Any]) -> None:
        """Publish ``payload``; raises :class:`AlertError` on failure."""
        from azure.core.exceptions import AzureError

        try:
            self.client.send([self.event(payload)])
        except AzureError as exc:
            raise AlertError(f"event grid {self.endpoint}: {type(exc).__name__}: {_one_line(exc)}") from exc


def deliver(sink: AlertSink, payload: dict[str, Any]) -> str | None:
    """Send through ``sink``; None when delivered, else the one-line error."""
    try:
        sink.send(payload)
    except AlertError as exc:
        return str(exc)
    return None


def sinks_from(config: AlertsConfig) -> list[AlertSink]:
    """The sinks ``[alerts]`` configures (none by default)."""
    sinks: list[AlertSink] = []
    if config.webhook_url:
        if not config.webhook_secret:
            raise AlertError("alerts.webhook_url is set but alerts.webhook_secret is not "
                             "(set FLEETSCORE_ALERTS__WEBHOOK_SECRET)")
        sinks.append(WebhookSink(config.webhook_url, config.webhook_secret, config.webhook_signature_header,
                                 config.webhook_timeout_s, config.webhook_retries, config.webhook_backoff_s))
    if config.eventgrid_endpoint:
        sinks.append(EventGridSink(config.eventgrid_endpoint, config.eventgrid_key, config.eventgrid_schema))
    return sinks


def _one_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
