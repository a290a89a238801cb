"""The policy document in the gateway: routing to topics and drops (counted), consistent head
sampling recorded in tracestate, hot swap under load (each request follows one version), and a
broken document refused while the running policy stays."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

from harness import (
    TRACE_PATH,
    consume,
    decode_traces,
    gateway_bin,
    make_span,
    metric_value,
    new_trace_id,
    post,
    spans_of,
    traces_request,
    unique_name,
    wait_until,
)

EVERYTHING = "{ resource: service.name, exists: true }"


def write(path, text: str):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def attr(span, key):
    for kv in span.attributes:
        if kv.key == key:
            return kv.value.string_value or kv.value.int_value
    return None


def sent_spans(gw, topic, want, timeout=30.0):
    recs = consume(gw.broker.bootstrap, topic, want, count=lambda r: len(spans_of(decode_traces(r.value))), timeout=timeout)
    return [(r, res, span) for r in recs for res, _, span in spans_of(decode_traces(r.value))]


def request_of(resources: dict[str, list]):
    req = traces_request([])
    req.resource_spans.pop()
    for service, spans in resources.items():
        rs = traces_request(spans, resource={"service.name": service}).resource_spans[0]
        req.resource_spans.append(rs)
    return req


def test_routing_sends_to_topics_and_counts_drops(broker, gateway_factory, workdir):
    errors, spans_topic = unique_name("it-errors"), unique_name("it-traces")
    broker.create_topic(errors)
    policy = workdir / f"{unique_name('policy')}.yaml"
    write(
        policy,
        f"""
version: 1
routing:
  rules:
    - name: drop-noisy
      match: {{ resource: service.name, eq: noisy }}
      action: drop
    - name: errors-too
      match: {{ span_attribute: error, eq: true }}
      action: {{ topics: [{errors}, {spans_topic}] }}
""",
    )
    gw = gateway_factory({"policy_file": str(policy), "kafka.traces.topic": spans_topic})

    ok = [make_span(new_trace_id(), name=f"ok-{i}") for i in range(5)]
    bad = [make_span(new_trace_id(), name=f"err-{i}", attrs={"error": True}) for i in range(3)]
    noisy = [make_span(new_trace_id(), name=f"noisy-{i}") for i in range(4)]
    req = request_of({"shop": ok + bad, "noisy": noisy})
    r = post(gw, TRACE_PATH, req.SerializeToString())
    assert r.status_code == 200, r.text

    default = sent_spans(gw, gw.topics["traces"], 8)
    names = sorted(s.name for _, _, s in default)
    assert names == sorted([s.name for s in ok + bad]), names
    err = sent_spans(gw, errors, 3)
    assert sorted(s.name for _, _, s in err) == sorted(s.name for s in bad)
    for rec, _, span in default + err:
        assert rec.key == span.trace_id.hex().encode()
    samples = gw.metrics()
    assert metric_value(samples, "weir_policy_dropped_spans_total", rule="drop-noisy") == 4
    assert metric_value(samples, "weir_policy_matched_spans_total", rule="errors-too") == 3
    assert metric_value(samples, "otelcol_receiver_accepted_spans", transport="http") == 12


def test_head_sampling_is_consistent_and_recorded(gateway_factory, workdir):
    policy = workdir / f"{unique_name('policy')}.yaml"
    write(policy, "version: 1\nsampling:\n  default_probability: 0.5\n")
    gw = gateway_factory({"policy_file": str(policy)})
    spans = [make_span(new_trace_id(), name=f"s{i}") for i in range(400)]
    r = post(gw, TRACE_PATH, traces_request(spans).SerializeToString())
    assert r.status_code == 200, r.text
    # Independently of Weir: randomness = the trace id's last 7 bytes; p=0.5 keeps r >= 2^55.
    expected = {s.name for s in spans if int.from_bytes(s.trace_id[9:], "big") >= 1 << 55}
    assert 120 < len(expected) < 280
    got = sent_spans(gw, gw.topics["traces"], len(expected))
    assert {s.name for _, _, s in got} == expected
    for _, _, s in got:
        assert s.trace_state == "ot=th:8", s.trace_state
    samples = gw.metrics()
    assert metric_value(samples, "weir_policy_sampled_out_spans_total", rule="default") == 400 - len(expected)


def test_two_gateways_decide_alike(broker, gateway_factory, workdir):
    """Two gateway processes given the same spans keep the same ones and route them alike:
    sampling depends on the trace id only, never on the process."""
    errors = unique_name("it-errors")
    broker.create_topic(errors)
    policy = workdir / f"{unique_name('policy')}.yaml"
    write(
        policy,
        f"""version: 1
sampling:
  default_probability: 0.3
  rules:
    - {{ name: checkout, match: {{ resource: service.name, eq: checkout }}, probability: 0.6 }}
routing:
  rules:
    - {{ name: errors, match: {{ span_name: {{ prefix: error- }} }}, action: {{ topic: {errors} }} }}
""",
    )
    gws = [gateway_factory({"policy_file": str(policy)}) for _ in range(2)]
    spans = {
        svc: [make_span(new_trace_id(), name=f"{'error' if i % 5 == 0 else 'ok'}-{svc}-{i}") for i in range(300)]
        for svc in ("checkout", "cart")
    }
    body = request_of(spans).SerializeToString()
    # Independently of Weir: randomness = the trace id's last 7 bytes, kept iff it is at least
    # the threshold (1 - p) * 2^56 (0.6 -> 0x666..., 0.3 -> 0xb33..., 4 hex digits of precision).
    thresholds = {"checkout": 0x6666 << 40, "cart": 0xB333 << 40}
    kept = {s.name for svc, ss in spans.items() for s in ss if int.from_bytes(s.trace_id[9:], "big") >= thresholds[svc]}
    routed = {n for n in kept if n.startswith("error-")}
    assert 150 < len(kept) < 390 and routed
    for gw in gws:
        r = post(gw, TRACE_PATH, body)
        assert r.status_code == 200, r.text
    for gw in gws:
        assert {s.name for _, _, s in sent_spans(gw, gw.topics["traces"], len(kept) - len(routed))} == kept - routed
    # Both gateways sent the same spans to the shared errors topic: each name exactly twice.
    got = [s.name for _, _, s in sent_spans(gws[0], errors, 2 * len(routed))]
    assert sorted(got) == sorted(list(routed) * 2)


def test_hot_swap_under_load_each_request_follows_one_version(broker, gateway_factory, workdir):
    a, b = unique_name("it-a"), unique_name("it-b")
    for t in (a, b):
        broker.create_topic(t)

    def doc(version: int) -> str:
        topic = a if version % 2 else b
        return (
            f"version: {version}\nrouting:\n  rules:\n    - name: all\n"
            f"      match: {EVERYTHING}\n      action: {{ topic: {topic} }}\n"
        )

    policy = workdir / f"{unique_name('policy')}.yaml"
    write(policy, doc(1))
    gw = gateway_factory({"policy_file": str(policy)})
    requests_n, per_request = 150, 20
    statuses: list[int] = []
    stop = threading.Event()

    def send():
        for i in range(requests_n):
            if stop.is_set():
                return
            spans = [make_span(new_trace_id(), name=f"r{i}", attrs={"req": i}) for _ in range(per_request)]
            r = post(gw, TRACE_PATH, traces_request(spans).SerializeToString())
            statuses.append(r.status_code)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        for version in range(2, 102):
            write(policy, doc(version))
            os.kill(gw.pid, signal.SIGHUP)
            time.sleep(0.03)
    finally:
        sender.join(timeout=120)
        stop.set()
    assert not sender.is_alive()
    assert statuses == [200] * requests_n, sorted(set(statuses))
    wait_until("the last version", lambda: metric_value(gw.metrics(), "weir_policy_version") == 101, 10)

    total = requests_n * per_request
    in_a = sent_spans(gw, a, 1, timeout=5)
    in_b = sent_spans(gw, b, total - len(in_a), timeout=30)
    topic_of: dict[int, set[str]] = {}
    for topic, spans in (("a", in_a), ("b", in_b)):
        for _, _, s in spans:
            topic_of.setdefault(attr(s, "req"), set()).add(topic)
    assert len(in_a) + len(in_b) == total
    assert len(topic_of) == requests_n
    mixed = {req: t for req, t in topic_of.items() if len(t) > 1}
    assert not mixed, f"requests whose spans followed two versions: {mixed}"
    assert in_a and in_b, "the swaps never took effect while requests were in flight"


def test_a_broken_policy_is_refused_and_the_running_one_stays(gateway_factory, workdir):
    policy = workdir / f"{unique_name('policy')}.yaml"
    write(policy, "version: 4\nsampling:\n  default_probability: 1\n")
    gw = gateway_factory({"policy_file": str(policy)})
    for bad in (
        "version: 5\nsampling:\n  rules:\n    - name: x\n      match: { span_name: { regex: '(' } }\n      probability: 1\n",
        "version: 5\nsampling:\n  default_probability: 1.5\n",
        "version: 5\nsampling:\n  sample_everything: true\n",
    ):
        write(policy, bad)
        before = metric_value(gw.metrics(), "weir_policy_documents_refused_total") or 0
        os.kill(gw.pid, signal.SIGHUP)
        wait_until(
            "the refusal", lambda: (metric_value(gw.metrics(), "weir_policy_documents_refused_total") or 0) > before, 10
        )
        assert metric_value(gw.metrics(), "weir_policy_version") == 4
    r = post(gw, TRACE_PATH, traces_request([make_span(new_trace_id())]).SerializeToString())
    assert r.status_code == 200

    # --check-config names the offending key of the policy file.
    cfg = workdir / f"{unique_name('cfg')}.yaml"
    cfg.write_text(f"policy_file: {policy}\n")
    write(policy, "version: 5\nsampling:\n  default_probability: 1.5\n")
    out = subprocess.run([str(gateway_bin()), "--check-config", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "default_probability" in out.stderr, out.stderr
