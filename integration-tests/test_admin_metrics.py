"""The admin port's /metrics: the OpenTelemetry Collector's self-metrics under its own names and
labels (otelcol_receiver_*{receiver="otlp",transport}, otelcol_exporter_*{exporter="kafka"},
the process metrics, target_info) and Weir's own per-topic record counters, counted against
what was sent and what landed in Kafka; and the Grafana dashboard in docs/ queries only series
a real gateway exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExportResult

from harness import (
    TRACE_PATH,
    consume,
    grpc_export_traces,
    make_span,
    metric_value,
    new_trace_id,
    post,
    traces_request,
    wait_until,
)
from otel_sdk import RecordedLogs, RecordedMetrics, log_exporter, metric_exporter

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana" / "weir-gateway.json"

# Spans with more attributes than this are refused (limits.attribute_limit_action: reject).
MAX_ATTRS = 2


def spans(accepted: int, refused: int):
    """One request: `accepted` spans within the attribute cap, `refused` spans over it."""
    tid = new_trace_id()
    ok = [make_span(tid, name="ok", attrs={"a": 1}) for _ in range(accepted)]
    over = [make_span(tid, name="over", attrs={"a": 1, "b": 2, "c": 3}) for _ in range(refused)]
    return traces_request(ok + over)


def export(exporter, data, ok):
    try:
        assert exporter.export(data) == ok
    finally:
        exporter.shutdown()


def send_known_traffic(gw):
    """Sends a known mix; returns what each counter must say."""
    resp, err = grpc_export_traces(gw, spans(accepted=7, refused=2))
    assert err is None, err
    assert resp.partial_success.rejected_spans == 2
    r = post(gw, TRACE_PATH, spans(accepted=5, refused=1).SerializeToString())
    assert r.status_code == 200, r.content
    rm = RecordedMetrics()
    counter = rm.meter.create_counter("c")
    counter.add(1, {"a": "1"})
    counter.add(1, {"a": "2"})
    rm.meter.create_histogram("h").record(3)
    export(metric_exporter(gw, "grpc"), rm.collect(), MetricExportResult.SUCCESS)  # 3 points
    rl = RecordedLogs()
    rl.logger.emit(body="one")
    rl.logger.emit(body="two")
    export(log_exporter(gw, "http"), rl.records(), LogRecordExportResult.SUCCESS)  # 2 records
    # A body that does not decode: refused before export, counted as a request.
    assert post(gw, TRACE_PATH, b"\xff\xff not protobuf").status_code == 400


def test_collector_named_counters_match_what_was_sent(gateway_factory):
    gw = gateway_factory({
        "limits.max_span_attributes": MAX_ATTRS,
        "limits.attribute_limit_action": "reject",
    })
    send_known_traffic(gw)

    status, headers, body = gw.admin_get("/metrics")
    assert status == 200
    assert headers.get("Content-Type", "").startswith("text/plain"), headers
    text = body.decode()
    # The Collector's exposition: counters without a _total suffix, and their TYPE lines.
    assert "# TYPE otelcol_receiver_accepted_spans counter" in text, text[:3000]
    assert "otelcol_receiver_accepted_spans_total" not in text

    records = {
        sig: len(consume(gw.broker.bootstrap, gw.topics[sig], want=n))
        for sig, n in (("traces", 2), ("metrics", 1), ("logs", 1))
    }

    def counters():
        s = gw.metrics()
        rcv = {"receiver": "otlp"}
        return {
            "grpc_spans": metric_value(s, "otelcol_receiver_accepted_spans", transport="grpc", **rcv),
            "http_spans": metric_value(s, "otelcol_receiver_accepted_spans", transport="http", **rcv),
            "grpc_refused": metric_value(s, "otelcol_receiver_refused_spans", transport="grpc", **rcv),
            "http_refused": metric_value(s, "otelcol_receiver_refused_spans", transport="http", **rcv),
            "points": metric_value(s, "otelcol_receiver_accepted_metric_points", transport="grpc", **rcv),
            "refused_points": metric_value(s, "otelcol_receiver_refused_metric_points", **rcv),
            "logs": metric_value(s, "otelcol_receiver_accepted_log_records", transport="http", **rcv),
            "refused_logs": metric_value(s, "otelcol_receiver_refused_log_records", **rcv),
            "sent_spans": metric_value(s, "otelcol_exporter_sent_spans", exporter="kafka"),
            "failed_spans": metric_value(s, "otelcol_exporter_send_failed_spans", exporter="kafka"),
            "sent_points": metric_value(s, "otelcol_exporter_sent_metric_points", exporter="kafka"),
            "sent_logs": metric_value(s, "otelcol_exporter_sent_log_records", exporter="kafka"),
            "invalid_requests": metric_value(s, "weir_receiver_refused_requests_total", reason="invalid"),
            **{
                f"records_{sig}": metric_value(
                    s, "weir_exporter_sent_records_total", exporter="kafka", topic=gw.topics[sig]
                )
                for sig in records
            },
        }

    want = {
        "grpc_spans": 7,
        "http_spans": 5,
        "grpc_refused": 2,
        "http_refused": 1,
        "points": 3,
        "refused_points": 0,
        "logs": 2,
        "refused_logs": 0,
        "sent_spans": 12,
        "failed_spans": 0,
        "sent_points": 3,
        "sent_logs": 2,
        "invalid_requests": 1,
        **{f"records_{sig}": n for sig, n in records.items()},
    }
    try:
        wait_until("counters match", lambda: counters() == want, timeout=10, interval=0.25)
    except TimeoutError:
        assert counters() == want

    s = gw.metrics()
    assert metric_value(s, "otelcol_process_uptime") > 0
    assert metric_value(s, "otelcol_process_cpu_seconds") > 0
    # The same process, measured by the kernel: within a factor of two.
    rss = metric_value(s, "otelcol_process_memory_rss")
    assert 0.5 < rss / (gw.rss_kib() * 1024) < 2, rss
    info = [labels for name, labels, v in s if name == "target_info" and v == 1]
    assert len(info) == 1, info
    assert info[0]["service_name"] == "weir-gateway"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", info[0]["service_version"]), info
    assert info[0]["service_instance_id"]


def dashboard_metric_names() -> set[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    names = set()
    for e in exprs:
        names |= set(re.findall(r"\b((?:otelcol|weir)_[a-z0-9_]+|target_info)\b", e))
    return names


def test_the_dashboard_queries_only_series_a_gateway_exposes(gateway_factory):
    gw = gateway_factory({
        "limits.max_span_attributes": MAX_ATTRS,
        "limits.attribute_limit_action": "reject",
    })
    send_known_traffic(gw)
    wanted = dashboard_metric_names()
    assert {"otelcol_receiver_accepted_spans", "otelcol_exporter_sent_spans",
            "otelcol_process_memory_rss", "weir_exporter_sent_records_total"} <= wanted

    def missing():
        scraped = {name for name, _, _ in gw.metrics()}
        return wanted - scraped

    try:
        wait_until("every dashboard series scraped", lambda: not missing(), timeout=10, interval=0.25)
    except TimeoutError:
        assert not missing(), f"the dashboard queries series /metrics does not have: {sorted(missing())}"


def test_the_collectors_health_check_path_answers_as_readiness_does(broker_factory, gateway_factory):
    """`GET /` on the admin port answers as the Collector's health_check extension: 200
    `{"status": "Server available"}` while ready, 503 "Server not available" with the reason
    while Kafka does not answer (spool off, so the gateway is not ready)."""
    import json

    b = broker_factory()
    gw = gateway_factory({"spool.enabled": False}, on_broker=b)
    status, headers, body = gw.admin_get("/")
    assert status == 200 and gw.readyz() == 200
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body) == {"status": "Server available"}
    b.pause()
    try:
        wait_until("not ready while the broker is stalled", lambda: gw.readyz() == 503, timeout=30)
        status, _, body = gw.admin_get("/")
        answer = json.loads(body)
    finally:
        b.resume()
    assert status == 503, body
    assert answer["status"] == "Server not available" and answer["reason"], answer
