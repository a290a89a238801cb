"""Limits that hold under abuse: a slow-loris client (headers at one byte per second) is cut
off at the header timeout while normal clients keep being served; connections past
`max_connections` are refused; idle connections are closed; HTTP/2 advertises the stream
limit; spans over the attribute caps are truncated (still valid OTLP) or rejected, and
counted."""

from __future__ import annotations

import select
import socket
import struct
import threading
import time

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from harness import (
    TRACE_PATH,
    attrs_dict,
    consume_spans,
    make_span,
    metric_value,
    new_trace_id,
    post,
    traces_request,
    wait_until,
)

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SLOW_HTTP1_HEADERS = (
    b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n"
    b"Content-Length: 0\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n"
)


def good_body() -> bytes:
    return traces_request([make_span(new_trace_id(), name="normal")]).SerializeToString()


def closed_by_peer(sock: socket.socket, wait: float) -> bool:
    """True when the peer has closed `sock` (EOF or reset) within `wait` seconds."""
    r, _, _ = select.select([sock], [], [], wait)
    if not r:
        return False
    try:
        return sock.recv(4096) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def slow_loris(port: int, payload: bytes, result: dict, max_seconds: float):
    """Sends `payload` one byte per second until the server closes the connection; records
    when (seconds after connecting) and how many bytes had gone out."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        for i, byte in enumerate(payload):
            try:
                s.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                result.update(closed_after=time.monotonic() - started, bytes_sent=i)
                return
            if closed_by_peer(s, 1.0):
                result.update(closed_after=time.monotonic() - started, bytes_sent=i + 1)
                return
            if time.monotonic() - started > max_seconds:
                break
    result.update(closed_after=None, bytes_sent=len(payload))


@pytest.mark.parametrize("listener", ["http", "grpc"])
def test_slow_loris_is_cut_off_while_normal_clients_are_served(gateway_factory, listener):
    header_timeout = 3.0
    gw = gateway_factory({
        f"receivers.{listener}.header_read_timeout": f"{header_timeout}s",
    })
    port = gw.http_port if listener == "http" else gw.grpc_port
    payload = SLOW_HTTP1_HEADERS if listener == "http" else H2_PREFACE + b"\x00" * 40
    result: dict = {}
    t = threading.Thread(target=slow_loris, args=(port, payload, result, 30.0), daemon=True)
    t.start()
    served = 0
    deadline = time.monotonic() + 30
    while t.is_alive() and time.monotonic() < deadline:
        r = post(gw, TRACE_PATH, good_body(), timeout=10)
        assert r.status_code == 200, r.content
        served += 1
        time.sleep(0.3)
    t.join(timeout=5)
    assert result.get("closed_after") is not None, f"the slow client was never cut off: {result}"
    assert header_timeout - 0.5 <= result["closed_after"] <= header_timeout + 3, result
    assert result["bytes_sent"] < len(payload), result
    assert served >= 5, "normal requests were served while the slow client dripped"
    samples = gw.metrics()
    assert metric_value(samples, "weir_receiver_closed_connections_total",
                        listener=listener, reason="header_timeout") >= 1


def test_connections_past_the_limit_are_refused(gateway_factory):
    gw = gateway_factory({
        "receivers.http.max_connections": 3,
        "receivers.http.header_read_timeout": "60s",
    })
    holders = [socket.create_connection(("127.0.0.1", gw.http_port), timeout=5) for _ in range(3)]
    try:
        wait_until(
            "three open connections",
            lambda: metric_value(gw.metrics(), "weir_receiver_open_connections", listener="http") == 3,
            timeout=10,
        )
        extra = socket.create_connection(("127.0.0.1", gw.http_port), timeout=5)
        with extra:
            assert closed_by_peer(extra, 5.0), "the fourth connection was served"
        samples = gw.metrics()
        assert metric_value(samples, "weir_receiver_refused_connections_total",
                            listener="http", reason="max_connections") >= 1
        # The limit is per listener: gRPC's port is not affected.
        with socket.create_connection(("127.0.0.1", gw.grpc_port), timeout=5) as g:
            g.sendall(H2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            assert not closed_by_peer(g, 0.5)

        holders.pop().close()
        wait_until(
            "a slot is free again",
            lambda: metric_value(gw.metrics(), "weir_receiver_open_connections", listener="http") == 2,
            timeout=10,
        )
        r = post(gw, TRACE_PATH, good_body(), timeout=10)
        assert r.status_code == 200
    finally:
        for h in holders:
            h.close()


def test_idle_connections_are_closed(gateway_factory):
    gw = gateway_factory({"receivers.http.idle_timeout": "1s"})
    request = (
        b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
        b"Content-Length: %d\r\n\r\n"
    )
    body = good_body()
    with socket.create_connection(("127.0.0.1", gw.http_port), timeout=5) as s:
        # Busy for 2.5 s (a request every 0.5 s): kept open past the idle timeout.
        for _ in range(5):
            s.sendall(request % len(body) + body)
            head = s.recv(4096)
            assert head.startswith(b"HTTP/1.1 200"), head
            time.sleep(0.5)
        started = time.monotonic()
        assert closed_by_peer(s, 5.0)
        assert 0.3 <= time.monotonic() - started <= 3.0
    assert metric_value(gw.metrics(), "weir_receiver_closed_connections_total",
                        listener="http", reason="idle_timeout") >= 1


def test_http2_advertises_the_stream_limit(gateway_factory):
    gw = gateway_factory({"receivers.grpc.max_concurrent_streams": 7})
    with socket.create_connection(("127.0.0.1", gw.grpc_port), timeout=5) as s:
        s.sendall(H2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        head = b""
        for _ in range(50):
            if len(head) >= 9 and len(head) >= 9 + int.from_bytes(head[:3], "big"):
                break
            head += s.recv(4096)
        length, ftype = int.from_bytes(head[:3], "big"), head[3]
        assert ftype == 0x4, "the server's first frame is SETTINGS"
        payload = head[9:9 + length]
        settings = dict(struct.unpack(">HI", payload[i:i + 6]) for i in range(0, len(payload), 6))
        assert settings.get(0x3) == 7, settings  # SETTINGS_MAX_CONCURRENT_STREAMS


def spans_over_and_within_caps():
    tid = new_trace_id()
    many = make_span(tid, name="many-attributes", attrs={f"a{i}": i for i in range(5)})
    many.dropped_attributes_count = 1
    long = make_span(tid, name="long-values", attrs={
        "text": "é" + "x" * 99,
        "blob": b"\x01" * 50,
        "list": ["long enough to pass the cap", "b"],
        "ok": 1,
    })
    fine = make_span(tid, name="within", attrs={"k": "short", "n": 2})
    return [many, long, fine]


def test_attribute_caps_truncate_to_valid_spans(gateway_factory):
    gw = gateway_factory({
        "limits.max_span_attributes": 3,
        "limits.max_attribute_value_size": 16,
        "limits.attribute_limit_action": "truncate",
    })
    spans = spans_over_and_within_caps()
    r = post(gw, TRACE_PATH, traces_request(spans).SerializeToString())
    assert r.status_code == 200, r.content
    resp = trace_service_pb2.ExportTraceServiceResponse.FromString(r.content)
    assert not resp.HasField("partial_success")

    _, landed = consume_spans(gw, 3)
    got = {span.name: span for *_, span in landed}  # decoded by the Python protobuf runtime
    assert set(got) == {"many-attributes", "long-values", "within"}
    many = got["many-attributes"]
    assert attrs_dict(many.attributes) == {"a0": 0, "a1": 1, "a2": 2}
    assert many.dropped_attributes_count == 1 + 2
    long = got["long-values"]
    # "é" is two bytes: 16 bytes hold it and 14 x's.
    assert attrs_dict(long.attributes) == {"text": "é" + "x" * 14, "blob": b"\x01" * 16, "ok": 1}
    assert long.dropped_attributes_count == 1
    assert got["within"] == spans[2]
    for name in ("many-attributes", "long-values"):
        sent = next(s for s in spans if s.name == name)
        assert (got[name].trace_id, got[name].span_id, got[name].start_time_unix_nano) == (
            sent.trace_id, sent.span_id, sent.start_time_unix_nano)

    samples = gw.metrics()
    assert metric_value(samples, "weir_receiver_attribute_limited_spans_total", action="truncate") == 2
    assert metric_value(samples, "weir_receiver_dropped_attributes_total") == 3
    assert metric_value(samples, "weir_receiver_truncated_attribute_values_total") == 2


def test_attribute_caps_reject_spans_with_partial_success(gateway_factory):
    gw = gateway_factory({
        "limits.max_span_attributes": 4,
        "limits.attribute_limit_action": "reject",
    })
    spans = spans_over_and_within_caps()
    r = post(gw, TRACE_PATH, traces_request(spans).SerializeToString())
    assert r.status_code == 200, r.content
    resp = trace_service_pb2.ExportTraceServiceResponse.FromString(r.content)
    assert resp.partial_success.rejected_spans == 1
    assert "attribute limits" in resp.partial_success.error_message

    _, landed = consume_spans(gw, 2)
    assert sorted(span.name for *_, span in landed) == ["long-values", "within"]
    samples = gw.metrics()
    assert metric_value(samples, "weir_receiver_attribute_limited_spans_total", action="reject") == 1
