"""Telemetry through OpenTelemetry: a trace per command, a span per phase of a scoring run, run metrics.

:func:`configure` (called once by the CLI with the environment) picks the exporter:

- ``APPLICATIONINSIGHTS_CONNECTION_STRING`` set: Azure Monitor / Application Insights
  (``azure-monitor-opentelemetry``'s ``configure_azure_monitor``);
- else ``OTEL_EXPORTER_OTLP_ENDPOINT`` set: OTLP over HTTP (the exporter reads the standard
  ``OTEL_EXPORTER_OTLP_*`` variables itself);
- else nowhere: the API's no-op tracer and meter, so nothing is recorded or sent.

:func:`command_span` wraps a command; :func:`record_run` adds, under the current span, one span per
phase of a finished scoring run (gate, resolve, plan, shards, finalize, from the run's own measured
timings: the gate runs in another process, beside the resolve step) and the run's metrics: windows
scored, anomalies, shard failures, duration, drifted series.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import metrics, trace

SCOPE = "fleetscore"
PHASES = (("gate", "gate"), ("resolve", "resolve"), ("plan", "plan"), ("shards", "score"), ("finalize", "operations"))
_CONFIGURED: list[str] = []


def configure(environ: Mapping[str, str]) -> str:
    """Set up the exporter the environment asks for, once per process; returns ``azure-monitor``,
    ``otlp`` or ``none``."""
    if _CONFIGURED:
        return _CONFIGURED[0]
    target = "none"
    if environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING"):
        from azure.monitor.opentelemetry import configure_azure_monitor

        configure_azure_monitor(connection_string=environ["APPLICATIONINSIGHTS_CONNECTION_STRING"])
        target = "azure-monitor"
    elif environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME", "fleetscore")})
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(resource=resource,
                                                 metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())]))
        target = "otlp"
    _CONFIGURED.append(target)
    return target


def shutdown() -> None:
    """Flush and stop the providers :func:`configure` set up (nothing when it set none up)."""
    if not _CONFIGURED or _CONFIGURED[0] == "none":
        return
    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider()):
        stop = getattr(provider, "shutdown", None)
        if stop is not None:
            stop()


@contextmanager
def command_span(name: str, **attributes: Any) -> Iterator[Any]:
    """The span of one ``fleetscore`` command (the trace's root)."""
    with trace.get_tracer(SCOPE).start_as_current_span(f"fleetscore {name}", attributes=attributes) as span:
        yield span


def record_run(manifest: Mapping[str, Any]) -> None:
    """Phase spans and metrics of a finished scoring run, from its manifest."""
    tracer = trace.get_tracer(SCOPE)
    timings = manifest.get("timings", {})
    end = time.time_ns()
    # phases end where the run ended, laid out back to back from their measured durations
    durations = [(name, float(timings.get(key, 0.0))) for name, key in PHASES if key in timings]
    start = end - int(sum(d for _, d in durations) * 1e9)
    attrs: dict[str, str | int] = {"fleetscore.run_id": str(manifest.get("run_id", "")),
             "fleetscore.release_version": int(manifest.get("release_version", 0))}
    for name, seconds in durations:
        span = tracer.start_span(name, start_time=start, attributes=attrs)
        start += int(seconds * 1e9)
        span.end(end_time=start)
    meter = metrics.get_meter(SCOPE)
    meter.create_counter("fleetscore.windows_scored", unit="1").add(int(manifest.get("rows", 0)), attrs)
    meter.create_counter("fleetscore.anomalies", unit="1").add(int(manifest.get("anomalies", 0)), attrs)
    shard_failures = sum(1 for key in manifest.get("failures", {}) if str(key).startswith("shard "))
    meter.create_counter("fleetscore.shard_failures", unit="1").add(shard_failures, attrs)
    meter.create_counter("fleetscore.series_drifted", unit="1").add(
        int(manifest.get("drift", {}).get("drifted_series", 0)), attrs)
    meter.create_histogram("fleetscore.run_duration", unit="s").record(float(timings.get("total", 0.0)), attrs)
