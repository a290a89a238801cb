"""The control plane's REST API and weirctl, black-box, against the real binary on free loopback
ports, on both storage backends: policies (submit, list, get, diff, validate, refusals with the
validator's message), rollouts (start, promote, pause, resume, rollback and their refusals),
access control (401/403 change nothing), the audit log, OpenAPI, TLS, and restarts."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import urllib.request

import pytest

from control_plane_harness import (  # noqa: F401  (postgres, control_plane_factory: fixtures)
    ADMIN_TOKEN,
    GATEWAY_TOKEN,
    ROOT,
    VIEWER_TOKEN,
    control_plane_bin,
    control_plane_factory,
    postgres,
    weirctl_json,
)

POLICY_V1 = """\
version: 1
sampling:
  default_probability: 1
"""

POLICY_V2 = """\
version: 2
sampling:
  default_probability: 0.5
  rules:
    - name: keep-errors
      match: { status: error }
      probability: 1
"""

# Passes YAML parsing but not the validator: a probability above 1, three keys deep.
POLICY_BAD = """\
version: 3
sampling:
  rules:
    - name: too-much
      match: { status: error }
      probability: 7
"""


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request):
    return request.param


@pytest.fixture
def cp(control_plane_factory, backend):
    return control_plane_factory(backend)


def write(tmp_path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def snapshot(cp):
    """Everything the API can change, read with the viewer token."""
    return {
        path: cp.api("GET", path, VIEWER_TOKEN)
        for path in ["/policies", "/rollouts", "/gateways", "/audit?limit=10000"]
    }


def test_policies_submit_list_get_diff_validate(cp, tmp_path):
    r = cp.weirctl("policy", "apply", "-f", write(tmp_path, "v1.yaml", POLICY_V1))
    assert r.returncode == 0, r.stderr
    assert "stored policy version 1" in r.stdout
    # JSON documents are accepted too, and kept as submitted.
    v2_json = json.dumps({"version": 2, "sampling": {"default_probability": 0.5}})
    meta = cp.submit(v2_json)
    assert (meta["version"], meta["format"], meta["created_by"]) == (2, "json", "test-admin")

    listed = weirctl_json(cp.weirctl("policy", "list", "-o", "json"))["policies"]
    assert [p["version"] for p in listed] == [1, 2]
    table = cp.weirctl("policy", "list", token=VIEWER_TOKEN)
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:2] == ["VERSION", "FORMAT"]

    got = cp.weirctl("policy", "get", "1")
    assert got.returncode == 0 and got.stdout == POLICY_V1
    assert cp.api("GET", "/policies/2")["document"] == v2_json

    cp.api("GET", "/policies/1")
    diff = cp.weirctl("policy", "diff", "1", "2")
    assert diff.returncode == 0
    assert diff.stdout.startswith("--- version 1\n+++ version 2\n"), diff.stdout
    assert "-version: 1" in diff.stdout and f"+{v2_json}" in diff.stdout

    ok = cp.weirctl("policy", "validate", "-f", write(tmp_path, "v2.yaml", POLICY_V2))
    assert ok.returncode == 0 and "valid: version 2" in ok.stdout
    bad = cp.weirctl("policy", "validate", "-f", write(tmp_path, "bad.yaml", POLICY_BAD))
    assert bad.returncode == 1
    assert "sampling.rules[0].probability" in bad.stdout, bad.stdout
    # Validation stores nothing.
    assert [p["version"] for p in cp.api("GET", "/policies")["policies"]] == [1, 2]


def test_refusals_carry_the_reason(cp, tmp_path):
    cp.submit(POLICY_V1)
    cp.submit(POLICY_V2)
    before = snapshot(cp)

    status, body = cp.request("POST", "/policies", ADMIN_TOKEN, {"document": POLICY_BAD})
    assert status == 400
    assert body["detail"].startswith("sampling.rules[0].probability: "), body

    # (The same text again would be "unchanged": 200, test_weirctl.py.)
    status, body = cp.request("POST", "/policies", ADMIN_TOKEN, {"document": POLICY_V1 + "# edited\n"})
    assert status == 409
    assert "latest stored version 2" in body["detail"], body

    status, body = cp.request("POST", "/policies", ADMIN_TOKEN, raw=b'{"doc": "x"}')
    assert status == 400 and "doc" in body["detail"], body
    status, body = cp.request("POST", "/policies", ADMIN_TOKEN, raw=b"not json")
    assert status == 400 and "detail" in body
    status, body = cp.request("POST", "/policies", ADMIN_TOKEN, raw=b" " * (5 << 20))
    assert status == 413 and "larger than" in body["detail"], body

    status, body = cp.request("GET", "/policies/7", VIEWER_TOKEN)
    assert status == 404 and "7" in body["detail"]
    status, body = cp.request("GET", "/policies/seven", VIEWER_TOKEN)
    assert status == 400 and "seven" in body["detail"]
    status, body = cp.request("GET", "/nowhere", VIEWER_TOKEN)
    assert status == 404 and "detail" in body

    # weirctl shows the API's message as it came and exits non-zero.
    r = cp.weirctl("policy", "apply", "-f", write(tmp_path, "bad.yaml", POLICY_BAD))
    assert r.returncode == 1
    assert body_error(cp, POLICY_BAD) in r.stderr and "400" in r.stderr, r.stderr
    r = cp.weirctl("policy", "apply", "-f", write(tmp_path, "v1.yaml", POLICY_V1 + "# edited\n"))
    assert r.returncode == 1 and "latest stored version 2" in r.stderr and "409" in r.stderr

    assert snapshot(cp) == before, "refused requests changed nothing"


def body_error(cp, document: str) -> str:
    status, body = cp.request("POST", "/policies/validate", VIEWER_TOKEN, {"document": document})
    assert status == 200 and body["valid"] is False
    return body["error"]


def test_rollout_lifecycle(cp, tmp_path):
    cp.submit(POLICY_V1)
    cp.submit(POLICY_V2)
    r = cp.weirctl("rollout", "start", "--version", "1")
    assert r.returncode == 0 and "active" in r.stdout and "target all" in r.stdout, r.stdout + r.stderr
    first = cp.api("GET", "/rollouts")["rollouts"][0]
    assert (first["version"], first["state"], first["previous_version"]) == (1, "active", None)

    started = weirctl_json(
        cp.weirctl(
            "rollout", "start", "--version", "2", "-o", "json",
            "--stages", '[{"percent": 34}, {"selector": {"region": "eu"}}, {}]',
        )
    )
    assert (started["state"], started["current_stage"], started["previous_version"]) == ("active", 0, 1)
    assert started["stages"] == [{"percent": 34.0}, {"selector": {"region": "eu"}}, {}]
    rid = started["id"]

    # Refusals say why.
    status, body = cp.request("POST", "/rollouts", ADMIN_TOKEN, {"version": 1})
    assert status == 409 and "already released to every gateway" in body["detail"], body
    status, body = cp.request("POST", f"/rollouts/{rid}/resume", ADMIN_TOKEN)
    assert status == 409 and "active" in body["detail"]

    promoted = weirctl_json(cp.weirctl("rollout", "promote", "-o", "json"))  # the newest
    assert (promoted["id"], promoted["current_stage"], promoted["state"]) == (rid, 1, "active")
    assert cp.weirctl("rollout", "pause", str(rid)).returncode == 0
    r = cp.weirctl("rollout", "promote", str(rid))
    assert r.returncode == 1 and "resume it first" in r.stderr and "409" in r.stderr
    assert cp.weirctl("rollout", "resume").returncode == 0
    assert cp.weirctl("rollout", "promote").returncode == 0
    done = cp.api("POST", f"/rollouts/{rid}/promote")
    assert done["state"] == "completed"
    status, body = cp.request("POST", f"/rollouts/{rid}/promote", ADMIN_TOKEN)
    assert status == 409 and "completed" in body["detail"]

    back = weirctl_json(cp.weirctl("rollout", "rollback", "-o", "json"))
    assert back["state"] == "rolled_back"
    # The first rollout had nothing before it.
    status, body = cp.request("POST", f"/rollouts/{first['id']}/rollback", ADMIN_TOKEN)
    assert status == 409 and "nothing to return to" in body["detail"], body

    listing = cp.weirctl("rollout", "list")
    assert listing.returncode == 0
    lines = listing.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "VERSION", "PREVIOUS", "STATE"]
    assert lines[1].split()[:4] == [str(rid), "2", "1", "rolled_back"]

    status, body = cp.request("POST", "/rollouts", ADMIN_TOKEN, {"version": 9})
    assert status == 404 and "submit it first" in body["detail"]
    status, body = cp.request("POST", "/rollouts", ADMIN_TOKEN, {"version": 2, "target": {"percent": 120}})
    assert status == 400 and "target.stages[0].percent" in body["detail"], body
    r = cp.weirctl("rollout", "start", "--version", "2", "--selector", "region")
    assert r.returncode == 1 and "KEY=VALUE" in r.stderr
    status, body = cp.request("GET", "/rollouts/99", VIEWER_TOKEN)
    assert status == 404

    gateways = weirctl_json(cp.weirctl("gateways", "-o", "json"))
    assert gateways == {"gateways": []}, "no gateway has connected"


def test_tokens_and_roles(cp):
    cp.submit(POLICY_V1)
    before = snapshot(cp)
    writes = [
        ("POST", "/policies", {"document": POLICY_V2}),
        ("POST", "/rollouts", {"version": 1}),
        ("POST", "/rollouts/1/promote", None),
        ("POST", "/rollouts/1/rollback", None),
    ]
    for method, path, body in writes:
        for token in [None, "wrong-token", ADMIN_TOKEN + "x"]:
            status, resp = cp.request(method, path, token, body)
            assert status == 401, (method, path, token, status, resp)
            assert "token" in resp["detail"]
        status, resp = cp.request(method, path, VIEWER_TOKEN, body)
        assert status == 403 and "viewer" in resp["detail"], (path, resp)
        status, resp = cp.request(method, path, GATEWAY_TOKEN, body)
        assert status == 403 and "gateway" in resp["detail"], (path, resp)
    for path in ["/policies", "/policies/1", "/rollouts", "/gateways", "/audit"]:
        assert cp.request("GET", path, None)[0] == 401, path
        assert cp.request("GET", path, GATEWAY_TOKEN)[0] == 403, path
        assert cp.request("GET", path, VIEWER_TOKEN)[0] == 200, path
    assert snapshot(cp) == before, "refused requests changed nothing"

    r = cp.weirctl("policy", "list", token=None)
    assert r.returncode == 1 and "401" in r.stderr and "missing bearer token" in r.stderr
    r = cp.weirctl("rollout", "start", "--version", "1", token=VIEWER_TOKEN)
    assert r.returncode == 1 and "403" in r.stderr
    # The OpenAPI document and the health check need no token.
    with urllib.request.urlopen(f"{cp.api_base}/api/v1/openapi.json", timeout=5) as resp:
        doc = json.load(resp)
    assert "/api/v1/rollouts/{id}/promote" in doc["paths"]
    assert cp.health() == 200


def test_audit_log_records_who_did_what(cp, tmp_path):
    cp.submit(POLICY_V1)
    cp.release(1)
    cp.submit(POLICY_V2)
    r = cp.release(2, {"instances": ["gw-a"]})
    cp.api("POST", f"/rollouts/{r['id']}/pause")
    cp.request("POST", "/policies", VIEWER_TOKEN, {"document": "version: 5\n"})  # refused
    entries = weirctl_json(cp.weirctl("audit", "-o", "json", token=VIEWER_TOKEN))["entries"]
    got = [(e["actor"], e["role"], e["action"]) for e in entries]
    assert got == [
        ("test-admin", "admin", "rollout.pause"),
        ("test-admin", "admin", "rollout.start"),
        ("test-admin", "admin", "policy.submit"),
        ("test-admin", "admin", "rollout.start"),
        ("test-admin", "admin", "policy.submit"),
    ]
    assert entries[1]["details"]["stages"] == [{"instances": ["gw-a"]}]
    assert entries[0]["details"]["from"] == "active" and entries[0]["details"]["to"] == "paused"
    table = cp.weirctl("audit", "--limit", "2")
    assert table.returncode == 0 and len(table.stdout.splitlines()) == 3
    assert cp.request("GET", "/audit?limit=0", VIEWER_TOKEN)[0] == 400


def test_state_survives_a_restart(cp):
    cp.submit(POLICY_V1)
    cp.release(1)
    cp.restart()
    assert [p["version"] for p in cp.api("GET", "/policies", VIEWER_TOKEN)["policies"]] == [1]
    assert cp.api("GET", "/rollouts", VIEWER_TOKEN)["rollouts"][0]["state"] == "active"
    status, body = cp.request("POST", "/policies", ADMIN_TOKEN, {"document": POLICY_V1 + "# edited\n"})
    assert status == 409


def test_replicas_share_one_postgres_database(control_plane_factory, postgres):
    a = control_plane_factory("postgres")
    b = control_plane_factory("postgres", dsn=a.dsn)
    a.submit(POLICY_V1)
    assert [p["version"] for p in b.api("GET", "/policies")["policies"]] == [1]
    status, body = b.request("POST", "/policies", ADMIN_TOKEN, {"document": POLICY_V1 + "# edited\n"})
    assert status == 409, "the version check spans replicas"
    b.release(1)
    assert a.api("GET", "/rollouts")["rollouts"][0]["state"] == "active"


def test_check_config(tmp_path):
    example = ROOT / "config/control-plane.yaml"
    r = subprocess.run([str(control_plane_bin()), "--config", str(example), "--check-config"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(example.read_text().replace("poll_interval: 500ms", "poll_interval: 5ms"))
    r = subprocess.run([str(control_plane_bin()), "--config", str(bad), "--check-config"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "storage.poll_interval" in r.stderr, r.stderr
    missing_env = tmp_path / "env.yaml"
    missing_env.write_text(
        "auth:\n  tokens:\n    - name: ci\n      role: admin\n      env: WEIR_TEST_SURELY_UNSET_VAR\n"
    )
    r = subprocess.run([str(control_plane_bin()), "--config", str(missing_env), "--check-config"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "auth.tokens[0].env" in r.stderr, r.stderr


def test_tls_on_both_listeners(control_plane_factory, tmp_path):
    ca, ca_key = tmp_path / "ca.pem", tmp_path / "ca-key.pem"
    cert, key, csr = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "cert.csr"
    ext = tmp_path / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for args in [
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "1", "-subj", "/CN=weir test CA"],
        ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "1", "-extfile", ext],
    ]:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)
    tls = f"  tls:\n    cert_file: {cert}\n    key_file: {key}\n"
    cp = control_plane_factory("sqlite", start=False)
    text = cp.config_path.read_text()
    text = text.replace(f"endpoint: 127.0.0.1:{cp.api_port}\n", f"endpoint: 127.0.0.1:{cp.api_port}\n{tls}", 1)
    text = text.replace(f"endpoint: 127.0.0.1:{cp.watch_port}\n", f"endpoint: 127.0.0.1:{cp.watch_port}\n{tls}", 1)
    cp.config_path.write_text(text)
    base = f"https://127.0.0.1:{cp.api_port}"
    cp.health = lambda: _https_status(f"{base}/healthz", ca)  # readiness over TLS
    cp.start()
    assert cp.api_base.startswith("http://")
    ctx = ssl.create_default_context(cafile=str(ca))
    req = urllib.request.Request(f"{base}/api/v1/policies", headers={"authorization": f"Bearer {VIEWER_TOKEN}"})
    with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
        assert json.load(r) == {"policies": []}
    env_cp = cp.weirctl("--server", base, "--ca-file", str(ca), "policy", "list", "-o", "json")
    assert env_cp.returncode == 0, env_cp.stderr
    plain = cp.weirctl("--server", cp.api_base, "policy", "list")
    assert plain.returncode == 1, "plain HTTP is not served on a TLS listener"
    # The watch listener speaks TLS with HTTP/2 (gRPC) too.
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", cp.watch_port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as conn:
            assert conn.selected_alpn_protocol() == "h2"


def _https_status(url: str, cafile) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2, context=ssl.create_default_context(cafile=str(cafile))) as r:
            return r.status
    except OSError:
        return None
