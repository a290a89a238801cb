"""Black-box harness for Weir's integration tests.

Starts real processes (Tansu, weir-gateway) on loopback ports chosen at run time, stops them by
PID, and reads Kafka with an independent consumer (confluent-kafka + the OTLP classes of the
`opentelemetry-proto` package), so no check relies on Weir's own decoder. Every wait here is a
bounded poll: a count of tries and a deadline.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_GATEWAY_BIN = REPO_ROOT / "target" / "debug" / "weir-gateway"
DEFAULT_TANSU_BIN = Path.home() / ".cargo" / "bin" / "tansu"
TOPIC_PARTITIONS = 3

TRACE_PATH = "/v1/traces"
METRICS_PATH = "/v1/metrics"
LOGS_PATH = "/v1/logs"
GRPC_TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def gateway_bin() -> Path:
    return Path(os.environ.get("WEIR_GATEWAY_BIN", DEFAULT_GATEWAY_BIN))


def tansu_bin() -> Path:
    return Path(os.environ.get("TANSU_BIN", DEFAULT_TANSU_BIN))


# ---------------------------------------------------------------------------------------------
# Processes and ports


def free_ports(n: int) -> list[int]:
    """Returns n distinct loopback ports that were free a moment ago (bound to port 0)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_until(what: str, check: Callable[[], object], timeout: float, interval: float = 0.1):
    """Polls check() until it returns a truthy value; at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    tries = max(1, int(timeout / interval) + 1)
    last_error: Exception | None = None
    for _ in range(tries):
        try:
            result = check()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - reported below if the bound is reached
            last_error = e
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise TimeoutError(f"{what}: not true within {timeout}s (last error: {last_error!r})")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def stop_process(proc: subprocess.Popen, term_timeout: float = 15.0) -> int | None:
    """Stops proc by PID: SIGCONT (in case a test paused it), SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        os.kill(proc.pid, signal.SIGCONT)
        os.kill(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout=term_timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=10)


def _die_with_parent():
    """Runs in the child before exec: if the test process dies without its teardown (SIGKILL),
    the kernel kills the child too, so no broker or gateway outlives the suite."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(args: list[str], log_path: Path) -> subprocess.Popen:
    """Starts args with stdout and stderr appended to log_path."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )


def log_tail(path: Path, lines: int = 40, head: int = 15) -> str:
    """The first `head` and last `lines` lines of a process log, without terminal colour codes
    (the start says how it began, the end how it finished)."""
    try:
        text = re.sub(r"\x1b\[[0-9;]*m", "", path.read_text(errors="replace")).splitlines()
    except OSError as e:
        return f"(no log at {path}: {e})"
    if len(text) <= head + lines:
        return "\n".join(text)
    return "\n".join([*text[:head], f"... ({len(text) - head - lines} lines) ...", *text[-lines:]])


def proc_status_kib(pid: int, field: str) -> int:
    """A memory field of /proc/PID/status (VmRSS, VmHWM) in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")


# ---------------------------------------------------------------------------------------------
# The broker


class Broker:
    """A Tansu broker with the in-memory engine on a free loopback port, or on `port` (a fresh
    broker in the place of one that was stopped: same address, none of its state)."""

    def __init__(self, workdir: Path, name: str = "tansu", port: int | None = None):
        self.workdir = workdir
        self.name = name
        self.port = port or free_ports(1)[0]
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    # The broker implementation, as messages name it.
    kind = "tansu"

    def command(self) -> list[str]:
        """The command line of a broker on self.port."""
        url = f"tcp://127.0.0.1:{self.port}"
        return [str(tansu_bin()), "broker", "--storage-engine", "memory://tansu/",
                "--listener-url", url, "--advertised-listener-url", url]

    def start(self) -> "Broker":
        self.proc = spawn(self.command(), self.log_path)
        try:
            wait_until(
                f"{self.kind} listening on {self.bootstrap}",
                lambda: self._alive() and port_open(self.port),
                timeout=30,
            )
        except TimeoutError as e:
            self.stop()
            raise RuntimeError(f"{e}\n--- {self.log_path}:\n{log_tail(self.log_path)}") from None
        return self

    def _alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.kind} exited ({self.proc and self.proc.returncode})\n{log_tail(self.log_path)}"
            )
        return True

    def pause(self):
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc, term_timeout=10)

    def kill(self):
        """SIGKILL: the broker and its in-memory data are gone at once."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def create_topic(self, name: str, partitions: int = TOPIC_PARTITIONS):
        """Creates a topic with the Tansu CLI and waits until its metadata shows every partition."""
        cmd = [
            str(tansu_bin()),
            "topic",
            "create",
            name,
            "--partitions",
            str(partitions),
            "--broker",
            f"tcp://{self.bootstrap}",
        ]
        last = None
        for _ in range(5):
            last = subprocess.run(cmd, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
            if last.returncode == 0:
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"tansu topic create {name} failed: {last.stderr or last.stdout}")
        wait_until(
            f"topic {name} has {partitions} partitions",
            lambda: len(self.partitions(name)) == partitions,
            timeout=15,
            interval=0.2,
        )

    def partitions(self, topic: str) -> list[int]:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        md = admin.list_topics(topic=topic, timeout=5)
        t = md.topics.get(topic)
        if t is None or t.error is not None:
            return []
        return sorted(t.partitions)


def noida_bin() -> Path:
    """noida-db's binary (the PyPI package, pinned in scripts/lib.sh, ships it beside a Python
    wrapper): a second Kafka-compatible broker. Run directly, so its PID is the broker's."""
    from importlib.resources import files

    path = Path(str(files("noida_db").joinpath("noida-db")))
    path.chmod(0o755)
    return path


class NoidaBroker(Broker):
    """noida-db's Kafka on a free loopback port: a Kafka-compatible broker written apart from
    Tansu, so the spine's tests show nothing depends on one broker's quirks. Topics are
    created with the Kafka admin API (CreateTopics), as an operator's tooling does."""

    kind = "noida-db"

    def __init__(self, workdir: Path, name: str = "noida"):
        super().__init__(workdir, name)

    def command(self) -> list[str]:
        return [str(noida_bin()), "start", "--only", "kafka", "--host", "127.0.0.1",
                "--kafka-port", str(self.port), "--data-dir", str(self.workdir / f"{self.name}.data")]

    def create_topic(self, name: str, partitions: int = TOPIC_PARTITIONS):
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        admin.create_topics([NewTopic(name, partitions, 1)])[name].result(30)
        wait_until(
            f"topic {name} has {partitions} partitions",
            lambda: len(self.partitions(name)) == partitions,
            timeout=15,
            interval=0.2,
        )


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# ---------------------------------------------------------------------------------------------
# The independent consumer


@dataclass
class Record:
    key: bytes | None
    partition: int
    offset: int
    value: bytes
    # Kafka record headers as (name, value) pairs, in order.
    headers: list[tuple[str, bytes]] | None = None


def consume(
    bootstrap: str,
    topic: str,
    want: int,
    count: Callable[[Record], int] = lambda r: 1,
    timeout: float = 30.0,
    settle: float = 1.0,
    max_polls: int = 100_000,
) -> list[Record]:
    """Reads `topic` from the beginning of every partition until `want` items are seen (count()
    says how many items a record holds) or `timeout` passes, then keeps reading for `settle`
    seconds so that duplicates show up; at most `max_polls` polls (one record or 0.1 s each).
    Returns what it read, in partition/offset order."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique_name("weir-it"),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 100,
            "message.max.bytes": 64 * 1024 * 1024,
            "fetch.max.bytes": 64 * 1024 * 1024,
        }
    )
    try:
        md = consumer.list_topics(topic=topic, timeout=10)
        parts = sorted(md.topics[topic].partitions) if topic in md.topics else []
        if not parts:
            raise RuntimeError(f"topic {topic} has no partitions on {bootstrap}")
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        records: list[Record] = []
        seen = 0
        deadline = time.monotonic() + timeout
        settle_deadline = None
        for _ in range(max_polls):
            now = time.monotonic()
            if settle_deadline is None and seen >= want:
                settle_deadline = now + settle
            if now >= (settle_deadline if settle_deadline is not None else deadline):
                break
            msg = consumer.poll(0.1)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise RuntimeError(f"consuming {topic}: {msg.error()}")
            rec = Record(msg.key(), msg.partition(), msg.offset(), msg.value(), msg.headers())
            records.append(rec)
            seen += count(rec)
        records.sort(key=lambda r: (r.partition, r.offset))
        return records
    finally:
        consumer.close()


def produce(bootstrap: str, topic: str, key: bytes, value: bytes, timeout: float = 15.0):
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    errors = []
    p.produce(topic, value=value, key=key, on_delivery=lambda err, msg: err and errors.append(err))
    left = p.flush(timeout)
    if left or errors:
        raise RuntimeError(f"produce to {topic}: {left} undelivered, errors {errors}")


# ---------------------------------------------------------------------------------------------
# The gateway


def _set_dotted(cfg: dict, dotted: str, value):
    node = cfg
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


class Gateway:
    """weir-gateway started with a generated config on free loopback ports."""

    def __init__(
        self, broker: Broker, workdir: Path, overrides: dict | None = None, create_topics: bool = True
    ):
        self.broker = broker
        self.workdir = workdir
        self.name = unique_name("gw")
        self.grpc_port, self.http_port, self.admin_port = free_ports(3)
        self.topics = {s: unique_name(f"it-{s}") for s in ("traces", "metrics", "logs")}
        self.config = {
            "receivers": {
                "grpc": {"endpoint": f"127.0.0.1:{self.grpc_port}"},
                "http": {"endpoint": f"127.0.0.1:{self.http_port}"},
            },
            "admin": {"endpoint": f"127.0.0.1:{self.admin_port}"},
            "kafka": {
                "brokers": [broker.bootstrap],
                "traces": {"topic": self.topics["traces"]},
                "metrics": {"topic": self.topics["metrics"]},
                "logs": {"topic": self.topics["logs"]},
            },
            # A spool of its own, kept across restarts of this Gateway (same config).
            "spool": {"directory": str(workdir / f"{self.name}-spool")},
            "shutdown_timeout": "10s",
        }
        for k, v in (overrides or {}).items():
            _set_dotted(self.config, k, v)
        # The overrides may have renamed a topic: read the names back.
        for s in self.topics:
            self.topics[s] = self.config["kafka"][s]["topic"]
        self.config_path = workdir / f"{self.name}.yaml"
        self.log_path = workdir / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None
        self.exit_code: int | None = None
        # Set (an ssl.SSLContext) when the admin listener serves TLS: admin requests use https.
        self.admin_ssl = None
        if create_topics:
            for t in self.topics.values():
                broker.create_topic(t)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def admin_base(self) -> str:
        scheme = "https" if self.admin_ssl is not None else "http"
        return f"{scheme}://127.0.0.1:{self.admin_port}"

    def start(self, ready_timeout: float = 30.0) -> "Gateway":
        binary = gateway_bin()
        if not binary.exists():
            raise RuntimeError(
                f"{binary} does not exist: build it (cargo build --workspace --bins) or set WEIR_GATEWAY_BIN"
            )
        # JSON is YAML: the config needs no YAML writer.
        self.config_path.write_text(json.dumps(self.config, indent=2))
        self.proc = spawn([str(binary), "--config", str(self.config_path)], self.log_path)
        try:
            wait_until(
                "gateway /readyz == 200",
                lambda: self._alive() and self.readyz() == 200,
                timeout=ready_timeout,
                interval=0.1,
            )
        except (TimeoutError, RuntimeError) as e:
            self.stop()
            raise RuntimeError(f"{e}\n--- {self.log_path}:\n{log_tail(self.log_path)}") from None
        return self

    def _alive(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"weir-gateway exited with {self.proc.returncode}")
        return True

    def admin_get(self, path: str, timeout: float = 5.0):
        """GET on the admin port: (status, headers (case-insensitive), body)."""
        req = urllib.request.Request(self.admin_base + path)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.admin_ssl) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def readyz(self) -> int | None:
        try:
            return self.admin_get("/readyz", timeout=2.0)[0]
        except OSError:
            return None

    def metrics(self) -> list[tuple[str, dict, float]]:
        status, headers, body = self.admin_get("/metrics")
        assert status == 200, f"/metrics: {status} {body[:200]!r}"
        return parse_prometheus(body.decode())

    def rss_kib(self) -> int:
        return proc_status_kib(self.pid, "VmRSS")

    def hwm_kib(self) -> int:
        return proc_status_kib(self.pid, "VmHWM")

    def reset_hwm_kib(self) -> int:
        """Resets VmHWM to the current RSS (5 to clear_refs) and returns that RSS: the peak from
        here on is what follows."""
        before = self.rss_kib()
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        return before

    def terminate(self):
        os.kill(self.pid, signal.SIGTERM)

    def wait_exit(self, timeout: float) -> int:
        self.exit_code = self.proc.wait(timeout=timeout)
        return self.exit_code

    def stop(self):
        if self.proc is not None:
            self.exit_code = stop_process(self.proc, term_timeout=15)

    def log(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)


# ---------------------------------------------------------------------------------------------
# Prometheus text


def _parse_labels(s: str) -> dict:
    labels = {}
    i = 0
    while i < len(s):
        eq = s.index("=", i)
        name = s[i:eq].strip().lstrip(",").strip()
        assert s[eq + 1] == '"', f"bad label set {s!r}"
        j = eq + 2
        val = []
        while s[j] != '"':
            if s[j] == "\\":
                j += 1
                val.append({"n": "\n"}.get(s[j], s[j]))
            else:
                val.append(s[j])
            j += 1
        labels[name] = "".join(val)
        i = j + 1
        while i < len(s) and s[i] in ", ":
            i += 1
    return labels


def parse_prometheus(text: str) -> list[tuple[str, dict, float]]:
    """Samples of a Prometheus text exposition: (name, labels, value)."""
    samples = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            name, rest = line.split("{", 1)
            labels_s, rest = rest.rsplit("}", 1)
            labels = _parse_labels(labels_s)
        else:
            name, rest = line.split(None, 1)
            labels = {}
        value = rest.split()[0]
        samples.append((name.strip(), labels, float(value)))
    return samples


def metric_value(samples, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when there is none)."""
    return sum(v for n, lbl, v in samples if n == name and all(lbl.get(k) == x for k, x in labels.items()))


# ---------------------------------------------------------------------------------------------
# Building OTLP requests by hand


def any_value(v) -> common_pb2.AnyValue:
    if isinstance(v, bool):
        return common_pb2.AnyValue(bool_value=v)
    if isinstance(v, int):
        return common_pb2.AnyValue(int_value=v)
    if isinstance(v, float):
        return common_pb2.AnyValue(double_value=v)
    if isinstance(v, bytes):
        return common_pb2.AnyValue(bytes_value=v)
    if isinstance(v, (list, tuple)):
        return common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=[any_value(x) for x in v]))
    return common_pb2.AnyValue(string_value=str(v))


def key_values(attrs: dict) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=k, value=any_value(v)) for k, v in attrs.items()]


def attrs_dict(kvs: Iterable[common_pb2.KeyValue]) -> dict:
    """Attributes as a plain dict, for comparisons."""

    def val(v: common_pb2.AnyValue):
        kind = v.WhichOneof("value")
        if kind == "array_value":
            return tuple(val(x) for x in v.array_value.values)
        if kind == "kvlist_value":
            return tuple((kv.key, val(kv.value)) for kv in v.kvlist_value.values)
        return getattr(v, kind) if kind else None

    return {kv.key: val(kv.value) for kv in kvs}


def varint(n: int) -> bytes:
    """A protobuf base-128 varint, for request bytes written by hand."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def new_trace_id() -> bytes:
    return os.urandom(16)


def new_span_id() -> bytes:
    return os.urandom(8)


def make_span(
    trace_id: bytes,
    span_id: bytes | None = None,
    name: str = "op",
    attrs: dict | None = None,
    parent: bytes = b"",
    kind: int = trace_pb2.Span.SPAN_KIND_INTERNAL,
) -> trace_pb2.Span:
    now = time.time_ns()
    return trace_pb2.Span(
        trace_id=trace_id,
        span_id=span_id or new_span_id(),
        parent_span_id=parent,
        name=name,
        kind=kind,
        start_time_unix_nano=now - 1_000_000,
        end_time_unix_nano=now,
        attributes=key_values(attrs or {}),
    )


def traces_request(
    spans: list[trace_pb2.Span], resource: dict | None = None, scope: str = "weir.integration-tests"
) -> trace_service_pb2.ExportTraceServiceRequest:
    return trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=resource_pb2.Resource(
                    attributes=key_values(resource or {"service.name": "weir-it"})
                ),
                scope_spans=[
                    trace_pb2.ScopeSpans(scope=common_pb2.InstrumentationScope(name=scope), spans=spans)
                ],
            )
        ]
    )


# ---------------------------------------------------------------------------------------------
# Reading what landed in Kafka


def hex_ids_to_base64(node):
    """OTLP/JSON writes trace and span ids as hex; protobuf's JSON parser wants base64."""
    id_keys = {"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"}
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k in id_keys and isinstance(v, str):
                try:
                    raw = binascii.unhexlify(v)
                except (binascii.Error, ValueError):
                    raise AssertionError(f"OTLP/JSON {k}={v!r} is not hex") from None
                out[k] = base64.b64encode(raw).decode()
            else:
                out[k] = hex_ids_to_base64(v)
        return out
    if isinstance(node, list):
        return [hex_ids_to_base64(x) for x in node]
    return node


def parse_otlp_json(data: bytes | str, message):
    """Parses OTLP/JSON (hex ids) into `message` with google.protobuf.json_format."""
    json_format.ParseDict(hex_ids_to_base64(json.loads(data)), message)
    return message


def decode_traces(value: bytes, encoding: str = "otlp_proto") -> trace_pb2.TracesData:
    if encoding == "otlp_json":
        return parse_otlp_json(value, trace_pb2.TracesData())
    return trace_pb2.TracesData.FromString(value)


def decode_metrics(value: bytes) -> metrics_pb2.MetricsData:
    return metrics_pb2.MetricsData.FromString(value)


def decode_logs(value: bytes) -> logs_pb2.LogsData:
    return logs_pb2.LogsData.FromString(value)


def spans_of(data) -> list[tuple]:
    """(resource, scope, span) of every span in TracesData or ExportTraceServiceRequest."""
    return [
        (rs.resource, ss.scope, span)
        for rs in data.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]


def span_count(rec: Record, encoding: str = "otlp_proto") -> int:
    return len(spans_of(decode_traces(rec.value, encoding)))


def metric_points(data) -> list[tuple]:
    """(resource, metric, point) of every data point in MetricsData."""
    out = []
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                for p in getattr(m, kind).data_points:
                    out.append((rm.resource, m, p))
    return out


def log_records_of(data) -> list[tuple]:
    return [
        (rl.resource, sl.scope, lr)
        for rl in data.resource_logs
        for sl in rl.scope_logs
        for lr in sl.log_records
    ]


def consume_spans(
    gw: Gateway, want: int, encoding: str = "otlp_proto", timeout: float = 30.0, topic: str | None = None
):
    """Reads trace records of gw's topic; returns (records, [(record, resource, scope, span)])."""
    recs = consume(
        gw.broker.bootstrap,
        topic or gw.topics["traces"],
        want,
        count=lambda r: span_count(r, encoding),
        timeout=timeout,
    )
    spans = []
    for r in recs:
        for res, scope, span in spans_of(decode_traces(r.value, encoding)):
            spans.append((r, res, scope, span))
    return recs, spans


# Raw request helpers -------------------------------------------------------------------------


def post(
    gw: Gateway,
    path: str,
    body: bytes,
    content_type: str = "application/x-protobuf",
    headers: dict | None = None,
    timeout: float = 30.0,
):
    import requests

    h = {"Content-Type": content_type}
    h.update(headers or {})
    return requests.post(gw.http_base + path, data=body, headers=h, timeout=timeout)


def grpc_export_traces(
    gw: Gateway,
    request: trace_service_pb2.ExportTraceServiceRequest,
    timeout: float = 30.0,
    compression=None,
    raw: bytes | None = None,
):
    """Sends one Export call on a raw grpc channel; returns (response, None) or (None, RpcError)."""
    import grpc

    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(gw.grpc_target, options=options, compression=compression) as ch:
        call = ch.unary_unary(
            GRPC_TRACE_EXPORT,
            request_serializer=lambda m: raw if raw is not None else m.SerializeToString(),
            response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString,
        )
        try:
            return call(request, timeout=timeout), None
        except grpc.RpcError as e:
            return None, e


# ---------------------------------------------------------------------------------------------
# The tail router


def tail_router_bin() -> Path:
    """WEIR_TAIL_ROUTER_BIN, else weir-tail-router beside the gateway binary."""
    env = os.environ.get("WEIR_TAIL_ROUTER_BIN")
    return Path(env) if env else gateway_bin().with_name("weir-tail-router")


class TailRouter:
    """weir-tail-router started with a generated config (admin on a free loopback port)."""

    def __init__(self, broker: Broker, workdir: Path, overrides: dict | None = None):
        self.broker = broker
        self.workdir = workdir
        self.name = unique_name("tail-router")
        self.admin_port = free_ports(1)[0]
        self.config = {
            "kafka": {
                "brokers": [broker.bootstrap],
                "group_id": unique_name("it-tail-router"),
                # A SIGKILLed member's partitions move on within seconds, not 45.
                "consumer_properties": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
            },
            "admin": {"endpoint": f"127.0.0.1:{self.admin_port}"},
            "shutdown_timeout": "10s",
        }
        for k, v in (overrides or {}).items():
            _set_dotted(self.config, k, v)
        self.config_path = workdir / f"{self.name}.yaml"
        self.log_path = workdir / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def admin_base(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, ready_timeout: float = 60.0) -> "TailRouter":
        binary = tail_router_bin()
        if not binary.exists():
            raise RuntimeError(f"{binary} does not exist: build it (cargo build -p weir-tail-router)")
        self.config_path.write_text(json.dumps(self.config, indent=2))
        self.proc = spawn([str(binary), "--config", str(self.config_path)], self.log_path)
        try:
            wait_until(
                "tail router /readyz == 200",
                lambda: self._alive() and self.readyz() == 200,
                timeout=ready_timeout,
                interval=0.1,
            )
        except (TimeoutError, RuntimeError) as e:
            self.stop()
            raise RuntimeError(f"{e}\n--- {self.log_path}:\n{log_tail(self.log_path)}") from None
        return self

    def _alive(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"weir-tail-router exited with {self.proc.returncode}")
        return True

    def readyz(self) -> int | None:
        try:
            req = urllib.request.Request(self.admin_base + "/readyz")
            with urllib.request.urlopen(req, timeout=2.0) as resp:
                return resp.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    def metrics(self) -> list[tuple[str, dict, float]]:
        with urllib.request.urlopen(self.admin_base + "/metrics", timeout=5.0) as resp:
            return parse_prometheus(resp.read().decode())

    def kill(self):
        """SIGKILL: no shutdown, no last commit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc, term_timeout=15)

    def log(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)
