"""weirctl as kubectl users expect it, black-box against the real control plane (and, for
`rollout status`, real gateways on the real broker): idempotent `policy apply`, `rollout status`
with a per-stage bar, `-o json|yaml|wide`, shell completion, contexts in a config file, and
API errors as RFC 9457 problem documents whose `detail` weirctl prints."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time

import pytest
import yaml

from control_plane_harness import (  # noqa: F401  (fixtures)
    ADMIN_TOKEN,
    GATEWAY_TOKEN,
    VIEWER_TOKEN,
    control_plane_factory,
    wait_for,
    weirctl_json,
)
from harness import Gateway, unique_name

POLICY_V1 = "version: 1\n"
POLICY_V2 = "version: 2\nsampling:\n  default_probability: 0.5\n  rules:\n    - name: keep-errors\n      match: { status: error }\n      probability: 1\n"


@pytest.fixture
def cp(control_plane_factory):
    return control_plane_factory("sqlite")


class StringTimes(yaml.SafeLoader):
    """YAML 1.1 loaders read unquoted RFC 3339 times as datetimes; JSON has strings."""


StringTimes.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def write(tmp_path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_apply_of_an_unchanged_document_says_unchanged_and_stores_nothing(cp, tmp_path):
    v1 = write(tmp_path, "v1.yaml", POLICY_V1)
    first = cp.weirctl("policy", "apply", "-f", v1)
    assert first.returncode == 0 and "stored policy version 1" in first.stdout, first
    again = cp.weirctl("policy", "apply", "-f", v1)
    assert again.returncode == 0, again.stderr
    assert "unchanged" in again.stdout and "stored" not in again.stdout, again.stdout
    as_json = weirctl_json(cp.weirctl("policy", "apply", "-f", v1, "-o", "json"))
    assert as_json["unchanged"] is True and as_json["version"] == 1
    # No new version, no audit entry for the repeats.
    assert [p["version"] for p in cp.api("GET", "/policies")["policies"]] == [1]
    submits = [e for e in cp.api("GET", "/audit")["entries"] if e["action"] == "policy.submit"]
    assert len(submits) == 1, submits

    # The API: 201 for a new version, 200 + unchanged for the same text again.
    status, body = cp.request("POST", "/policies", ADMIN_TOKEN, {"document": POLICY_V2})
    assert status == 201 and body["unchanged"] is False, body
    status, body = cp.request("POST", "/policies", ADMIN_TOKEN, {"document": POLICY_V2})
    assert status == 200 and body["unchanged"] is True and body["version"] == 2, body
    # The same version with other text is still a conflict, and weirctl says so.
    changed = write(tmp_path, "v2b.yaml", POLICY_V2 + "# edited\n")
    r = cp.weirctl("policy", "apply", "-f", changed)
    assert r.returncode == 1 and "409" in r.stderr and "conflict" in r.stderr, r.stderr
    # Unchanged needs the right to change: a viewer is refused even for a stored document.
    r = cp.weirctl("policy", "apply", "-f", v1, token=VIEWER_TOKEN)
    assert r.returncode == 1 and "403" in r.stderr


def test_output_json_yaml_wide(cp):
    cp.submit(POLICY_V1)
    cp.release(1)
    for args, key in [
        (("policy", "list"), "policies"),
        (("rollout", "list"), "rollouts"),
        (("gateways",), "gateways"),
        (("audit",), "entries"),
    ]:
        as_json = weirctl_json(cp.weirctl(*args, "-o", "json"))
        r = cp.weirctl(*args, "-o", "yaml")
        assert r.returncode == 0, r.stderr
        assert yaml.load(r.stdout, Loader=StringTimes) == as_json, (args, r.stdout)
        assert key in as_json
    narrow = cp.weirctl("policy", "list")
    wide = cp.weirctl("policy", "list", "-o", "wide")
    sha = cp.api("GET", "/policies")["policies"][0]["sha256"]
    assert sha not in narrow.stdout and sha[:12] in narrow.stdout
    assert sha in wide.stdout, wide.stdout
    rollouts = cp.weirctl("rollout", "list", "-o", "wide")
    assert "CREATED" in rollouts.stdout.splitlines()[0], rollouts.stdout
    audit = cp.weirctl("audit", "-o", "wide")
    assert audit.stdout.splitlines()[0].startswith("ID"), audit.stdout
    gateways = cp.weirctl("gateways", "-o", "wide")
    assert "BUILD" in gateways.stdout.splitlines()[0], gateways.stdout
    assert yaml.safe_load(cp.weirctl("policy", "get", "1", "-o", "yaml").stdout)["document"] == POLICY_V1
    r = cp.weirctl("policy", "list", "-o", "xml")
    assert r.returncode != 0 and "xml" in r.stderr


def test_shell_completion(cp, tmp_path):
    for shell, marker in [("bash", "complete -F"), ("zsh", "#compdef weirctl"), ("fish", "complete -c weirctl")]:
        r = cp.weirctl("completion", shell, server=None, token=None)
        assert r.returncode == 0, r.stderr
        assert marker in r.stdout, (shell, r.stdout[:200])
        for word in ("rollout", "status", "use-context", "-l output" if shell == "fish" else "--output"):
            assert word in r.stdout, (shell, word)
    # The bash script is valid bash, and completes subcommands when sourced.
    script = write(tmp_path, "weirctl.bash", cp.weirctl("completion", "bash", server=None, token=None).stdout)
    probe = (
        f"source {script}\n"
        "COMP_WORDS=(weirctl rollout st); COMP_CWORD=2; COMP_LINE='weirctl rollout st'; COMP_POINT=${#COMP_LINE}\n"
        "_weirctl weirctl st rollout\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    r = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert set(r.stdout.split()) == {"start", "status"}, r.stdout
    r = cp.weirctl("completion", "powershell-9", server=None, token=None)
    assert r.returncode != 0


def test_contexts_flags_and_environment(cp, tmp_path):
    config = tmp_path / "weir" / "config.yaml"
    env = {"WEIRCONFIG": str(config)}
    token_file = write(tmp_path, "admin.token", ADMIN_TOKEN + "\n")

    def ctl(*args, token=None, server=None, extra=None):
        return cp.weirctl(*args, token=token, server=server, env_extra={**env, **(extra or {})})

    # set-context stores only what the command line gives, never the environment.
    r = ctl("config", "set-context", "local", "--server", cp.api_base, "--token-file", token_file,
            extra={"WEIR_CA_FILE": "/nonexistent/ca.pem"})
    assert r.returncode == 0 and 'Context "local" created' in r.stdout, r.stderr
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o600, "the config may hold tokens"
    stored = yaml.safe_load(config.read_text())
    assert stored["contexts"] == [{"name": "local", "server": cp.api_base, "token-file": token_file}], stored
    assert "current-context" not in stored, "set-context does not switch, as in kubectl"
    r = ctl("config", "set-context", "elsewhere", "--server", "http://127.0.0.1:9", "--token", VIEWER_TOKEN)
    assert r.returncode == 0, r.stderr

    # No current context yet: naming one works, an unknown name is refused with a hint.
    assert weirctl_json(ctl("--context", "local", "policy", "list", "-o", "json")) == {"policies": []}
    r = ctl("--context", "nope", "policy", "list")
    assert r.returncode == 1 and "no context named `nope`" in r.stderr and "get-contexts" in r.stderr
    assert ctl("config", "current-context").returncode == 1

    r = ctl("config", "use-context", "local")
    assert r.returncode == 0 and 'Switched to context "local"' in r.stdout
    assert ctl("config", "current-context").stdout.strip() == "local"
    listing = ctl("config", "get-contexts")
    rows = [line.split() for line in listing.stdout.splitlines()[1:]]
    assert ["*", "local", cp.api_base, "token-file", token_file, "-"] in rows, listing.stdout
    assert VIEWER_TOKEN not in listing.stdout, "get-contexts never shows a token"
    contexts = weirctl_json(ctl("config", "get-contexts", "-o", "json"))["contexts"]
    assert {c["name"]: c["current"] for c in contexts} == {"local": True, "elsewhere": False}
    assert VIEWER_TOKEN not in json.dumps(contexts)

    # The current context reaches the control plane with its token file (admin: may write).
    r = ctl("policy", "apply", "-f", write(tmp_path, "v1.yaml", POLICY_V1))
    assert r.returncode == 0, r.stderr
    # Flags and environment variables override the context, each on its own.
    r = ctl("policy", "apply", "-f", write(tmp_path, "v2.yaml", POLICY_V2), token=VIEWER_TOKEN)
    assert r.returncode == 1 and "403" in r.stderr, "WEIR_TOKEN beats the context's token file"
    r = ctl("--token", VIEWER_TOKEN, "policy", "apply", "-f", write(tmp_path, "v2.yaml", POLICY_V2))
    assert r.returncode == 1 and "403" in r.stderr, "--token beats the context's token file"
    r = ctl("policy", "list", extra={"WEIR_SERVER": "http://127.0.0.1:9"})
    assert r.returncode == 1 and "127.0.0.1:9" in r.stderr, "WEIR_SERVER beats the context's server"
    r = ctl("--server", cp.api_base, "policy", "list", extra={"WEIR_CONTEXT": "elsewhere"})
    assert r.returncode == 0, "--server beats the context WEIR_CONTEXT names; its viewer token reads"
    r = ctl("policy", "list", extra={"WEIR_CONTEXT": "elsewhere"})
    assert r.returncode == 1 and "127.0.0.1:9" in r.stderr, "WEIR_CONTEXT picks the context"

    # set-context changes only what it is given; a token replaces the token file.
    r = ctl("config", "set-context", "local", "--token", VIEWER_TOKEN)
    assert r.returncode == 0 and 'Context "local" modified' in r.stdout
    local = next(c for c in yaml.safe_load(config.read_text())["contexts"] if c["name"] == "local")
    assert local == {"name": "local", "server": cp.api_base, "token": VIEWER_TOKEN}, local
    r = ctl("policy", "apply", "-f", write(tmp_path, "v2.yaml", POLICY_V2))
    assert r.returncode == 1 and "403" in r.stderr, "the context's new token is a viewer's"
    assert ctl("config", "use-context", "missing").returncode == 1

    # A token file that does not exist is an error that names it.
    r = ctl("--token-file", str(tmp_path / "absent"), "policy", "list")
    assert r.returncode == 1 and "absent" in r.stderr
    # A broken config file is reported, not ignored.
    config.write_text("contexts: [{name: x, sever: typo}]\n")
    r = ctl("policy", "list")
    assert r.returncode == 1 and "sever" in r.stderr, r.stderr


PROBLEM_TYPES = {
    "unauthorized", "forbidden", "malformed-request", "invalid", "not-found", "no-such-route",
    "method-not-allowed", "conflict", "too-large", "busy", "storage", "other",
}


def raw_request(cp, method: str, path: str, token: str | None = None, data: bytes | None = None):
    """(status, content type, parsed body) of any request to the API's listener."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"{cp.api_base}{path}", data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("content-type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type"), e.read()


def test_every_error_is_a_problem_document_and_weirctl_prints_its_detail(cp, tmp_path):
    cp.submit(POLICY_V1)
    cp.release(1)
    cp.api("POST", "/rollouts/1/promote")  # completed: promoting again conflicts
    doc = json.dumps({"document": POLICY_V1}).encode()
    cases = [
        ("GET", "/api/v1/policies", None, None, 401, "unauthorized"),
        ("GET", "/api/v1/policies", "not-a-token", None, 401, "unauthorized"),
        ("POST", "/api/v1/policies", VIEWER_TOKEN, doc, 403, "forbidden"),
        ("GET", "/api/v1/gateways", GATEWAY_TOKEN, None, 403, "forbidden"),
        ("POST", "/api/v1/policies", ADMIN_TOKEN, b"not json", 400, "malformed-request"),
        ("POST", "/api/v1/policies", ADMIN_TOKEN, b'{"doc": 1}', 400, "malformed-request"),
        ("GET", "/api/v1/policies/seven", VIEWER_TOKEN, None, 400, "malformed-request"),
        ("GET", "/api/v1/policies/%FF", VIEWER_TOKEN, None, 400, "malformed-request"),
        ("GET", "/api/v1/audit?limit=0", VIEWER_TOKEN, None, 400, "malformed-request"),
        ("GET", "/api/v1/audit?limit=%zz", VIEWER_TOKEN, None, 400, "malformed-request"),
        ("POST", "/api/v1/policies", ADMIN_TOKEN,
         json.dumps({"document": "version: 3\nsampling: {rules: [{name: x, match: {status: error}, probability: 2}]}\n"}).encode(),
         400, "invalid"),
        ("POST", "/api/v1/rollouts", ADMIN_TOKEN, b'{"version": 1, "target": {"percent": 0}}', 400, "invalid"),
        ("GET", "/api/v1/policies/7", VIEWER_TOKEN, None, 404, "not-found"),
        ("GET", "/api/v1/rollouts/99", VIEWER_TOKEN, None, 404, "not-found"),
        ("DELETE", "/api/v1/gateways/nobody", ADMIN_TOKEN, None, 404, "not-found"),
        ("GET", "/api/v1/nowhere", VIEWER_TOKEN, None, 404, "no-such-route"),
        ("GET", "/elsewhere", None, None, 404, "no-such-route"),
        ("PUT", "/api/v1/policies", ADMIN_TOKEN, doc, 405, "method-not-allowed"),
        ("DELETE", "/api/v1/audit", ADMIN_TOKEN, None, 405, "method-not-allowed"),
        ("POST", "/api/v1/policies", ADMIN_TOKEN, json.dumps({"document": "version: 1\n# other\n"}).encode(),
         409, "conflict"),
        ("POST", "/api/v1/rollouts/1/promote", ADMIN_TOKEN, None, 409, "conflict"),
        ("POST", "/api/v1/policies", ADMIN_TOKEN, b" " * (5 << 20), 413, "too-large"),
    ]
    for method, path, token, data, want_status, want_type in cases:
        status, ctype, raw = raw_request(cp, method, path, token, data)
        where = f"{method} {path}"
        assert status == want_status, (where, status, raw[:300])
        assert ctype == "application/problem+json", (where, ctype)
        body = json.loads(raw)
        assert set(body) == {"type", "title", "status", "detail"}, (where, body)
        assert body["type"] == f"urn:weir:problem:{want_type}", (where, body)
        assert body["status"] == status and body["title"] and body["detail"], (where, body)
    assert {c[5] for c in cases} <= PROBLEM_TYPES

    # weirctl prints the detail with the status and kind, and exits 1.
    status, _, raw = raw_request(cp, "GET", "/api/v1/policies/7", VIEWER_TOKEN)
    detail = json.loads(raw)["detail"]
    r = cp.weirctl("policy", "get", "7")
    assert r.returncode == 1, r
    assert r.stderr.strip() == f"Error from server (HTTP 404 not-found): {detail}", r.stderr
    r = cp.weirctl("rollout", "promote", "1")
    assert r.returncode == 1 and "(HTTP 409 conflict)" in r.stderr and "completed" in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------------
# rollout status, with real gateways


@pytest.fixture
def gateways(request, broker, workdir, tmp_path):
    started: list[Gateway] = []

    def start(cp, ids):
        out = []
        for instance_id in ids:
            gw = Gateway(broker, workdir, {
                "control_plane": {
                    "endpoint": f"http://{cp.watch_endpoint}",
                    "token": GATEWAY_TOKEN,
                    "instance_id": instance_id,
                    "labels": {"suite": "weirctl"},
                    "state_dir": str(tmp_path / "state" / instance_id),
                    "reconnect": {"initial": "100ms", "max": "1s"},
                },
            })
            started.append(gw)
            out.append(gw.start())
        return out

    yield start
    for gw in started:
        try:
            os.kill(gw.pid, signal.SIGCONT)
        except (OSError, AttributeError):
            pass
        gw.stop()


def routed_to(version: int, topic: str) -> str:
    return (
        f"version: {version}\n"
        "routing:\n  rules:\n    - name: routed\n      match: { span_name: x }\n"
        f"      action: {{ topic: {topic} }}\n"
    )


def test_rollout_status_watches_acks_per_stage_and_fails_on_a_nack(cp, gateways, broker):
    ids = [unique_name("gw-a"), unique_name("gw-b")]
    gw_a, gw_b = gateways(cp, ids)
    wait_for("both gateways connected", lambda: all(cp.gateways().get(i, {}).get("connected") for i in ids), 15)

    cp.submit(POLICY_V1)
    cp.release(1)
    r = cp.weirctl("rollout", "status", "--watch", "--timeout", "20s")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "[####################] 2/2 acked" in r.stdout, r.stdout
    assert "every targeted gateway runs version 1" in r.stdout

    # A staged rollout: stage 1 reaches gw-a only; stage 2 is not released yet.
    cp.submit(POLICY_V2)
    rollout = cp.release(2, {"stages": [{"instances": [ids[0]]}, {}]})
    r = cp.weirctl("rollout", "status", str(rollout["id"]), "-w", "--timeout", "20s")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "1/1 acked" in r.stdout and "not released" in r.stdout, r.stdout
    status = weirctl_json(cp.weirctl("rollout", "status", "-o", "json"))
    assert status["done"] is True and status["stages"][0]["acked"] == [ids[0]], status
    assert status["stages"][1]["released"] is False

    # A gateway that does not answer: the watch gives up at the timeout, exit 1.
    os.kill(gw_b.pid, signal.SIGSTOP)
    try:
        cp.api("POST", f"/rollouts/{rollout['id']}/promote")
        started = time.monotonic()
        r = cp.weirctl("rollout", "status", "--watch", "--timeout", "2s", "--interval", "200ms")
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert 1.5 < time.monotonic() - started < 15
        assert "1/2 acked" in r.stdout and "within 2s" in r.stderr, (r.stdout, r.stderr)
        # Without --watch, a pending rollout is a status, not a failure.
        once = cp.weirctl("rollout", "status")
        assert once.returncode == 0 and "1/2 acked" in once.stdout, once
    finally:
        os.kill(gw_b.pid, signal.SIGCONT)
    r = cp.weirctl("rollout", "status", "--watch", "--timeout", "20s")
    assert r.returncode == 0 and "2/2 acked" in r.stdout, (r.stdout, r.stderr)

    # A version routing to a topic the broker lacks: NACKs; status says who and why, exit 1.
    missing = unique_name("no-such-topic")
    cp.submit(routed_to(3, missing))
    cp.release(3)
    r = cp.weirctl("rollout", "status", "--watch", "--timeout", "20s")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "NACK from" in r.stdout and missing in r.stdout, r.stdout
    assert "refused version 3" in r.stderr, r.stderr
