"""The OpenTelemetry Python SDK as a client of the gateway: telemetry is recorded in memory
first, then handed to a real OTLP exporter in one synchronous export() whose result the test
checks."""

from __future__ import annotations

from collections import Counter, defaultdict

import grpc
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from harness import Gateway, attrs_dict

EXPORT_TIMEOUT_S = 15

_GRPC_COMPRESSION = {None: None, "gzip": grpc.Compression.Gzip}
_HTTP_COMPRESSION = {None: None, "gzip": HttpCompression.Gzip, "deflate": HttpCompression.Deflate}


def span_exporter(gw: Gateway, transport: str, compression: str | None = None):
    if transport == "grpc":
        return GrpcSpanExporter(
            endpoint=gw.grpc_target,
            insecure=True,
            timeout=EXPORT_TIMEOUT_S,
            compression=_GRPC_COMPRESSION[compression],
        )
    return HttpSpanExporter(
        endpoint=f"{gw.http_base}/v1/traces",
        timeout=EXPORT_TIMEOUT_S,
        compression=_HTTP_COMPRESSION[compression],
    )


def metric_exporter(gw: Gateway, transport: str, compression: str | None = None):
    if transport == "grpc":
        return GrpcMetricExporter(
            endpoint=gw.grpc_target,
            insecure=True,
            timeout=EXPORT_TIMEOUT_S,
            compression=_GRPC_COMPRESSION[compression],
        )
    return HttpMetricExporter(
        endpoint=f"{gw.http_base}/v1/metrics",
        timeout=EXPORT_TIMEOUT_S,
        compression=_HTTP_COMPRESSION[compression],
    )


def log_exporter(gw: Gateway, transport: str, compression: str | None = None):
    if transport == "grpc":
        return GrpcLogExporter(
            endpoint=gw.grpc_target,
            insecure=True,
            timeout=EXPORT_TIMEOUT_S,
            compression=_GRPC_COMPRESSION[compression],
        )
    return HttpLogExporter(
        endpoint=f"{gw.http_base}/v1/logs",
        timeout=EXPORT_TIMEOUT_S,
        compression=_HTTP_COMPRESSION[compression],
    )


def resource(**attrs) -> Resource:
    return Resource.create({"service.name": "weir-integration-tests", **attrs})


class RecordedTraces:
    """A tracer whose finished spans stay in memory until the test exports them."""

    def __init__(self, res: Resource | None = None):
        self.memory = InMemorySpanExporter()
        self.provider = TracerProvider(resource=res or resource())
        self.provider.add_span_processor(SimpleSpanProcessor(self.memory))
        self.tracer = self.provider.get_tracer("weir.integration-tests", "0.1.0")

    def spans(self):
        return list(self.memory.get_finished_spans())

    def clear(self):
        self.memory.clear()


def make_traces(rec: RecordedTraces, traces: int, children: int, attrs_for=None):
    """`traces` traces of one root and `children` children each; returns the finished spans."""
    from opentelemetry.trace import SpanKind

    for t in range(traces):
        with rec.tracer.start_as_current_span(
            f"root-{t}", kind=SpanKind.SERVER, attributes={"trace.index": t, "http.route": f"/r/{t}"}
        ):
            for c in range(children):
                attrs = {"child.index": c, "ratio": c / 7, "even": c % 2 == 0, "tags": ["x", f"y{c}"]}
                if attrs_for is not None:
                    attrs.update(attrs_for(t, c))
                with rec.tracer.start_as_current_span(f"child-{t}-{c}", attributes=attrs):
                    pass
    return rec.spans()


class RecordedMetrics:
    def __init__(self, res: Resource | None = None):
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(resource=res or resource(), metric_readers=[self.reader])
        self.meter = self.provider.get_meter("weir.integration-tests", "0.1.0")

    def collect(self):
        return self.reader.get_metrics_data()


class RecordedLogs:
    def __init__(self, res: Resource | None = None):
        self.memory = InMemoryLogRecordExporter()
        self.provider = LoggerProvider(resource=res or resource())
        self.provider.add_log_record_processor(SimpleLogRecordProcessor(self.memory))
        self.logger = self.provider.get_logger("weir.integration-tests", "0.1.0")

    def records(self):
        return list(self.memory.get_finished_logs())


def check_trace_records(recs, landed, sent_spans):
    """The promises of trace records, for the spans `sent_spans` (SDK ReadableSpans)."""
    sent = {s.context.span_id.to_bytes(8, "big"): s for s in sent_spans}
    got = Counter(span.span_id for _, _, _, span in landed)
    missing = [sid.hex() for sid in sent if got[sid] == 0]
    dup = [sid.hex() for sid, n in got.items() if n > 1]
    extra = [sid.hex() for sid in got if sid not in sent]
    assert not missing and not dup and not extra, f"missing {missing}, duplicated {dup}, unknown {extra}"

    for _rec, res, scope, span in landed:
        s = sent[span.span_id]
        assert span.trace_id == s.context.trace_id.to_bytes(16, "big")
        assert span.name == s.name
        assert attrs_dict(span.attributes) == dict(s.attributes), span.name
        parent = s.parent.span_id.to_bytes(8, "big") if s.parent else b""
        assert span.parent_span_id == parent
        assert span.start_time_unix_nano == s.start_time and span.end_time_unix_nano == s.end_time
        assert attrs_dict(res.attributes) == dict(s.resource.attributes)
        assert scope.name == s.instrumentation_scope.name

    partitions_of_trace = defaultdict(set)
    for rec in recs:
        trace_ids = {span.trace_id for r, _, _, span in landed if r is rec}
        assert len(trace_ids) == 1, f"record at {rec.partition}/{rec.offset} holds {len(trace_ids)} trace ids"
        (tid,) = trace_ids
        assert rec.key == tid.hex().encode(), f"key {rec.key!r} != trace id {tid.hex()}"
        partitions_of_trace[tid].add(rec.partition)
    spread = {t.hex(): p for t, p in partitions_of_trace.items() if len(p) > 1}
    assert not spread, f"traces spread over partitions: {spread}"
