"""Crash safety: a gateway killed with SIGKILL under load loses nothing it acknowledged.

The gateway answers an Export request only after Kafka acknowledged every record of it
(acks=all). So whatever a client saw acknowledged is in Kafka, whenever the process dies. The
test holds it to that with real processes:

1. `weir-loadgen` sends traces over OTLP/gRPC and OTLP/HTTP at once (two load generators),
   each writing the ids of every span of every fully acknowledged request (`--ids-out`).
2. Once the gateway has accepted a good share of spans (read from its /metrics), it is killed
   with SIGKILL: no drain, no producer flush, requests cut mid-flight.
3. A new gateway process starts on the same ports and config; the load generators reconnect
   and go on until the new process has accepted spans too, then stop (SIGINT) and write out
   what was acknowledged.
4. An independent consumer (confluent-kafka + the `opentelemetry-proto` classes) reads the
   topic; every acknowledged (trace id, span id) must be there. Spans of requests that failed
   or were cut may be there or not (a client retries them).

Why this can fail: a gateway that acknowledged before Kafka did (as Rotel does, replying when
a request is queued) would lose the requests in its queue and in the producer's buffer at the
SIGKILL, and their span ids would be in the `--ids-out` files but not in the topic.
`test_the_check_catches_a_gateway_that_acknowledges_early` runs the same scenario and the
same check against such a gateway (a small proxy in this file that answers 200 at once and
forwards to the real gateway a second later) and requires the check to report losses.

Bounded: the load generators get a duration cap and a SIGINT; every wait is a poll with a
deadline; the consumer has its own timeout.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from harness import (
    REPO_ROOT,
    Gateway,
    consume,
    decode_traces,
    free_ports,
    log_tail,
    metric_value,
    parse_prometheus,
    port_open,
    spawn,
    spans_of,
    unique_name,
    wait_until,
)

LOADGEN_BIN = Path(os.environ.get("WEIR_LOADGEN_BIN", REPO_ROOT / "target" / "debug" / "weir-loadgen"))
# Spans per second each load generator offers, and spans per request.
RATE = 1500
SPANS_PER_REQUEST = 20
# The kill comes when this many spans were accepted, and the load stops when the restarted
# gateway has accepted as many again.
SPANS_BEFORE_KILL = 12000
SPANS_AFTER_RESTART = 12000
# The longest the consumer reads when it cannot find every acknowledged span.
READ_TIMEOUT_S = 20
# No load generator runs longer than this, whatever happens to the gateway.
LOAD_CAP_S = 90


def loadgen(transport: str, endpoint: str, ids_out: Path, log_path: Path) -> subprocess.Popen:
    if not LOADGEN_BIN.exists():
        pytest.fail(f"{LOADGEN_BIN} does not exist: build it (cargo build --workspace --bins) or set WEIR_LOADGEN_BIN")
    return spawn(
        [
            str(LOADGEN_BIN),
            "--transport",
            transport,
            "--endpoint",
            endpoint,
            "--rate",
            str(RATE),
            "--max-in-flight",
            "64",
            "--spans-per-request",
            str(SPANS_PER_REQUEST),
            "--spans-per-trace",
            "5",
            "--services",
            "2",
            "--pool",
            "16",
            "--duration",
            str(LOAD_CAP_S),
            "--timeout",
            "5",
            "--ids-out",
            str(ids_out),
            "--json",
        ],
        log_path,
    )


def read_ids(path: Path) -> set[tuple[str, str]]:
    ids = set()
    for line in path.read_text().splitlines():
        if line.strip():
            trace_id, span_id = line.split()
            ids.add((trace_id.lower(), span_id.lower()))
    return ids


def report(log_path: Path) -> dict:
    """The load generator's JSON report: the last line of its log that parses as an object."""
    for line in reversed(log_path.read_text(errors="replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise AssertionError(f"no JSON report in {log_path}:\n{log_tail(log_path)}")


def missing_acknowledged(bootstrap: str, topic: str, acked: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Acknowledged spans the independent consumer does not find in the topic. It reads from
    the beginning of every partition and stops once it has found every acknowledged span, or
    after READ_TIMEOUT_S (reading everything, so a slow read is not mistaken for a loss)."""
    found: set[tuple[str, str]] = set()

    def newly_found(record) -> int:
        ids = {(s.trace_id.hex(), s.span_id.hex()) for _, _, s in spans_of(decode_traces(record.value))}
        new = (ids & acked) - found
        found.update(new)
        return len(new)

    consume(bootstrap, topic, len(acked), count=newly_found, timeout=READ_TIMEOUT_S, settle=0.5)
    return acked - found


def accepted_spans(admin_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=2) as resp:
        return metric_value(parse_prometheus(resp.read().decode()), "otelcol_receiver_accepted_spans")


class KillAndRestart:
    """Runs the scenario against `target`: an object with start(), kill() (SIGKILL) and
    accepted() (spans acknowledged by the current process), and grpc/http endpoints."""

    def __init__(self, target, workdir: Path, transports: list[str]):
        self.target = target
        self.workdir = workdir
        self.transports = transports
        self.ids = {t: workdir / f"{unique_name('acked-' + t)}.txt" for t in transports}
        self.logs = {t: workdir / f"{unique_name('loadgen-' + t)}.log" for t in transports}
        self.procs: dict[str, subprocess.Popen] = {}

    def run(self) -> set[tuple[str, str]]:
        """Returns every acknowledged span id."""
        t0 = time.monotonic()
        try:
            for t in self.transports:
                self.procs[t] = loadgen(t, self.target.endpoint(t), self.ids[t], self.logs[t])
            wait_until(
                f"{SPANS_BEFORE_KILL} spans accepted before the kill",
                lambda: self._loadgens_alive() and self.target.accepted() >= SPANS_BEFORE_KILL,
                timeout=60,
                interval=0.05,
            )
            t_kill = time.monotonic()
            self.target.kill()
            self.target.start()
            t_ready = time.monotonic()
            wait_until(
                f"{SPANS_AFTER_RESTART} spans accepted after the restart",
                lambda: self._loadgens_alive() and self.target.accepted() >= SPANS_AFTER_RESTART,
                timeout=60,
                interval=0.1,
            )
            t_stop = time.monotonic()
            for p in self.procs.values():
                p.send_signal(signal.SIGINT)
            for t, p in self.procs.items():
                rc = p.wait(timeout=30)
                assert rc == 0, f"weir-loadgen --transport {t} exited with {rc}:\n{log_tail(self.logs[t])}"
        finally:
            for p in self.procs.values():
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=10)
        acked: set[tuple[str, str]] = set()
        for t in self.transports:
            r = report(self.logs[t])
            ids = read_ids(self.ids[t])
            # The run must have crossed the kill: acknowledged spans, and failed requests.
            assert ids, f"{t}: nothing was acknowledged\n{log_tail(self.logs[t])}"
            assert r["requests_failed"] > 0, f"{t}: no request failed, so the kill hit nothing: {r}"
            # Nothing is refused in part here, so every acknowledged span is in the ids file.
            assert r["requests_partial"] == 0, f"{t}: {r}"
            assert len(ids) == r["spans_acknowledged"], (
                f"{t}: --ids-out has {len(ids)} spans, the report {r['spans_acknowledged']}"
            )
            acked |= ids
            print(
                f"{t}: {r['requests_ok']} requests acknowledged ({len(ids)} spans), {r['requests_failed']} failed "
                f"{r['failures']}"
            )
        print(
            f"killed at {t_kill - t0:.1f}s, ready again after {t_ready - t_kill:.1f}s, "
            f"load stopped at {t_stop - t0:.1f}s"
        )
        return acked

    def _loadgens_alive(self) -> bool:
        for t, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"weir-loadgen --transport {t} exited early ({p.returncode}):\n{log_tail(self.logs[t])}")
        return True


class RealGateway:
    """The gateway under test: SIGKILL, then a new process on the same ports and config."""

    def __init__(self, gw: Gateway):
        self.gw = gw
        self.killed: list[subprocess.Popen] = []

    def endpoint(self, transport: str) -> str:
        return f"http://{self.gw.grpc_target}" if transport == "grpc" else f"{self.gw.http_base}/v1/traces"

    def accepted(self) -> float:
        return accepted_spans(self.gw.admin_port)

    def kill(self):
        proc = self.gw.proc
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        self.killed.append(proc)

    def start(self):
        self.gw.start(ready_timeout=30)


def test_sigkill_under_load_loses_no_acknowledged_span(gateway_factory, workdir):
    gw = gateway_factory()
    scenario = KillAndRestart(RealGateway(gw), workdir, ["grpc", "http-proto"])
    acked = scenario.run()
    missing = missing_acknowledged(gw.broker.bootstrap, gw.topics["traces"], acked)
    print(f"{len(acked)} acknowledged spans, {len(missing)} of them missing from Kafka")
    assert not missing, (
        f"{len(missing)} of {len(acked)} acknowledged spans are not in Kafka, e.g. {sorted(missing)[:5]}\n"
        f"--- gateway log:\n{gw.log()}"
    )
    # The gateway ran twice, and the second process is the one serving now.
    assert len(scenario.target.killed) == 1 and gw.proc.poll() is None


# ---------------------------------------------------------------------------------------------
# The control: a gateway that acknowledges before Kafka does.


class EarlyAckProxy:
    """An OTLP/HTTP "gateway" that answers 200 as soon as it has read a request and forwards
    it to the real gateway a second later, in its own process (run from this file)."""

    def __init__(self, gw: Gateway, workdir: Path):
        self.gw = gw
        self.port = free_ports(1)[0]
        self.log_path = workdir / f"{unique_name('early-ack-proxy')}.log"
        self.proc: subprocess.Popen | None = None
        self.killed: list[subprocess.Popen] = []
        self.base_accepted = 0.0

    def endpoint(self, transport: str) -> str:
        assert transport == "http-proto"
        return f"http://127.0.0.1:{self.port}/v1/traces"

    def accepted(self) -> float:
        # What the real gateway accepted since this proxy process started.
        return accepted_spans(self.gw.admin_port) - self.base_accepted

    def start(self):
        self.base_accepted = accepted_spans(self.gw.admin_port)
        self.proc = spawn(
            [sys.executable, __file__, "--early-ack-proxy", str(self.port), f"{self.gw.http_base}/v1/traces"],
            self.log_path,
        )
        wait_until("the early-ack proxy listens", lambda: self._alive() and port_open(self.port), timeout=15)

    def _alive(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the proxy exited ({self.proc.returncode}):\n{log_tail(self.log_path)}")
        return True

    def kill(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.killed.append(self.proc)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def test_the_check_catches_a_gateway_that_acknowledges_early(gateway_factory, workdir):
    gw = gateway_factory()
    proxy = EarlyAckProxy(gw, workdir)
    proxy.start()
    try:
        acked = KillAndRestart(proxy, workdir, ["http-proto"]).run()
    finally:
        proxy.stop()
    missing = missing_acknowledged(gw.broker.bootstrap, gw.topics["traces"], acked)
    print(f"{len(acked)} acknowledged spans, {len(missing)} of them missing from Kafka")
    # About a second of load was queued in the proxy at the kill: the check must see it gone.
    assert len(missing) >= SPANS_PER_REQUEST, (
        f"the check found {len(missing)} of {len(acked)} acknowledged spans missing behind a gateway that "
        f"acknowledges before Kafka; it should have found the requests the proxy held at the kill"
    )


def _early_ack_proxy(port: int, upstream: str):
    """The proxy's process: reply 200 (an empty ExportTraceServiceResponse) at once, queue the
    body, and forward the queue to `upstream` once a second."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    pending: queue.Queue[bytes] = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802 - the http.server API
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            pending.put(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    def forward():
        while True:
            time.sleep(1.0)
            batch = []
            while not pending.empty():
                batch.append(pending.get())
            for body in batch:
                req = urllib.request.Request(
                    upstream, data=body, headers={"Content-Type": "application/x-protobuf"}, method="POST"
                )
                try:
                    urllib.request.urlopen(req, timeout=10).read()
                except OSError as e:
                    print(f"forwarding failed: {e}", flush=True)

    threading.Thread(target=forward, daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"early-ack proxy on {port} -> {upstream}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--early-ack-proxy":
        _early_ack_proxy(int(sys.argv[2]), sys.argv[3])
    else:
        sys.exit(f"usage: {sys.argv[0]} --early-ack-proxy PORT UPSTREAM_URL")
