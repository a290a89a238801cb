"""The admin port's /metrics: Prometheus text with the receiver and exporter counters."""

from __future__ import annotations

from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExportResult
from opentelemetry.sdk.trace.export import SpanExportResult

from harness import consume, metric_value, wait_until
from otel_sdk import (
    RecordedLogs,
    RecordedMetrics,
    RecordedTraces,
    log_exporter,
    make_traces,
    metric_exporter,
    span_exporter,
)


def export(exporter, data, ok):
    try:
        assert exporter.export(data) == ok
    finally:
        exporter.shutdown()


def test_metrics_count_what_was_accepted(gateway):
    spans = make_traces(RecordedTraces(), traces=1, children=6)  # 7 spans
    export(span_exporter(gateway, "grpc"), spans, SpanExportResult.SUCCESS)
    http_spans = make_traces(RecordedTraces(), traces=1, children=4)  # 5 spans
    export(span_exporter(gateway, "http"), http_spans, SpanExportResult.SUCCESS)
    rm = RecordedMetrics()
    counter = rm.meter.create_counter("c")
    counter.add(1, {"a": "1"})
    counter.add(1, {"a": "2"})
    rm.meter.create_histogram("h").record(3)
    export(metric_exporter(gateway, "grpc"), rm.collect(), MetricExportResult.SUCCESS)  # 3 points
    rl = RecordedLogs()
    rl.logger.emit(body="one")
    rl.logger.emit(body="two")
    export(log_exporter(gateway, "http"), rl.records(), LogRecordExportResult.SUCCESS)  # 2 records

    status, headers, body = gateway.admin_get("/metrics")
    assert status == 200
    assert headers.get("Content-Type", "").startswith("text/plain"), headers
    line = [
        x
        for x in body.decode().splitlines()
        if x.startswith("weir_receiver_accepted_spans_total") and 'transport="grpc"' in x
    ]
    assert line, body.decode()[:2000]

    def counters():
        s = gateway.metrics()
        return {
            "grpc_spans": metric_value(s, "weir_receiver_accepted_spans_total", transport="grpc"),
            "http_spans": metric_value(s, "weir_receiver_accepted_spans_total", transport="http"),
            "points": metric_value(s, "weir_receiver_accepted_metric_points_total", transport="grpc"),
            "logs": metric_value(s, "weir_receiver_accepted_log_records_total", transport="http"),
            "refused": metric_value(s, "weir_receiver_refused_spans_total"),
            "sent": metric_value(s, "weir_exporter_sent_records_total", exporter="kafka"),
            "failed": metric_value(s, "weir_exporter_send_failed_records_total", exporter="kafka"),
        }

    records = sum(
        len(consume(gateway.broker.bootstrap, gateway.topics[sig], want=n))
        for sig, n in (("traces", 2), ("metrics", 1), ("logs", 1))
    )
    want = {
        "grpc_spans": 7,
        "http_spans": 5,
        "points": 3,
        "logs": 2,
        "refused": 0,
        "sent": records,
        "failed": 0,
    }
    try:
        wait_until("counters match", lambda: counters() == want, timeout=10, interval=0.25)
    except TimeoutError:
        assert counters() == want
