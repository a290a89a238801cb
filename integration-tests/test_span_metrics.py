"""Span metrics are exact whatever sampling keeps (issue 21): spans with known outcomes go through
TWO gateways whose policy keeps 10%, sent once as OTLP requests built here and once by the
OpenTelemetry Python SDK (its tracer, BatchSpanProcessor and OTLP/gRPC exporter, with each
span's start and end times, kind, status, attributes and parent set as the test chose); after a flush, the calls, errors and latency bucket counts
the control plane serves equal what this test computes itself from every span it sent, per
service, operation and edge. The test's own computation follows docs/span-metrics.md (edge
rules, upper-inclusive buckets), not Weir's code."""

from __future__ import annotations

import random
import time

import pytest
from collections import defaultdict

from control_plane_harness import VIEWER_TOKEN, control_plane_factory  # noqa: F401  (fixture)
from harness import (
    TRACE_PATH,
    metric_value,
    new_span_id,
    new_trace_id,
    post,
    unique_name,
    wait_until,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

MS = 1_000_000
DURATION_BUCKETS_MS = [1, 5, 20, 100, 500]
EDGE_BUCKETS_MS = [2, 10, 50, 250]
ROOT_SLA_MS = 100
SERVICES = ["frontend", "cart", "payment"]
OPERATIONS = ["GET /", "POST /pay", "query", "publish"]
KINDS = {
    trace_pb2.Span.SPAN_KIND_INTERNAL: "SPAN_KIND_INTERNAL",
    trace_pb2.Span.SPAN_KIND_SERVER: "SPAN_KIND_SERVER",
    trace_pb2.Span.SPAN_KIND_CLIENT: "SPAN_KIND_CLIENT",
    trace_pb2.Span.SPAN_KIND_PRODUCER: "SPAN_KIND_PRODUCER",
    trace_pb2.Span.SPAN_KIND_CONSUMER: "SPAN_KIND_CONSUMER",
}
# Callee attributes a CLIENT or PRODUCER span may carry (none: no edge).
CALLEE_ATTRS = [
    {"peer.service": "cart"},
    {"peer.service": "payment", "server.address": "pay.internal"},
    {"server.address": "pay.internal"},
    {"rpc.service": "Inventory"},
    {"db.system": "postgresql", "db.namespace": "orders"},
    {"db.system": "redis"},
    {"messaging.destination.name": "events"},
    {"messaging.system": "kafka", "peer.service": "broker"},
    {},
]
# Durations in ms, with bounds exactly (a bound is in its own bucket).
DURATIONS_MS = [0, 1, 2, 5, 7, 10, 20, 21, 50, 99, 100, 101, 250, 400, 500, 900]


def bucket(nanos: int, bounds_ms: list[int]) -> int:
    for i, b in enumerate(bounds_ms):
        if nanos <= b * MS:
            return i
    return len(bounds_ms)


def callee(kind: int, attrs: dict):
    """The documented edge rule, written independently: (server, connection_type) or None."""
    name = None
    for key in ("peer.service", "server.address", "rpc.service", "db.namespace", "db.name",
                "db.system", "messaging.destination.name"):
        if attrs.get(key):
            name = attrs[key]
            break
    if name is None:
        return None
    if (kind == trace_pb2.Span.SPAN_KIND_PRODUCER or "messaging.system" in attrs
            or "messaging.destination.name" in attrs):
        return name, "messaging_system"
    if "db.system" in attrs:
        return name, "database"
    return name, ""


def kv(attrs: dict) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=k, value=common_pb2.AnyValue(string_value=v)) for k, v in attrs.items()]


def make_spans(rng: random.Random, n: int):
    """n spans of random service, operation, kind, status, duration and callee."""
    now = time.time_ns()
    out = []
    for _ in range(n):
        kind = rng.choice(list(KINDS))
        attrs = rng.choice(CALLEE_ATTRS) if kind in (3, 4) else {}
        nanos = rng.choice(DURATIONS_MS) * MS + rng.choice([0, 0, 1, 37])
        status = rng.choice([0, 0, 1, 2])
        root = rng.random() < 0.3
        span = trace_pb2.Span(
            trace_id=new_trace_id(),
            span_id=new_span_id(),
            parent_span_id=b"" if root else new_span_id(),
            name=rng.choice(OPERATIONS),
            kind=kind,
            start_time_unix_nano=now - nanos,
            end_time_unix_nano=now,
            attributes=kv(attrs),
            status=trace_pb2.Status(code=status),
        )
        out.append((rng.choice(SERVICES), span, attrs))
    return out


def request_of(batch) -> bytes:
    by_service = defaultdict(list)
    for service, span, _ in batch:
        by_service[service].append(span)
    return trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=resource_pb2.Resource(attributes=kv({"service.name": s})),
                scope_spans=[trace_pb2.ScopeSpans(spans=spans)],
            )
            for s, spans in by_service.items()
        ]
    ).SerializeToString()


def send_raw(gateways, spans):
    """OTLP/HTTP requests of 60 spans each, built by the test, alternately to each gateway."""
    for i in range(0, len(spans), 60):
        r = post(gateways[(i // 60) % 2], TRACE_PATH, request_of(spans[i : i + 60]))
        assert r.status_code == 200, r.text


def send_with_sdk(gateways, spans):
    """The same spans through the OpenTelemetry Python SDK: one TracerProvider per (service,
    gateway) with the real OTLP/gRPC exporter behind a BatchSpanProcessor; a span that is not
    a root gets a remote, sampled parent, so the SDK's default sampler keeps it."""
    from opentelemetry import trace as otel_trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
    from opentelemetry.trace.status import Status, StatusCode

    providers = {}
    for i, (service, s, attrs) in enumerate(spans):
        gw = gateways[(i // 60) % 2]
        key = (service, gw.grpc_target)
        if key not in providers:
            provider = TracerProvider(resource=Resource.create({"service.name": service}))
            provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=gw.grpc_target, insecure=True))
            )
            providers[key] = provider
        tracer = providers[key].get_tracer("weir-span-metrics-test")
        context = None
        if s.parent_span_id:
            parent = SpanContext(
                trace_id=int.from_bytes(s.trace_id, "big"),
                span_id=int.from_bytes(s.parent_span_id, "big"),
                is_remote=True,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            )
            context = otel_trace.set_span_in_context(NonRecordingSpan(parent))
        span = tracer.start_span(
            s.name,
            context=context,
            kind=SpanKind(s.kind - 1),  # the SDK's enum starts at INTERNAL = 0
            attributes=attrs,
            start_time=s.start_time_unix_nano,
        )
        if s.status.code:
            span.set_status(Status(StatusCode.OK if s.status.code == 1 else StatusCode.ERROR))
        span.end(end_time=s.end_time_unix_nano)
    for provider in providers.values():
        assert provider.force_flush(30_000), "the SDK did not export every span"
        provider.shutdown()


def expected(spans):
    """Per operation (service, name, kind): calls, errors, buckets, root spans over SLA; per edge
    (client, server, connection_type): calls, failed, buckets."""
    ops = defaultdict(lambda: {"calls": 0, "errors": 0, "buckets": [0] * (len(DURATION_BUCKETS_MS) + 1)})
    sla = defaultdict(int)
    edges = defaultdict(lambda: {"calls": 0, "failed": 0, "buckets": [0] * (len(EDGE_BUCKETS_MS) + 1)})
    for service, s, attrs in spans:
        nanos = s.end_time_unix_nano - s.start_time_unix_nano
        error = s.status.code == 2
        op = ops[(service, s.name, KINDS[s.kind])]
        op["calls"] += 1
        op["errors"] += error
        op["buckets"][bucket(nanos, DURATION_BUCKETS_MS)] += 1
        if not s.parent_span_id and nanos > ROOT_SLA_MS * MS:
            sla[(service, s.name)] += 1
        if s.kind in (3, 4) and (c := callee(s.kind, attrs)) is not None:
            e = edges[(service, c[0], c[1])]
            e["calls"] += 1
            e["failed"] += error
            e["buckets"][bucket(nanos, EDGE_BUCKETS_MS)] += 1
    return dict(ops), dict(sla), dict(edges)


def served(cp):
    """What the control plane serves over 15 minutes, in the shape of `expected`."""
    ops, sla, edges = {}, defaultdict(int), {}
    for service in SERVICES:
        status, view = cp.request("GET", f"/services/{service}?window=15m", VIEWER_TOKEN)
        if status == 404:
            continue
        assert status == 200, view
        for o in view["operations"]:
            ops[(service, o["name"], o["kind"])] = {
                "calls": o["calls"],
                "errors": o["errors"],
                "buckets": o["duration_ms"]["bucket_counts"],
            }
            assert o["duration_ms"]["bounds"] == [float(b) for b in DURATION_BUCKETS_MS]
            if o["root_sla_exceeded"]:
                sla[(service, o["name"])] = o["root_sla_exceeded"]
    status, graph = cp.request("GET", "/graph?window=15m", VIEWER_TOKEN)
    assert status == 200, graph
    for e in graph["edges"]:
        edges[(e["client"], e["server"], e["connection_type"])] = {
            "calls": e["calls"],
            "failed": e["failed"],
            "buckets": e["latency_seconds"]["bucket_counts"],
        }
        assert e["latency_seconds"]["bounds"] == [b / 1000 for b in EDGE_BUCKETS_MS]
    return ops, dict(sla), edges, graph


@pytest.mark.parametrize("sender", [send_raw, send_with_sdk], ids=["otlp-requests", "python-sdk"])
def test_span_metrics_count_every_span_across_two_sampling_gateways(
    sender, broker, gateway_factory, control_plane_factory, workdir  # noqa: F811
):
    topic = unique_name("it-span-metrics")
    broker.create_topic(topic)
    policy = workdir / f"{unique_name('policy')}.yaml"
    policy.write_text(
        f"""version: 1
sampling:
  default_probability: 0.1
span_metrics:
  topic: {topic}
  flush_interval: 1s
  duration_buckets: [{", ".join(f"{b}ms" for b in DURATION_BUCKETS_MS)}]
  edge_latency_buckets: [{", ".join(f"{b}ms" for b in EDGE_BUCKETS_MS)}]
  root_sla:
    default: {ROOT_SLA_MS}ms
"""
    )
    cp = control_plane_factory(
        "sqlite",
        extra_yaml=f"span_metrics:\n  brokers: [{broker.bootstrap}]\n  topic: {topic}\n",
    )
    gateways = [gateway_factory({"policy_file": str(policy)}) for _ in range(2)]

    spans = make_spans(random.Random(21), 1200)
    sender(gateways, spans)
    want_ops, want_sla, want_edges = expected(spans)
    assert len(want_edges) >= 8 and sum(e["failed"] for e in want_edges.values()) > 0

    # Sampling kept about 10%: the metrics cannot come from the kept spans.
    sent = sum(metric_value(gw.metrics(), "otelcol_exporter_sent_spans", exporter="kafka") for gw in gateways)
    assert 0 < sent < len(spans) / 4, sent

    total = len(spans)
    wait_until(
        "the control plane to serve every span's metrics",
        lambda: sum(o["calls"] for o in served(cp)[0].values()) >= total,
        timeout=30,
        interval=0.5,
    )
    time.sleep(1.5)  # one more flush interval: nothing more may arrive
    got_ops, got_sla, got_edges, graph = served(cp)
    assert got_ops == want_ops
    assert got_sla == want_sla
    assert got_edges == want_edges

    # The graph a console draws: every service and callee a node, with three success rates.
    nodes = {n["name"]: n for n in graph["nodes"]}
    assert set(nodes) == set(SERVICES) | {e[1] for e in want_edges}
    for service in SERVICES:
        entry = [o for k, o in want_ops.items() if k[0] == service and k[2] in ("SPAN_KIND_SERVER", "SPAN_KIND_CONSUMER")]
        calls, errors = sum(o["calls"] for o in entry), sum(o["errors"] for o in entry)
        n = nodes[service]
        assert (n["calls"], n["errors"], n["source"]) == (calls, errors, "server_spans")
        for w in ("1m", "5m", "15m"):
            assert abs(n["success_rate"][w] - (calls - errors) / calls) < 1e-9

    # A viewer token is needed.
    assert cp.request("GET", "/graph")[0] == 401
    assert cp.request("GET", "/graph?window=2m", VIEWER_TOKEN)[0] == 400
    assert cp.request("GET", "/services/nobody", VIEWER_TOKEN)[0] == 404
