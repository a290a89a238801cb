"""The OpenTelemetry Python SDK's OTLP exporters (gRPC and HTTP) against the gateway; what landed
in Kafka is read back with an independent consumer."""

from __future__ import annotations

from collections import defaultdict

import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExportResult
from opentelemetry.sdk.trace.export import SpanExportResult

from harness import (
    attrs_dict,
    consume,
    consume_spans,
    decode_logs,
    decode_metrics,
    log_records_of,
    metric_points,
)
from otel_sdk import (
    RecordedLogs,
    RecordedMetrics,
    RecordedTraces,
    check_trace_records,
    log_exporter,
    make_traces,
    metric_exporter,
    resource,
    span_exporter,
)

TRANSPORTS = ["grpc", "http"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sdk_traces(gateway, transport):
    rec = RecordedTraces()
    spans = make_traces(rec, traces=3, children=3)
    assert len(spans) == 12
    exporter = span_exporter(gateway, transport)
    try:
        # Two requests, each with part of every trace: the records of one trace from different
        # requests must still share a partition.
        assert exporter.export(spans[0::2]) == SpanExportResult.SUCCESS
        assert exporter.export(spans[1::2]) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()

    recs, landed = consume_spans(gateway, want=12)
    check_trace_records(recs, landed, spans)
    # One record per trace id per request.
    assert len(recs) == 6, [(r.key, r.partition) for r in recs]


def _metric_values(data) -> dict:
    """{(metric name, attributes): value} of every point, values reduced to comparable tuples."""
    out = defaultdict(list)
    for _, m, p in metric_points(data):
        kind = m.WhichOneof("data")
        if kind == "histogram":
            v = ("hist", p.count, p.sum, tuple(p.bucket_counts), tuple(p.explicit_bounds))
        else:
            v = (p.WhichOneof("value"), getattr(p, p.WhichOneof("value")))
        out[(m.name, tuple(sorted(attrs_dict(p.attributes).items())))].append(v)
    return out


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sdk_metrics(gateway, transport):
    res = resource(**{"weir.test": f"metrics-{transport}"})
    rm = RecordedMetrics(res)
    counter = rm.meter.create_counter("weir.it.requests", unit="1")
    counter.add(3, {"route": "/a"})
    counter.add(5, {"route": "/b"})
    hist = rm.meter.create_histogram("weir.it.latency", unit="ms")
    for v in (10, 20, 30.5):
        hist.record(v, {"route": "/a"})
    updown = rm.meter.create_up_down_counter("weir.it.queue")
    updown.add(7)
    updown.add(-2)
    gauge = rm.meter.create_gauge("weir.it.temperature", unit="Cel")
    gauge.set(21.5, {"room": "lab"})

    exporter = metric_exporter(gateway, transport)
    try:
        # Two exports of the same (cumulative) state: two requests from one resource.
        first, second = rm.collect(), rm.collect()
        assert exporter.export(first) == MetricExportResult.SUCCESS
        assert exporter.export(second) == MetricExportResult.SUCCESS
    finally:
        exporter.shutdown()

    recs = consume(
        gateway.broker.bootstrap,
        gateway.topics["metrics"],
        want=10,
        count=lambda r: len(metric_points(decode_metrics(r.value))),
    )
    values = defaultdict(list)
    for r in recs:
        for k, v in _metric_values(decode_metrics(r.value)).items():
            values[k].extend(v)
    hist_v = ("hist", 3, 60.5)
    assert values[("weir.it.requests", (("route", "/a"),))] == [("as_int", 3)] * 2
    assert values[("weir.it.requests", (("route", "/b"),))] == [("as_int", 5)] * 2
    assert [v[:3] for v in values[("weir.it.latency", (("route", "/a"),))]] == [hist_v] * 2
    assert values[("weir.it.queue", ())] == [("as_int", 5)] * 2
    assert values[("weir.it.temperature", (("room", "lab"),))] == [("as_double", 21.5)] * 2
    assert sum(len(v) for v in values.values()) == 10, dict(values)

    for r in recs:
        for landed_res, _, _ in metric_points(decode_metrics(r.value)):
            assert attrs_dict(landed_res.attributes) == dict(res.attributes)
    keys = {r.key for r in recs}
    assert len(recs) >= 2 and len(keys) == 1 and b"" not in keys and None not in keys, (
        f"records of one resource must share one non-empty key: {keys}"
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sdk_logs(gateway, transport):
    res = resource(**{"weir.test": f"logs-{transport}"})
    rl = RecordedLogs(res)
    traces = RecordedTraces(res)
    with traces.tracer.start_as_current_span("with-logs") as span:
        for i in range(4):
            rl.logger.emit(
                body=f"log line {i}",
                severity_number=SeverityNumber.WARN,
                severity_text="WARN",
                attributes={"i": i, "user": "ada", "ok": i % 2 == 0},
            )
    ctx = span.get_span_context()
    records = rl.records()
    assert len(records) == 4

    exporter = log_exporter(gateway, transport)
    try:
        assert exporter.export(records[:2]) == LogRecordExportResult.SUCCESS
        assert exporter.export(records[2:]) == LogRecordExportResult.SUCCESS
    finally:
        exporter.shutdown()

    recs = consume(
        gateway.broker.bootstrap,
        gateway.topics["logs"],
        want=4,
        count=lambda r: len(log_records_of(decode_logs(r.value))),
    )
    landed = [x for r in recs for x in log_records_of(decode_logs(r.value))]
    bodies = sorted(lr.body.string_value for _, _, lr in landed)
    assert bodies == [f"log line {i}" for i in range(4)], "every log record exactly once"
    for resource_, scope, lr in landed:
        i = int(lr.body.string_value.rsplit(" ", 1)[1])
        assert attrs_dict(lr.attributes) == {"i": i, "user": "ada", "ok": i % 2 == 0}
        assert lr.severity_number == SeverityNumber.WARN.value and lr.severity_text == "WARN"
        assert lr.trace_id == ctx.trace_id.to_bytes(16, "big")
        assert lr.span_id == ctx.span_id.to_bytes(8, "big")
        assert attrs_dict(resource_.attributes) == dict(res.attributes)
        assert scope.name == "weir.integration-tests"
    keys = {r.key for r in recs}
    assert len(recs) >= 2 and len(keys) == 1 and b"" not in keys and None not in keys, (
        f"records of one resource must share one non-empty key: {keys}"
    )
