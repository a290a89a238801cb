"""Writes the committed seed corpus of the fuzz targets (gateway/fuzz/seeds/<target>/).

Seeds are real requests: spans, metrics and logs recorded by the OpenTelemetry Python SDK and
encoded by the SDK's own OTLP encoders (the bytes its exporters send), their OTLP/JSON form,
the JSON documents of the integration tests, compressed bodies as clients send them, and the
example policies. Run it again only when the seeds should change:

    ~/.cache/weir/venv/bin/python gateway/fuzz/make_seeds.py

Crash inputs found later are added to seeds/ by hand (with their regression test), not here.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
import zlib
from pathlib import Path

import zstandard
from google.protobuf import json_format

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "integration-tests"))

from opentelemetry._logs import SeverityNumber  # noqa: E402
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs  # noqa: E402
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics  # noqa: E402
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans  # noqa: E402
from opentelemetry.proto.common.v1 import common_pb2  # noqa: E402
from opentelemetry.trace import Link, SpanKind, Status, StatusCode  # noqa: E402

from harness import make_span, traces_request  # noqa: E402
from otel_sdk import RecordedLogs, RecordedMetrics, RecordedTraces, make_traces, resource  # noqa: E402

SEEDS = HERE / "seeds"


def write(target: str, name: str, data: bytes):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def to_otlp_json(message) -> bytes:
    """OTLP/JSON: protobuf JSON with trace and span ids as hex instead of base64."""
    import base64

    doc = json_format.MessageToDict(message)

    def fix(node):
        if isinstance(node, dict):
            return {
                k: (base64.b64decode(v).hex() if k in ("traceId", "spanId", "parentSpanId") else fix(v))
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [fix(x) for x in node]
        return node

    return json.dumps(fix(doc), separators=(",", ":")).encode()


def sdk_traces():
    rec = RecordedTraces(resource(**{"deployment.environment": "prod", "host.name": "h1"}))
    make_traces(rec, traces=2, children=2)
    with rec.tracer.start_as_current_span("GET /healthz", kind=SpanKind.SERVER) as root:
        root.add_event("cache miss", {"key": "user:42", "size": 3})
        root.set_status(Status(StatusCode.ERROR, "upstream timeout"))
        with rec.tracer.start_as_current_span(
            "SELECT orders", kind=SpanKind.CLIENT, links=[Link(root.get_span_context(), {"why": "retry"})]
        ) as child:
            child.set_attribute("db.rows", 12)
            child.set_attribute("db.bytes", b"\x00\x01".hex())
    return encode_spans(rec.spans())


def hand_traces():
    """Attribute values of every kind, including nested arrays and maps, and deep nesting."""
    nested = common_pb2.AnyValue(string_value="leaf")
    for i in range(16):
        if i % 2:
            nested = common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=[nested]))
        else:
            nested = common_pb2.AnyValue(
                kvlist_value=common_pb2.KeyValueList(values=[common_pb2.KeyValue(key=f"k{i}", value=nested)])
            )
    tid = bytes(range(16))
    spans = [
        make_span(tid, bytes(range(8)), "a", {"s": "x", "i": -5, "d": 1.5, "b": True, "raw": b"\xff", "arr": [1, "two"]}),
        make_span(tid, bytes(range(1, 9)), "b", parent=bytes(range(8)), kind=3),
    ]
    spans[1].attributes.add(key="deep", value=nested)
    spans[1].trace_state = "ot=th:e666;rv:abcdefabcdefab"
    return traces_request(spans, resource={"service.name": "checkout", "k8s.pod.name": "p-1"})


def sdk_metrics():
    rm = RecordedMetrics(resource())
    counter = rm.meter.create_counter("requests", unit="1")
    counter.add(3, {"route": "/a"})
    counter.add(5, {"route": "/b"})
    hist = rm.meter.create_histogram("latency", unit="ms")
    for v in (1, 7, 300):
        hist.record(v, {"route": "/a"})
    rm.meter.create_up_down_counter("queue").add(-2)
    rm.meter.create_gauge("temperature", unit="Cel").set(21.5, {"room": "lab"})
    return encode_metrics(rm.collect())


def sdk_logs():
    rl = RecordedLogs(resource())
    traces = RecordedTraces(resource())
    with traces.tracer.start_as_current_span("with-logs"):
        for i in range(3):
            rl.logger.emit(
                body=f"log line {i}",
                severity_number=SeverityNumber.WARN,
                severity_text="WARN",
                attributes={"i": i, "user": "ada", "ok": i % 2 == 0},
            )
    rl.logger.emit(body="no trace context", severity_number=SeverityNumber.INFO)
    return encode_logs(rl.records())


def limit(n: int) -> bytes:
    return n.to_bytes(2, "little")


def main():
    traces = [sdk_traces(), hand_traces()]
    metrics, logs = sdk_metrics(), sdk_logs()

    for i, t in enumerate(traces):
        write("otlp_proto_traces", f"request-{i}.bin", t.SerializeToString())
    write("otlp_proto_traces", "empty.bin", b"")

    write("otlp_proto_metrics_logs", "metrics.bin", b"\x00" + metrics.SerializeToString())
    write("otlp_proto_metrics_logs", "logs.bin", b"\x01" + logs.SerializeToString())

    for i, t in enumerate(traces):
        write("otlp_json", f"traces-{i}.json", b"\x00" + to_otlp_json(t))
    write("otlp_json", "metrics.json", b"\x01" + to_otlp_json(metrics))
    write("otlp_json", "logs.json", b"\x02" + to_otlp_json(logs))
    data = ROOT / "integration-tests" / "data"
    for name, selector in (("traces.json", 0), ("traces_snake_case.json", 0), ("metrics.json", 1), ("logs.json", 2)):
        write("otlp_json", f"it-{name}", bytes([selector]) + (data / name).read_bytes())

    body = traces[0].SerializeToString()
    # Selector: bits 0-1 the encoding (identity, gzip, deflate, zstd), bit 2 round-trip mode,
    # bit 3 raw deflate in round-trip mode. Then the limit (u16 LE), then the body.
    compressed = {
        0: body,
        1: gzip.compress(body),
        2: zlib.compress(body),
        3: zstandard.ZstdCompressor().compress(body),
    }
    raw = zlib.compressobj(wbits=-15)
    compressed_raw = raw.compress(body) + raw.flush()
    for enc, c in compressed.items():
        write("decompress", f"fits-{enc}.bin", bytes([enc]) + limit(65535) + c)
        write("decompress", f"over-{enc}.bin", bytes([enc]) + limit(len(body) - 1) + c)
        write("decompress", f"roundtrip-{enc}.bin", bytes([enc | 4]) + limit(len(body)) + body)
    write("decompress", "raw-deflate.bin", bytes([2]) + limit(65535) + compressed_raw)
    write("decompress", "roundtrip-raw-deflate.bin", bytes([2 | 4 | 8]) + limit(65535) + body)
    write("decompress", "gzip-bomb.bin", bytes([1]) + limit(65535) + gzip.compress(b"\0" * (4 << 20)))
    write("decompress", "zstd-bomb.bin", bytes([3]) + limit(4096) + zstandard.ZstdCompressor().compress(b"\0" * (4 << 20)))
    write("decompress", "gzip-two-members.bin", bytes([1]) + limit(65535) + gzip.compress(b"ab") + gzip.compress(b"cd"))

    for p in sorted((ROOT / "config" / "policies").iterdir()):
        write("policy_parse", p.name, p.read_bytes())

    for target in sorted(SEEDS.iterdir()):
        files = sorted(target.iterdir())
        digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:12]
        print(f"{target.name}: {len(files)} seeds, {sum(f.stat().st_size for f in files)} bytes ({digest})")


if __name__ == "__main__":
    main()
