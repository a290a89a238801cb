#!/usr/bin/env python3
"""Counts the OTLP spans in a Kafka topic, independently of Weir's own decoder.

Reads every partition of the topic from the beginning with confluent-kafka (librdkafka 2.x),
decodes each record value as OTLP `TracesData` (protobuf) with opentelemetry-proto, and prints
one JSON object: records, spans, distinct (trace id, span id) pairs, duplicates, traces, and
records that did not decode. Stops once no new record arrived for --idle seconds, or after
--max-seconds in all; both bound the run.

Optionally --ids FILE (lines of "traceid spanid" in hex, as weir-loadgen --ids-out writes)
also reports how many of those spans are missing from the topic.

    count_spans.py --broker 127.0.0.1:19192 --topic otlp_spans --idle 5 --max-seconds 120
"""

import argparse
import json
import sys
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData


def partitions_of(consumer, topic, wait_seconds):
    """The topic's partition ids; waits for the metadata up to wait_seconds."""
    deadline = time.monotonic() + wait_seconds
    while True:
        metadata = consumer.list_topics(topic, timeout=5)
        info = metadata.topics.get(topic)
        if info is not None and info.error is None and info.partitions:
            return sorted(info.partitions)
        if time.monotonic() >= deadline:
            error = info.error if info is not None else "not in the metadata"
            raise SystemExit(f"count_spans: topic {topic!r} is not available: {error}")
        time.sleep(0.5)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", default="127.0.0.1:9092", help="bootstrap host:port")
    parser.add_argument("--topic", default="otlp_spans")
    parser.add_argument("--idle", type=float, default=5.0,
                        help="stop after this many seconds without a new record")
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="stop after this many seconds in all")
    parser.add_argument("--ids", help="file of 'traceid spanid' lines that must be in the topic")
    args = parser.parse_args()

    consumer = Consumer({
        "bootstrap.servers": args.broker,
        # Partitions are assigned by hand; the group id is only required by the client.
        "group.id": f"weir-count-spans-{uuid.uuid4()}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.max.bytes": 16 * 1024 * 1024,
        "max.partition.fetch.bytes": 8 * 1024 * 1024,
    })
    started = time.monotonic()
    partitions = partitions_of(consumer, args.topic, min(30.0, args.max_seconds))
    consumer.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in partitions])

    records = spans = undecodable = 0
    seen = set()
    traces = set()
    duplicates = 0
    last_new = time.monotonic()
    stopped_by = "idle"
    while True:
        now = time.monotonic()
        if now - last_new >= args.idle:
            break
        if now - started >= args.max_seconds:
            stopped_by = "max-seconds"
            break
        batch = consumer.consume(num_messages=1000, timeout=0.5)
        for message in batch:
            if message.error() is not None:
                if message.error().code() != KafkaError._PARTITION_EOF:
                    print(f"count_spans: {message.error()}", file=sys.stderr)
                continue
            records += 1
            last_new = time.monotonic()
            data = TracesData()
            try:
                data.ParseFromString(message.value() or b"")
            except Exception:  # noqa: BLE001 - any undecodable record is counted, not fatal
                undecodable += 1
                continue
            for resource_spans in data.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        spans += 1
                        key = span.trace_id + span.span_id
                        if key in seen:
                            duplicates += 1
                        else:
                            seen.add(key)
                        traces.add(span.trace_id)
    consumer.close()

    result = {
        "topic": args.topic,
        "partitions": len(partitions),
        "records": records,
        "spans": spans,
        "distinct_spans": len(seen),
        "duplicate_spans": duplicates,
        "traces": len(traces),
        "undecodable_records": undecodable,
        "stopped_by": stopped_by,
        "seconds": round(time.monotonic() - started, 2),
    }
    if args.ids:
        missing = expected = 0
        with open(args.ids, encoding="ascii") as ids:
            for line in ids:
                parts = line.split()
                if len(parts) != 2:
                    continue
                expected += 1
                if bytes.fromhex(parts[0]) + bytes.fromhex(parts[1]) not in seen:
                    missing += 1
        result["ids_expected"] = expected
        result["ids_missing"] = missing
    print(json.dumps(result))


if __name__ == "__main__":
    main()
