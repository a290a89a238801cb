"""kafka.<signal>.encoding: otlp_json — record values are OTLP/JSON that protobuf's own JSON
parser reads back (after turning the hex ids OTLP/JSON uses into bytes) into what was sent."""

from __future__ import annotations

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from harness import (
    DATA_DIR,
    LOGS_PATH,
    METRICS_PATH,
    TRACE_PATH,
    consume,
    consume_spans,
    log_records_of,
    make_span,
    metric_points,
    new_span_id,
    new_trace_id,
    parse_otlp_json,
    post,
    traces_request,
)

JSON_ENCODING = {
    "kafka.traces.encoding": "otlp_json",
    "kafka.metrics.encoding": "otlp_json",
    "kafka.logs.encoding": "otlp_json",
}


def rich_span(trace_id: bytes, parent: bytes = b"") -> trace_pb2.Span:
    span = make_span(
        trace_id,
        name="rich",
        parent=parent,
        kind=trace_pb2.Span.SPAN_KIND_CLIENT,
        attrs={"s": "text", "i": -42, "d": 2.5, "b": True, "arr": ["x", 1], "raw": b"\x00\xff"},
    )
    span.trace_state = "vendor=value"
    span.flags = 0x301
    span.dropped_attributes_count = 3
    ev = span.events.add(time_unix_nano=span.start_time_unix_nano + 10, name="event")
    ev.attributes.add(key="k").value.string_value = "v"
    span.links.add(trace_id=new_trace_id(), span_id=new_span_id(), trace_state="t=1")
    span.status.code = trace_pb2.Status.STATUS_CODE_ERROR
    span.status.message = "failed"
    return span


def test_traces_as_otlp_json(gateway_factory):
    gw = gateway_factory(JSON_ENCODING)
    t1, t2 = new_trace_id(), new_trace_id()
    root = rich_span(t1)
    sent = [root, rich_span(t1, parent=root.span_id), rich_span(t2)]
    resp = post(
        gw,
        TRACE_PATH,
        traces_request(sent, resource={"service.name": "json-enc", "n": 7}).SerializeToString(),
    )
    assert resp.status_code == 200, resp.text[:300]

    recs, landed = consume_spans(gw, want=3, encoding="otlp_json")
    assert sorted(s.SerializeToString(deterministic=True) for *_, s in landed) == sorted(
        s.SerializeToString(deterministic=True) for s in sent
    )
    for r, res, scope, s in landed:
        assert r.key == s.trace_id.hex().encode()
        assert {kv.key for kv in res.attributes} == {"service.name", "n"}
        assert scope.name == "weir.integration-tests"
    assert len(recs) == 2  # one record per trace id


def test_metrics_and_logs_as_otlp_json(gateway_factory):
    gw = gateway_factory(JSON_ENCODING)
    raw_m = (DATA_DIR / "metrics.json").read_bytes()
    raw_l = (DATA_DIR / "logs.json").read_bytes()
    assert post(gw, METRICS_PATH, raw_m, "application/json").status_code == 200
    assert post(gw, LOGS_PATH, raw_l, "application/json").status_code == 200
    sent_m = parse_otlp_json(raw_m, metrics_service_pb2.ExportMetricsServiceRequest())
    sent_l = parse_otlp_json(raw_l, logs_service_pb2.ExportLogsServiceRequest())

    recs = consume(
        gw.broker.bootstrap,
        gw.topics["metrics"],
        want=3,
        count=lambda r: len(metric_points(parse_otlp_json(r.value, metrics_pb2.MetricsData()))),
    )
    got = [
        m
        for r in recs
        for rm in parse_otlp_json(r.value, metrics_pb2.MetricsData()).resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    ]
    assert sorted(got, key=lambda m: m.name) == sorted(
        sent_m.resource_metrics[0].scope_metrics[0].metrics, key=lambda m: m.name
    )

    recs = consume(
        gw.broker.bootstrap,
        gw.topics["logs"],
        want=2,
        count=lambda r: len(log_records_of(parse_otlp_json(r.value, logs_pb2.LogsData()))),
    )
    got_l = [lr for r in recs for *_, lr in log_records_of(parse_otlp_json(r.value, logs_pb2.LogsData()))]
    assert got_l == [lr for *_, lr in log_records_of(sent_l)]
