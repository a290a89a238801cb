"""Policies pushed by the control plane to real gateways over the watch stream: one
weir-control-plane (SQLite and PostgreSQL backends), three weir-gateway processes and the real
broker (Tansu). What a gateway runs is read from both sides: the control plane's
GET /api/v1/gateways and the gateway's own /metrics (weir_policy_version) and, where it matters,
where its spans land in Kafka (read back with an independent consumer)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from control_plane_harness import (  # noqa: F401  (fixtures)
    GATEWAY_TOKEN,
    ApiError,
    control_plane_factory,
    in_canary,
    postgres,
)
from harness import (
    Broker,
    Gateway,
    consume,
    grpc_export_traces,
    make_span,
    metric_value,
    new_trace_id,
    spans_of,
    decode_traces,
    traces_request,
    unique_name,
    wait_until,
)

ROUTED_OP = "routed-op"
OTHER_OP = "other-op"


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request):
    return request.param


@pytest.fixture
def fleet(request, broker, workdir, tmp_path):
    """fleet(cp, ids, on_broker=, token=, labels=, extra= (gateway config overrides),
    control_plane= (keys of the control_plane section)) -> started gateways watching `cp`, each
    with its own state_dir. All are stopped at teardown (logs shown on failure)."""
    started: list[Gateway] = []

    def start(cp, ids, on_broker: Broker | None = None, token: str = GATEWAY_TOKEN, labels=None, extra=None,
              control_plane=None):
        gws = []
        for instance_id in ids:
            overrides = {
                "control_plane": {
                    "endpoint": f"http://{cp.watch_endpoint}",
                    "token": token,
                    "instance_id": instance_id,
                    "labels": labels or {"suite": "rollout"},
                    "state_dir": str(tmp_path / "state" / instance_id),
                    "reconnect": {"initial": "100ms", "max": "1s"},
                    **(control_plane or {}),
                },
                "log.level": "info,weir_gateway=debug",
            }
            overrides.update(extra or {})
            gw = Gateway(on_broker or broker, workdir, overrides)
            gw.instance_id = instance_id
            started.append(gw)
            gws.append(gw.start())
        return gws

    yield start
    rep = getattr(request.node, "rep_call", None)
    for gw in started:
        gw.stop()
        if rep is None or rep.failed:
            print(f"--- {gw.instance_id} ({gw.name}) log tail:\n{gw.log(60)}")


# ---------------------------------------------------------------------------------------------
# helpers


def routing_policy(version: int, topic: str) -> str:
    """A policy that sends spans named ROUTED_OP to `topic`, everything else to the default."""
    return (
        f"version: {version}\n"
        "routing:\n"
        "  rules:\n"
        "    - name: routed\n"
        f"      match: {{ span_name: {ROUTED_OP} }}\n"
        f"      action: {{ topic: {topic} }}\n"
    )


def policy_version(gw: Gateway) -> float:
    return metric_value(gw.metrics(), "weir_policy_version")


def gauge(gw: Gateway, name: str, **labels) -> float:
    return metric_value(gw.metrics(), name, **labels)


def wait_connected(cp, ids, timeout: float = 15.0):
    wait_until(
        f"{sorted(ids)} connected to the control plane",
        lambda: all(cp.gateways().get(i, {}).get("connected") for i in ids),
        timeout,
        0.05,
    )


def wait_running(cp, expected: dict[str, int], timeout: float = 10.0):
    """Until GET /gateways shows every instance ACKed its expected version."""

    def ok():
        gws = cp.gateways()
        return all(
            gws.get(i, {}).get("running_version") == v and gws[i].get("last_report") == "ack"
            for i, v in expected.items()
        )

    wait_until(f"gateways running {expected}", ok, timeout, 0.02)


def send(gw: Gateway, names=(ROUTED_OP, OTHER_OP)):
    """One request with a span per name, resource service.name = the gateway's instance id."""
    spans = [make_span(new_trace_id(), name=n) for n in names]
    resp, err = grpc_export_traces(gw, traces_request(spans, {"service.name": gw.instance_id}))
    assert err is None, f"{gw.instance_id}: export failed: {err}"


def spans_in(broker: Broker, topic: str, want: int, timeout: float = 20.0) -> list[tuple[str, str]]:
    """(service.name, span name) of every span in `topic`."""
    recs = consume(broker.bootstrap, topic, want, count=lambda r: len(spans_of(decode_traces(r.value))), timeout=timeout)
    out = []
    for r in recs:
        for res, _scope, span in spans_of(decode_traces(r.value)):
            service = next(a.value.string_value for a in res.attributes if a.key == "service.name")
            out.append((service, span.name))
    return sorted(out)


def canary_ids(percent: float, n_in: int, n_out: int, prefix: str) -> tuple[list[str], list[str]]:
    """Instance ids of which exactly n_in fall in the percent% canary and n_out do not."""
    inside, outside = [], []
    for i in range(10_000):
        cand = f"{prefix}-{i}"
        (inside if in_canary(cand, percent) else outside).append(cand)
        if len(inside) >= n_in and len(outside) >= n_out:
            return inside[:n_in], outside[:n_out]
    raise AssertionError("no split found")


def release(cp, document: str, target: dict | None = None) -> dict:
    version = cp.submit(document)["version"]
    return cp.release(version, target)


# ---------------------------------------------------------------------------------------------
# tests


def test_applied_policy_reaches_every_gateway_within_a_second_and_spans_follow_it(
    backend, control_plane_factory, fleet, broker
):
    cp = control_plane_factory(backend)
    routed = unique_name("it-routed")
    broker.create_topic(routed)
    ids = ["gw-apply-a", "gw-apply-b", "gw-apply-c"]
    gws = fleet(cp, ids)
    wait_connected(cp, ids)
    assert all(policy_version(g) == 0 for g in gws)

    cp.submit(routing_policy(1, routed))
    rollout = cp.release(1)
    accepted = time.monotonic()  # the 201 has just been read
    assert rollout["version"] == 1
    wait_running(cp, {i: 1 for i in ids}, timeout=5)
    took = time.monotonic() - accepted
    print(f"201 to the last ACK seen in GET /gateways: {took * 1000:.0f} ms")
    assert took < 1.0, f"the last ACK came {took:.3f}s after the rollout was accepted"

    for g in gws:
        assert policy_version(g) == 1
        assert gauge(g, "weir_control_plane_connected") == 1
        assert gauge(g, "weir_control_plane_assignments_total", result="applied") == 1
        send(g)
    # Their spans follow it: ROUTED_OP of each gateway in the routed topic, the rest in its own.
    assert spans_in(broker, routed, 3) == sorted((i, ROUTED_OP) for i in ids)
    for g in gws:
        assert spans_in(broker, g.topics["traces"], 1) == [(g.instance_id, OTHER_OP)]


def test_canary_promote_and_rollback(backend, control_plane_factory, fleet, broker):
    cp = control_plane_factory(backend)
    inside, outside = canary_ids(34, 1, 2, "gw-canary")
    ids = inside + outside
    topic_v1, topic_v2 = unique_name("it-v1"), unique_name("it-v2")
    broker.create_topic(topic_v1)
    broker.create_topic(topic_v2)
    gws = {g.instance_id: g for g in fleet(cp, ids)}
    wait_connected(cp, ids)

    release(cp, routing_policy(1, topic_v1))
    wait_running(cp, {i: 1 for i in ids})

    canary = release(cp, routing_policy(2, topic_v2), {"percent": 34})
    wait_running(cp, {**{i: 2 for i in inside}, **{i: 1 for i in outside}})
    # Exactly the hashed canary runs v2, by the gateways' own account too, and stays so.
    time.sleep(0.5)
    for i in ids:
        assert policy_version(gws[i]) == (2 if i in inside else 1), i
        assert cp.gateways()[i]["running_version"] == (2 if i in inside else 1), i
    for i in ids:
        send(gws[i], [ROUTED_OP])
    assert spans_in(broker, topic_v2, len(inside)) == sorted((i, ROUTED_OP) for i in inside)
    assert spans_in(broker, topic_v1, len(outside)) == sorted((i, ROUTED_OP) for i in outside)

    promoted = cp.api("POST", f"/rollouts/{canary['id']}/promote")
    assert promoted["state"] == "completed", promoted
    wait_running(cp, {i: 2 for i in ids})
    assert all(policy_version(g) == 2 for g in gws.values())

    rolled = cp.api("POST", f"/rollouts/{canary['id']}/rollback")
    assert rolled["state"] == "rolled_back", rolled
    wait_running(cp, {i: 1 for i in ids})
    assert all(policy_version(g) == 1 for g in gws.values())


def test_a_gateway_that_cannot_apply_a_policy_nacks_and_pauses_the_rollout(
    backend, control_plane_factory, fleet, broker, broker_factory
):
    """v2 passes the schema but routes to a topic that exists on the shared broker only: the
    gateway on a second broker refuses it; the rollout pauses; a gateway of a later stage is
    never asked."""
    cp = control_plane_factory(backend)
    other = broker_factory()
    common, only_first = unique_name("it-common"), unique_name("it-first-only")
    for b in (broker, other):
        b.create_topic(common)
    broker.create_topic(only_first)
    ok_gw, later_gw = fleet(cp, ["gw-nack-ok", "gw-nack-later"])
    (bad_gw,) = fleet(cp, ["gw-nack-bad"], on_broker=other)
    ids = ["gw-nack-ok", "gw-nack-later", "gw-nack-bad"]
    wait_connected(cp, ids)

    release(cp, routing_policy(1, common))
    wait_running(cp, {i: 1 for i in ids})

    rollout = release(
        cp,
        routing_policy(2, only_first),
        {"stages": [{"instances": ["gw-nack-ok", "gw-nack-bad"]}, {}]},
    )

    def nacked():
        g = cp.gateways()["gw-nack-bad"]
        return g.get("last_report") == "nack" and g.get("last_report_version") == 2

    wait_until("gw-nack-bad NACKed v2", nacked, 10, 0.05)
    bad = cp.gateways()["gw-nack-bad"]
    assert only_first in bad["last_error"], bad
    assert bad["running_version"] == 1, bad
    wait_until(
        "the rollout paused",
        lambda: cp.api("GET", f"/rollouts/{rollout['id']}")["state"] == "paused",
        10,
        0.05,
    )
    wait_running(cp, {"gw-nack-ok": 2, "gw-nack-later": 1})

    # The refusing gateway keeps v1 and still routes by it; it counted the refusal.
    assert policy_version(bad_gw) == 1
    assert gauge(bad_gw, "weir_control_plane_assignments_total", result="refused") == 1
    assert gauge(bad_gw, "weir_policy_documents_refused_total") == 1
    send(bad_gw, [ROUTED_OP])
    assert spans_in(other, common, 1) == [("gw-nack-bad", ROUTED_OP)]
    # The later stage was never pushed v2.
    assert policy_version(later_gw) == 1
    assert gauge(later_gw, "weir_control_plane_assignments_total", result="applied") == 1
    assert policy_version(ok_gw) == 2
    # A paused rollout is not promoted past the failure.
    with pytest.raises(ApiError) as e:
        cp.api("POST", f"/rollouts/{rollout['id']}/promote")
    assert e.value.status == 409, e.value
    time.sleep(0.3)
    assert policy_version(later_gw) == 1


def test_gateways_keep_serving_without_the_control_plane_and_restart_from_last_known_good(
    backend, control_plane_factory, fleet, broker
):
    cp = control_plane_factory(backend)
    routed = unique_name("it-routed")
    broker.create_topic(routed)
    ids = ["gw-down-a", "gw-down-b", "gw-down-c"]
    gws = fleet(cp, ids)
    wait_connected(cp, ids)
    release(cp, routing_policy(1, routed))
    wait_running(cp, {i: 1 for i in ids})

    cp.stop()
    for g in gws:
        wait_until(
            f"{g.instance_id} notices the control plane is gone",
            lambda g=g: gauge(g, "weir_control_plane_connected") == 0,
            10,
            0.1,
        )
    # One gateway restarts while the control plane is down: it comes up with the last policy
    # it applied, from its state_dir.
    restarted = gws[2]
    restarted.stop()
    restarted.start()
    assert policy_version(restarted) == 1
    assert gauge(restarted, "weir_control_plane_connected") == 0
    assert gauge(restarted, "weir_control_plane_assignments_total", result="applied") == 0
    for g in gws:
        assert policy_version(g) == 1
        send(g)
    assert spans_in(broker, routed, 3) == sorted((i, ROUTED_OP) for i in ids)
    for g in gws:
        assert spans_in(broker, g.topics["traces"], 1) == [(g.instance_id, OTHER_OP)]

    # The control plane comes back: every gateway reconnects and, running the version it
    # should, is not pushed it again.
    cp.start()
    wait_connected(cp, ids, timeout=15)
    for g in gws:
        wait_until(
            f"{g.instance_id} reconnected",
            lambda g=g: gauge(g, "weir_control_plane_connected") == 1,
            10,
            0.1,
        )
        assert gauge(g, "weir_control_plane_reconnects_total") >= (0 if g is restarted else 1)
    assert gauge(restarted, "weir_control_plane_assignments_total", result="applied") == 0
    assert all(cp.gateways()[i]["running_version"] == 1 for i in ids)


def test_a_gateway_with_a_wrong_token_is_refused_and_gets_nothing(
    backend, control_plane_factory, fleet, broker
):
    cp = control_plane_factory(backend)
    routed = unique_name("it-routed")
    broker.create_topic(routed)
    (good,) = fleet(cp, ["gw-token-good"])
    (bad,) = fleet(cp, ["gw-token-bad"], token="not-the-gateway-token")
    wait_connected(cp, ["gw-token-good"])
    release(cp, routing_policy(1, routed))
    wait_running(cp, {"gw-token-good": 1})
    time.sleep(0.5)
    assert "gw-token-bad" not in cp.gateways()
    assert policy_version(bad) == 0
    assert gauge(bad, "weir_control_plane_connected") == 0
    assert gauge(bad, "weir_control_plane_assignments_total", result="applied") == 0
    assert not (Path(bad.config["control_plane"]["state_dir"]) / "last-applied-policy").exists()
    assert "refused the gateway token" in bad.log(200)
    # It still serves, with its own (keep-everything) policy.
    send(bad)
    assert spans_in(broker, bad.topics["traces"], 2) == [("gw-token-bad", OTHER_OP), ("gw-token-bad", ROUTED_OP)]


def test_a_pushed_policy_wins_over_policy_file(backend, control_plane_factory, fleet, broker, tmp_path):
    cp = control_plane_factory(backend)
    routed = unique_name("it-routed")
    broker.create_topic(routed)
    local = tmp_path / "local-policy.yaml"
    local.write_text("version: 40\n")
    (gw,) = fleet(cp, ["gw-file"], extra={"policy_file": str(local)})
    wait_connected(cp, ["gw-file"])
    # A local file's version is not the control plane's: the gateway says it runs nothing (0).
    assert policy_version(gw) == 40
    assert cp.gateways()["gw-file"]["running_version"] in (0, None)
    release(cp, routing_policy(1, routed))
    wait_running(cp, {"gw-file": 1})
    assert policy_version(gw) == 1
    local.write_text("version: 41\n")
    time.sleep(2.5)  # the file is checked every second
    assert policy_version(gw) == 1
    assert "control plane's policy is in force" in gw.log(200)


def _make_certs(d: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for 127.0.0.1 it signed: (ca, cert, key)."""
    ca, ca_key = d / "ca.pem", d / "ca-key.pem"
    cert, key, csr, ext = d / "cert.pem", d / "key.pem", d / "cert.csr", d / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for args in [
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "1", "-subj", "/CN=weir watch test CA"],
        ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "1", "-extfile", ext],
    ]:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)
    return ca, cert, key


def test_watch_stream_over_tls(control_plane_factory, fleet, broker, tmp_path):
    """The watch listener with TLS: a gateway that trusts its CA applies policies; one that
    does not (system roots) cannot connect and gets nothing."""
    ca, cert, key = _make_certs(tmp_path)
    cp = control_plane_factory("sqlite", start=False)
    text = cp.config_path.read_text()
    line = f"endpoint: 127.0.0.1:{cp.watch_port}\n"
    assert line in text
    cp.config_path.write_text(text.replace(line, f"{line}  tls:\n    cert_file: {cert}\n    key_file: {key}\n", 1))
    cp.start()
    routed = unique_name("it-routed")
    broker.create_topic(routed)
    https = f"https://{cp.watch_endpoint}"
    (trusting,) = fleet(cp, ["gw-tls-ca"], control_plane={"endpoint": https, "tls": {"ca_file": str(ca)}})
    (untrusting,) = fleet(cp, ["gw-tls-roots"], control_plane={"endpoint": https})

    wait_connected(cp, ["gw-tls-ca"])
    release(cp, routing_policy(1, routed))
    wait_running(cp, {"gw-tls-ca": 1})
    assert policy_version(trusting) == 1
    time.sleep(0.5)
    assert "gw-tls-roots" not in cp.gateways()
    assert policy_version(untrusting) == 0
    assert gauge(untrusting, "weir_control_plane_connected") == 0
    refused = [ln for ln in untrusting.log(400).splitlines() if "control plane unreachable" in ln]
    assert refused and "certificate" in refused[-1].lower(), refused[-1:]
