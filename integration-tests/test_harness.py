"""The harness itself, without the gateway: the broker fixture, topic creation and the consumer
work, so a failure elsewhere points at the gateway rather than at the test rig."""

from __future__ import annotations

from harness import consume, parse_prometheus, produce, unique_name


def test_broker_topic_produce_consume(broker):
    topic = unique_name("it-harness")
    broker.create_topic(topic)
    assert broker.partitions(topic) == [0, 1, 2]
    keys = [f"key-{i}".encode() for i in range(12)]
    for k in keys:
        produce(broker.bootstrap, topic, k, b"value-" + k)
    recs = consume(broker.bootstrap, topic, want=len(keys), timeout=30)
    assert sorted(r.key for r in recs) == sorted(keys), "every record exactly once"
    assert all(r.value == b"value-" + r.key for r in recs)
    partition_of = {}
    for r in recs:
        assert partition_of.setdefault(r.key, r.partition) == r.partition
    assert len({r.partition for r in recs}) > 1, "12 keys over 3 partitions should use more than one"


def test_prometheus_parser():
    text = (
        "# HELP weir_receiver_accepted_spans_total Spans accepted.\n"
        "# TYPE weir_receiver_accepted_spans_total counter\n"
        'weir_receiver_accepted_spans_total{transport="grpc"} 7\n'
        'weir_receiver_accepted_spans_total{transport="http",x="a\\"b"} 5\n'
        "process_up 1\n"
    )
    assert parse_prometheus(text) == [
        ("weir_receiver_accepted_spans_total", {"transport": "grpc"}, 7.0),
        ("weir_receiver_accepted_spans_total", {"transport": "http", "x": 'a"b'}, 5.0),
        ("process_up", {}, 1.0),
    ]
