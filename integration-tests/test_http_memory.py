"""OTLP/HTTP memory under many connections: 64 closed-loop HTTP/1.1 senders with 100-span
protobuf bodies (about 23 KB each, the benchmark's shape) raise the gateway's peak RSS by at
most GROWTH_BOUND over what it held before the load.

The load comes from weir-loadgen; the peak is VmHWM, reset (clear_refs) once the gateway has
warmed up, so the figure is what the load added. Issue 19 bounds a gateway's peak RSS at
64 MiB; a release gateway holds about 16 MiB before this load and peaked at 85 MiB under it
while each request handed its worker thread off (block_in_place: a hundred threads, each with
a malloc arena of its own), 31 MiB since.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from harness import REPO_ROOT, proc_status_kib

LOADGEN_BIN = Path(os.environ.get("WEIR_LOADGEN_BIN", REPO_ROOT / "target" / "debug" / "weir-loadgen"))
MIB = 1024 * 1024
# What the load may add to the peak RSS: the in-flight bodies, their decoded records and
# librdkafka's queue (a few MiB each), with room for a debug build's larger allocations.
GROWTH_BOUND = 32 * MIB
SENDERS = 64
LOAD_S = 8
# A load that sent fewer requests than this measured nothing worth bounding.
MIN_REQUESTS = 500


def loadgen(gw, concurrency: int, seconds: int) -> dict:
    if not LOADGEN_BIN.exists():
        pytest.fail(f"{LOADGEN_BIN} does not exist: build it (cargo build --workspace --bins) or set WEIR_LOADGEN_BIN")
    out = subprocess.run(
        [
            str(LOADGEN_BIN),
            "--transport", "http-proto",
            "--compression", "none",
            "--endpoint", gw.http_base,
            "--concurrency", str(concurrency),
            "--duration", str(seconds),
            "--spans-per-request", "100",
            "--spans-per-trace", "10",
            "--attributes", "5",
            "--services", "5",
            "--json",
        ],
        capture_output=True,
        timeout=seconds + 60,
        check=True,
    )
    return json.loads(out.stdout)


def test_many_http_connections_keep_the_peak_rss_bounded(gateway):
    loadgen(gateway, 2, 2)
    before = gateway.reset_hwm_kib() * 1024
    report = loadgen(gateway, SENDERS, LOAD_S)
    peak = gateway.hwm_kib() * 1024
    # Not a size, but the same "Name: value" line.
    threads = proc_status_kib(gateway.pid, "Threads")
    print(
        f"[memory] {SENDERS} OTLP/HTTP senders, {report['requests_ok']} requests of "
        f"{report['mean_request_bytes']:.0f} B: RSS before {before / MIB:.1f} MiB, "
        f"peak {peak / MIB:.1f} MiB, {threads} threads"
    )
    assert report["requests_failed"] == 0, report["failures"]
    assert report["requests_ok"] >= MIN_REQUESTS, report
    assert peak - before <= GROWTH_BOUND, (
        f"{SENDERS} OTLP/HTTP senders raised the peak RSS by {(peak - before) / MIB:.1f} MiB "
        f"(from {before / MIB:.1f} to {peak / MIB:.1f}), over the bound of {GROWTH_BOUND / MIB:.0f} MiB; "
        f"the gateway has {threads} threads"
    )
