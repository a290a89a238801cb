"""The web console (issue 21) in a real browser: Debian's headless Chromium, driven through
chromium-driver by selenium, against a running stack (Tansu, a control plane reading span
metrics, two gateways watching it) with traffic.

What it checks, on the DOM the console builds (data attributes the console documents):
- without a token only the sign-in form shows; a wrong token shows the API's own error;
- the service graph has as many nodes and edges as GET /api/v1/graph, each edge the API's
  health, each node's three rings exactly the API's success rate over 1, 5 and 15 minutes;
- it is live: a service that starts sending spans appears without a reload;
- a click on a node opens the service's page with the API's operations, callers and callees;
- the gateways page shows each gateway's running and desired version and last report;
- the policies page diffs two versions as the API does;
- a viewer sees no rollout buttons; an admin's click on "promote" releases the next stage and
  the gateways run the new version (by the control plane's account and their own /metrics).

Screenshots of the graph, a service, the gateways and the rollouts pages are saved to
$WEIR_CONSOLE_SCREENSHOTS, else to the test's tmp_path (printed). Chromium and its driver come
from scripts/lib.sh ensure_chromium (scripts/test.sh calls it); the test installs them the same
way when they are missing and is skipped only when that fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from control_plane_harness import (  # noqa: F401  (fixtures)
    ADMIN_TOKEN,
    GATEWAY_TOKEN,
    VIEWER_TOKEN,
    control_plane_factory,
)
from harness import (
    TRACE_PATH,
    Gateway,
    metric_value,
    new_span_id,
    new_trace_id,
    post,
    produce,
    unique_name,
    wait_until,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

ROOT = Path(__file__).resolve().parent.parent
MS = 1_000_000
SERVER = trace_pb2.Span.SPAN_KIND_SERVER
CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT
ERROR = 2


# ---------------------------------------------------------------------------------------------
# The browser


def chromium_paths() -> tuple[str, str]:
    """(chromium, chromedriver), installed by scripts/lib.sh ensure_chromium when missing; the
    test is skipped, saying why, only when that install fails."""

    def found():
        browser = os.environ.get("WEIR_CHROMIUM_BIN") or shutil.which("chromium")
        driver = os.environ.get("WEIR_CHROMEDRIVER_BIN") or shutil.which("chromedriver")
        return (browser, driver) if browser and driver else None

    paths = found()
    if paths is None:
        r = subprocess.run(
            ["bash", "-c", f"source {ROOT / 'scripts/lib.sh'} && ensure_chromium"],
            capture_output=True, text=True, timeout=900,
        )
        paths = found()
        if paths is None:
            pytest.skip(
                "headless Chromium is not installed and could not be installed "
                f"(scripts/lib.sh ensure_chromium exited {r.returncode}): {r.stderr[-800:]}"
            )
    return paths


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespaces for the sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(arg)
    service = Service(executable_path=chromedriver, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def screenshots(tmp_path):
    out = Path(os.environ.get("WEIR_CONSOLE_SCREENSHOTS") or tmp_path / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    print(f"console screenshots: {out}")
    return out


def js(driver, script: str, *args):
    """Runs `script` (a function body) in the page. One call reads the DOM in one go, so a
    refresh cannot replace elements halfway through a read."""
    return driver.execute_script(script, *args)


def visible(driver, element_id: str) -> bool:
    return js(driver, "const e = document.getElementById(arguments[0]); return !!e && !e.hidden;", element_id)


def graph_dom(driver) -> dict | None:
    return js(
        driver,
        """
        const svg = document.querySelector('svg#graph');
        if (!svg) return null;
        return {
          generated_at: svg.dataset.generatedAt,
          window: svg.dataset.window,
          nodes: [...svg.querySelectorAll('g.node')].map(g => ({
            name: g.dataset.service,
            rings: Object.fromEntries([...g.querySelectorAll('circle[data-ring]')].map(
              c => [c.dataset.ring, c.dataset.rate === '' ? null : Number(c.dataset.rate)])),
            colours: Object.fromEntries([...g.querySelectorAll('circle[data-ring]')].map(
              c => [c.dataset.ring, c.getAttribute('stroke')])),
          })),
          edges: [...svg.querySelectorAll('path[data-edge]')].map(p => ({
            edge: p.dataset.edge, health: p.dataset.health, type: p.dataset.connectionType,
            calls: Number(p.dataset.calls)})),
        };
        """,
    )


def graph_matches(dom: dict | None, api: dict) -> bool:
    """Whether the drawn graph is exactly the API's: nodes, rings, edges and their health."""
    if dom is None:
        return False
    want_nodes = {n["name"]: n["success_rate"] for n in api["nodes"]}
    got_nodes = {n["name"]: n["rings"] for n in dom["nodes"]}
    want_edges = Counter((f"{e['client']}->{e['server']}", e["connection_type"], e["health"], e["calls"]) for e in api["edges"])
    got_edges = Counter((e["edge"], e["type"], e["health"], e["calls"]) for e in dom["edges"])
    return got_nodes == want_nodes and got_edges == want_edges and len(dom["nodes"]) == len(api["nodes"])


def wait_for(driver, what: str, script: str, timeout: float = 15.0):
    return wait_until(what, lambda: js(driver, script), timeout, 0.1)


def click(driver, css: str):
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, css).click()


# ---------------------------------------------------------------------------------------------
# The stack


def kv(attrs: dict) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=k, value=common_pb2.AnyValue(string_value=v)) for k, v in attrs.items()]


def span(name: str, kind: int, millis: int, error: bool, attrs: dict | None = None) -> trace_pb2.Span:
    now = time.time_ns()
    return trace_pb2.Span(
        trace_id=new_trace_id(),
        span_id=new_span_id(),
        parent_span_id=new_span_id(),
        name=name,
        kind=kind,
        start_time_unix_nano=now - millis * MS,
        end_time_unix_nano=now,
        attributes=kv(attrs or {}),
        status=trace_pb2.Status(code=ERROR if error else 0),
    )


def traffic(services: dict[str, list[trace_pb2.Span]]) -> bytes:
    return trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=resource_pb2.Resource(attributes=kv({"service.name": s})),
                scope_spans=[trace_pb2.ScopeSpans(spans=spans)],
            )
            for s, spans in services.items()
        ]
    ).SerializeToString()


def shop_traffic(i: int) -> bytes:
    """One request's worth of a small shop: frontend calls cart (always fine) and payment (1 in
    4 fails); cart queries its database. Success rates: frontend 95%, cart 100%, payment 75%."""
    pay_fails = i % 4 == 0
    return traffic(
        {
            "frontend": [
                span("GET /checkout", SERVER, 40 + i % 7, error=i % 20 == 0),
                span("cart.get", CLIENT, 8, False, {"peer.service": "cart"}),
                span("payment.charge", CLIENT, 25, pay_fails, {"peer.service": "payment"}),
            ],
            "cart": [
                span("GET /cart", SERVER, 6, False),
                span("SELECT cart", CLIENT, 2, i % 50 == 0, {"db.system": "postgresql", "db.namespace": "carts"}),
            ],
            "payment": [span("POST /charge", SERVER, 22, pay_fails)],
        }
    )


def earlier_flush(minutes_ago: float, ok: int, errors: int) -> bytes:
    """A gateway's flush of `minutes_ago`: frontend's GET /checkout calls, as
    docs/span-metrics.md names them. The three windows then hold different success rates."""
    at = time.time_ns() - int(minutes_ago * 60e9)
    points = [
        metrics_pb2.NumberDataPoint(
            attributes=kv({"service.name": "frontend", "span.name": "GET /checkout",
                           "span.kind": "SPAN_KIND_SERVER", "status.code": status}),
            start_time_unix_nano=at - 15_000_000_000,
            time_unix_nano=at,
            as_int=n,
        )
        for status, n in (("STATUS_CODE_UNSET", ok), ("STATUS_CODE_ERROR", errors))
        if n
    ]
    return metrics_pb2.MetricsData(
        resource_metrics=[
            metrics_pb2.ResourceMetrics(
                resource=resource_pb2.Resource(attributes=kv({"service.name": "weir-gateway"})),
                scope_metrics=[
                    metrics_pb2.ScopeMetrics(
                        metrics=[
                            metrics_pb2.Metric(
                                name="traces.span.metrics.calls",
                                unit="{call}",
                                sum=metrics_pb2.Sum(
                                    data_points=points,
                                    aggregation_temporality=metrics_pb2.AGGREGATION_TEMPORALITY_DELTA,
                                    is_monotonic=True,
                                ),
                            )
                        ]
                    )
                ],
            )
        ]
    ).SerializeToString()


def policy(version: int, topic: str, probability: float) -> str:
    return (
        f"version: {version}\n"
        f"sampling:\n  default_probability: {probability}\n"
        f"span_metrics:\n  topic: {topic}\n  flush_interval: 500ms\n"
    )


def api_graph(cp) -> dict:
    status, graph = cp.request("GET", "/graph?window=1m", VIEWER_TOKEN)
    assert status == 200, graph
    return graph


def policy_version(gw: Gateway) -> float:
    return metric_value(gw.metrics(), "weir_policy_version")


@pytest.fixture
def gateways(request, broker, workdir, tmp_path):
    """watching(cp, ids) -> started gateways watching `cp` (stopped at teardown)."""
    started: list[Gateway] = []

    def start(cp, ids):
        for instance_id in ids:
            gw = Gateway(
                broker,
                workdir,
                {
                    "control_plane": {
                        "endpoint": f"http://{cp.watch_endpoint}",
                        "token": GATEWAY_TOKEN,
                        "instance_id": instance_id,
                        "labels": {"zone": "eu-1", "suite": "console"},
                        "state_dir": str(tmp_path / "state" / instance_id),
                        "reconnect": {"initial": "100ms", "max": "1s"},
                    },
                    "log.level": "info,weir_gateway=debug",
                },
            )
            gw.instance_id = instance_id
            started.append(gw.start())
        return started

    yield start
    rep = getattr(request.node, "rep_call", None)
    for gw in started:
        gw.stop()
        if rep is None or rep.failed:
            print(f"--- {gw.instance_id} log tail:\n{gw.log(40)}")


# ---------------------------------------------------------------------------------------------
# The test


def test_console_in_headless_chromium(broker, control_plane_factory, gateways, browser, screenshots):  # noqa: F811
    started = time.monotonic()
    topic = unique_name("it-console-span-metrics")
    broker.create_topic(topic)
    cp = control_plane_factory(
        "sqlite", extra_yaml=f"span_metrics:\n  brokers: [{broker.bootstrap}]\n  topic: {topic}\n"
    )
    gw_a, gw_b = gateways(cp, ["gw-console-a", "gw-console-b"])
    ids = [gw_a.instance_id, gw_b.instance_id]
    wait_until("both gateways connected", lambda: all(cp.gateways().get(i, {}).get("connected") for i in ids), 15, 0.05)

    # v1 everywhere; v2 as a canary on gw-console-a, the next stage (everyone) left for the console.
    cp.submit(policy(1, topic, 0.5))
    cp.release(1)
    cp.submit(policy(2, topic, 0.1))

    def running(expected: dict[str, int]):
        gws = cp.gateways()
        return all(gws[i]["running_version"] == v and gws[i]["last_report"] == "ack" for i, v in expected.items())

    wait_until("v1 running everywhere", lambda: running({i: 1 for i in ids}), 10, 0.05)
    canary = cp.release(2, {"stages": [{"instances": [gw_a.instance_id]}, {}]})
    wait_until("the v2 canary on gw-console-a", lambda: running({gw_a.instance_id: 2, gw_b.instance_id: 1}), 10, 0.05)

    # Earlier flushes (as a gateway that sent them 3 and 10 minutes ago), so frontend's success
    # rate differs in each window: 95% over 1 minute, 38/50 over 5, 88/100 over 15.
    produce(broker.bootstrap, topic, b"earlier-3m", earlier_flush(3, ok=0, errors=10))
    produce(broker.bootstrap, topic, b"earlier-10m", earlier_flush(10, ok=50, errors=0))
    # Traffic through both gateways; the control plane folds every span (sampling drops most).
    for i in range(40):
        r = post((gw_a, gw_b)[i % 2], TRACE_PATH, shop_traffic(i))
        assert r.status_code == 200, r.text
    seen = {}

    def served():
        seen["graph"] = g = api_graph(cp)
        calls = {n["name"]: n["calls"] for n in g["nodes"]}
        frontend = next((n["success_rate"] for n in g["nodes"] if n["name"] == "frontend"), {})
        return (
            calls == {"frontend": 40, "cart": 40, "payment": 40, "carts": 40}
            and len(g["edges"]) == 3
            and frontend.get("15m") == 0.88
        )

    try:
        wait_until("the control plane to serve the shop's traffic", served, 30, 0.25)
    except TimeoutError:
        print("graph served:", json.dumps(seen.get("graph"))[:3000])
        for g in (gw_a, gw_b):
            print(g.instance_id, [m for m in g.metrics() if "span_metrics" in m[0] or "policy_version" in m[0]])
        raise
    graph = api_graph(cp)
    assert {n["name"] for n in graph["nodes"]} == {"frontend", "cart", "payment", "carts"}
    assert {e["health"] for e in graph["edges"]} == {"ok", "failing", "degraded"}

    base = cp.api_base
    # ---- Sign-in: nothing but the form without a token; a wrong token shows the API's error.
    browser.get(f"{base}/")
    assert browser.current_url == f"{base}/console/"
    wait_for(browser, "the console's script ran", "return document.body.dataset.console === 'ready';")
    assert visible(browser, "sign-in")
    for hidden in ("app", "nav", "sign-out", "who"):
        assert not visible(browser, hidden), hidden
    assert js(browser, "return document.querySelectorAll('svg, table, #app *').length;") == 0
    for token in ("not-a-token", GATEWAY_TOKEN):
        status, refusal = cp.request("GET", "/graph", token)
        assert status in (401, 403)
        browser.find_element("id", "token").send_keys(token)
        click(browser, "#sign-in-button")
        error = "const e = document.getElementById('sign-in-error'); return e.hidden ? null : e.textContent;"
        try:
            wait_until("the API's error shown", lambda: js(browser, error) == refusal["detail"], 10, 0.1)
        except TimeoutError:
            print(f"sign-in error shown: {js(browser, error)!r}, the API's: {refusal['detail']!r}")
            raise
        assert not visible(browser, "app")
        browser.find_element("id", "token").clear()
    assert js(browser, "return sessionStorage.length;") == 0

    # ---- The graph, as a viewer.
    browser.find_element("id", "token").send_keys(VIEWER_TOKEN)
    click(browser, "#sign-in-button")
    wait_for(browser, "the graph drawn", "return !!document.querySelector('svg#graph g.node');")
    assert js(browser, "return document.getElementById('who').textContent;") == "test-viewer (viewer)"
    assert js(browser, "return sessionStorage.getItem('weir.console.token');") == VIEWER_TOKEN
    # The DOM equals the API read just before or after it (refreshes every 3 s; no traffic now).
    wait_until("the drawn graph equals the API's", lambda: graph_matches(graph_dom(browser), api_graph(cp)), 15, 0.3)
    dom, api = graph_dom(browser), api_graph(cp)
    assert len(dom["nodes"]) == len(api["nodes"]) == 4
    assert len(dom["edges"]) == len(api["edges"]) == 3
    rates = {n["name"]: n["success_rate"] for n in api["nodes"]}
    for node in dom["nodes"]:
        assert set(node["rings"]) == {"1m", "5m", "15m"}
        for window, value in node["rings"].items():
            assert value == rates[node["name"]][window], (node["name"], window, value)
    # The rates the traffic was built with, and their colours: green at 100%, red at 75%.
    assert rates["cart"] == {"1m": 1.0, "5m": 1.0, "15m": 1.0}
    assert rates["payment"]["1m"] == 0.75
    assert rates["frontend"] == {"1m": 0.95, "5m": 0.76, "15m": 0.88}
    colours = {n["name"]: n["colours"] for n in dom["nodes"]}
    assert colours["cart"]["1m"] == "hsl(120, 72%, 40%)" and colours["payment"]["1m"] == "hsl(0, 72%, 40%)"
    # Each ring its own colour: 95% -> hue 90, 76% -> 0 (red), 88% -> 48.
    assert colours["frontend"] == {"1m": "hsl(90, 72%, 40%)", "5m": "hsl(0, 72%, 40%)", "15m": "hsl(48, 72%, 40%)"}
    edges = {e["edge"]: e["health"] for e in dom["edges"]}
    assert edges == {"frontend->cart": "ok", "frontend->payment": "failing", "cart->carts": "degraded"}
    browser.save_screenshot(str(screenshots / "graph.png"))

    # Live: a new service shows up without a reload.
    js(browser, "window.weirNoReload = true;")
    for i in range(5):
        r = post(gw_a, TRACE_PATH, traffic({"search": [span("GET /search", SERVER, 12, i == 0)]}))
        assert r.status_code == 200, r.text
    wait_for(browser, "the new service drawn", "return !!document.querySelector('g.node[data-service=\"search\"]');", 20)
    assert js(browser, "return window.weirNoReload === true;")
    wait_until("the drawn graph equals the API's again", lambda: graph_matches(graph_dom(browser), api_graph(cp)), 15, 0.3)
    assert js(browser, "return document.querySelector('g.node[data-service=\"search\"] circle[data-ring=\"1m\"]').dataset.rate;") == "0.8"

    # ---- A click on a node: the service's page.
    click(browser, 'g.node[data-service="frontend"] circle.hit')
    wait_for(browser, "the service page", "return location.hash === '#/service/frontend' && !!document.querySelector('tr[data-operation]');")
    status, service = cp.request("GET", "/services/frontend?window=1m", VIEWER_TOKEN)
    assert status == 200, service
    shown = js(
        browser,
        """return {
          ops: [...document.querySelectorAll('tr[data-operation]')].map(r => [r.dataset.operation, r.dataset.kind, r.cells[2].textContent]),
          callees: [...document.querySelectorAll('tr[data-kind="callee"]')].map(r => r.dataset.edge).sort(),
          callers: [...document.querySelectorAll('tr[data-kind="caller"]')].length,
          rates: Object.fromEntries([...document.querySelectorAll('dd[data-rate-window]')].map(d => [d.dataset.rateWindow, d.textContent])),
        };""",
    )
    assert sorted(map(tuple, shown["ops"])) == sorted((o["name"], o["kind"], f"{o['calls']:,}") for o in service["operations"])
    assert shown["callees"] == sorted(f"{e['client']}->{e['server']}" for e in service["callees"]) == [
        "frontend->cart", "frontend->payment"]
    assert shown["callers"] == len(service["callers"]) == 0
    assert shown["rates"] == {"1m": "95.00%", "5m": "76.00%", "15m": "88.00%"}
    browser.save_screenshot(str(screenshots / "service-frontend.png"))

    # ---- Gateways.
    click(browser, 'a[data-nav="gateways"]')
    wait_for(browser, "the gateways page", "return document.querySelectorAll('tr[data-gateway]').length === 2;")
    rows = js(
        browser,
        """return Object.fromEntries([...document.querySelectorAll('tr[data-gateway]')].map(r => [r.dataset.gateway,
          [r.dataset.runningVersion, r.dataset.desiredVersion, r.dataset.lastReport, r.cells[2].textContent]]));""",
    )
    assert rows == {
        gw_a.instance_id: ["2", "2", "ack", "suite=consolezone=eu-1"],
        gw_b.instance_id: ["1", "1", "ack", "suite=consolezone=eu-1"],
    }, rows
    browser.save_screenshot(str(screenshots / "gateways.png"))

    # ---- Policies: the diff of v1 and v2, line by line as the API gives it.
    click(browser, 'a[data-nav="policies"]')
    wait_for(browser, "the policies page", "return document.querySelectorAll('tr[data-policy]').length === 2;")
    click(browser, "#diff-button")
    wait_for(browser, "the diff", "return location.hash === '#/policies/diff/1/2' && !!document.querySelector('#policy-diff .line');")
    lines = js(browser, "return [...document.querySelectorAll('#policy-diff .line')].map(l => [l.className, l.textContent]);")
    want = cp.api("GET", "/policies/1/diff/2", VIEWER_TOKEN)["diff"]
    assert [t.rstrip("\n") for _, t in lines] == want.rstrip("\n").split("\n")
    assert ["line del", "-version: 1"] in [[c, t.rstrip("\n")] for c, t in lines]
    assert ["line add", "+version: 2"] in [[c, t.rstrip("\n")] for c, t in lines]

    # ---- Rollouts: a viewer gets no buttons.
    click(browser, 'a[data-nav="rollouts"]')
    wait_for(browser, "the rollouts page", f"return !!document.querySelector('article[data-rollout=\"{canary['id']}\"]');")
    assert js(browser, "return document.querySelectorAll('button[data-action]').length;") == 0

    # ... an admin does, and a click on "promote" releases v2 to every gateway.
    click(browser, "#sign-out")
    assert visible(browser, "sign-in") and not visible(browser, "app")
    assert js(browser, "return sessionStorage.length;") == 0
    browser.find_element("id", "token").send_keys(ADMIN_TOKEN)
    click(browser, "#sign-in-button")
    wait_for(browser, "the admin's rollouts page", f"return !!document.querySelector('button[data-action=\"promote\"][data-rollout=\"{canary['id']}\"]');")
    article = js(
        browser,
        f"""const a = document.querySelector('article[data-rollout="{canary['id']}"]');
        return [a.dataset.state, a.dataset.currentStage, [...a.querySelectorAll('button[data-action]')].map(b => b.dataset.action),
                [...a.querySelectorAll('.stages li')].map(l => [l.className, l.textContent]), a.querySelector('progress').value];""",
    )
    assert article == [
        "active", "0", ["promote", "pause", "rollback"],
        [["released", f"instances {gw_a.instance_id}"], ["pending", "every gateway"]], 1,
    ], article
    browser.save_screenshot(str(screenshots / "rollouts.png"))
    assert cp.gateways()[gw_b.instance_id]["running_version"] == 1 and policy_version(gw_b) == 1

    click(browser, f'button[data-action="promote"][data-rollout="{canary["id"]}"]')
    wait_for(browser, "the promote done", "return document.getElementById('rollout-message').dataset.action === 'promote';")
    rollout = cp.api("GET", f"/rollouts/{canary['id']}", VIEWER_TOKEN)
    assert (rollout["current_stage"], rollout["state"]) == (1, "active"), rollout
    # The gateways run it, by the control plane's account and by their own.
    wait_until("v2 running everywhere", lambda: running({i: 2 for i in ids}), 10, 0.05)
    assert policy_version(gw_a) == 2 and policy_version(gw_b) == 2
    audit = cp.api("GET", "/audit?limit=1", VIEWER_TOKEN)["entries"][0]
    assert (audit["action"], audit["actor"]) == ("rollout.promote", "test-admin"), audit
    # ... and the console's pages show it.
    wait_for(
        browser, "the rollout drawn at its last stage",
        f"return document.querySelector('article[data-rollout=\"{canary['id']}\"]').dataset.currentStage === '1';",
    )
    browser.save_screenshot(str(screenshots / "rollouts-promoted.png"))
    click(browser, 'a[data-nav="gateways"]')
    wait_for(
        browser, "the gateways page showing v2 everywhere",
        "const r = [...document.querySelectorAll('tr[data-gateway]')]; return r.length === 2 && r.every(x => x.dataset.runningVersion === '2');",
    )
    print(f"console test took {time.monotonic() - started:.1f} s; screenshots in {screenshots}: "
          + json.dumps(sorted(p.name for p in screenshots.iterdir())))
