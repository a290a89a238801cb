"""A small application instrumented with the OpenTelemetry Python SDK at its defaults, run as
a process of its own by test_spool_sdk.py: a TracerProvider with a BatchSpanProcessor and the
OTLP/gRPC span exporter (the exporter the Collector's users have by default), both configured
by nothing but OTEL_EXPORTER_OTLP_ENDPOINT. It creates traces of SPANS_PER_TRACE spans at
about RATE spans per second for SECONDS, every span with a unique name, writes each name to
NAMES_FILE as it ends the span, and shuts the provider down (which exports what is queued).

    python sdk_app.py SECONDS RATE NAMES_FILE PREFIX

What the SDK itself dropped (its queue was full) is in its log on stderr.
"""

from __future__ import annotations

import sys
import time

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

SPANS_PER_TRACE = 10


def main() -> int:
    seconds, rate, names_path, prefix = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    tracer = provider.get_tracer("weir.sdk-app")
    created = 0
    with open(names_path, "w") as names:
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            # Catch up to the rate in whole traces, then sleep a little.
            while created + SPANS_PER_TRACE <= elapsed * rate:
                root = f"{prefix}-{created}"
                with tracer.start_as_current_span(root):
                    for i in range(1, SPANS_PER_TRACE):
                        with tracer.start_as_current_span(f"{prefix}-{created + i}"):
                            pass
                names.write("\n".join(f"{prefix}-{created + i}" for i in range(SPANS_PER_TRACE)) + "\n")
                created += SPANS_PER_TRACE
            time.sleep(0.005)
    started = time.monotonic()
    provider.shutdown()
    print(f"created {created} spans; shutdown took {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
