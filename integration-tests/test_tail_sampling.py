"""Tail sampling end to end: two gateways mark trace ids in Bloom-filter windows and publish
them to the decisions topic; weir-tail-router reads the hot topic D seconds behind real time and
copies the spans of marked (and baseline) traces to the cold topic. Everything is checked with
the independent consumer (confluent-kafka + opentelemetry-proto)."""

from __future__ import annotations

import hashlib
import hmac
import random
import select
import socket
import struct
import threading
import time
import urllib.error
import urllib.request

import pytest
from confluent_kafka import Producer
from decision_hash import bitmap_bytes, encode, expand_seed, hash_count, positions
from harness import (
    TRACE_PATH,
    Broker,
    Gateway,
    TailRouter,
    consume,
    free_ports,
    log_tail,
    port_open,
    spawn,
    tansu_bin,
    proc_status_kib,
    decode_traces,
    metric_value,
    post,
    spans_of,
    traces_request,
    unique_name,
    wait_until,
)
from opentelemetry.proto.trace.v1 import trace_pb2

DELAY_S = 3
FALSE_POSITIVE_RATE = 0.01
BASELINE = 0.05
# The baseline's rejection threshold, as the OpenTelemetry probability sampling spec computes it
# (precision 14: exact): a trace is in the baseline when its randomness (the trace id's last 7
# bytes) is at least this.
BASELINE_THRESHOLD = 2**56 - round(BASELINE * 2**56)

POLICY = f"""
version: 1
tail:
  window: 5s
  expected_traces: 10000
  false_positive_rate: {FALSE_POSITIVE_RATE}
  seed: 11
  publish_interval: 500ms
  baseline_probability: {BASELINE}
  rules:
    - name: errors
      error: true
    - name: slow
      slower_than: 200ms
"""


def in_baseline(trace_id: bytes) -> bool:
    return int.from_bytes(trace_id[9:], "big") >= BASELINE_THRESHOLD


def span(trace_id: bytes, name: str, error: bool = False, millis: int = 1) -> trace_pb2.Span:
    now = time.time_ns()
    s = trace_pb2.Span(
        trace_id=trace_id,
        span_id=random.randbytes(8),
        parent_span_id=random.randbytes(8),
        name=name,
        kind=trace_pb2.Span.SPAN_KIND_SERVER,
        start_time_unix_nano=now - millis * 1_000_000,
        end_time_unix_nano=now,
    )
    if error:
        s.status.code = trace_pb2.Status.STATUS_CODE_ERROR
    return s


class Setup:
    """Topics, the policy, two gateways and the router's overrides."""

    def __init__(self, broker, workdir, gateway_overrides: dict | None = None):
        self.broker = broker
        self.hot = unique_name("it-hot")
        self.cold = unique_name("it-cold")
        self.decisions = unique_name("it-decisions")
        broker.create_topic(self.hot, 3)
        broker.create_topic(self.cold, 3)
        broker.create_topic(self.decisions, 1)
        policy = workdir / f"{unique_name('tail-policy')}.yaml"
        policy.write_text(POLICY)
        self.gateways = []
        for gid in ("gw-a", "gw-b"):
            gw = Gateway(
                broker,
                workdir,
                {
                    "kafka.traces.topic": self.hot,
                    "policy_file": str(policy),
                    "tail.decisions_topic": self.decisions,
                    "tail.gateway_id": gid,
                    **(gateway_overrides or {}),
                },
                create_topics=False,
            )
            self.gateways.append(gw)
            gw.start()
        self.router_overrides = {
            "kafka.hot_topic": self.hot,
            "kafka.cold_topic": self.cold,
            "kafka.decisions_topic": self.decisions,
            "kafka.group_id": unique_name("it-tail-router"),
            "delay": f"{DELAY_S}s",
            "window_retention": "10m",
            "batch_size": 200,
        }
        self.routers: list[TailRouter] = []
        self.workdir = workdir

    def router(self) -> TailRouter:
        r = TailRouter(self.broker, self.workdir, self.router_overrides)
        self.routers.append(r)
        return r.start()

    def send(self, per_gateway: list[list[trace_pb2.Span]]):
        for gw, spans in zip(self.gateways, per_gateway):
            if spans:
                r = post(gw, TRACE_PATH, traces_request(spans, {"service.name": "shop"}).SerializeToString())
                assert r.status_code == 200, r.text

    def cold_spans(self, want: set[bytes], timeout: float) -> list[tuple[bytes, bytes]]:
        """(trace id, span id) of every span in the cold topic (duplicates included), read until
        every span id in `want` is there or `timeout` passes."""
        found: list[tuple[bytes, bytes]] = []

        def complete():
            nonlocal found
            recs = consume(self.broker.bootstrap, self.cold, want=1 << 30, timeout=3, settle=0)
            found = [(s.trace_id, s.span_id) for r in recs for _, _, s in spans_of(decode_traces(r.value))]
            return want <= {sid for _, sid in found}

        try:
            wait_until("every kept span in the cold topic", complete, timeout=timeout, interval=1)
        except TimeoutError:
            pass
        return found

    def close(self, failed: bool):
        for r in self.routers:
            r.stop()
            if failed:
                print(f"--- {r.name} log:\n{r.log(60)}")
        for gw in self.gateways:
            gw.stop()
            if failed:
                print(f"--- {gw.name} log:\n{gw.log()}")


@pytest.fixture
def tail(request, broker, workdir):
    s = Setup(broker, workdir)
    yield s
    rep = getattr(request.node, "rep_call", None)
    s.close(rep is None or rep.failed)


def trace_id(baseline: bool | None = None) -> bytes:
    """A random trace id; in the baseline share or not, when asked."""
    for _ in range(10_000):
        t = random.randbytes(16)
        if baseline is None or in_baseline(t) == baseline:
            return t
    raise AssertionError("no trace id found")


def test_every_span_of_a_marked_trace_reaches_cold_across_gateways_and_a_router_kill(tail):
    router = tail.router()
    marked: dict[bytes, set[bytes]] = {}
    unmarked: dict[bytes, set[bytes]] = {}
    rounds, marked_per_round, unmarked_per_round = 8, 8, 40
    for rnd in range(rounds):
        per_gw: list[list[trace_pb2.Span]] = [[], []]
        for i in range(marked_per_round + unmarked_per_round):
            t = trace_id()
            is_marked = i < marked_per_round
            # Three spans over both gateways; a marked trace has exactly one valuable span, on
            # either gateway: an error, or a slow span.
            spans = [span(t, "GET /cart"), span(t, "SELECT items", millis=20), span(t, "render")]
            if is_marked:
                v = random.randrange(3)
                spans[v] = span(t, "POST /pay", error=True) if i % 2 else span(t, "slow call", millis=450)
            for j, s in enumerate(spans):
                per_gw[(j + i) % 2].append(s)
            (marked if is_marked else unmarked)[t] = {s.span_id for s in spans}
        tail.send(per_gw)
        if rnd == 3:
            # Killed mid-stream: the first rounds decided and committed, the last ones held
            # in memory, uncommitted.
            router.kill()
            killed_at = time.monotonic()
        if rnd == 5:
            # The replacement joins once the broker has expired the dead member (the test
            # routers' session.timeout.ms is 6 s). Tansu and noida-db hand all partitions to a
            # dead member still within its session and do not rebalance when it expires (a
            # Kafka broker does), so a router joining earlier would wait forever.
            time.sleep(max(0.0, killed_at + 8.0 - time.monotonic()))
            router = tail.router()
        time.sleep(1)

    want = set().union(*marked.values())
    found = tail.cold_spans(want, timeout=90)
    cold_ids = [sid for _, sid in found]
    cold_set = set(cold_ids)
    missing = want - cold_set
    assert not missing, (
        f"{len(missing)} of {len(want)} spans of marked traces are not in the cold topic; "
        f"router log:\n{router.log(40)}"
    )
    duplicates = len(cold_ids) - len(cold_set)

    # Unmarked traces: the baseline share reaches cold in full; the others only as false
    # positives, at no more than twice the configured rate.
    baseline_traces = [t for t in unmarked if in_baseline(t)]
    for t in baseline_traces:
        assert unmarked[t] <= cold_set, "a baseline trace is missing spans in cold"
    cold_traces = {tid for tid, _ in found}
    false_positives = [t for t in unmarked if not in_baseline(t) and t in cold_traces]
    others = len(unmarked) - len(baseline_traces)
    assert len(false_positives) <= 2 * FALSE_POSITIVE_RATE * others, (
        f"{len(false_positives)} of {others} unmarked traces reached cold"
    )
    unmarked_in_cold = sum(1 for t in unmarked if t in cold_traces)
    assert unmarked_in_cold == len(baseline_traces) + len(false_positives)
    print(
        f"marked spans {len(want)} all in cold; duplicates {duplicates}; unmarked traces "
        f"{len(unmarked)}: baseline {len(baseline_traces)}, false positives {len(false_positives)}"
    )

    # The router's own accounting.
    samples = router.metrics()
    assert metric_value(samples, "weir_tail_router_records_total", outcome="kept_marked") > 0
    assert metric_value(samples, "weir_tail_router_windows_held") >= 1
    # Both gateways marked traces and published their windows.
    for gw in tail.gateways:
        m = gw.metrics()
        marked_total = sum(
            metric_value(m, "weir_tail_traces_marked_total", rule=r) for r in ("errors", "slow")
        )
        assert marked_total > 0, gw.log()
        assert metric_value(m, "weir_tail_decision_records_published_total", kind="snapshot") > 0


def test_a_span_arriving_after_the_delay_stays_hot(tail):
    tail.router()
    late = trace_id(baseline=False)
    control = trace_id(baseline=False)
    early_spans = [span(late, "GET /cart"), span(late, "render")]
    control_spans = [span(control, "GET /cart"), span(control, "POST /pay", error=True)]
    tail.send([early_spans, control_spans[1:]])
    tail.send([control_spans[:1], []])
    # The router decides the early spans D seconds after they were produced: unmarked.
    time.sleep(DELAY_S + 3)
    error_span = span(late, "POST /pay", error=True)
    tail.send([[], [error_span]])
    want = {s.span_id for s in control_spans} | {error_span.span_id}
    found = tail.cold_spans(want, timeout=60)
    cold = {sid for _, sid in found}
    assert want <= cold, "the control trace and the late error span itself are copied"
    for s in early_spans:
        assert s.span_id not in cold, "a span decided before its trace's mark stays hot only"
    # ...and it is in the hot topic.
    hot = consume(tail.broker.bootstrap, tail.hot, want=1 << 30, timeout=3, settle=0)
    hot_ids = {s.span_id for r in hot for _, _, s in spans_of(decode_traces(r.value))}
    assert {s.span_id for s in early_spans} <= hot_ids


SIGNING_KEY = "it-decisions-key"


@pytest.fixture
def signed_tail(request, broker, workdir):
    s = Setup(broker, workdir, {"tail.signing_key": SIGNING_KEY})
    yield s
    rep = getattr(request.node, "rep_call", None)
    s.close(rep is None or rep.failed)


def test_hostile_decision_records_are_bounded_counted_and_skipped(signed_tail):
    tail = signed_tail
    tail.router_overrides.update(
        {
            "decisions.signing_key": SIGNING_KEY,
            "decisions.max_filter_bytes": "32MiB",
            "decisions.max_total_bytes": "64MiB",
        }
    )
    now_ms = int(time.time() * 1000)
    window = 5000
    start = now_ms - now_ms % window
    seed = expand_seed(11)
    size = bitmap_bytes(10000, FALSE_POSITIVE_RATE)
    k = hash_count(size * 8, 10000)
    forged = trace_id(baseline=False)

    def record(**over):
        fields = dict(
            window_start=start, window_length=window, filter_bytes=size, hashes=k, seed=seed,
            expected_items=10000, set_positions=[],
        )
        fields.update(over)
        return encode(**fields)

    def sign(value: bytes) -> list:
        return [("weir-decision-hmac-sha256", hmac.new(SIGNING_KEY.encode(), value, hashlib.sha256).digest())]

    forged_record = record(set_positions=sorted(set(positions(seed, k, size * 8, forged))))
    day = 86_400_000
    hostile = [
        # Signed by someone holding the key, but past the bounds: 200 MiB of filter from a
        # 150-byte record, a million hashes, a window a day ahead, a window length whose
        # double overflows.
        (record(filter_bytes=200 << 20, expected_items=1 << 30), True),
        (record(hashes=1_000_000), True),
        (record(window_start=start + day - (start + day) % window), True),
        (record(window_start=0, window_length=1 << 62), True),
        # Forged marks of `forged`: unsigned, and signed with another key.
        (forged_record, False),
    ]
    producer = Producer({"bootstrap.servers": tail.broker.bootstrap, "acks": "all"})
    for value, signed in hostile:
        producer.produce(tail.decisions, key=str(start).encode(), value=value, headers=sign(value) if signed else None)
    bad = [("weir-decision-hmac-sha256", hmac.new(b"other", forged_record, hashlib.sha256).digest())]
    producer.produce(tail.decisions, key=str(start).encode(), value=forged_record, headers=bad)
    assert producer.flush(15) == 0

    router = tail.router()
    marked = trace_id(baseline=False)
    spans = [span(marked, "POST /pay", error=True), span(marked, "GET /cart")]
    forged_spans = [span(forged, "GET /cart"), span(forged, "render")]
    tail.send([spans[:1] + forged_spans[:1], spans[1:] + forged_spans[1:]])
    want = {s.span_id for s in spans}
    found = tail.cold_spans(want, timeout=60)
    cold = {sid for _, sid in found}
    assert want <= cold, f"the marked trace is routed as before; router log:\n{router.log(40)}"
    assert not cold & {s.span_id for s in forged_spans}, "a forged mark kept a trace"

    samples = router.metrics()
    count = lambda result: metric_value(samples, "weir_tail_router_decision_records_total", result=result)
    assert count("out_of_bounds") == 4, router.log(40)
    assert count("unsigned") == 1
    assert count("bad_signature") == 1
    assert count("merged") > 0
    rss_mib = proc_status_kib(router.proc.pid, "VmHWM") / 1024
    assert rss_mib < 150, f"peak RSS {rss_mib:.0f} MiB: a hostile filter was allocated"
    assert router.readyz() == 200


class ClientCutProxy:
    """A TCP proxy in front of a broker that can cut one Kafka client off, as a network
    partition between that client and the broker would: it reads the client id from the
    request header of each connection's first request, and while that id is cut, forwards
    nothing in either direction on its connections (the bytes wait in the sockets, and flow
    again once it is restored). Every other client goes through untouched."""

    def __init__(self, listen_port: int, upstream_port: int):
        self.upstream_port = upstream_port
        self.cut: set[str] = set()
        self.client_ids: set[str] = set()
        self.server = socket.create_server(("127.0.0.1", listen_port))
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(client,), daemon=True).start()

    @staticmethod
    def _read_exactly(sock: socket.socket, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("closed")
            out += chunk
        return out

    def _connection(self, client: socket.socket):
        try:
            # Request: int32 size, then int16 api key, int16 version, int32 correlation id,
            # nullable string client id (int16 length).
            size = self._read_exactly(client, 4)
            frame = self._read_exactly(client, struct.unpack(">i", size)[0])
            (id_len,) = struct.unpack(">h", frame[8:10])
            client_id = frame[10 : 10 + id_len].decode() if id_len > 0 else ""
            self.client_ids.add(client_id)
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            upstream.sendall(size + frame)
        except (OSError, ConnectionError, struct.error):
            client.close()
            return
        pair = [client, upstream]
        try:
            while not self.closed:
                if client_id in self.cut:
                    time.sleep(0.05)
                    continue
                readable, _, _ = select.select(pair, [], [], 0.05)
                for src in readable:
                    data = src.recv(65536)
                    if not data:
                        return
                    (upstream if src is client else client).sendall(data)
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()

    def close(self):
        self.closed = True
        self.server.close()


class ProxiedBroker(Broker):
    """A Tansu broker that advertises the address of a `ClientCutProxy` in front of it, so
    that every client reaches it through the proxy."""

    def start(self) -> "ProxiedBroker":
        upstream = free_ports(1)[0]
        self.proxy = ClientCutProxy(self.port, upstream)
        self.proc = spawn(
            [
                str(tansu_bin()),
                "broker",
                "--storage-engine",
                "memory://tansu/",
                "--listener-url",
                f"tcp://127.0.0.1:{upstream}",
                "--advertised-listener-url",
                f"tcp://{self.bootstrap}",
            ],
            self.log_path,
        )
        try:
            wait_until("tansu listening behind the proxy", lambda: self._alive() and port_open(upstream), timeout=30)
        except TimeoutError as e:
            self.stop()
            raise RuntimeError(f"{e}\n--- {self.log_path}:\n{log_tail(self.log_path)}") from None
        return self

    def stop(self):
        super().stop()
        if hasattr(self, "proxy"):
            self.proxy.close()


@pytest.fixture
def proxied_tail(request, workdir):
    broker = ProxiedBroker(workdir, unique_name("tansu-proxied")).start()
    s = Setup(broker, workdir)
    yield s
    rep = getattr(request.node, "rep_call", None)
    s.close(rep is None or rep.failed)
    broker.stop()


def readyz_body(router: TailRouter) -> tuple[int | None, str]:
    try:
        with urllib.request.urlopen(router.admin_base + "/readyz", timeout=2.0) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return None, ""


def test_a_stale_decisions_feed_pauses_the_hot_loop_and_loses_no_marked_trace(proxied_tail):
    tail = proxied_tail
    router = tail.router()
    proxy = tail.broker.proxy
    decisions_client = "weir-tail-router-decisions"
    assert decisions_client in proxy.client_ids, proxy.client_ids
    marked: dict[bytes, set[bytes]] = {}
    unmarked: dict[bytes, set[bytes]] = {}

    def send_round(n_marked: int = 4, n_unmarked: int = 4):
        per_gw: list[list[trace_pb2.Span]] = [[], []]
        for i in range(n_marked + n_unmarked):
            t = trace_id(baseline=False)
            # The mark (an error) on one gateway, the other spans on the other one.
            spans = [span(t, "GET /cart"), span(t, "render")]
            if i < n_marked:
                error = span(t, "POST /pay", error=True)
                per_gw[i % 2].append(error)
                per_gw[(i + 1) % 2].extend(spans)
                marked[t] = {error.span_id} | {s.span_id for s in spans}
            else:
                per_gw[i % 2].extend(spans)
                unmarked[t] = {s.span_id for s in spans}
        tail.send(per_gw)

    send_round()
    # The router cannot read the decisions topic for more than three times D while marked
    # traces keep flowing (their marks are published, only not read): it must decide none.
    proxy.cut.add(decisions_client)
    cut_at = time.monotonic()
    while time.monotonic() - cut_at < 3 * DELAY_S + 2:
        send_round()
        time.sleep(1)
    samples = router.metrics()
    status, body = readyz_body(router)
    paused = metric_value(samples, "weir_tail_router_paused", reason="decisions_unreachable") + metric_value(
        samples, "weir_tail_router_paused", reason="decisions_behind"
    )
    assert status == 503 and "paused" in body, (status, body, router.log(20))
    assert paused == 1, router.log(20)
    proxy.cut.discard(decisions_client)
    send_round()

    want = set().union(*marked.values())
    found = tail.cold_spans(want, timeout=60)
    cold = {sid for _, sid in found}
    missing = want - cold
    assert not missing, (
        f"{len(missing)} of {len(want)} spans of marked traces are not in the cold topic; "
        f"router log:\n{router.log(40)}"
    )
    cold_traces = {tid for tid, _ in found}
    false_positives = sum(1 for t in unmarked if t in cold_traces)
    assert false_positives <= 2, f"{false_positives} of {len(unmarked)} unmarked traces in cold"
    wait_until("the router ready again", lambda: router.readyz() == 200, timeout=15)
    samples = router.metrics()
    pauses = sum(
        metric_value(samples, "weir_tail_router_pauses_total", reason=r)
        for r in ("decisions_unreachable", "decisions_behind")
    )
    assert pauses >= 1
    assert metric_value(samples, "weir_tail_router_paused", reason="decisions_unreachable") == 0
    assert metric_value(samples, "weir_tail_router_paused", reason="decisions_behind") == 0


def test_a_keyless_record_of_many_traces_is_decided_trace_by_trace(tail):
    """A Collector with partition_traces_by_id off writes one record per request, spans of
    many traces and no key: the router copies only the marked trace's spans, keyed by its id,
    under their resource and scope."""
    marked, other_a, other_b = (trace_id(baseline=False) for _ in range(3))
    # The mark, as a gateway would publish it, for the window of now.
    now_ms = int(time.time() * 1000)
    window = 5000
    seed = expand_seed(11)
    size = bitmap_bytes(10000, FALSE_POSITIVE_RATE)
    k = hash_count(size * 8, 10000)
    mark = encode(
        window_start=now_ms - now_ms % window, window_length=window, filter_bytes=size, hashes=k,
        seed=seed, expected_items=10000, set_positions=sorted(set(positions(seed, k, size * 8, marked))),
    )
    producer = Producer({"bootstrap.servers": tail.broker.bootstrap, "acks": "all"})
    producer.produce(tail.decisions, key=b"python", value=mark)
    assert producer.flush(15) == 0
    router = tail.router()

    # Two resources, scopes of each: the marked trace's spans in both, between the others'.
    def scope(name: str, spans: list[trace_pb2.Span]) -> trace_pb2.ScopeSpans:
        ss = trace_pb2.ScopeSpans(spans=spans)
        ss.scope.name = name
        return ss

    def resource(service: str, scopes: list[trace_pb2.ScopeSpans]) -> trace_pb2.ResourceSpans:
        rs = trace_pb2.ResourceSpans(scope_spans=scopes)
        attr = rs.resource.attributes.add()
        attr.key, attr.value.string_value = "service.name", service
        return rs

    m1, m2, m3 = span(marked, "GET /cart"), span(marked, "SELECT items"), span(marked, "render")
    data = trace_pb2.TracesData(
        resource_spans=[
            resource("shop", [scope("http", [span(other_a, "GET /"), m1, span(other_b, "GET /x")]),
                              scope("db", [m2, span(other_a, "SELECT 1")])]),
            resource("frontend", [scope("ui", [span(other_b, "click"), m3])]),
        ]
    )
    producer.produce(tail.hot, value=data.SerializeToString(), headers=[("tenant", b"shop")])
    assert producer.flush(15) == 0

    want = {m1.span_id, m2.span_id, m3.span_id}
    tail.cold_spans(want, timeout=30 + DELAY_S)
    records = consume(tail.broker.bootstrap, tail.cold, want=1, timeout=5, settle=2)
    assert len(records) == 1, f"{len(records)} cold records; router log:\n{router.log(30)}"
    rec = records[0]
    assert rec.key == marked.hex().encode()
    assert ("tenant", b"shop") in (rec.headers or [])
    got = trace_pb2.TracesData.FromString(rec.value)
    layout = [
        (
            rs.resource.attributes[0].value.string_value,
            [(ss.scope.name, [s.span_id for s in ss.spans]) for ss in rs.scope_spans],
        )
        for rs in got.resource_spans
    ]
    assert layout == [
        ("shop", [("http", [m1.span_id]), ("db", [m2.span_id])]),
        ("frontend", [("ui", [m3.span_id])]),
    ]
    samples = router.metrics()
    assert metric_value(samples, "weir_tail_router_records_total", outcome="split") == 1
    assert metric_value(samples, "weir_tail_router_split_traces_total", outcome="kept_marked") == 1
    assert metric_value(samples, "weir_tail_router_split_traces_total", outcome="passed") == 2
