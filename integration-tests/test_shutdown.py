"""SIGTERM drains: every request answered 200 has its spans in Kafka, and the process exits 0."""

from __future__ import annotations

import threading

import requests

from harness import TRACE_PATH, consume_spans, make_span, new_trace_id, traces_request, wait_until


def test_sigterm_while_sending(gateway_factory):
    gw = gateway_factory()
    acked: list[bytes] = []
    other: list = []
    lock = threading.Lock()

    def sender(n: int):
        with requests.Session() as session:
            for i in range(5000):
                tid = new_trace_id()
                body = traces_request(
                    [make_span(tid, name=f"s{n}-{i}-a"), make_span(tid, name=f"s{n}-{i}-b")]
                ).SerializeToString()
                try:
                    r = session.post(
                        gw.http_base + TRACE_PATH,
                        data=body,
                        timeout=20,
                        headers={"Content-Type": "application/x-protobuf"},
                    )
                except requests.RequestException as e:
                    with lock:
                        other.append(repr(e))
                    return  # the gateway is gone
                with lock:
                    (acked.append(tid) if r.status_code == 200 else other.append(r.status_code))

    threads = [threading.Thread(target=sender, args=(n,), daemon=True) for n in range(2)]
    for t in threads:
        t.start()
    wait_until("30 requests acknowledged", lambda: len(acked) >= 30, timeout=60)
    gw.terminate()
    code = gw.wait_exit(timeout=30)
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "senders still running after the gateway exited"
    assert code == 0, f"weir-gateway exited {code} after SIGTERM"
    assert all(o != 500 for o in other), other

    with lock:
        acked_now = list(acked)
    _, landed = consume_spans(gw, want=2 * len(acked_now), timeout=60)
    per_trace: dict[bytes, int] = {}
    for *_, s in landed:
        per_trace[s.trace_id] = per_trace.get(s.trace_id, 0) + 1
    missing = [t.hex() for t in acked_now if per_trace.get(t, 0) < 2]
    assert not missing, f"{len(missing)} of {len(acked_now)} acknowledged requests lost spans: {missing[:5]}"
