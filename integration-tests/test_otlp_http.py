"""OTLP/HTTP by hand: OTLP/JSON in the specification's format (and the proto field name and enum
name variant), and the response encoding following the request's."""

from __future__ import annotations

import json

import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from harness import (
    DATA_DIR,
    LOGS_PATH,
    METRICS_PATH,
    TRACE_PATH,
    consume,
    consume_spans,
    decode_logs,
    decode_metrics,
    log_records_of,
    make_span,
    new_trace_id,
    parse_otlp_json,
    post,
    spans_of,
    traces_request,
)


def assert_json_ok(resp):
    assert resp.status_code == 200, f"{resp.status_code}: {resp.text[:500]}"
    assert resp.headers.get("Content-Type", "").startswith("application/json"), resp.headers
    body = json.loads(resp.content)
    assert isinstance(body, dict), body
    return body


@pytest.mark.parametrize("file", ["traces.json", "traces_snake_case.json"])
def test_json_traces(gateway, file):
    raw = (DATA_DIR / file).read_bytes()
    sent = parse_otlp_json(raw, trace_service_pb2.ExportTraceServiceRequest())
    body = assert_json_ok(post(gateway, TRACE_PATH, raw, "application/json"))
    assert not body.get("partialSuccess", {}).get("rejectedSpans"), body

    want = spans_of(sent)
    recs, landed = consume_spans(gateway, want=len(want))
    assert len(landed) == len(want)
    by_id = {span.span_id: (res, scope, span) for _, res, scope, span in landed}
    for res, scope, span in want:
        got = by_id.get(span.span_id)
        assert got is not None, f"span {span.span_id.hex()} missing"
        assert got[2] == span, f"span changed:\nsent {span}\ngot {got[2]}"
        assert got[0] == res and got[1] == scope
    for r in recs:
        assert r.key == want[0][2].trace_id.hex().encode(), r.key


def test_json_metrics(gateway):
    raw = (DATA_DIR / "metrics.json").read_bytes()
    sent = parse_otlp_json(raw, metrics_service_pb2.ExportMetricsServiceRequest())
    body = assert_json_ok(post(gateway, METRICS_PATH, raw, "application/json"))
    assert not body.get("partialSuccess", {}).get("rejectedDataPoints"), body

    recs = consume(
        gateway.broker.bootstrap,
        gateway.topics["metrics"],
        want=3,
        count=lambda r: sum(
            len(sm.metrics) for rm in decode_metrics(r.value).resource_metrics for sm in rm.scope_metrics
        ),
    )
    landed = {}
    for r in recs:
        for rm in decode_metrics(r.value).resource_metrics:
            assert rm.resource == sent.resource_metrics[0].resource
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    assert m.name not in landed, f"metric {m.name} twice"
                    landed[m.name] = m
    expected = {m.name: m for m in sent.resource_metrics[0].scope_metrics[0].metrics}
    assert landed == expected
    assert all(r.key for r in recs), [r.key for r in recs]


def test_json_logs(gateway):
    raw = (DATA_DIR / "logs.json").read_bytes()
    sent = parse_otlp_json(raw, logs_service_pb2.ExportLogsServiceRequest())
    body = assert_json_ok(post(gateway, LOGS_PATH, raw, "application/json"))
    assert not body.get("partialSuccess", {}).get("rejectedLogRecords"), body

    recs = consume(
        gateway.broker.bootstrap,
        gateway.topics["logs"],
        want=2,
        count=lambda r: len(log_records_of(decode_logs(r.value))),
    )
    landed = [x for r in recs for x in log_records_of(decode_logs(r.value))]
    assert [lr for _, _, lr in landed] == [lr for _, _, lr in log_records_of(sent)]
    assert landed[0][2].trace_id.hex() == "5b8efff798038103d269b633813fc60c"
    assert all(r.key for r in recs), [r.key for r in recs]


def test_protobuf_request_gets_protobuf_response(gateway):
    tid = new_trace_id()
    req = traces_request([make_span(tid, name="pb")])
    resp = post(gateway, TRACE_PATH, req.SerializeToString())
    assert resp.status_code == 200, resp.text[:300]
    assert resp.headers.get("Content-Type", "").startswith("application/x-protobuf"), resp.headers
    parsed = trace_service_pb2.ExportTraceServiceResponse.FromString(resp.content)
    assert parsed.partial_success.rejected_spans == 0
    _, landed = consume_spans(gateway, want=1)
    assert [s.trace_id for *_, s in landed] == [tid]
