"""When Kafka does not answer and there is no spool: clients are told to retry (never a false
OK), readiness drops, and the bytes of waiting requests are bounded (test_spool.py covers the
spool). Each test pauses a broker of its own (SIGSTOP keeps its in-memory data) so the other
tests' broker is not disturbed."""

from __future__ import annotations

import queue
import threading
import time

import grpc

from harness import (
    TRACE_PATH,
    consume_spans,
    grpc_export_traces,
    make_span,
    metric_value,
    new_trace_id,
    post,
    traces_request,
    wait_until,
)

EXPORT_TIMEOUT_S = 2


def one_span_request(name: str, **attrs):
    tid = new_trace_id()
    return tid, traces_request([make_span(tid, name=name, attrs=attrs)])


def test_broker_not_answering(broker_factory, gateway_factory):
    b = broker_factory()
    # Without a spool: the 503 after export_timeout is what this test holds the gateway to.
    gw = gateway_factory(
        {"limits.export_timeout": f"{EXPORT_TIMEOUT_S}s", "spool.enabled": False}, on_broker=b
    )
    acked = []
    for i in range(5):
        tid, req = one_span_request(f"before-{i}")
        resp = post(gw, TRACE_PATH, req.SerializeToString())
        assert resp.status_code == 200, resp.status_code
        acked.append(tid)

    b.pause()
    try:
        _, req = one_span_request("during-grpc")
        t0 = time.monotonic()
        _, err = grpc_export_traces(gw, req, timeout=30)
        grpc_s = time.monotonic() - t0
        assert err is not None, "gRPC export acknowledged while the broker was paused"
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err
        assert grpc_s < EXPORT_TIMEOUT_S + 5, (
            f"UNAVAILABLE after {grpc_s:.1f}s, export_timeout is {EXPORT_TIMEOUT_S}s"
        )

        _, req = one_span_request("during-http")
        t0 = time.monotonic()
        resp = post(gw, TRACE_PATH, req.SerializeToString(), timeout=30)
        http_s = time.monotonic() - t0
        assert resp.status_code == 503, f"{resp.status_code} while the broker was paused"
        assert resp.headers.get("Retry-After", "").strip().isdigit(), resp.headers
        assert http_s < EXPORT_TIMEOUT_S + 5, f"503 after {http_s:.1f}s"

        wait_until(
            "/readyz == 503 while the broker is paused", lambda: gw.readyz() == 503, timeout=30, interval=0.25
        )
    finally:
        b.resume()

    after = []

    def accepted_again():
        tid, req = one_span_request("after")
        if post(gw, TRACE_PATH, req.SerializeToString(), timeout=15).status_code == 200:
            after.append(tid)
            return True
        return False

    wait_until("a request is accepted again after SIGCONT", accepted_again, timeout=60, interval=0.5)
    wait_until("/readyz == 200 after SIGCONT", lambda: gw.readyz() == 200, timeout=30, interval=0.25)
    refused = metric_value(gw.metrics(), "otelcol_receiver_refused_spans")
    assert refused >= 2, f"otelcol_receiver_refused_spans is {refused} after 2 refused spans"

    # Requests refused during the pause may still land (at-least-once); acknowledged ones must.
    _, landed = consume_spans(gw, want=len(acked) + len(after), timeout=30)
    landed_ids = [s.trace_id for *_, s in landed]
    missing = [t.hex() for t in acked + after if t not in landed_ids]
    assert not missing, f"acknowledged spans missing from Kafka: {missing}"
    assert all(landed_ids.count(t) == 1 for t in acked), "an acknowledged span landed twice"


def test_in_flight_bytes_bound(broker_factory, gateway_factory):
    b = broker_factory()
    gw = gateway_factory(
        {
            "limits.max_in_flight_bytes": "2MiB",
            "limits.max_message_size": "1MiB",
            "limits.export_timeout": "10s",
            # Held requests must wait on Kafka, not be spooled after ack_deadline.
            "spool.enabled": False,
        },
        on_broker=b,
    )
    body_size = 700 * 1024  # two fit in 2 MiB, three do not
    bodies = [one_span_request(f"held-{i}", blob="h" * body_size)[1].SerializeToString() for i in range(5)]
    assert all(body_size < len(x) < 720 * 1024 for x in bodies)

    answers: queue.Queue = queue.Queue()

    def send(i):
        t0 = time.monotonic()
        try:
            resp = post(gw, TRACE_PATH, bodies[i], timeout=40)
            answers.put((i, resp.status_code, resp.headers.get("Retry-After"), time.monotonic() - t0))
        except Exception as e:  # noqa: BLE001 - reported by the test
            answers.put((i, repr(e), None, time.monotonic() - t0))

    threads = []
    refused = None
    b.pause()
    try:
        for i in range(len(bodies)):
            t = threading.Thread(target=send, args=(i,), daemon=True)
            t.start()
            threads.append(t)
            try:
                got = answers.get(timeout=1.0)
            except queue.Empty:
                continue  # held: it waits on Kafka
            assert got[1] == 429, (
                f"request {got[0]} answered {got[1]} after {got[3]:.1f}s while Kafka is paused"
            )
            refused = got
            break
    finally:
        b.resume()
    for t in threads:
        t.join(timeout=40)
    assert refused is not None, "no request was refused with 429 past max_in_flight_bytes"
    i, status, retry_after, took = refused
    assert i in (1, 2), f"request {i} refused: {i * body_size} bytes were held, the bound is 2 MiB"
    assert took < 2.0, f"429 took {took:.1f}s; it must come at once, not after export_timeout"
    assert retry_after is not None and retry_after.strip().isdigit(), f"Retry-After: {retry_after!r}"

    held = []
    while not answers.empty():
        held.append(answers.get_nowait())
    assert len(held) == i, f"held requests that did not finish: {held}"
    assert all(h[1] in (200, 503) for h in held), held

    wait_until(
        "a request is accepted after SIGCONT",
        lambda: post(gw, TRACE_PATH, one_span_request("after")[1].SerializeToString()).status_code == 200,
        timeout=60,
        interval=0.5,
    )
