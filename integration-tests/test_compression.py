"""Compressed requests: Content-Encoding gzip, deflate and zstd on OTLP/HTTP, gzip on OTLP/gRPC."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export import SpanExportResult

from harness import TRACE_PATH, consume_spans, make_span, new_trace_id, post, traces_request
from otel_sdk import RecordedTraces, check_trace_records, make_traces, span_exporter


@pytest.mark.parametrize("transport,compression", [("http", "gzip"), ("http", "deflate"), ("grpc", "gzip")])
def test_sdk_compressed_export(gateway, transport, compression):
    rec = RecordedTraces()
    # Compressible attributes, so the compressed body is much smaller than the message.
    spans = make_traces(rec, traces=2, children=4, attrs_for=lambda t, c: {"payload": "abc" * 300})
    exporter = span_exporter(gateway, transport, compression)
    try:
        assert exporter.export(spans) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    recs, landed = consume_spans(gateway, want=len(spans))
    check_trace_records(recs, landed, spans)


def test_http_zstd(gateway):
    zstandard = pytest.importorskip(
        "zstandard", reason="the Python package zstandard is not in the venv (scripts/test.sh installs it)"
    )
    tid = new_trace_id()
    req = traces_request([make_span(tid, name=f"zstd-{i}", attrs={"payload": "zz" * 500}) for i in range(5)])
    raw = req.SerializeToString()
    body = zstandard.ZstdCompressor().compress(raw)
    assert len(body) < len(raw) // 4
    resp = post(gateway, TRACE_PATH, body, headers={"Content-Encoding": "zstd"})
    assert resp.status_code == 200, f"{resp.status_code} {resp.text[:300]}"
    _, landed = consume_spans(gateway, want=5)
    assert sorted(s.name for *_, s in landed) == [f"zstd-{i}" for i in range(5)]
    assert all(s.trace_id == tid for *_, s in landed)
