"""Trace records land in the partition the OpenTelemetry Collector's kafkaexporter would pick
for the same trace id (Sarama's hash partitioner, which the Collector keeps compatible), so a
topic written by Weir and Collectors side by side keeps every trace in one partition. The
expected partition is computed here from Sarama's formula, not from Weir's code or
librdkafka's."""

from __future__ import annotations

import pytest

from harness import (
    TRACE_PATH,
    Gateway,
    consume,
    make_span,
    new_trace_id,
    post,
    traces_request,
    unique_name,
)


def sarama_hash_partition(key: bytes, partitions: int) -> int:
    """Sarama's NewHashPartitioner: FNV-1a 32-bit of the key, read as an int32, Go's
    truncated remainder by the partition count, negated when negative."""
    h = 0x811C9DC5
    for b in key:
        h ^= b
        h = (h * 0x01000193) & 0xFFFFFFFF
    signed = h - (1 << 32) if h >= 1 << 31 else h
    # Go's % truncates toward zero: the remainder takes the dividend's sign.
    rem = abs(signed) % partitions
    rem = -rem if signed < 0 else rem
    return -rem if rem < 0 else rem


def test_sarama_formula_matches_known_values():
    # FNV-1a 32-bit test vectors (the empty string and "a"), through the partition formula.
    # The empty key hashes to the offset basis, 0x811C9DC5: negative as an int32.
    assert sarama_hash_partition(b"", 1 << 30) == abs(0x811C9DC5 - (1 << 32)) % (1 << 30)
    assert sarama_hash_partition(b"a", 1000) == abs(0xE40C292C - (1 << 32)) % 1000


# With kafka.producers above 1 the records are spread over several librdkafka producers; each
# has the same partitioner, so the partition still depends on the trace id alone.
@pytest.mark.parametrize(
    ("partitions", "producers"), [(1, 1), (3, 1), (4, 1), (7, 1), (16, 1), (7, 3)]
)
def test_trace_ids_land_in_the_collectors_partition(broker, workdir, partitions, producers):
    topic = unique_name(f"it-part{partitions}")
    broker.create_topic(topic, partitions=partitions)
    overrides = {"kafka.traces.topic": topic, "kafka.producers": producers}
    gw = Gateway(broker, workdir, overrides, create_topics=False)
    for signal in ("metrics", "logs"):
        broker.create_topic(gw.topics[signal])
    gw.start()
    try:
        check_partitions(broker, gw, topic, partitions)
    finally:
        gw.stop()


def check_partitions(broker, gw, topic, partitions):
    ids = [new_trace_id() for _ in range(1000)]
    for i in range(0, len(ids), 250):
        body = traces_request([make_span(t, name="p") for t in ids[i:i + 250]]).SerializeToString()
        r = post(gw, TRACE_PATH, body)
        assert r.status_code == 200, r.content
    records = consume(broker.bootstrap, topic, len(ids), timeout=60)
    assert len(records) == len(ids)
    wrong = [
        (r.key, r.partition, sarama_hash_partition(r.key, partitions))
        for r in records
        if r.partition != sarama_hash_partition(r.key, partitions)
    ]
    assert not wrong, f"{len(wrong)} of {len(records)} records off the Collector's partition: {wrong[:5]}"
    assert {r.key for r in records} == {t.hex().encode() for t in ids}
