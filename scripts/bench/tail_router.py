#!/usr/bin/env python3
"""Benchmarks weir-tail-router: spans decided per CPU-second of the router process.

1. Starts Tansu and a weir-gateway (tail policy: errors marked, 1% baseline) and preloads the
   hot topic through it with weir-loadgen (--error-rate marks about 10% of the traces of 10
   spans); the gateway publishes its decision windows and is stopped (sealing them).
2. Starts weir-tail-router (delay 1s) on the preloaded topic, waits until it has decided every
   hot record (its records counter stops moving and equals the records in the topic), and
   reads its CPU time (utime + stime from /proc/PID/stat) from readiness to the last decision.
3. Counts the spans that reached the cold topic with an independent consumer.

Prints one JSON object. Usage (release binaries, built with
`cargo build --release -p weir-gateway -p weir-tail-router -p weir-loadgen`):
  scripts/bench/tail_router.py --bin-dir target/release --requests 3000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "integration-tests"))

import harness  # noqa: E402

POLICY = """
version: 1
tail:
  window: 10s
  expected_traces: 1000000
  false_positive_rate: 0.001
  publish_interval: 1s
  baseline_probability: 0.01
  rules:
    - { name: errors, error: true }
    - { name: slow-client, slower_than: 45ms, span_kind: client }
"""


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 (1-based); after the comm field: index 11 and 12.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def decided(router: harness.TailRouter) -> float:
    return sum(v for name, _, v in router.metrics() if name == "weir_tail_router_records_total")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", default=str(ROOT / "target" / "release"))
    ap.add_argument("--requests", type=int, default=3000, help="loadgen requests of 100 spans")
    ap.add_argument("--error-rate", type=float, default=0.01)
    ap.add_argument("--partitions", type=int, default=4)
    args = ap.parse_args()
    bins = Path(args.bin_dir)
    os.environ["WEIR_GATEWAY_BIN"] = str(bins / "weir-gateway")
    os.environ["WEIR_TAIL_ROUTER_BIN"] = str(bins / "weir-tail-router")

    work = Path(tempfile.mkdtemp(prefix="weir-tail-bench-"))
    broker = harness.Broker(work).start()
    gw = router = None
    try:
        hot, cold, decisions = (harness.unique_name(n) for n in ("bench-hot", "bench-cold", "bench-dec"))
        broker.create_topic(hot, args.partitions)
        broker.create_topic(cold, args.partitions)
        broker.create_topic(decisions, 1)
        policy = work / "tail-policy.yaml"
        policy.write_text(POLICY)
        gw = harness.Gateway(
            broker,
            work,
            {"kafka.traces.topic": hot, "policy_file": str(policy), "tail.decisions_topic": decisions},
            create_topics=False,
        ).start()
        load = subprocess.run(
            [
                str(bins / "weir-loadgen"),
                "--endpoint", f"http://{gw.grpc_target}",
                "--concurrency", "8",
                "--requests", str(args.requests),
                "--error-rate", str(args.error_rate),
                "--json",
            ],
            capture_output=True, text=True, timeout=900, check=True,
        )
        report = json.loads(load.stdout)
        acked_spans = report["spans_acknowledged"]
        time.sleep(2)
        marked_traces = sum(v for name, _, v in gw.metrics() if name == "weir_tail_traces_marked_total")
        gw.stop()
        # Until every acknowledged span is read (or 90 s): one poll per record plus the empty
        # polls of the 90 s, so the count bound never cuts the read short.
        hot_records = harness.consume(
            broker.bootstrap,
            hot,
            want=acked_spans,
            count=harness.span_count,
            timeout=90,
            settle=1,
            max_polls=args.requests * 10 + 1000,
        )
        hot_spans = sum(harness.span_count(r) for r in hot_records)

        router = harness.TailRouter(
            broker,
            work,
            {
                "kafka.hot_topic": hot,
                "kafka.cold_topic": cold,
                "kafka.decisions_topic": decisions,
                "delay": "1s",
                "batch_size": 5000,
                "log.level": "warn",
            },
        )
        router.start(ready_timeout=120)
        pid = router.proc.pid
        cpu_start, t_start = cpu_seconds(pid), time.monotonic()
        last, cpu_last, t_last, stable_since = -1.0, cpu_start, t_start, time.monotonic()
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            time.sleep(0.5)
            n = decided(router)
            if n != last:
                last, cpu_last, t_last, stable_since = n, cpu_seconds(pid), time.monotonic(), time.monotonic()
            elif n >= len(hot_records) and time.monotonic() - stable_since > 3:
                break
        router_cpu = cpu_last - cpu_start
        rss_kib = harness.proc_status_kib(pid, "VmHWM")
        samples = router.metrics()
        outcomes = {
            labels.get("outcome"): v for name, labels, v in samples if name == "weir_tail_router_records_total"
        }
        window_bytes = harness.metric_value(samples, "weir_tail_router_window_bytes")
        cold_records = harness.consume(broker.bootstrap, cold, want=1 << 40, timeout=20, settle=0)
        cold_spans = sum(harness.span_count(r) for r in cold_records)
        print(
            json.dumps(
                {
                    "loadgen_acked_spans": acked_spans,
                    "traces_marked_by_gateway": marked_traces,
                    "hot_records": len(hot_records),
                    "hot_spans": hot_spans,
                    "records_decided": last,
                    "outcomes": outcomes,
                    "cold_records": len(cold_records),
                    "cold_spans": cold_spans,
                    "router_cpu_seconds": round(router_cpu, 3),
                    "router_wall_seconds": round(t_last - t_start, 3),
                    "spans_per_cpu_second": round(hot_spans / router_cpu) if router_cpu > 0 else None,
                    "records_per_cpu_second": round(len(hot_records) / router_cpu) if router_cpu > 0 else None,
                    "router_vmhwm_kib": rss_kib,
                    "router_window_bytes": window_bytes,
                },
                indent=2,
            )
        )
        return 0
    finally:
        for p in (router, gw):
            if p is not None:
                p.stop()
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
