"""Telemetry: a trace per command with a span per scoring phase, checked with the SDK's in-memory exporter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fleetscore.pipelines import telemetry


@pytest.fixture(scope="module")
def exporters() -> Iterator[tuple[InMemorySpanExporter, InMemoryMetricReader]]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(provider)  # once per process: the API keeps the first provider set
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    yield spans, reader


def test_no_exporter_without_the_environment() -> None:
    assert telemetry._CONFIGURED in ([], ["none"])
    telemetry._CONFIGURED.clear()
    assert telemetry.configure({}) == "none"
    telemetry.shutdown()  # nothing set up: nothing to stop


def test_a_run_is_one_trace_with_a_span_per_phase_and_its_metrics(exporters: tuple) -> None:
    spans, reader = exporters
    spans.clear()
    manifest = {"run_id": "r1", "release_version": 3, "rows": 1440, "anomalies": 7,
                "failures": {"shard 2": "boom", "5/1": "non-finite"}, "drift": {"drifted_series": 2},
                "timings": {"gate": 0.5, "resolve": 0.2, "plan": 0.01, "score": 1.5, "operations": 0.05,
                            "total": 2.4}}
    with telemetry.command_span("score"):
        telemetry.record_run(manifest)
    finished = {s.name: s for s in spans.get_finished_spans()}
    assert set(finished) == {"fleetscore score", "gate", "resolve", "plan", "shards", "finalize"}
    root = finished["fleetscore score"]
    for name in ("gate", "resolve", "plan", "shards", "finalize"):
        span = finished[name]
        assert span.context.trace_id == root.context.trace_id and span.parent.span_id == root.context.span_id
        assert span.attributes["fleetscore.run_id"] == "r1"
    shards = finished["shards"]
    assert (shards.end_time - shards.start_time) == pytest.approx(1.5e9, rel=1e-6)
    data = reader.get_metrics_data()
    values = {m.name: m.data.data_points[0] for rm in data.resource_metrics for sm in rm.scope_metrics
              for m in sm.metrics}
    assert values["fleetscore.windows_scored"].value == 1440
    assert values["fleetscore.anomalies"].value == 7
    assert values["fleetscore.shard_failures"].value == 1
    assert values["fleetscore.series_drifted"].value == 2
    assert values["fleetscore.run_duration"].sum == pytest.approx(2.4)
