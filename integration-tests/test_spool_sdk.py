"""The spool against a real application (issue 17): the OpenTelemetry Python SDK at its default
settings (BatchSpanProcessor, OTLP/gRPC exporter: see sdk_app.py) in a process of its own
creates about RATE spans per second, each with a unique name, while the broker is stalled
(SIGSTOP). Afterwards the independent consumer must find in Kafka every span the application
created: the SDK's own retries give up after 10 s and its queue holds 2048 spans, so whatever
the gateway does not accept quickly and durably is lost in the application.

The same stall without a spool must show the loss, so the check can fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from harness import _die_with_parent, consume_spans, log_tail, metric_value

APP = Path(__file__).resolve().parent / "sdk_app.py"
RATE = 1000
BEFORE_S = 3
AFTER_S = 5


class App:
    """sdk_app.py sending to gw's OTLP/gRPC port for `seconds`."""

    def __init__(self, gw, workdir: Path, prefix: str, seconds: float):
        self.names_path = workdir / f"{gw.name}-{prefix}-names.txt"
        self.log_path = workdir / f"{gw.name}-{prefix}-app.log"
        self.seconds = seconds
        # Nothing of the test process's OTEL_* settings: the SDK's defaults, but for where to send.
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://{gw.grpc_target}"
        env["OTEL_SERVICE_NAME"] = "weir-sdk-app"
        args = [sys.executable, str(APP), str(seconds), str(RATE), str(self.names_path), prefix]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                args,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )

    def wait(self) -> list[str]:
        """Waits for the app to end (its shutdown exports what it queued); the span names it created."""
        try:
            code = self.proc.wait(timeout=self.seconds + 60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"the SDK app did not end\n{log_tail(self.log_path)}") from None
        assert code == 0, f"the SDK app exited with {code}\n{log_tail(self.log_path)}"
        return self.names_path.read_text().split()

    def sdk_dropped(self) -> int:
        """How many times the SDK logged that its queue was full and it dropped a span."""
        return self.log_path.read_text(errors="replace").count("Queue full, dropping")


def stall_while_the_app_sends(broker, gw, workdir: Path, prefix: str, stall_s: float) -> tuple[App, list[str]]:
    app = App(gw, workdir, prefix, BEFORE_S + stall_s + AFTER_S)
    time.sleep(BEFORE_S)
    broker.pause()
    try:
        time.sleep(stall_s)
    finally:
        broker.resume()
    return app, app.wait()


def missing_spans(gw, created: list[str], timeout: float) -> set[str]:
    _, spans = consume_spans(gw, want=len(created), timeout=timeout)
    return set(created) - {s.name for *_, s in spans}


def check_nothing_lost(broker_factory, gateway_factory, workdir, stall_s: float):
    b = broker_factory()
    gw = gateway_factory(on_broker=b)
    started = time.monotonic()
    app, created = stall_while_the_app_sends(b, gw, workdir, f"sdk{int(stall_s)}", stall_s)
    assert len(created) >= RATE * (stall_s + BEFORE_S), f"the app created only {len(created)} spans"
    missing = missing_spans(gw, created, timeout=60)
    samples = gw.metrics()
    spooled = metric_value(samples, "weir_spool_spooled_records_total")
    print(
        f"\n{stall_s:.0f} s stall: {len(created)} spans created, {len(missing)} missing, "
        f"{spooled:.0f} records spooled, SDK queue-full drops logged {app.sdk_dropped()}, "
        f"gateway VmHWM {gw.hwm_kib()} KiB, {time.monotonic() - started:.0f} s"
    )
    assert spooled > 0, "nothing was spooled during the stall"
    assert not missing, (
        f"{len(missing)} of {len(created)} spans the application created are not in Kafka, "
        f"e.g. {sorted(missing)[:5]}; SDK queue-full drops: {app.sdk_dropped()}\n{log_tail(app.log_path, 10, 3)}"
    )


def test_sdk_at_defaults_loses_nothing_in_a_30s_stall(broker_factory, gateway_factory, workdir):
    check_nothing_lost(broker_factory, gateway_factory, workdir, 30)


def test_sdk_at_defaults_loses_nothing_in_a_120s_stall(broker_factory, gateway_factory, workdir):
    check_nothing_lost(broker_factory, gateway_factory, workdir, 120)


def test_sdk_at_defaults_loses_spans_in_a_30s_stall_without_the_spool(broker_factory, gateway_factory, workdir):
    b = broker_factory()
    gw = gateway_factory({"spool.enabled": False}, on_broker=b)
    app, created = stall_while_the_app_sends(b, gw, workdir, "sdknospool", 30)
    missing = missing_spans(gw, created, timeout=20)
    print(f"\n30 s stall without a spool: {len(created)} spans created, {len(missing)} missing")
    assert missing, f"all {len(created)} spans reached Kafka without a spool: the stall did not bite"
