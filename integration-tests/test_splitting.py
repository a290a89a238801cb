"""Record splitting: a trace larger than kafka.max_message_size is split by spans, never dropped;
a single span that cannot fit is reported in partial_success."""

from __future__ import annotations

import os

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.trace.export import SpanExportResult

from harness import (
    TRACE_PATH,
    consume_spans,
    grpc_export_traces,
    make_span,
    new_trace_id,
    post,
    traces_request,
)
from otel_sdk import RecordedTraces, check_trace_records, make_traces, span_exporter

KAFKA_MAX = 65536


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_large_trace_is_split_by_spans(gateway_factory, transport):
    gw = gateway_factory({"kafka.max_message_size": KAFKA_MAX})
    rec = RecordedTraces()
    # About 500 bytes of attributes per span, incompressible so no encoding trick can hide it.
    spans = make_traces(
        rec,
        traces=1,
        children=999,
        attrs_for=lambda t, c: {"blob": os.urandom(200).hex(), "more": os.urandom(40).hex()},
    )
    assert len(spans) == 1000
    exporter = span_exporter(gw, transport)
    try:
        assert exporter.export(spans) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()

    recs, landed = consume_spans(gw, want=1000, timeout=60)
    check_trace_records(recs, landed, spans)
    total = sum(len(r.value) for r in recs)
    assert total > 5 * KAFKA_MAX, f"the trace should be several times the limit, was {total} bytes"
    sizes = sorted(len(r.value) for r in recs)
    assert len(recs) >= total // KAFKA_MAX, sizes
    assert sizes[-1] <= KAFKA_MAX, f"record values over {KAFKA_MAX}: {sizes}"
    trace_id = spans[0].context.trace_id.to_bytes(16, "big").hex().encode()
    assert {r.key for r in recs} == {trace_id}


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_span_larger_than_kafka_limit_is_rejected_alone(gateway_factory, transport):
    gw = gateway_factory({"kafka.max_message_size": KAFKA_MAX})
    big_trace, other_trace = new_trace_id(), new_trace_id()
    big = make_span(big_trace, name="too big", attrs={"blob": "b" * (2 * KAFKA_MAX)})
    sibling = make_span(big_trace, name="sibling of the big one")
    other = make_span(other_trace, name="another trace")
    req = traces_request([sibling, big, other])

    if transport == "http":
        resp = post(gw, TRACE_PATH, req.SerializeToString())
        assert resp.status_code == 200, f"{resp.status_code} {resp.text[:300]}"
        parsed = trace_service_pb2.ExportTraceServiceResponse.FromString(resp.content)
    else:
        parsed, err = grpc_export_traces(gw, req)
        assert err is None, err
    assert parsed.partial_success.rejected_spans == 1, parsed
    assert parsed.partial_success.error_message, "the error message says what was rejected"

    recs, landed = consume_spans(gw, want=2)
    assert sorted(s.name for *_, s in landed) == ["another trace", "sibling of the big one"]
    assert all(len(r.value) <= KAFKA_MAX for r in recs)
    for r, _, _, s in landed:
        assert r.key == s.trace_id.hex().encode()
