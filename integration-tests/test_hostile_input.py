"""Hostile input can't buy memory or CPU (issue 16). Each test sends the hostile twin of a
normal request to a gateway at the default configuration and checks four things:

- the answer: refused with the status the OTLP specification names (413 / RESOURCE_EXHAUSTED
  for what can never fit, 429 for what does not fit now, 400 for what is malformed), with a
  message that says why, or served;
- memory: the gateway's peak RSS (VmHWM) stays under `limits.max_in_flight_bytes` (256 MiB by
  default) plus MEMORY_MARGIN (the process itself, librdkafka's buffers and the allocator's
  slack; an idle debug gateway holds about 100 MiB);
- time: the hostile request costs at most TIME_FACTOR times its benign twin, plus TIME_SLACK_S
  (the machines are shared and noisy);
- a good request right after is served.
"""

from __future__ import annotations

import gzip
import os
import socket
import threading
import time

import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from harness import (
    LOGS_PATH,
    METRICS_PATH,
    TRACE_PATH,
    consume,
    consume_spans,
    decode_traces,
    spans_of,
    grpc_export_traces,
    key_values,
    make_span,
    metric_value,
    new_trace_id,
    post,
    traces_request,
    unique_name,
    varint,
    wait_until,
)

MIB = 1024 * 1024
# The default `limits.max_in_flight_bytes`.
MAX_IN_FLIGHT = 256 * MIB
# What the process holds besides admitted requests (see the module doc).
MEMORY_MARGIN = 192 * MIB
TIME_FACTOR = 4.0
TIME_SLACK_S = 3.0


def assert_memory_bound(gw, what: str):
    hwm = gw.hwm_kib() * 1024
    # The measured figure, for the record (pytest -s shows it).
    print(f"[memory] {what}: VmHWM {hwm / MIB:.0f} MiB, bound {(MAX_IN_FLIGHT + MEMORY_MARGIN) / MIB:.0f} MiB")
    assert hwm <= MAX_IN_FLIGHT + MEMORY_MARGIN, (
        f"{what}: peak RSS {hwm / MIB:.0f} MiB, over the bound of "
        f"{(MAX_IN_FLIGHT + MEMORY_MARGIN) / MIB:.0f} MiB"
    )


def assert_time_bound(hostile_s: float, benign_s: float, what: str):
    print(f"[time] {what}: hostile {hostile_s:.2f} s, benign {benign_s:.2f} s, bound {TIME_FACTOR:.0f}x + {TIME_SLACK_S:.0f} s")
    assert hostile_s <= TIME_FACTOR * benign_s + TIME_SLACK_S, (
        f"{what}: the hostile request took {hostile_s:.2f} s, its benign twin {benign_s:.2f} s"
    )


def good_request_is_served(gw):
    tid = new_trace_id()
    r = post(gw, TRACE_PATH, traces_request([make_span(tid, name="after")]).SerializeToString())
    assert r.status_code == 200, r.content


def timed(f):
    t0 = time.monotonic()
    out = f()
    return out, time.monotonic() - t0


def gz(body: bytes) -> bytes:
    return gzip.compress(body, compresslevel=6)


def post_gzip(gw, path, body: bytes, timeout=120.0):
    return post(gw, path, gz(body), headers={"Content-Encoding": "gzip"}, timeout=timeout)


def status_message(r) -> str:
    """The message of an OTLP/HTTP error reply (a google.rpc.Status in protobuf)."""
    from google.rpc import status_pb2

    try:
        return status_pb2.Status.FromString(r.content).message
    except Exception:  # noqa: BLE001 - a plain-text body is also fine for the assert
        return r.content.decode(errors="replace")


# ---------------------------------------------------------------------------------------------
# 1. Output amplification: records repeat the resource once per trace id / chunk.


def amplifying_traces(blob: int, traces: int = 3000):
    spans = [make_span(new_trace_id(), name="s") for _ in range(traces)]
    return traces_request(spans, resource={"service.name": "amplifier", "blob": "x" * blob})


def test_output_amplification_of_traces_is_refused_413_within_the_memory_bound(gateway):
    """3,000 trace ids under one resource with a 900 KB attribute ask for 2.7 GB of records
    from a ~100 KB gzipped body: refused 413 (the output can never fit the in-flight bound),
    peak RSS under max_in_flight_bytes + 192 MiB, time within 4x the benign twin + 3 s."""
    benign = amplifying_traces(blob=10).SerializeToString()
    r, benign_s = timed(lambda: post_gzip(gateway, TRACE_PATH, benign))
    assert r.status_code == 200, r.content
    consume_spans(gateway, 3000, timeout=60)

    hostile = amplifying_traces(blob=900_000).SerializeToString()
    assert len(gz(hostile)) < 200_000
    r, hostile_s = timed(lambda: post_gzip(gateway, TRACE_PATH, hostile))
    assert r.status_code == 413, (r.status_code, r.content[:300])
    msg = status_message(r)
    assert "records" in msg and "max_in_flight_bytes" in msg, msg
    assert_memory_bound(gateway, "trace output amplification")
    assert_time_bound(hostile_s, benign_s, "trace output amplification")
    good_request_is_served(gateway)


def test_output_amplification_over_grpc_is_resource_exhausted(gateway):
    """The same over gRPC with gzip: RESOURCE_EXHAUSTED with the reason, same memory bound."""
    import grpc

    resp, err = grpc_export_traces(gateway, amplifying_traces(blob=900_000), compression=grpc.Compression.Gzip,
                                   timeout=120)
    assert resp is None and err is not None
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (err.code(), err.details())
    assert "records" in err.details(), err.details()
    assert_memory_bound(gateway, "trace output amplification over gRPC")
    good_request_is_served(gateway)


def big_resource_logs(blob: int, records: int = 300, body_size: int = 100_000):
    req = logs_service_pb2.ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.extend(key_values({"service.name": "amplifier", "blob": "x" * blob}))
    sl = rl.scope_logs.add()
    for i in range(records):
        sl.log_records.add(body=common_pb2.AnyValue(string_value=f"{i:08d}" + "y" * body_size))
    return req.SerializeToString()


def test_output_amplification_of_log_chunks_is_refused_413(gateway):
    """300 log records of 100 KB under an 850 KB resource split into 300 records of ~950 KB
    (the resource cloned into each): 285 MB of records from a ~1 MB gzipped body. Refused 413,
    peak RSS under the bound; the benign twin (a small resource: 30 records) is served."""
    benign = big_resource_logs(blob=10)
    r, benign_s = timed(lambda: post_gzip(gateway, LOGS_PATH, benign))
    assert r.status_code == 200, r.content
    hostile = big_resource_logs(blob=850_000)
    r, hostile_s = timed(lambda: post_gzip(gateway, LOGS_PATH, hostile))
    assert r.status_code == 413, (r.status_code, r.content[:300])
    assert "records" in status_message(r)
    assert_memory_bound(gateway, "log chunk amplification")
    assert_time_bound(hostile_s, benign_s, "log chunk amplification")
    good_request_is_served(gateway)


# ---------------------------------------------------------------------------------------------
# 2. Hash flooding: trace ids chosen to collide in the grouping map.

M64 = (1 << 64) - 1


def rotl64(x: int, n: int) -> int:
    return ((x << n) | (x >> (64 - n))) & M64


def colliding_trace_id(rng) -> bytes:
    """A trace id whose hash under the unkeyed rotate-xor hasher Weir used to group spans
    (`h = rotl(h, 5) ^ next 8 bytes`, over the topic index 0, the slice length 16 and the id)
    is the same constant for every id: the first half random, the second chosen."""
    a = int.from_bytes(rng(8), "little")
    h = rotl64(rotl64(0, 5) ^ 16, 5) ^ a
    b = rotl64(h, 5) ^ 0x5EED
    return a.to_bytes(8, "little") + b.to_bytes(8, "little")


def test_colliding_trace_ids_cost_about_what_random_ids_cost(gateway):
    """60,000 spans, one per trace id: ids that all collide under a fixed hash take at most 4x
    (+3 s) the time of random ids, and every span lands."""
    n = 60_000
    random_ids = traces_request([make_span(new_trace_id(), name="r") for _ in range(n)]).SerializeToString()
    r, benign_s = timed(lambda: post(gateway, TRACE_PATH, random_ids, timeout=300))
    assert r.status_code == 200, r.content
    colliding = traces_request([make_span(colliding_trace_id(os.urandom), name="c") for _ in range(n)])
    body = colliding.SerializeToString()
    r, hostile_s = timed(lambda: post(gateway, TRACE_PATH, body, timeout=300))
    assert r.status_code == 200, r.content
    assert_time_bound(hostile_s, benign_s, "colliding trace ids")
    assert_memory_bound(gateway, "colliding trace ids")
    # One record per trace id: 120,000 records, read one per poll.
    records = consume(gateway.broker.bootstrap, gateway.topics["traces"], 2 * n, timeout=180,
                      max_polls=400_000)
    names = [s.name for r in records for *_, s in spans_of(decode_traces(r.value))]
    assert names.count("c") == n and names.count("r") == n


def test_many_resources_are_grouped_in_linear_time(gateway):
    """Metric and log records are keyed by resource: 20,000 distinct resources in one request
    take at most 4x (+3 s) the time of 20,000 records under one resource."""
    n = 20_000

    def logs(distinct: bool) -> bytes:
        req = logs_service_pb2.ExportLogsServiceRequest()
        if not distinct:
            rl = req.resource_logs.add()
            rl.resource.attributes.extend(key_values({"service.name": "one"}))
            rl.scope_logs.add().log_records.extend(
                [logs_pb2.LogRecord(body=common_pb2.AnyValue(string_value="m")) for _ in range(n)])
            return req.SerializeToString()
        for i in range(n):
            rl = req.resource_logs.add()
            rl.resource.attributes.extend(key_values({"service.name": f"svc-{i}"}))
            rl.scope_logs.add().log_records.add(body=common_pb2.AnyValue(string_value="m"))
        return req.SerializeToString()

    one = logs(False)
    r, benign_s = timed(lambda: post(gateway, LOGS_PATH, one, timeout=300))
    assert r.status_code == 200, r.content
    many = logs(True)
    r, hostile_s = timed(lambda: post(gateway, LOGS_PATH, many, timeout=300))
    assert r.status_code == 200, r.content
    assert_time_bound(hostile_s, benign_s, "20,000 distinct resources")


# ---------------------------------------------------------------------------------------------
# 3. Decode amplification: elements that are tiny on the wire and large decoded.


def empty_elements_body(signal: str, megabytes: int = 60) -> bytes:
    """An Export request whose one scope holds `megabytes` MB of empty elements (2 bytes each
    on the wire: the field tag and a zero length)."""
    # ScopeLogs.log_records and ScopeMetrics.metrics are both field 2.
    inner = b"\x12\x00" * (megabytes * 1_000_000 // 2)
    scope = b"\x12" + varint(len(inner)) + inner  # ResourceX.scope_x (2)
    return b"\x0a" + varint(len(scope)) + scope  # Export*Request.resource_x (1)


@pytest.mark.parametrize("signal,path", [("logs", LOGS_PATH), ("metrics", METRICS_PATH)])
def test_empty_elements_do_not_decode_into_gigabytes(gateway, signal, path):
    """60 MB of empty log records (or metrics), 60 KB gzipped: each decodes into hundreds of
    bytes. Either refused 413 with the reason before decoding, or served without decoding them
    all; peak RSS under max_in_flight_bytes + 192 MiB either way."""
    body = empty_elements_body(signal)
    r = post_gzip(gateway, path, body, timeout=300)
    assert r.status_code in (200, 413), (r.status_code, r.content[:300])
    if r.status_code == 413:
        assert "decoding" in status_message(r), status_message(r)
    assert_memory_bound(gateway, f"empty {signal}")
    good_request_is_served(gateway)


def test_otlp_json_of_empty_spans_does_not_decode_into_gigabytes(gateway):
    """OTLP/JSON: 20 million empty spans (`{},` each) in a 60 MB body, 60 KB gzipped. Refused
    (400: a span has no trace id; or 413) within the memory bound."""
    n = 20_000_000
    body = b'{"resourceSpans":[{"scopeSpans":[{"spans":[' + b"{}," * (n - 1) + b"{}]}]}]}"
    r = post(gateway, TRACE_PATH, gz(body), content_type="application/json",
             headers={"Content-Encoding": "gzip"}, timeout=300)
    assert r.status_code in (400, 413), (r.status_code, r.content[:300])
    assert_memory_bound(gateway, "OTLP/JSON empty spans")
    good_request_is_served(gateway)


# ---------------------------------------------------------------------------------------------
# 4. Admission before the body is read; bodies get a deadline.


def send_big_body(port: int, size: int, result: list, i: int):
    """POSTs `size` bytes of a never-valid protobuf body (0xff: an invalid wire type) as fast
    as the server takes them; records the status line (or how the connection ended)."""
    head = (
        f"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode()
    chunk = b"\xff" * (1 << 20)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            s.sendall(head)
            sent = 0
            try:
                while sent < size:
                    n = min(len(chunk), size - sent)
                    s.sendall(chunk[:n])
                    sent += n
            except (BrokenPipeError, ConnectionResetError):
                pass
            try:
                status = s.recv(64).split(b"\r\n")[0].decode()
            except (ConnectionResetError, socket.timeout):
                status = "reset"
            result[i] = status
    except OSError as e:
        result[i] = f"error {e}"


def test_admission_reserves_before_reading_the_body(gateway):
    """12 concurrent 60 MB bodies (720 MB) against the 256 MiB bound: the gateway reserves
    each from Content-Length before reading it, so at most four are held at once and the others
    get 429 at once; peak RSS under max_in_flight_bytes + 192 MiB."""
    n, size = 12, 60 * 1_000_000
    result: list = [None] * n
    threads = [threading.Thread(target=send_big_body, args=(gateway.http_port, size, result, i), daemon=True)
               for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert all(r is not None for r in result), result
    assert any("429" in r for r in result), result
    assert not any("200" in r for r in result), result
    assert_memory_bound(gateway, "12 concurrent 60 MB bodies")
    good_request_is_served(gateway)


def test_a_slow_body_loses_its_slot_at_the_body_read_timeout(gateway_factory):
    """A client that announces 1 MB and then stalls is answered 408 (or cut off) at
    `receivers.http.body_read_timeout` and its reservation is returned."""
    gw = gateway_factory({"receivers.http.body_read_timeout": "2s"})
    head = (
        b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
        b"Content-Length: 1000000\r\n\r\n" + b"\x0a" * 10
    )
    with socket.create_connection(("127.0.0.1", gw.http_port), timeout=15) as s:
        s.sendall(head)
        started = time.monotonic()
        try:
            reply = s.recv(4096)
        except (ConnectionResetError, socket.timeout):
            reply = b""
        waited = time.monotonic() - started
    assert 1.5 <= waited <= 8, waited
    assert reply == b"" or reply.startswith(b"HTTP/1.1 408"), reply[:100]
    wait_until("the slot is returned",
               lambda: metric_value(gw.metrics(), "weir_receiver_inflight_bytes") == 0, timeout=10)
    good_request_is_served(gw)


class RawGrpcStream:
    """One OTLP/gRPC trace Export over a raw HTTP/2 connection (the h2 package), so a test can
    send a frame header announcing a message and then as much of the body as it likes, slowly
    or never, which no gRPC library does."""

    PATH = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

    def __init__(self, port: int, timeout: float = 60.0):
        import h2.config
        import h2.connection

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(self.stream, [
            (":method", "POST"), (":scheme", "http"), (":authority", f"127.0.0.1:{port}"),
            (":path", self.PATH), ("content-type", "application/grpc"), ("te", "trailers"),
        ])
        self.sock.sendall(self.conn.data_to_send())

    def send(self, data: bytes, end: bool = False):
        self.conn.send_data(self.stream, data, end_stream=end)
        self.sock.sendall(self.conn.data_to_send())

    def grpc_status(self) -> tuple[str, str]:
        """Waits for the answer's grpc-status and grpc-message (or ("reset", ...))."""
        import h2.events

        while True:
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, socket.timeout) as e:
                return "reset", repr(e)
            if not data:
                return "reset", "connection closed"
            for event in self.conn.receive_data(data):
                if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    headers = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
                               for k, v in event.headers}
                    if "grpc-status" in headers:
                        from urllib.parse import unquote

                        return headers["grpc-status"], unquote(headers.get("grpc-message", ""))
                if isinstance(event, h2.events.StreamReset):
                    return "reset", f"RST_STREAM {event.error_code}"
            out = self.conn.data_to_send()
            if out:
                self.sock.sendall(out)

    def close(self):
        self.sock.close()


GRPC_OK, GRPC_INVALID_ARGUMENT, GRPC_DEADLINE_EXCEEDED, GRPC_RESOURCE_EXHAUSTED = "0", "3", "4", "8"


def test_grpc_admission_reserves_the_frame_length_before_reading_the_message(gateway_factory):
    """12 concurrent gRPC calls each announcing a 60 MB message (720 MB) against the 256 MiB
    bound, then stalling: each is reserved from its frame header before its message is read, so
    at most four are held and the others get RESOURCE_EXHAUSTED at once (within 5 s, with no
    message byte sent); the held ones lose their slot at `receivers.grpc.body_read_timeout`
    (4 s here) with DEADLINE_EXCEEDED. Peak RSS under max_in_flight_bytes + 192 MiB."""
    gw = gateway_factory({"receivers.grpc.body_read_timeout": "4s"})
    n, size = 12, 60 * 1_000_000
    streams = [RawGrpcStream(gw.grpc_port) for _ in range(n)]
    answers: list = [None] * n

    def answer(i):
        t0 = time.monotonic()
        answers[i] = (*streams[i].grpc_status(), time.monotonic() - t0)

    try:
        started = time.monotonic()
        threads = []
        for i, st in enumerate(streams):
            st.send(b"\x00" + size.to_bytes(4, "big") + b"\x0a")
            t = threading.Thread(target=answer, args=(i,), daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join(timeout=30)
        elapsed = time.monotonic() - started
    finally:
        for st in streams:
            st.close()
    assert all(a is not None for a in answers), answers
    refused = [a for a in answers if a[0] == GRPC_RESOURCE_EXHAUSTED]
    timed_out = [a for a in answers if a[0] == GRPC_DEADLINE_EXCEEDED]
    assert 8 <= len(refused) and len(refused) + len(timed_out) == n, answers
    assert all(a[2] < 5 for a in refused), f"refusals must not wait for the body: {answers}"
    assert all(3 <= a[2] <= 15 for a in timed_out), answers
    assert all("in-flight" in a[1] for a in refused), refused[0]
    assert all("body_read_timeout" in a[1] for a in timed_out), timed_out
    assert elapsed < 30
    wait_until("the slots are returned",
               lambda: metric_value(gw.metrics(), "weir_receiver_inflight_bytes") == 0, timeout=10)
    assert_memory_bound(gw, "12 concurrent 60 MB gRPC messages announced")
    resp, err = grpc_export_traces(gw, traces_request([make_span(new_trace_id(), name="after")]))
    assert err is None, err


def test_a_slow_grpc_body_loses_its_slot_at_the_body_read_timeout(gateway_factory):
    """A gRPC call that sends its whole message but never ends its stream is answered
    DEADLINE_EXCEEDED at `receivers.grpc.body_read_timeout` (2 s here): a body that never
    ends must not hold its slot forever."""
    gw = gateway_factory({"receivers.grpc.body_read_timeout": "2s"})
    msg = traces_request([make_span(new_trace_id(), name="slow")]).SerializeToString()
    st = RawGrpcStream(gw.grpc_port, timeout=20)
    try:
        st.send(b"\x00" + len(msg).to_bytes(4, "big") + msg)
        started = time.monotonic()
        status, message = st.grpc_status()
        waited = time.monotonic() - started
    finally:
        st.close()
    assert status == GRPC_DEADLINE_EXCEEDED, (status, message)
    assert 1.5 <= waited <= 8, waited
    wait_until("the slot is returned",
               lambda: metric_value(gw.metrics(), "weir_receiver_inflight_bytes") == 0, timeout=10)
    resp, err = grpc_export_traces(gw, traces_request([make_span(new_trace_id(), name="after")]))
    assert err is None, err


def test_a_second_message_in_a_unary_grpc_call_is_refused(gateway):
    """Data past the one message of a unary Export is INVALID_ARGUMENT as it arrives, not
    decoded outside the in-flight budget."""
    msg = traces_request([make_span(new_trace_id(), name="twice")]).SerializeToString()
    frame = b"\x00" + len(msg).to_bytes(4, "big") + msg
    st = RawGrpcStream(gateway.grpc_port, timeout=20)
    try:
        st.send(frame + frame, end=True)
        status, message = st.grpc_status()
    finally:
        st.close()
    assert status == GRPC_INVALID_ARGUMENT, (status, message)
    assert "one message" in message


# ---------------------------------------------------------------------------------------------
# 5. Rate-limit buckets keyed by any service.name.


def rate_limited_gateway(gateway_factory, workdir, extra: str = ""):
    policy = workdir / f"{unique_name('rl')}.yaml"
    policy.write_text(
        "version: 1\n"
        "sampling:\n"
        "  rate_limit:\n"
        "    spans_per_second: 1000000\n"
        "    max_services: 100\n" + extra
    )
    return gateway_factory({"policy_file": str(policy)})


def service_request(name: str):
    return traces_request([make_span(new_trace_id(), name="rl")], resource={"service.name": name})


def test_long_service_names_share_the_overflow_bucket(gateway_factory, workdir):
    """200 requests whose service.name is 512 KB (each distinct, 1 KB gzipped): none gets a
    bucket of its own (no name is kept), RSS after them stays within 64 MiB of before."""
    gw = rate_limited_gateway(gateway_factory, workdir)
    good_request_is_served(gw)
    before = gw.rss_kib() * 1024
    for i in range(200):
        body = service_request(f"{i:06d}" + "n" * 512_000).SerializeToString()
        r = post_gzip(gw, TRACE_PATH, body)
        assert r.status_code == 200, r.content
    samples = gw.metrics()
    assert metric_value(samples, "weir_policy_rate_limit_buckets") <= 1
    assert gw.rss_kib() * 1024 - before <= 64 * MIB
    good_request_is_served(gw)


def test_idle_rate_limit_buckets_are_evicted(gateway_factory, workdir):
    """Buckets of services not seen for `bucket_idle_timeout` are freed."""
    gw = rate_limited_gateway(gateway_factory, workdir, "    bucket_idle_timeout: 2s\n")
    for i in range(50):
        r = post(gw, TRACE_PATH, service_request(f"svc-{i}").SerializeToString())
        assert r.status_code == 200
    assert metric_value(gw.metrics(), "weir_policy_rate_limit_buckets") == 50
    time.sleep(3)
    # Evicted when the table is next touched.
    r = post(gw, TRACE_PATH, service_request("svc-late").SerializeToString())
    assert r.status_code == 200
    wait_until("idle buckets evicted",
               lambda: metric_value(gw.metrics(), "weir_policy_rate_limit_buckets") <= 1, timeout=10)


def test_one_tenant_cannot_fill_the_bucket_table_for_the_others(gateway_factory, workdir):
    """Tenant A floods 200 distinct service names; it holds at most `max_services_per_tenant`
    (10 here) buckets, its other services share A's overflow bucket (drained by the flood), and
    tenant B's new services still get buckets of their own, full: B's spans pass the limit."""
    import hashlib

    token_a, token_b = "tok-flood-" + "a" * 24, "tok-quiet-" + "b" * 24
    policy = workdir / f"{unique_name('tenants')}.yaml"
    policy.write_text(
        "version: 1\n"
        "sampling:\n"
        "  rate_limit:\n"
        "    spans_per_second: 1\n"
        "    burst: 5\n"
        "    exempt_errors: false\n"
        "    max_services: 40\n"
        "    max_services_per_tenant: 10\n"
    )
    gw = gateway_factory({
        "policy_file": str(policy),
        "receivers.auth": {"tokens": [
            {"tenant": "flood", "sha256": hashlib.sha256(token_a.encode()).hexdigest()},
            {"tenant": "quiet", "sha256": hashlib.sha256(token_b.encode()).hexdigest()},
        ]},
    })

    def send(token: str, service: str, spans: int):
        req = traces_request([make_span(new_trace_id(), name=f"{service}-{i}") for i in range(spans)],
                             resource={"service.name": service})
        r = post(gw, TRACE_PATH, req.SerializeToString(), headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.content

    for i in range(200):
        send(token_a, f"flood-{i}", 5)
    samples = gw.metrics()
    # Its 10 services' buckets and its overflow bucket.
    assert metric_value(samples, "weir_policy_rate_limit_buckets") == 11, "tenant A holds its share only"
    limited_before = metric_value(samples, "weir_policy_rate_limited_spans_total")
    # Less what the overflow bucket refilled (1 span/s) while the flood was sent.
    assert limited_before >= 190 * 5 - 5 - 30, "A's overflow services share one bucket of burst 5"
    for i in range(20):
        send(token_b, f"quiet-{i}", 5)
    samples = gw.metrics()
    assert metric_value(samples, "weir_policy_rate_limit_buckets") == 22, "B got buckets of its own"
    # B's first 10 services have full buckets of their own (none limited); its next 10 share
    # B's overflow bucket, untouched by A's flood: its 5 tokens pass, the other 45 spans not.
    assert 40 <= metric_value(samples, "weir_policy_rate_limited_spans_total") - limited_before <= 45


# ---------------------------------------------------------------------------------------------
# 6. Attribute field offsets: an overlong but valid varint for a field header.


def test_overlong_attribute_headers_match_policies_as_normal_ones(broker, gateway_factory, workdir):
    """A span attribute whose field header (Span.attributes, tag 9) and key header are written
    as two-byte varints (valid protobuf) routes exactly as the normal encoding does."""
    routed = unique_name("it-routed")
    broker.create_topic(routed)
    policy = workdir / f"{unique_name('route')}.yaml"
    policy.write_text(
        "version: 1\nrouting:\n  rules:\n"
        "    - name: by-attribute\n"
        "      match: { span_attribute: route.me, eq: \"yes\" }\n"
        f"      action: {{ topic: {routed} }}\n"
    )
    gw = gateway_factory({"policy_file": str(policy)})

    kv = common_pb2.KeyValue(key="route.me", value=common_pb2.AnyValue(string_value="yes"))
    kv_bytes = kv.SerializeToString()
    assert kv_bytes[0] == 0x0A
    overlong_kv = b"\x8a\x00" + kv_bytes[1:]  # the key's header (1, LEN) in two bytes
    span = make_span(new_trace_id(), name="overlong")
    span_bytes = span.SerializeToString() + b"\xca\x00" + varint(len(overlong_kv)) + overlong_kv
    scope = b"\x12" + varint(len(span_bytes)) + span_bytes  # ScopeSpans.spans (2)
    resource = resource_pb2.Resource(attributes=key_values({"service.name": "overlong"})).SerializeToString()
    rs = b"\x0a" + varint(len(resource)) + resource + b"\x12" + varint(len(scope)) + scope
    body = b"\x0a" + varint(len(rs)) + rs
    # The Python runtime reads it as the attribute it is.
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
    parsed = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
    assert parsed.resource_spans[0].scope_spans[0].spans[0].attributes[0].key == "route.me"

    r = post(gw, TRACE_PATH, body)
    assert r.status_code == 200, r.content
    _, spans = consume_spans(gw, 1, topic=routed, timeout=30)
    assert [s.name for *_, s in spans] == ["overlong"]


# ---------------------------------------------------------------------------------------------
# 7. Echoed input: error replies quote names from the request, bounded.


def test_error_messages_do_not_echo_megabytes_of_input(gateway):
    """A metric named with 1 MB of characters and a malformed exemplar id is refused 400 with
    a message that names the metric, shortened: at most 1 KiB of message."""
    req = metrics_service_pb2.ExportMetricsServiceRequest()
    m = req.resource_metrics.add().scope_metrics.add().metrics.add()
    m.name = "m" * 1_000_000
    p = m.gauge.data_points.add(as_int=1)
    p.exemplars.add(as_int=1, trace_id=b"\x01" * 15)
    r = post_gzip(gateway, METRICS_PATH, req.SerializeToString())
    assert r.status_code == 400, r.content[:200]
    msg = status_message(r)
    assert "trace_id" in msg and "mmmm" in msg, msg[:200]
    assert len(msg.encode()) <= 1024, len(msg)
    assert len(r.content) <= 2048, len(r.content)
