"""The gateway recovers by itself however the broker comes back (issue 17): after a stall
(SIGSTOP, then SIGCONT) and after the broker is killed and a fresh one, without the old one's
producer state, takes its address. With the spool off, so that a request is answered 200 only
once Kafka acknowledged it: it answers 200 again within 10 s of the broker being back, and
`/readyz` is 503 in between."""

from __future__ import annotations

import threading
import time

import pytest

from harness import TRACE_PATH, Broker, make_span, new_trace_id, post, traces_request, unique_name, wait_until

# A request that Kafka does not acknowledge gets 503 this fast, so the polls stay short.
EXPORT_TIMEOUT = "3s"
BACK_WITHIN_S = 10


def one_request() -> bytes:
    tid = new_trace_id()
    return traces_request([make_span(tid, name="recovery")]).SerializeToString()


def accepted(gw) -> bool:
    try:
        return post(gw, TRACE_PATH, one_request(), timeout=10).status_code == 200
    except OSError:
        return False


class ReadyzWatch:
    """Polls /readyz every 100 ms in a thread, recording every status it saw."""

    def __init__(self, gw):
        self.gw = gw
        self.seen: list[int | None] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        for _ in range(1000):
            if self._stop.is_set():
                return
            self.seen.append(self.gw.readyz())
            self._stop.wait(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)


def serves_again_within(gw, back_at: float) -> float:
    """Sends until a request is answered 200; returns the seconds since `back_at`."""
    wait_until("a request is answered 200 again", lambda: accepted(gw), timeout=BACK_WITHIN_S + 20, interval=0.2)
    return time.monotonic() - back_at


def test_stalled_broker_resumes(broker_factory, gateway_factory):
    b = broker_factory()
    gw = gateway_factory({"spool.enabled": False, "limits.export_timeout": EXPORT_TIMEOUT}, on_broker=b)
    assert accepted(gw)
    with ReadyzWatch(gw) as watch:
        b.pause()
        try:
            assert not accepted(gw), "a request was answered 200 while the broker was stopped"
            time.sleep(15)
            not_ready_seen = 503 in watch.seen
        finally:
            b.resume()
        took = serves_again_within(gw, time.monotonic())
    assert not_ready_seen, f"/readyz never said 503 while the broker was stopped: {set(watch.seen)}"
    assert took <= BACK_WITHIN_S, f"200 again {took:.1f}s after the broker resumed"
    wait_until("/readyz == 200", lambda: gw.readyz() == 200, timeout=10, interval=0.2)


@pytest.mark.parametrize("producers", [1, 3])
def test_broker_replaced_by_a_fresh_one_on_the_same_address(broker_factory, gateway_factory, workdir, producers):
    """With kafka.producers above 1, every producer finds itself wedged and is replaced."""
    b = broker_factory()
    gw = gateway_factory(
        {"spool.enabled": False, "limits.export_timeout": EXPORT_TIMEOUT, "kafka.producers": producers},
        on_broker=b,
    )
    for _ in range(5):
        assert accepted(gw)
    fresh = Broker(workdir, unique_name("tansu-fresh"), port=b.port)
    try:
        with ReadyzWatch(gw) as watch:
            b.kill()
            wait_until("/readyz == 503 with the broker gone", lambda: gw.readyz() == 503, timeout=15, interval=0.1)
            assert not accepted(gw), "a request was answered 200 with no broker"
            fresh.start()
            for t in gw.topics.values():
                fresh.create_topic(t)
            back_at = time.monotonic()
            took = serves_again_within(gw, back_at)
        assert took <= BACK_WITHIN_S, f"200 again {took:.1f}s after the fresh broker had its topics\n{gw.log()}"
        # Every producer is back, not only the one the first answered request went through.
        wait_until(
            "ten requests in a row answered 200",
            lambda: all(accepted(gw) for _ in range(10)),
            timeout=BACK_WITHIN_S + 10,
            interval=0.2,
        )
        assert 503 in watch.seen
        wait_until("/readyz == 200", lambda: gw.readyz() == 200, timeout=10, interval=0.2)
    finally:
        fresh.stop()
