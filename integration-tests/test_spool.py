"""The spool (docs/spool.md), black box: while Kafka does not answer, requests are appended to
the gateway's spool and answered 200 once fsynced; the replayer drains the spool to Kafka
once it is back. Every check counts spans with the independent consumer, by a name unique to
each span, so a span answered 200 but lost shows as missing.

Each test pauses (SIGSTOP) a broker of its own and bounds every wait; the same stall without
a spool shows 503s, so the checks can fail.
"""

from __future__ import annotations

import os
import signal
import struct
import threading
import time
import zlib
from pathlib import Path

import requests

from harness import (
    TRACE_PATH,
    consume_spans,
    make_span,
    metric_value,
    new_trace_id,
    traces_request,
    wait_until,
)

SPANS_PER_REQUEST = 20
# Requests per second the sender offers.
RATE = 50


class Sender:
    """Posts requests of SPANS_PER_REQUEST spans, each span named uniquely, at about RATE
    requests per second from one thread, and records every answer."""

    def __init__(self, gw, prefix: str, blob_bytes: int = 0):
        self.gw = gw
        self.prefix = prefix
        self.blob = "b" * blob_bytes
        self.answers: list[tuple[int, list[str]]] = []  # (status or -1, span names)
        self.retry_after: list[str | None] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._n = 0

    def one(self, session: requests.Session, timeout: float = 15.0) -> int:
        tid = new_trace_id()
        names = [f"{self.prefix}-{self._n}-{i}" for i in range(SPANS_PER_REQUEST)]
        self._n += 1
        attrs = {"blob": self.blob} if self.blob else None
        body = traces_request([make_span(tid, name=n, attrs=attrs) for n in names]).SerializeToString()
        try:
            resp = session.post(
                self.gw.http_base + TRACE_PATH,
                data=body,
                headers={"Content-Type": "application/x-protobuf"},
                timeout=timeout,
            )
            status = resp.status_code
            self.retry_after.append(resp.headers.get("Retry-After"))
        except requests.RequestException:
            status = -1
            self.retry_after.append(None)
        self.answers.append((status, names))
        return status

    def _run(self, cap_s: float):
        deadline = time.monotonic() + cap_s
        with requests.Session() as session:
            while not self._stop.is_set() and time.monotonic() < deadline:
                t0 = time.monotonic()
                self.one(session)
                self._stop.wait(max(0.0, 1.0 / RATE - (time.monotonic() - t0)))

    def start(self, cap_s: float = 60.0) -> "Sender":
        self._thread = threading.Thread(target=self._run, args=(cap_s,), daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def acknowledged(self) -> set[str]:
        return {n for status, names in self.answers if status == 200 for n in names}

    def statuses(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for status, _ in self.answers:
            out[status] = out.get(status, 0) + 1
        return out


def missing_from_kafka(gw, acknowledged: set[str], timeout: float = 30.0) -> set[str]:
    """The acknowledged span names the independent consumer does not find in gw's topic."""
    _, spans = consume_spans(gw, want=len(acknowledged), timeout=timeout)
    return acknowledged - {s.name for *_, s in spans}


def spool_files(gw) -> list[Path]:
    return sorted(Path(gw.config["spool"]["directory"]).glob("*.seg"))


def sigkill(gw):
    os.kill(gw.pid, signal.SIGKILL)
    gw.proc.wait(timeout=10)


def test_a_30s_stall_loses_nothing_with_the_spool(broker_factory, gateway_factory):
    b = broker_factory()
    gw = gateway_factory(on_broker=b)
    sender = Sender(gw, "stall").start(cap_s=50)
    try:
        time.sleep(2)
        b.pause()
        try:
            time.sleep(10)
            ready_while_stalled = gw.readyz()
            time.sleep(20)
        finally:
            b.resume()
        time.sleep(2)
    finally:
        sender.stop()
    statuses = sender.statuses()
    assert set(statuses) == {200}, f"answers while the broker stalled: {statuses}"
    assert ready_while_stalled == 200, "/readyz must stay ready while the spool has room"
    samples = gw.metrics()
    assert metric_value(samples, "weir_spool_appends_total") > 0, "nothing was spooled during a 30 s stall"
    acknowledged = sender.acknowledged()
    missing = missing_from_kafka(gw, acknowledged)
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged spans missing, e.g. {sorted(missing)[:5]}"


def test_the_same_stall_without_a_spool_refuses_requests(broker_factory, gateway_factory):
    b = broker_factory()
    gw = gateway_factory({"spool.enabled": False, "limits.export_timeout": "2s"}, on_broker=b)
    sender = Sender(gw, "nospool").start(cap_s=30)
    try:
        time.sleep(1)
        b.pause()
        try:
            time.sleep(8)
        finally:
            b.resume()
        time.sleep(1)
    finally:
        sender.stop()
    statuses = sender.statuses()
    assert statuses.get(503, 0) > 0, f"no 503 without a spool while the broker stalled: {statuses}"


def test_sigkill_while_spooling_loses_no_acknowledged_span(broker_factory, gateway_factory):
    b = broker_factory()
    gw = gateway_factory(on_broker=b)
    sender = Sender(gw, "kill")
    with requests.Session() as s:
        for _ in range(5):
            assert sender.one(s) == 200
    b.pause()
    try:
        sender.start(cap_s=30)
        wait_until(
            "requests are spooled",
            lambda: metric_value(gw.metrics(), "weir_spool_appends_total") >= 20,
            timeout=20,
            interval=0.2,
        )
        sigkill(gw)
        sender.stop()
        assert spool_files(gw), "no spool segment on disk after spooling"
        gw.start(ready_timeout=20)
        with requests.Session() as s:
            for _ in range(5):
                sender.one(s)
    finally:
        b.resume()
    acknowledged = sender.acknowledged()
    assert len(acknowledged) >= 20 * SPANS_PER_REQUEST, sender.statuses()
    missing = missing_from_kafka(gw, acknowledged)
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged spans missing, e.g. {sorted(missing)[:5]}"


def test_a_corrupt_segment_tail_is_cut_and_counted_and_the_rest_replays(broker_factory, gateway_factory):
    b = broker_factory()
    gw = gateway_factory(on_broker=b)
    sender = Sender(gw, "torn")
    b.pause()
    try:
        with requests.Session() as s:
            for _ in range(10):
                assert sender.one(s) == 200
        sigkill(gw)
        segments = spool_files(gw)
        assert segments, "no spool segment on disk after spooling"
        with open(segments[-1], "ab") as f:
            f.write(os.urandom(300))
        gw.start(ready_timeout=20)
        truncations = metric_value(gw.metrics(), "weir_spool_truncations_total")
        assert truncations >= 1, f"weir_spool_truncations_total is {truncations} after a corrupt tail"
    finally:
        b.resume()
    acknowledged = sender.acknowledged()
    missing = missing_from_kafka(gw, acknowledged)
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged spans missing, e.g. {sorted(missing)[:5]}"


def test_a_full_spool_refuses_and_loses_nothing_it_accepted(broker_factory, gateway_factory):
    b = broker_factory()
    gw = gateway_factory({"spool.max_bytes": "1MiB", "spool.segment_bytes": "1MiB"}, on_broker=b)
    # About 200 KB a request: the spool is full after five or so.
    sender = Sender(gw, "full", blob_bytes=10_000)
    refused = None
    b.pause()
    try:
        with requests.Session() as s:
            for _ in range(30):
                status = sender.one(s)
                if status != 200:
                    refused = status
                    break
        assert refused in (503, 429), f"a full spool answered {refused}: {sender.statuses()}"
        retry_after = sender.retry_after[-1]
        assert retry_after is not None and retry_after.strip().isdigit(), f"Retry-After: {retry_after!r}"
        wait_until("/readyz == 503 with Kafka stalled and the spool full", lambda: gw.readyz() == 503, timeout=10)
        refused_total = metric_value(gw.metrics(), "weir_spool_refused_total", reason="full")
        assert refused_total >= 1, f"weir_spool_refused_total{{reason=full}} is {refused_total}"
    finally:
        b.resume()
    acknowledged = sender.acknowledged()
    assert acknowledged, "nothing was accepted before the spool was full"
    missing = missing_from_kafka(gw, acknowledged)
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged spans missing, e.g. {sorted(missing)[:5]}"
    wait_until("/readyz == 200 once the spool drained", lambda: gw.readyz() == 200, timeout=20, interval=0.25)


# ---------------------------------------------------------------------------------------------
# Reading the spool directory by its documented format (docs/spool.md: frames, checkpoint)


def read_checkpoint(gw) -> tuple[tuple[int, int], tuple[int, int]]:
    """(acked, sent) positions of replay.checkpoint, each (segment, offset)."""
    data = (Path(gw.config["spool"]["directory"]) / "replay.checkpoint").read_bytes()
    assert len(data) == 40 and data[0] == 1, f"replay.checkpoint: {data!r}"
    assert zlib.crc32(data[:36]) == struct.unpack_from("<I", data, 36)[0], "replay.checkpoint fails its CRC"
    acked_seg, acked_off, sent_seg, sent_off = struct.unpack_from("<QQQQ", data, 4)
    return (acked_seg, acked_off), (sent_seg, sent_off)


def records_between(gw, start: tuple[int, int], end: tuple[int, int] | None = None) -> int:
    """Records in the frames from position `start` up to `end` (default: the end of the spool)."""
    count = 0
    for path in spool_files(gw):
        seq = int(path.stem)
        if seq < start[0] or (end is not None and seq > end[0]):
            continue
        data = path.read_bytes()
        pos = start[1] if seq == start[0] else 0
        stop = end[1] if end is not None and seq == end[0] else len(data)
        while pos + 9 <= stop:
            (body_len,) = struct.unpack_from("<I", data, pos)
            # Body: appended-at (u64), record count (u32), records.
            count += struct.unpack_from("<I", data, pos + 9 + 8)[0]
            pos += 9 + body_len
    return count


def spool_while_stalled(b, sender: Sender, stall_s: float):
    b.pause()
    try:
        time.sleep(stall_s)
    finally:
        b.resume()


# Replay this slow takes ~10 s for what a 10 s stall spools (~1.5 KB a request, 50 a second),
# so that a kill or a SIGTERM lands while records wait.
SLOW_REPLAY = "64KiB"


def test_sigkill_while_replaying_loses_no_acknowledged_span_and_counts_duplicates(broker_factory, gateway_factory):
    b = broker_factory()
    gw = gateway_factory({"spool.replay_bytes_per_second": SLOW_REPLAY}, on_broker=b)
    sender = Sender(gw, "replaykill").start(cap_s=90)
    try:
        time.sleep(1)
        spool_while_stalled(b, sender, 10)
        wait_until(
            "replay is under way",
            lambda: metric_value(gw.metrics(), "weir_spool_replayed_records_total") >= 20,
            timeout=20,
            interval=0.2,
        )
        samples = gw.metrics()
        waiting = metric_value(samples, "weir_spool_records")
        assert waiting >= 50, f"only {waiting} records wait for replay: the kill would not land mid-replay"
        # Stall the broker again so that a replay send is in flight when the kill lands: the
        # checkpoint then says "sent, not acknowledged", and the restart must count it.
        b.pause()
        try:
            wait_until(
                "a replay send is in flight (checkpoint sent > acked)",
                lambda: (lambda c: c[1] > c[0])(read_checkpoint(gw)),
                timeout=10,
                interval=0.05,
            )
            sigkill(gw)
        finally:
            b.resume()
        acked, sent = read_checkpoint(gw)
        maybe_sent = records_between(gw, acked, sent)
        left = records_between(gw, acked)
        assert maybe_sent >= 1 and left > maybe_sent, (
            f"checkpoint {acked}..{sent}: {maybe_sent} maybe sent, {left} left"
        )
        gw.start(ready_timeout=20)
        time.sleep(3)
    finally:
        sender.stop()
    acknowledged = sender.acknowledged()
    missing = missing_from_kafka(gw, acknowledged, timeout=60)
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged spans missing, e.g. {sorted(missing)[:5]}"
    wait_until("the spool is drained", lambda: metric_value(gw.metrics(), "weir_spool_records") == 0, timeout=60)
    duplicates = metric_value(gw.metrics(), "weir_spool_replay_duplicate_records_total")
    assert duplicates == maybe_sent, (
        f"weir_spool_replay_duplicate_records_total is {duplicates}, {maybe_sent} records were in flight"
    )


def test_sigterm_drains_the_spool_to_a_reachable_kafka_before_exiting(broker_factory, gateway_factory):
    b = broker_factory()
    gw = gateway_factory({"spool.replay_bytes_per_second": SLOW_REPLAY, "spool.drain_timeout": "20s"}, on_broker=b)
    sender = Sender(gw, "drain").start(cap_s=30)
    try:
        time.sleep(1)
        spool_while_stalled(b, sender, 10)
    finally:
        sender.stop()
    waiting = metric_value(gw.metrics(), "weir_spool_records")
    assert waiting >= 50, f"only {waiting} records wait for replay: nothing left to drain"
    stopping = time.monotonic()
    gw.terminate()
    code = gw.wait_exit(timeout=10 + 20 + 15)
    took = time.monotonic() - stopping
    print(f"\nSIGTERM with {waiting:.0f} records spooled: exited {code} after {took:.1f} s")
    assert code == 0, gw.log()
    acked, _ = read_checkpoint(gw)
    left = records_between(gw, acked)
    assert left == 0, f"{left} records left in the spool at exit\n{gw.log()}"
    # Nothing restarted: what is in Kafka is what the stopping gateway drained.
    acknowledged = sender.acknowledged()
    missing = missing_from_kafka(gw, acknowledged)
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged spans missing, e.g. {sorted(missing)[:5]}"


def test_sigterm_with_kafka_stalled_exits_in_time_and_keeps_the_spool(broker_factory, gateway_factory):
    drain_timeout = 5
    b = broker_factory()
    gw = gateway_factory({"spool.drain_timeout": f"{drain_timeout}s"}, on_broker=b)
    sender = Sender(gw, "keep")
    b.pause()
    try:
        with requests.Session() as s:
            for _ in range(10):
                assert sender.one(s) == 200
        stopping = time.monotonic()
        gw.terminate()
        # shutdown_timeout (10 s in these tests) bounds the producer's flush, drain_timeout the drain.
        code = gw.wait_exit(timeout=10 + drain_timeout + 10)
        took = time.monotonic() - stopping
        print(f"\nSIGTERM with Kafka stalled: exited {code} after {took:.1f} s")
        assert code == 0, gw.log()
        assert took <= 10 + drain_timeout + 5, f"exit took {took:.1f} s"
        acked, _ = read_checkpoint(gw)
        left = records_between(gw, acked)
        assert left >= 10, f"only {left} records kept in the spool for the next start"
    finally:
        b.resume()
    gw.start(ready_timeout=20)
    acknowledged = sender.acknowledged()
    missing = missing_from_kafka(gw, acknowledged)
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged spans missing, e.g. {sorted(missing)[:5]}"
