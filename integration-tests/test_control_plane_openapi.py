"""The control plane's OpenAPI document against its real answers: every route of the document
is called on the real binary (every method, success and error answers, a real gateway on the
real broker for the gateway routes), and each answer's status, media type and body must be what
the document says, the body checked with `jsonschema` against the operation's response schema
(OpenAPI 3.1 schemas are JSON Schema 2020-12). Answers the document does not describe fail."""

from __future__ import annotations

import http.client
import json
import urllib.parse
import urllib.error
import urllib.request
from collections import defaultdict

import jsonschema
import pytest

from control_plane_harness import (  # noqa: F401  (fixtures)
    ADMIN_TOKEN,
    GATEWAY_TOKEN,
    VIEWER_TOKEN,
    control_plane_factory,
    wait_for,
)
from harness import Gateway, unique_name

POLICY_V1 = "version: 1\n"
POLICY_V2 = "version: 2\nsampling:\n  default_probability: 0.5\n"
POLICY_BAD = "version: 3\nsampling:\n  default_probability: 7\n"


def strict(components: dict) -> dict:
    """The components with undocumented properties refused: every object schema gets
    `unevaluatedProperties: false`, except those other schemas extend with `allOf` (the
    extending schema gets it instead), so an answer with a field the document lacks fails."""
    components = json.loads(json.dumps(components))
    schemas = components["schemas"]
    extended = {
        part["$ref"].rsplit("/", 1)[-1]
        for schema in schemas.values()
        for part in schema.get("allOf", [])
        if "$ref" in part
    }
    for name, schema in schemas.items():
        if name not in extended and (schema.get("type") == "object" or "allOf" in schema):
            schema["unevaluatedProperties"] = False
    return components


class Checker:
    """Calls routes and checks each answer against the document; records what was covered."""

    def __init__(self, cp):
        self.cp = cp
        with urllib.request.urlopen(f"{cp.api_base}/api/v1/openapi.json", timeout=10) as r:
            assert r.headers.get("content-type") == "application/json"
            self.doc = json.load(r)
        jsonschema.Draft202012Validator.check_schema({"$defs": self.doc["components"]["schemas"]})
        self.components = strict(self.doc["components"])
        self.covered: dict[tuple[str, str], set[int]] = defaultdict(set)

    def call(self, method: str, template: str, want: int, token: str | None = None, body=None,
             raw: bytes | None = None, **params):
        """Calls `template` with `params` filled in, expects status `want`, checks the answer."""
        op = self.doc["paths"].get(template, {}).get(method.lower())
        assert op is not None, f"the document lacks {method} {template}"
        path = template.format(**params)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {}
        if data is not None:
            headers["content-type"] = "application/json"
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        conn = http.client.HTTPConnection(urllib.parse.urlsplit(self.cp.api_base).netloc, timeout=15)
        try:
            try:
                conn.request(method, path, body=data, headers=headers)
            except (BrokenPipeError, ConnectionResetError):
                # A body refused as too large is answered before it is all sent, and the
                # connection closed: the answer is still there to read.
                pass
            r = conn.getresponse()
            status, ctype, text = r.status, r.getheader("content-type"), r.read().decode()
        finally:
            conn.close()
        where = f"{method} {path}"
        assert status == want, f"{where}: {status} (wanted {want}): {text[:400]}"
        response = op["responses"].get(str(status)) or op["responses"].get("default")
        assert response is not None, f"{where}: the document does not describe status {status}"
        content = response.get("content", {})
        if not content:
            assert text == "", f"{where}: {status} has a body the document does not describe: {text[:200]}"
        else:
            media = (ctype or "").split(";")[0].strip()
            assert media in content, f"{where}: {status} answered {media}, the document says {list(content)}"
            schema = content[media].get("schema", {})
            instance = json.loads(text) if "json" in media else text
            root = {**schema, "components": self.components}
            validator = jsonschema.Draft202012Validator(root, format_checker=jsonschema.FormatChecker())
            errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
            assert not errors, f"{where}: {status} body does not match the document: " + "; ".join(
                f"{list(e.path)}: {e.message}" for e in errors[:5]
            )
        self.covered[(method.lower(), template)].add(status)
        return json.loads(text) if text and "json" in (ctype or "") else text


@pytest.fixture
def gateway_of(request, broker, workdir, tmp_path):
    started: list[Gateway] = []

    def start(cp, instance_id):
        gw = Gateway(broker, workdir, {
            "control_plane": {
                "endpoint": f"http://{cp.watch_endpoint}",
                "token": GATEWAY_TOKEN,
                "instance_id": instance_id,
                "labels": {"suite": "openapi"},
                "state_dir": str(tmp_path / "state" / instance_id),
                "reconnect": {"initial": "100ms", "max": "1s"},
            },
        })
        started.append(gw)
        return gw.start()

    yield start
    for gw in started:
        gw.stop()


def cp_has_service(cp, name: str) -> bool:
    req = urllib.request.Request(
        f"{cp.api_base}/api/v1/services/{name}", headers={"Authorization": f"Bearer {VIEWER_TOKEN}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status == 200
    except urllib.error.HTTPError:
        return False


def span_metrics_record(service: str) -> bytes:
    """One gateway flush as the span metrics topic carries it: a call count of `service`."""
    import time

    from opentelemetry.proto.common.v1 import common_pb2
    from opentelemetry.proto.metrics.v1 import metrics_pb2

    def kv(k, v):
        return common_pb2.KeyValue(key=k, value=common_pb2.AnyValue(string_value=v))

    point = metrics_pb2.NumberDataPoint(
        as_int=5, time_unix_nano=time.time_ns(),
        attributes=[kv("service.name", service), kv("span.name", "GET /"),
                    kv("span.kind", "SPAN_KIND_SERVER"), kv("status.code", "STATUS_CODE_UNSET")],
    )
    metric = metrics_pb2.Metric(
        name="traces.span.metrics.calls",
        sum=metrics_pb2.Sum(data_points=[point], is_monotonic=True, aggregation_temporality=1),
    )
    return metrics_pb2.MetricsData(resource_metrics=[metrics_pb2.ResourceMetrics(
        scope_metrics=[metrics_pb2.ScopeMetrics(metrics=[metric])])]).SerializeToString()


def test_every_route_answers_as_the_openapi_document_says(control_plane_factory, gateway_of, broker):
    from confluent_kafka import Producer

    topic = unique_name("it-openapi-span-metrics")
    broker.create_topic(topic)
    cp = control_plane_factory(
        "sqlite", extra_yaml=f"span_metrics:\n  brokers: [{broker.bootstrap}]\n  topic: {topic}\n"
    )
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    producer.produce(topic, span_metrics_record("checkout"))
    assert producer.flush(10) == 0
    c = Checker(cp)
    gw_id = unique_name("gw-openapi")
    gw = gateway_of(cp, gw_id)
    wait_for("the gateway connected", lambda: cp.gateways().get(gw_id, {}).get("connected"), 15)

    c.call("GET", "/healthz", 200)
    c.call("GET", "/metrics", 200)
    c.call("GET", "/api/v1/openapi.json", 200)

    # Policies.
    P = "/api/v1/policies"
    c.call("GET", P, 200, VIEWER_TOKEN)
    c.call("GET", P, 401)
    c.call("GET", P, 403, GATEWAY_TOKEN)
    c.call("POST", P, 201, ADMIN_TOKEN, {"document": POLICY_V1})
    c.call("POST", P, 200, ADMIN_TOKEN, {"document": POLICY_V1})
    c.call("POST", P, 201, ADMIN_TOKEN, {"document": POLICY_V2})
    c.call("POST", P, 409, ADMIN_TOKEN, {"document": POLICY_V1 + "# changed\n"})
    c.call("POST", P, 400, ADMIN_TOKEN, {"document": POLICY_BAD})
    c.call("POST", P, 400, ADMIN_TOKEN, raw=b'{"doc": "x"}')
    c.call("POST", P, 401, None, {"document": POLICY_V1})
    c.call("POST", P, 403, VIEWER_TOKEN, {"document": POLICY_V1})
    c.call("POST", P, 413, ADMIN_TOKEN, raw=b" " * (5 << 20))
    c.call("GET", P, 200, VIEWER_TOKEN)
    V = "/api/v1/policies/validate"
    c.call("POST", V, 200, VIEWER_TOKEN, {"document": POLICY_V2})
    c.call("POST", V, 200, VIEWER_TOKEN, {"document": POLICY_BAD})
    c.call("POST", V, 400, VIEWER_TOKEN, raw=b"not json")
    c.call("POST", V, 401, None, {"document": POLICY_V1})
    c.call("POST", V, 403, GATEWAY_TOKEN, {"document": POLICY_V1})
    c.call("POST", V, 413, VIEWER_TOKEN, raw=b" " * (5 << 20))
    G = "/api/v1/policies/{version}"
    c.call("GET", G, 200, VIEWER_TOKEN, version=1)
    c.call("GET", G, 400, VIEWER_TOKEN, version="one")
    c.call("GET", G, 404, VIEWER_TOKEN, version=9)
    c.call("GET", G, 401, None, version=1)
    c.call("GET", G, 403, GATEWAY_TOKEN, version=1)
    D = "/api/v1/policies/{from_}/diff/{to}"
    D_DOC = "/api/v1/policies/{from}/diff/{to}"
    c.doc["paths"][D] = c.doc["paths"][D_DOC]  # `from` is a Python keyword
    c.call("GET", D, 200, VIEWER_TOKEN, from_=1, to=2)
    c.call("GET", D, 400, VIEWER_TOKEN, from_="x", to=2)
    c.call("GET", D, 404, VIEWER_TOKEN, from_=1, to=9)
    c.call("GET", D, 401, None, from_=1, to=2)
    c.call("GET", D, 403, GATEWAY_TOKEN, from_=1, to=2)
    c.covered[("get", D_DOC)] = c.covered.pop(("get", D))

    # Rollouts.
    R = "/api/v1/rollouts"
    c.call("GET", R, 200, VIEWER_TOKEN)
    c.call("GET", R, 401)
    c.call("GET", R, 403, GATEWAY_TOKEN)
    first = c.call("POST", R, 201, ADMIN_TOKEN, {"version": 1})
    c.call("POST", R, 409, ADMIN_TOKEN, {"version": 1})
    c.call("POST", R, 404, ADMIN_TOKEN, {"version": 9})
    c.call("POST", R, 400, ADMIN_TOKEN, {"version": 2, "target": {"percent": 0}})
    c.call("POST", R, 400, ADMIN_TOKEN, raw=b'{"version": "two"}')
    c.call("POST", R, 401, None, {"version": 2})
    c.call("POST", R, 403, VIEWER_TOKEN, {"version": 2})
    c.call("POST", R, 413, ADMIN_TOKEN, raw=b" " * (5 << 20))
    staged = c.call("POST", R, 201, ADMIN_TOKEN, {"version": 2, "target": {"stages": [{"percent": 50}, {}]}})
    c.call("GET", R, 200, VIEWER_TOKEN)
    O = "/api/v1/rollouts/{id}"
    c.call("GET", O, 200, VIEWER_TOKEN, id=staged["id"])
    c.call("GET", O, 400, VIEWER_TOKEN, id="x")
    c.call("GET", O, 404, VIEWER_TOKEN, id=99)
    c.call("GET", O, 401, None, id=1)
    c.call("GET", O, 403, GATEWAY_TOKEN, id=1)
    for op in ("pause", "resume", "promote", "rollback"):
        T = f"/api/v1/rollouts/{{id}}/{op}"
        c.call("POST", T, 400, ADMIN_TOKEN, id="x")
        c.call("POST", T, 404, ADMIN_TOKEN, id=99)
        c.call("POST", T, 401, None, id=staged["id"])
        c.call("POST", T, 403, VIEWER_TOKEN, id=staged["id"])
    c.call("POST", "/api/v1/rollouts/{id}/resume", 409, ADMIN_TOKEN, id=staged["id"])  # not paused
    c.call("POST", "/api/v1/rollouts/{id}/pause", 200, ADMIN_TOKEN, id=staged["id"])
    c.call("POST", "/api/v1/rollouts/{id}/promote", 409, ADMIN_TOKEN, id=staged["id"])  # paused
    c.call("POST", "/api/v1/rollouts/{id}/pause", 409, ADMIN_TOKEN, id=staged["id"])
    c.call("POST", "/api/v1/rollouts/{id}/resume", 200, ADMIN_TOKEN, id=staged["id"])
    c.call("POST", "/api/v1/rollouts/{id}/promote", 200, ADMIN_TOKEN, id=staged["id"])
    c.call("POST", "/api/v1/rollouts/{id}/rollback", 200, ADMIN_TOKEN, id=staged["id"])
    c.call("POST", "/api/v1/rollouts/{id}/rollback", 409, ADMIN_TOKEN, id=staged["id"])
    c.call("POST", "/api/v1/rollouts/{id}/rollback", 409, ADMIN_TOKEN, id=first["id"])

    # Gateways (the real one, connected then gone) and the audit log.
    W = "/api/v1/gateways"
    listed = c.call("GET", W, 200, VIEWER_TOKEN)
    assert [g["instance_id"] for g in listed["gateways"]] == [gw_id]
    c.call("GET", W, 401)
    c.call("GET", W, 403, GATEWAY_TOKEN)
    X = "/api/v1/gateways/{id}"
    c.call("DELETE", X, 409, ADMIN_TOKEN, id=gw_id)  # connected
    c.call("DELETE", X, 401, None, id=gw_id)
    c.call("DELETE", X, 403, VIEWER_TOKEN, id=gw_id)
    c.call("DELETE", X, 404, ADMIN_TOKEN, id="nobody")
    gw.stop()
    wait_for("the gateway disconnected", lambda: not cp.gateways()[gw_id]["connected"], 15)
    c.call("GET", W, 200, VIEWER_TOKEN)
    c.call("DELETE", X, 204, ADMIN_TOKEN, id=gw_id)
    A = "/api/v1/audit"
    c.call("GET", A, 200, VIEWER_TOKEN)
    Q = A + "?limit={limit}"
    c.doc["paths"][Q] = c.doc["paths"][A]
    c.call("GET", Q, 200, VIEWER_TOKEN, limit=2)
    c.call("GET", Q, 400, VIEWER_TOKEN, limit=0)
    c.call("GET", Q, 400, VIEWER_TOKEN, limit="many")
    c.covered[("get", A)] |= c.covered.pop(("get", Q))
    c.call("GET", A, 401)
    c.call("GET", A, 403, GATEWAY_TOKEN)

    # The service graph (span metrics read from the topic).
    G = "/api/v1/graph"
    wait_for("the span metrics read", lambda: cp_has_service(cp, "checkout"), 30)
    c.call("GET", G, 200, VIEWER_TOKEN)
    GW = G + "?window={window}"
    c.doc["paths"][GW] = c.doc["paths"][G]
    c.call("GET", GW, 200, VIEWER_TOKEN, window="15m")
    c.call("GET", GW, 400, VIEWER_TOKEN, window="2h")
    c.covered[("get", G)] |= c.covered.pop(("get", GW))
    c.call("GET", G, 401)
    c.call("GET", G, 403, GATEWAY_TOKEN)
    S = "/api/v1/services/{name}"
    c.call("GET", S, 200, VIEWER_TOKEN, name="checkout")
    c.call("GET", S, 404, VIEWER_TOKEN, name="no-such-service")
    c.call("GET", S, 401, name="checkout")
    c.call("GET", S, 403, GATEWAY_TOKEN, name="checkout")

    # Every operation of the document was called, with a success and (where it has any
    # documented error) an error answer.
    for template, ops in c.doc["paths"].items():
        if "{from_}" in template or "?" in template:
            continue
        for method, op in ops.items():
            if method == "parameters":
                continue
            got = c.covered.get((method, template), set())
            assert any(s < 300 for s in got), f"{method.upper()} {template} never answered with success"
            documented_errors = {int(s) for s in op["responses"] if s.isdigit() and int(s) >= 400}
            # Storage failures and overload, and /metrics without a recorder (only in-process
            # tests run without one), cannot be caused from outside on demand.
            unreachable = {500, 503} | ({404} if template == "/metrics" else set())
            if documented_errors - unreachable:
                assert any(s >= 400 for s in got), f"{method.upper()} {template}: no error answer checked"
