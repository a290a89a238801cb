"""The latency floor of the benchmarks: `weir-loadgen --transport kafka`, a bare producer that
sends per request the records Weir would produce (one TracesData per trace, keyed by the trace
id in hex) and counts the request acknowledged when Kafka acknowledged all of them.

What bench.sh and half_load.sh compare Weir against must be what it claims: every record of
every acknowledged request in the topic, each holding exactly its trace's spans, plus one empty
warm-up record produced (and acknowledged) before the first timed request, so that fetching the
idempotent producer's id is not counted as the first requests' latency."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1 import trace_pb2

from harness import REPO_ROOT, consume, unique_name

LOADGEN_BIN = Path(os.environ.get("WEIR_LOADGEN_BIN", REPO_ROOT / "target" / "debug" / "weir-loadgen"))
REQUESTS = 40
SPANS_PER_REQUEST = 20
SPANS_PER_TRACE = 5
WARM_UP_KEY = b"weir-loadgen-warm-up"


def run_loadgen(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    if not LOADGEN_BIN.exists():
        pytest.fail(f"{LOADGEN_BIN} does not exist: build it (cargo build --workspace --bins) or set WEIR_LOADGEN_BIN")
    return subprocess.run([str(LOADGEN_BIN), *args], capture_output=True, text=True, timeout=timeout)


def test_floor_producer_delivers_every_record_after_one_warm_up(broker):
    topic = unique_name("floor")
    broker.create_topic(topic)
    done = run_loadgen(
        "--transport", "kafka", "--endpoint", broker.bootstrap, "--kafka-topic", topic,
        "--requests", str(REQUESTS), "--concurrency", "4",
        "--spans-per-request", str(SPANS_PER_REQUEST), "--spans-per-trace", str(SPANS_PER_TRACE),
        "--pool", "8", "--timeout", "10", "--json",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["requests_ok"] == REQUESTS, report
    assert report["requests_failed"] == 0 and report["failures"] == {}, report
    assert report["spans_acknowledged"] == REQUESTS * SPANS_PER_REQUEST, report

    traces_per_request = SPANS_PER_REQUEST // SPANS_PER_TRACE
    records = consume(broker.bootstrap, topic, want=REQUESTS * traces_per_request + 1, timeout=30)
    warm_ups = [r for r in records if r.key == WARM_UP_KEY]
    assert len(warm_ups) == 1, f"{len(warm_ups)} warm-up records"
    assert warm_ups[0].value in (b"", None), "the warm-up record must be an empty TracesData"

    spans = 0
    for r in records:
        if r.key == WARM_UP_KEY:
            continue
        data = trace_pb2.TracesData()
        data.ParseFromString(r.value)
        trace_ids = {
            span.trace_id.hex()
            for rs in data.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        }
        assert trace_ids == {r.key.decode()}, f"record keyed {r.key!r} holds traces {trace_ids}"
        spans += sum(len(ss.spans) for rs in data.resource_spans for ss in rs.scope_spans)
    assert len(records) == REQUESTS * traces_per_request + 1
    assert spans == REQUESTS * SPANS_PER_REQUEST


def test_floor_producer_refuses_a_missing_topic_at_once(broker):
    done = run_loadgen(
        "--transport", "kafka", "--endpoint", broker.bootstrap, "--kafka-topic", unique_name("absent"),
        "--requests", "1", timeout=30,
    )
    assert done.returncode != 0
    assert "does not exist" in done.stderr, done.stderr


def test_floor_producer_in_flight_is_within_the_idempotent_limit(broker):
    done = run_loadgen(
        "--transport", "kafka", "--endpoint", broker.bootstrap, "--kafka-topic", "any",
        "--kafka-max-in-flight", "6", "--requests", "1", timeout=30,
    )
    assert done.returncode != 0
    assert "kafka-max-in-flight" in done.stderr, done.stderr
