"""Tenant authentication on the OTLP receivers: a valid bearer token or API key lands its data
with the tenant (`weir.tenant`) and the configured request metadata as Kafka record headers; a
missing or wrong credential gets 401 / UNAUTHENTICATED over HTTP and gRPC and writes nothing;
no token ever appears in the gateway's log, even at debug level; routing rules can match on the
tenant."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import grpc
import pytest
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.trace.export import SpanExportResult

from harness import (
    GRPC_TRACE_EXPORT,
    TRACE_PATH,
    consume,
    consume_spans,
    decode_traces,
    free_ports,
    gateway_bin,
    make_span,
    metric_value,
    new_trace_id,
    post,
    spans_of,
    traces_request,
    unique_name,
)
from otel_sdk import RecordedTraces, make_traces

TOKEN_A = "tok-a-" + "7f3c9e1d2b4a6f8e0c1d3e5f7a9b2c4d"  # given to the gateway as a hash
TOKEN_B = "tok-b-" + "0a1b2c3d4e5f60718293a4b5c6d7e8f9"  # from a file
TOKEN_C = "tok-c-" + "f0e1d2c3b4a5968778695a4b3c2d1e0f"  # from an environment variable
WRONG = "tok-x-" + "00000000000000000000000000000000"
ENV_VAR = "WEIR_IT_AUTH_TOKEN_C"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def auth_gateway(gateway_factory, tmp_path, monkeypatch):
    token_file = tmp_path / "team-b.token"
    token_file.write_text(TOKEN_B + "\n")
    # The gateway inherits the environment of the test process.
    monkeypatch.setenv(ENV_VAR, TOKEN_C)

    def start(extra: dict | None = None):
        overrides = {
            "log.level": "debug",
            "receivers.auth": {
                "api_key_header": "x-api-key",
                "tokens": [
                    {"tenant": "team-a", "sha256": sha256(TOKEN_A)},
                    {"tenant": "team-b", "file": str(token_file)},
                    {"tenant": "team-c", "env": ENV_VAR},
                ],
            },
            "kafka.include_metadata_keys": ["x-tenant-id", "X-Request-Source"],
        }
        overrides.update(extra or {})
        return gateway_factory(overrides)

    return start


def grpc_call(gw, request, metadata):
    """One raw Export call with `metadata`; (response, None) or (None, RpcError)."""
    with grpc.insecure_channel(gw.grpc_target) as ch:
        call = ch.unary_unary(
            GRPC_TRACE_EXPORT,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString,
        )
        try:
            return call(request, metadata=metadata, timeout=10), None
        except grpc.RpcError as e:
            return None, e


def request_with_one_span(name: str):
    span = make_span(new_trace_id(), name=name)
    return traces_request([span]), span.span_id


def header_dict(rec) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for k, v in rec.headers or []:
        out.setdefault(k, []).append(v)
    return out


def test_valid_credentials_land_with_tenant_and_metadata_headers(auth_gateway):
    gw = auth_gateway()
    sent: dict[bytes, tuple[str, dict]] = {}  # span id -> (tenant, metadata headers)

    # HTTP, bearer token (team-a), with metadata.
    req, sid = request_with_one_span("http-bearer")
    r = post(gw, TRACE_PATH, req.SerializeToString(),
             headers={"Authorization": f"Bearer {TOKEN_A}", "X-Tenant-Id": "acme", "x-request-source": "ci"})
    assert r.status_code == 200, r.content
    sent[sid] = ("team-a", {"x-tenant-id": [b"acme"], "x-request-source": [b"ci"]})

    # HTTP, API key header (team-b from a file), without metadata.
    req, sid = request_with_one_span("http-api-key")
    r = post(gw, TRACE_PATH, req.SerializeToString(), headers={"x-api-key": TOKEN_B})
    assert r.status_code == 200, r.content
    sent[sid] = ("team-b", {})

    # gRPC metadata, bearer (team-c from the environment).
    req, sid = request_with_one_span("grpc-bearer")
    resp, err = grpc_call(gw, req, [("authorization", f"Bearer {TOKEN_C}"), ("x-tenant-id", "globex")])
    assert err is None, err
    sent[sid] = ("team-c", {"x-tenant-id": [b"globex"]})

    # The OpenTelemetry SDK's exporters, configured with headers as users do.
    rec = RecordedTraces()
    spans = make_traces(rec, 1, 1)
    grpc_exp = GrpcSpanExporter(endpoint=gw.grpc_target, insecure=True, timeout=10,
                                headers={"authorization": f"Bearer {TOKEN_A}"})
    assert grpc_exp.export(spans) == SpanExportResult.SUCCESS
    grpc_exp.shutdown()
    for s in spans:
        sent[s.context.span_id.to_bytes(8, "big")] = ("team-a", {})
    rec.clear()
    spans = make_traces(rec, 1, 1)
    http_exp = HttpSpanExporter(endpoint=f"{gw.http_base}/v1/traces", timeout=10,
                                headers={"x-api-key": TOKEN_B, "x-tenant-id": "initech"})
    assert http_exp.export(spans) == SpanExportResult.SUCCESS
    http_exp.shutdown()
    for s in spans:
        sent[s.context.span_id.to_bytes(8, "big")] = ("team-b", {"x-tenant-id": [b"initech"]})

    recs, landed = consume_spans(gw, len(sent))
    assert {span.span_id for *_, span in landed} == set(sent)
    for rec_, _, _, span in landed:
        tenant, metadata = sent[span.span_id]
        headers = header_dict(rec_)
        assert headers.pop("weir.tenant") == [tenant.encode()], (span.name, rec_.headers)
        assert headers == metadata, (span.name, rec_.headers)


@pytest.mark.parametrize("transport", ["http", "grpc"])
@pytest.mark.parametrize(
    "credential",
    [None, f"Bearer {WRONG}", f"Basic {TOKEN_A}", "Bearer ", ("x-api-key", WRONG), ("x-other-key", TOKEN_A)],
    ids=["missing", "wrong-bearer", "basic-scheme", "empty-bearer", "wrong-api-key", "unknown-header"],
)
def test_missing_or_wrong_credentials_are_refused_and_nothing_is_written(auth_gateway, transport, credential):
    gw = auth_gateway()
    if credential is None:
        headers = {}
    elif isinstance(credential, tuple):
        headers = {credential[0]: credential[1]}
    else:
        headers = {"authorization": credential}
    req, _ = request_with_one_span("refused")
    if transport == "http":
        for ctype, body in [("application/x-protobuf", req.SerializeToString()),
                            ("application/json", b'{"resourceSpans": []}')]:
            r = post(gw, TRACE_PATH, body, content_type=ctype, headers=headers)
            assert r.status_code == 401, r.content
            assert r.headers["WWW-Authenticate"] == "Bearer"
            if ctype == "application/json":
                status = json.loads(r.content)
                assert status["code"] == 16, status
            else:
                status = status_pb2.Status.FromString(r.content)
                assert status.code == 16 and status.message, status
    else:
        _, err = grpc_call(gw, req, list(headers.items()))
        assert err is not None and err.code() == grpc.StatusCode.UNAUTHENTICATED, err
        assert err.details()

    # A valid request after the refusals: it is the only thing the topic holds.
    good, good_sid = request_with_one_span("good")
    r = post(gw, TRACE_PATH, good.SerializeToString(), headers={"authorization": f"Bearer {TOKEN_A}"})
    assert r.status_code == 200
    _, landed = consume_spans(gw, 1, timeout=15)
    assert [span.span_id for *_, span in landed] == [good_sid]

    samples = gw.metrics()
    assert metric_value(samples, "weir_receiver_refused_requests_total",
                        transport=transport, reason="unauthenticated") >= 1


def test_tokens_never_appear_in_the_log(auth_gateway):
    gw = auth_gateway()
    req, _ = request_with_one_span("log-check")
    body = req.SerializeToString()
    for token in (TOKEN_A, TOKEN_B, TOKEN_C):
        assert post(gw, TRACE_PATH, body, headers={"authorization": f"Bearer {token}"}).status_code == 200
        assert grpc_call(gw, req, [("authorization", f"Bearer {token}")])[1] is None
    for h in ({"authorization": f"Bearer {WRONG}"}, {"x-api-key": WRONG}, {"authorization": f"Basic {WRONG}"}):
        assert post(gw, TRACE_PATH, body, headers=h).status_code == 401
        assert grpc_call(gw, req, list(h.items()))[1].code() == grpc.StatusCode.UNAUTHENTICATED
    gw.stop()
    log = gw.log_path.read_text()
    assert "DEBUG" in log, "the gateway logged at debug level"
    assert "not authenticated" in log, "refusals are logged (without the credential)"
    for secret in (TOKEN_A, TOKEN_B, TOKEN_C, WRONG, sha256(TOKEN_A)):
        assert secret not in log, f"a credential appears in {gw.log_path}"


def test_bad_token_sources_fail_the_start_without_the_token(tmp_path):
    # A raw token pasted where its hash goes: refused, and the message does not repeat it.
    cfg = tmp_path / "bad-auth.yaml"
    cfg.write_text(json.dumps({"receivers": {"auth": {"tokens": [{"tenant": "a", "sha256": TOKEN_A}]}}}))
    out = subprocess.run([str(gateway_bin()), "--config", str(cfg), "--check-config"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "receivers.auth.tokens[0].sha256" in out.stderr, out.stderr
    assert TOKEN_A not in out.stderr + out.stdout

    # A variable that is not set: the gateway does not start, and names the entry.
    grpc_port, http_port, admin_port = free_ports(3)
    cfg.write_text(json.dumps({
        "receivers": {
            "grpc": {"endpoint": f"127.0.0.1:{grpc_port}"},
            "http": {"endpoint": f"127.0.0.1:{http_port}"},
            "auth": {"tokens": [{"tenant": "a", "env": "WEIR_IT_SURELY_UNSET_VAR"}]},
        },
        "admin": {"endpoint": f"127.0.0.1:{admin_port}"},
    }))
    env = {k: v for k, v in os.environ.items() if k != "WEIR_IT_SURELY_UNSET_VAR"}
    out = subprocess.run([str(gateway_bin()), "--config", str(cfg)], capture_output=True, text=True,
                         timeout=30, env=env)
    assert out.returncode == 1
    assert "receivers.auth.tokens[0].env" in out.stderr and "WEIR_IT_SURELY_UNSET_VAR" in out.stderr, out.stderr


def test_routing_rule_on_tenant(auth_gateway, broker, tmp_path):
    audit_topic = unique_name("it-tenant-audit")
    broker.create_topic(audit_topic)
    policy = tmp_path / "tenant-policy.yaml"
    policy.write_text(
        "version: 1\n"
        "routing:\n"
        "  rules:\n"
        "    - name: team-b-to-audit\n"
        "      match: { tenant: team-b }\n"
        f"      action: {{ topic: {audit_topic} }}\n"
        "    - name: drop-team-c\n"
        "      match: { tenant: { prefix: team-c } }\n"
        "      action: drop\n"
    )
    gw = auth_gateway({"policy_file": str(policy)})
    ids = {}
    for tenant, token in (("team-a", TOKEN_A), ("team-b", TOKEN_B), ("team-c", TOKEN_C)):
        req, sid = request_with_one_span(f"from-{tenant}")
        r = post(gw, TRACE_PATH, req.SerializeToString(), headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.content
        ids[tenant] = sid

    _, default_landed = consume_spans(gw, 1, timeout=15)
    assert [span.span_id for *_, span in default_landed] == [ids["team-a"]]
    recs = consume(gw.broker.bootstrap, audit_topic, 1, timeout=15)
    audit = [span.span_id for r in recs for _, _, span in spans_of(decode_traces(r.value))]
    assert audit == [ids["team-b"]]
    assert all(header_dict(r)["weir.tenant"] == [b"team-b"] for r in recs)
