"""The decision record's bit positions, computed independently: `decision_hash.py` implements
hash scheme 1 of proto/weir/tail/v1/decision_record.md in Python (SipHash-1-3, double hashing)
and reads the records a real gateway wrote to the decisions topic. The traces the gateway's tail
rules marked must have all their bits set there, and random ids mostly not."""

from __future__ import annotations

import random

from decision_hash import expand_seed, marked, merged_filters, parse, positions, siphash13
from harness import TRACE_PATH, Gateway, consume, make_span, post, traces_request, unique_name, wait_until
from opentelemetry.proto.trace.v1 import trace_pb2

POLICY = """
version: 1
tail:
  window: 5s
  expected_traces: 2000
  false_positive_rate: 0.01
  seed: 23
  publish_interval: 300ms
  rules:
    - name: errors
      error: true
"""


def test_the_documented_test_vectors():
    key = bytes(range(16))
    k0, k1 = int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little")
    assert siphash13(k0, k1, (16).to_bytes(8, "little") + bytes(range(8, 24))) == 0x6A790224700EC633
    seed = expand_seed(11)
    assert seed.hex() == "50f5647d2380309d432a5cd27a6b13a1a356be306e9b126d812e6299272e6df0"
    assert positions(seed, 7, 11_982 * 8, bytes(16)) == [5464, 82994, 9724, 92718, 13984, 1122, 18244]
    assert positions(expand_seed(42), 7, 120 * 8, b"\xab" * 16) == [83, 911, 433, 128, 79, 734, 429]
    assert positions(expand_seed(7), 10, 1_797_199 * 8, bytes(range(16))) == [
        6135607, 8011347, 697749, 8709096, 13178963, 3271238, 7741105, 12210972, 2303247, 6773114,
    ]


def test_marked_traces_have_their_bits_in_the_gateways_records(broker, workdir):
    hot = unique_name("it-fmt-hot")
    decisions = unique_name("it-fmt-decisions")
    broker.create_topic(hot, 1)
    broker.create_topic(decisions, 1)
    policy = workdir / f"{unique_name('fmt-policy')}.yaml"
    policy.write_text(POLICY)
    gw = Gateway(
        broker,
        workdir,
        {"kafka.traces.topic": hot, "policy_file": str(policy), "tail.decisions_topic": decisions},
        create_topics=False,
    ).start()
    try:
        marked_ids = [random.randbytes(16) for _ in range(200)]
        unmarked_ids = [random.randbytes(16) for _ in range(200)]
        spans = []
        for t in marked_ids:
            s = make_span(trace_id=t, name="POST /pay")
            s.status.code = trace_pb2.Status.STATUS_CODE_ERROR
            spans.append(s)
        spans += [make_span(trace_id=t, name="GET /cart") for t in unmarked_ids]
        r = post(gw, TRACE_PATH, traces_request(spans, {"service.name": "shop"}).SerializeToString())
        assert r.status_code == 200, r.text

        records = []

        def all_marked():
            nonlocal records
            raw = consume(broker.bootstrap, decisions, want=1 << 30, timeout=2, settle=0)
            records = [parse(r.value) for r in raw]
            filters = merged_filters(records)
            return filters and all(marked(filters, t) for t in marked_ids)

        wait_until("the marked traces' bits in the decision records", all_marked, timeout=30, interval=1)
        assert {r.hash_scheme for r in records} == {1}
        assert {r.seed for r in records} == {expand_seed(23)}
        filters = merged_filters(records)
        # The unmarked traces of the same request, and fresh random ids: false positives only,
        # at about the configured 1% (200 of 2000 expected traces marked: far below it).
        assert sum(marked(filters, t) for t in unmarked_ids) <= 4
        fresh = [random.randbytes(16) for _ in range(2000)]
        assert sum(marked(filters, t) for t in fresh) <= 20
    finally:
        gw.stop()
