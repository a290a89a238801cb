"""Requests the gateway must refuse, each with the status an OTLP client expects; after each, the
gateway still serves a good request."""

from __future__ import annotations

import json
import zlib

import grpc
import pytest
from google.rpc import status_pb2

from harness import (
    TRACE_PATH,
    Gateway,
    grpc_export_traces,
    make_span,
    new_span_id,
    new_trace_id,
    post,
    traces_request,
    varint,
)

MAX_MESSAGE = 1024 * 1024


@pytest.fixture(scope="module")
def module_gateway(broker, tmp_path_factory):
    gw = Gateway(broker, tmp_path_factory.mktemp("errors"), {"limits.max_message_size": "1MiB"})
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture
def gw(request, module_gateway):
    yield module_gateway
    rep = getattr(request.node, "rep_call", None)
    if rep is None or rep.failed:
        print(f"--- {module_gateway.name} log tail:\n{module_gateway.log()}")


def good_request():
    return traces_request([make_span(new_trace_id(), name="good")])


def assert_serves(gw: Gateway):
    resp = post(gw, TRACE_PATH, good_request().SerializeToString())
    assert resp.status_code == 200, f"a good request after the bad one: {resp.status_code} {resp.text[:300]}"
    ok, err = grpc_export_traces(gw, good_request())
    assert err is None, f"a good gRPC request after the bad one: {err}"


def rpc_status(resp) -> status_pb2.Status:
    assert resp.headers.get("Content-Type", "").startswith("application/x-protobuf"), resp.headers
    return status_pb2.Status.FromString(resp.content)


@pytest.mark.parametrize("path", ["/v1/traces", "/v1/metrics", "/v1/logs"])
def test_get_is_405(gw, path):
    import requests

    resp = requests.get(gw.http_base + path, timeout=10)
    assert resp.status_code == 405, resp.status_code
    assert_serves(gw)


def test_text_plain_is_415(gw):
    resp = post(gw, TRACE_PATH, b"hello", content_type="text/plain")
    assert resp.status_code == 415, resp.status_code
    assert_serves(gw)


def test_undecodable_protobuf_is_400_with_status(gw):
    # Field 1 (resource_spans) claims 100 bytes; 3 follow.
    resp = post(gw, TRACE_PATH, b"\x0a\x64abc")
    assert resp.status_code == 400, resp.status_code
    status = rpc_status(resp)
    assert status.code == 3, status  # INVALID_ARGUMENT
    msg = status.message.lower()
    assert any(w in msg for w in ("decod", "protobuf", "invalid", "parse", "malformed")), status.message
    assert_serves(gw)


def test_malformed_json_is_400(gw):
    resp = post(gw, TRACE_PATH, b'{"resourceSpans": [{"scopeSpans": [', content_type="application/json")
    assert resp.status_code == 400, resp.status_code
    assert resp.headers.get("Content-Type", "").startswith("application/json"), resp.headers
    body = json.loads(resp.content)
    assert body.get("message"), body
    assert_serves(gw)


def test_15_byte_trace_id_http_is_400(gw):
    req = traces_request([make_span(new_trace_id()[:15], name="short trace id")])
    resp = post(gw, TRACE_PATH, req.SerializeToString())
    assert resp.status_code == 400, resp.status_code
    assert rpc_status(resp).code == 3
    assert_serves(gw)


def test_15_byte_trace_id_json_is_400(gw):
    body = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": new_trace_id()[:15].hex(),
                                "spanId": new_span_id().hex(),
                                "name": "short trace id",
                                "startTimeUnixNano": "1",
                                "endTimeUnixNano": "2",
                            }
                        ]
                    }
                ]
            }
        ]
    }
    resp = post(gw, TRACE_PATH, json.dumps(body).encode(), content_type="application/json")
    assert resp.status_code == 400, resp.status_code
    assert_serves(gw)


def test_15_byte_trace_id_grpc_is_invalid_argument(gw):
    _, err = grpc_export_traces(gw, traces_request([make_span(new_trace_id()[:15], name="short")]))
    assert err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert err.details(), "the status says what was wrong"
    assert_serves(gw)


def test_7_byte_span_id_is_400(gw):
    req = traces_request([make_span(new_trace_id(), span_id=new_span_id()[:7], name="short span id")])
    resp = post(gw, TRACE_PATH, req.SerializeToString())
    assert resp.status_code == 400, resp.status_code
    assert_serves(gw)


def oversized_request():
    req = traces_request(
        [make_span(new_trace_id(), name="big", attrs={"blob": "x" * (MAX_MESSAGE + 512 * 1024)})]
    )
    assert req.ByteSize() > MAX_MESSAGE
    return req


def test_body_over_limit_http_is_413(gw):
    resp = post(gw, TRACE_PATH, oversized_request().SerializeToString())
    assert resp.status_code == 413, resp.status_code
    assert_serves(gw)


def test_body_over_limit_grpc_is_resource_exhausted(gw):
    _, err = grpc_export_traces(gw, oversized_request())
    assert err is not None and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
    assert_serves(gw)



def gzip_bomb(inflated: int) -> bytes:
    """A gzip body that inflates to a valid ExportTraceServiceRequest of about `inflated` bytes:
    one span whose name is that many 'a's. Built in a stream, never whole in memory."""
    name_len = inflated
    span = b"\x0a\x10" + new_trace_id() + b"\x12\x08" + new_span_id() + b"\x2a" + varint(name_len)
    span_len = len(span) + name_len
    scope_spans = b"\x12" + varint(span_len)
    scope_len = len(scope_spans) + span_len
    resource_spans = b"\x12" + varint(scope_len)
    rs_len = len(resource_spans) + scope_len
    request = b"\x0a" + varint(rs_len)
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [z.compress(request + resource_spans + scope_spans + span)]
    chunk = b"a" * (1 << 20)
    left = name_len
    while left:
        n = min(left, len(chunk))
        out.append(z.compress(chunk[:n]))
        left -= n
    out.append(z.flush())
    return b"".join(out)


def test_gzip_bomb_is_413_without_inflating(gw):
    inflated = 256 * 1024 * 1024
    body = gzip_bomb(inflated)
    assert len(body) < MAX_MESSAGE, len(body)
    rss_before, hwm_before = gw.rss_kib(), gw.hwm_kib()
    resp = post(gw, TRACE_PATH, body, headers={"Content-Encoding": "gzip"}, timeout=60)
    rss_after, hwm_after = gw.rss_kib(), gw.hwm_kib()
    assert resp.status_code == 413, resp.status_code
    growth_mib = (hwm_after - hwm_before) / 1024
    assert growth_mib < 64, (
        f"peak RSS grew by {growth_mib:.0f} MiB for a body that inflates to "
        f"{inflated >> 20} MiB (VmRSS {rss_before} -> {rss_after} KiB)"
    )
    assert_serves(gw)


@pytest.mark.parametrize("encoding", ["br", "x-unknown"])
def test_unsupported_content_encoding(gw, encoding):
    resp = post(gw, TRACE_PATH, good_request().SerializeToString(), headers={"Content-Encoding": encoding})
    assert resp.status_code in (400, 415), resp.status_code
    assert_serves(gw)
