"""Collector habits a migrating user brings: `${env:...}`/`${file:...}` in the config file, gRPC
connections that age out (GOAWAY) so clients move to new replicas without failing an RPC, and
CORS on OTLP/HTTP for browser SDKs (a real preflight, then a real POST)."""

from __future__ import annotations

import json
import threading
import time

import requests

from harness import (
    TRACE_PATH,
    Gateway,
    consume,
    grpc_export_traces,
    make_span,
    metric_value,
    new_trace_id,
    traces_request,
    wait_until,
)


def one_span():
    return traces_request([make_span(new_trace_id(), name="parity")])


# --- ${env:...} and ${file:...} --------------------------------------------------------------


def test_config_references_to_the_environment_and_files(broker, workdir, monkeypatch):
    gw = Gateway(broker, workdir)
    topic_file = workdir / f"{gw.name}-topic"
    topic_file.write_text(gw.topics["logs"] + "\n")
    monkeypatch.setenv("WEIR_IT_ADMIN_PORT", str(gw.admin_port))
    monkeypatch.setenv("WEIR_IT_TRACES_TOPIC", gw.topics["traces"])
    gw.config["admin"]["endpoint"] = "127.0.0.1:${env:WEIR_IT_ADMIN_PORT}"
    gw.config["kafka"]["traces"]["topic"] = "${WEIR_IT_TRACES_TOPIC}"
    gw.config["kafka"]["logs"]["topic"] = "${file:%s}" % topic_file
    # A default for an unset variable, as the Collector's `:-`.
    gw.config["kafka"]["client_id"] = "${env:WEIR_IT_UNSET_CLIENT_ID:-weir-it}"
    gw.start()  # waits for /readyz on the port the environment named
    try:
        r = requests.post(
            gw.http_base + TRACE_PATH,
            data=one_span().SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
            timeout=30,
        )
        assert r.status_code == 200, r.content
        assert len(consume(broker.bootstrap, gw.topics["traces"], want=1)) == 1
        text = gw.config_path.read_text()
        assert "${env:WEIR_IT_ADMIN_PORT}" in text, "the file on disk holds the reference"
    finally:
        gw.stop()


def test_a_config_reference_that_cannot_be_read_names_itself(broker, workdir):
    import subprocess

    from harness import gateway_bin

    cfg = workdir / "bad-reference.yaml"
    cfg.write_text(json.dumps({"kafka": {"client_id": "${file:/nonexistent/weir-it-secret}"}}))
    p = subprocess.run(
        [str(gateway_bin()), "--check-config", "--config", str(cfg)], capture_output=True, timeout=30
    )
    assert p.returncode != 0
    assert b"/nonexistent/weir-it-secret" in p.stderr and b"line 1" in p.stderr, p.stderr


# --- max_connection_age ----------------------------------------------------------------------


def test_an_aged_grpc_connection_goes_away_and_its_inflight_rpc_succeeds(broker_factory, gateway_factory):
    import grpc

    from harness import GRPC_TRACE_EXPORT
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    b = broker_factory()
    gw = gateway_factory(
        {
            "receivers.grpc.keepalive": {
                "server_parameters": {"max_connection_age": "2s", "max_connection_age_grace": "30s"}
            },
            "limits.export_timeout": "20s",
            "spool.enabled": False,
        },
        on_broker=b,
    )

    def aged():
        return metric_value(
            gw.metrics(), "weir_receiver_closed_connections_total", listener="grpc", reason="max_connection_age"
        )

    with grpc.insecure_channel(gw.grpc_target) as ch:
        export = ch.unary_unary(
            GRPC_TRACE_EXPORT,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString,
        )
        export(one_span(), timeout=30)  # the connection is open
        # Kafka stops answering: the next RPC waits for its acknowledgement, in flight.
        b.pause()
        result = {}

        def in_flight():
            try:
                result["resp"] = export(one_span(), timeout=40)
            except grpc.RpcError as e:
                result["err"] = e

        t = threading.Thread(target=in_flight)
        t.start()
        try:
            wait_until("GOAWAY for max_connection_age", lambda: aged() >= 1, timeout=15, interval=0.2)
            assert t.is_alive(), f"the RPC ended before the connection aged: {result}"
        finally:
            b.resume()
        t.join(timeout=40)
        assert "err" not in result, f"the in-flight RPC failed: {result.get('err')}"
        assert "resp" in result
        # The channel reconnects on its own: the next RPC goes over a new connection.
        export(one_span(), timeout=30)
        assert aged() >= 1


def test_connections_do_not_age_without_max_connection_age(gateway):
    with __import__("grpc").insecure_channel(gateway.grpc_target):
        for _ in range(3):
            _, err = grpc_export_traces(gateway, one_span())
            assert err is None, err
            time.sleep(1)
    assert metric_value(
        gateway.metrics(), "weir_receiver_closed_connections_total", listener="grpc", reason="max_connection_age"
    ) == 0


# --- CORS ------------------------------------------------------------------------------------

CORS_HEADERS = (
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-max-age",
)


def test_cors_preflight_and_post_from_an_allowed_origin(gateway_factory):
    gw = gateway_factory({
        "receivers.http.cors": {
            "allowed_origins": ["https://*.example.com", "http://localhost:3000"],
            "allowed_headers": ["x-tenant"],
            "max_age": 7200,
        }
    })
    url = gw.http_base + TRACE_PATH
    origin = "https://app.example.com"
    pre = requests.options(
        url,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-tenant",
        },
        timeout=10,
    )
    assert 200 <= pre.status_code < 300, pre.status_code  # an ok status, as Fetch requires
    assert pre.headers["Access-Control-Allow-Origin"] == origin
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    allowed = {h.strip().lower() for h in pre.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"content-type", "x-tenant"} <= allowed
    assert pre.headers["Access-Control-Max-Age"] == "7200"
    assert "origin" in pre.headers.get("Vary", "").lower()

    r = requests.post(
        url,
        data=one_span().SerializeToString(),
        headers={"Content-Type": "application/x-protobuf", "Origin": origin, "x-tenant": "t"},
        timeout=30,
    )
    assert r.status_code == 200, r.content
    assert r.headers["Access-Control-Allow-Origin"] == origin
    # An error response carries it too, so the browser lets the page read the error.
    bad = requests.post(
        url, data=b"\xff", headers={"Content-Type": "application/x-protobuf", "Origin": origin}, timeout=30
    )
    assert bad.status_code == 400 and bad.headers["Access-Control-Allow-Origin"] == origin


def test_cors_gives_a_disallowed_origin_no_cors_headers(gateway_factory):
    gw = gateway_factory({"receivers.http.cors": {"allowed_origins": ["https://*.example.com"]}})
    url = gw.http_base + TRACE_PATH
    for origin, method, req_headers in (
        ("https://evil.net", "POST", None),
        ("https://example.com.evil.net", "POST", None),
        ("https://app.example.com", "POST", "x-not-allowed"),
    ):
        h = {"Origin": origin, "Access-Control-Request-Method": method}
        if req_headers:
            h["Access-Control-Request-Headers"] = req_headers
        pre = requests.options(url, headers=h, timeout=10)
        leaked = [k for k in CORS_HEADERS if k in {x.lower() for x in pre.headers}]
        assert not leaked, f"{origin} {req_headers}: {leaked}"
    r = requests.post(
        url,
        data=one_span().SerializeToString(),
        headers={"Content-Type": "application/x-protobuf", "Origin": "https://evil.net"},
        timeout=30,
    )
    assert r.status_code == 200  # CORS is the browser's gate, not authentication
    assert "access-control-allow-origin" not in {x.lower() for x in r.headers}


def test_without_cors_a_preflight_is_not_answered_as_cors(gateway):
    pre = requests.options(
        gateway.http_base + TRACE_PATH,
        headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert pre.status_code == 405
    assert "access-control-allow-origin" not in {x.lower() for x in pre.headers}
