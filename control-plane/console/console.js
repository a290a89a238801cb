// The Weir web console: plain JavaScript, no framework, no build step. Everything it shows
// comes from the REST API (/api/v1) with the token the user signed in with; the page itself
// holds no data. Pages are chosen by the URL's hash (#/graph, #/service/NAME, #/gateways,
// #/rollouts, #/policies, #/policies/N, #/policies/diff/A/B).
//
// Names shown here (services, operations, labels) come from any client of a gateway: they are
// only ever set as text or attribute values, never parsed as HTML.
"use strict";

const TOKEN_KEY = "weir.console.token";
/// How often live pages (graph, service, gateways, rollouts) reload, in milliseconds.
const REFRESH_MS = 3000;
const WINDOWS = ["1m", "5m", "15m"];
const SVG_NS = "http://www.w3.org/2000/svg";
/// Ring radii, innermost first: 1m inside, 15m outside.
const RINGS = [["1m", 13], ["5m", 22], ["15m", 31]];
const RING_WIDTH = 6;
const HEALTH_COLOURS = { ok: "#2f9e44", degraded: "#f08c00", failing: "#e03131" };
const NO_DATA_COLOUR = "#adb5bd";

const state = {
  token: null,
  session: null,
  window: "1m",
  // Bumped on every navigation: a reply that arrives for an older page is dropped.
  page: 0,
  timer: null,
};

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------
// DOM helpers

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "hidden" || k === "disabled" || k === "selected" || k === "checked") el[k] = Boolean(v);
    else if (k === "value") el.value = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  return el;
}

/** Appends children to `el`, skipping null, undefined and false (native append would show them). */
function add(el, ...children) {
  return append(el, children);
}

/** An HTML element: h("td", {class: "n"}, "text", child...). */
function h(tag, attrs = {}, ...children) {
  return append(setAttrs(document.createElement(tag), attrs), children);
}

/** An SVG element. */
function s(tag, attrs = {}, ...children) {
  return append(setAttrs(document.createElementNS(SVG_NS, tag), attrs), children);
}

// ---------------------------------------------------------------------------------------------
// Formatting

const pct = (x) => (x === null || x === undefined ? "–" : `${(x * 100).toFixed(2)}%`);
const num = (x) => (x === null || x === undefined ? "–" : x.toLocaleString("en-US"));
const perSec = (x) => (x === null || x === undefined ? "–" : x < 10 ? x.toFixed(2) : x.toFixed(1));
const ms = (x) => (x === null || x === undefined ? "–" : x < 10 ? x.toFixed(2) : x.toFixed(1));
const secsAsMs = (x) => (x === null || x === undefined ? null : x * 1000);
/** RFC 3339 UTC, to the second. */
const when = (t) => (t ? String(t).replace("T", " ").replace(/\.\d+Z$/, "Z") : "–");
const clock = (unixSecs) => new Date(unixSecs * 1000).toISOString().slice(11, 19) + "Z";

/** Green at 100% success, yellow at 90%, red at 80% and below; grey without calls. */
function rateColour(rate) {
  if (rate === null || rate === undefined) return NO_DATA_COLOUR;
  const t = Math.min(1, Math.max(0, (rate - 0.8) / 0.2));
  return `hsl(${Math.round(120 * t)}, 72%, 40%)`;
}

function healthBadge(health) {
  return h("span", { class: `badge health-${health}`, "data-health": health }, health);
}

// ---------------------------------------------------------------------------------------------
// The REST API

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** The JSON of a request to the API (paths without a leading slash are under /api/v1/). */
async function api(path, { method = "GET", body } = {}) {
  const headers = { authorization: `Bearer ${state.token}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path.startsWith("/") ? path : `/api/v1/${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (e) {
    throw new ApiError(0, `the control plane did not answer: ${e.message}`);
  }
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!resp.ok) {
    // Errors are problem documents (RFC 9457): `detail` says what went wrong.
    const message = data && typeof data.detail === "string" ? data.detail : `HTTP ${resp.status}: ${text.slice(0, 300)}`;
    throw new ApiError(resp.status, message);
  }
  return data;
}

// ---------------------------------------------------------------------------------------------
// Sign-in

async function signIn(token) {
  state.token = token;
  const session = await api("/console/session");
  state.session = session;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("who").textContent = `${session.name} (${session.role})`;
  $("who").dataset.role = session.role;
  for (const id of ["nav", "who", "sign-out", "app"]) $(id).hidden = false;
  $("sign-in").hidden = true;
  $("sign-in-error").hidden = true;
  route();
}

/** Back to the sign-in form, forgetting the token; `why` is shown there. */
function signOut(why) {
  stopRefresh();
  state.page += 1;
  state.token = null;
  state.session = null;
  sessionStorage.removeItem(TOKEN_KEY);
  for (const id of ["nav", "who", "sign-out", "app", "status"]) $(id).hidden = true;
  $("app").replaceChildren();
  $("sign-in").hidden = false;
  const error = $("sign-in-error");
  error.textContent = why || "";
  error.hidden = !why;
  $("token").value = "";
  $("token").focus();
}

function showStatus(message) {
  const el = $("status");
  el.textContent = message || "";
  el.hidden = !message;
}

/** Shows an API error; a refused token ends the session. */
function failed(e) {
  if (e instanceof ApiError && e.status === 401) {
    signOut(`Signed out: ${e.message}`);
    return;
  }
  showStatus(e.message);
}

// ---------------------------------------------------------------------------------------------
// Pages and refreshing

function stopRefresh() {
  if (state.timer !== null) clearTimeout(state.timer);
  state.timer = null;
}

/**
 * Runs `load` now and, for live pages, again every REFRESH_MS after each load finished, until
 * the user navigates away. `load` gets a function telling whether its page is still shown.
 */
function run(load, live) {
  const page = state.page;
  const current = () => page === state.page;
  const tick = async () => {
    try {
      await load(current);
      if (current()) showStatus("");
    } catch (e) {
      if (current()) failed(e);
    }
    if (live && current() && state.token) state.timer = setTimeout(tick, REFRESH_MS);
  };
  tick();
}

function route() {
  if (!state.token) return;
  stopRefresh();
  state.page += 1;
  showStatus("");
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const app = $("app");
  app.replaceChildren();
  let nav = parts[0] || "graph";
  if (nav === "service") nav = "graph";
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === nav);
  }
  switch (parts[0]) {
    case "service":
      return servicePage(app, parts.slice(1).join("/"));
    case "gateways":
      return gatewaysPage(app);
    case "rollouts":
      return rolloutsPage(app);
    case "policies":
      if (parts[1] === "diff") return diffPage(app, parts[2], parts[3]);
      if (parts[1]) return policyPage(app, parts[1]);
      return policiesPage(app);
    default:
      return graphPage(app);
  }
}

function windowPicker(onChange) {
  return h(
    "div",
    { class: "windows", role: "group", "aria-label": "window" },
    WINDOWS.map((w) =>
      h(
        "button",
        {
          type: "button",
          class: w === state.window ? "active" : null,
          "data-window": w,
          onclick: (ev) => {
            state.window = w;
            for (const b of ev.target.parentNode.children) b.classList.toggle("active", b === ev.target);
            onChange();
          },
        },
        w,
      ),
    ),
  );
}

function updated(el, unixSecs) {
  el.textContent = `updated ${clock(unixSecs)}`;
  el.dataset.generatedAt = String(unixSecs);
}

// ---------------------------------------------------------------------------------------------
// The service graph

/**
 * Columns by call direction: a node sits one column right of its furthest caller (cycles are
 * broken at the edge that closes them, found by a depth-first walk in name order); within a
 * column, nodes follow the mean row of their callers, then their name. Deterministic: the same
 * graph always gets the same picture.
 */
function layout(nodes, edges) {
  const names = nodes.map((n) => n.name).sort();
  const out = new Map(names.map((n) => [n, []]));
  for (const e of edges) {
    if (e.client !== e.server && out.has(e.client) && out.has(e.server)) out.get(e.client).push(e.server);
  }
  for (const list of out.values()) list.sort();
  // Depth-first walk: postorder gives a topological order of the graph without back edges.
  const mark = new Map();
  const order = [];
  const back = new Set();
  const visit = (root) => {
    const stack = [[root, 0]];
    mark.set(root, "open");
    while (stack.length) {
      const top = stack[stack.length - 1];
      const [n, i] = top;
      const next = out.get(n)[i];
      if (next === undefined) {
        mark.set(n, "done");
        order.push(n);
        stack.pop();
        continue;
      }
      top[1] += 1;
      if (mark.get(next) === "open") back.add(`${n}\u0000${next}`);
      else if (!mark.has(next)) {
        mark.set(next, "open");
        stack.push([next, 0]);
      }
    }
  };
  for (const n of names) if (!mark.has(n)) visit(n);
  const column = new Map(names.map((n) => [n, 0]));
  for (const n of order.reverse()) {
    for (const m of out.get(n)) {
      if (!back.has(`${n}\u0000${m}`)) column.set(m, Math.max(column.get(m), column.get(n) + 1));
    }
  }
  const columns = [];
  for (const n of names) {
    const c = column.get(n);
    (columns[c] = columns[c] || []).push(n);
  }
  const row = new Map();
  const callers = new Map(names.map((n) => [n, []]));
  for (const [n, list] of out) for (const m of list) callers.get(m).push(n);
  for (const col of columns) {
    if (!col) continue;
    const key = (n) => {
      const rows = callers.get(n).filter((c) => row.has(c)).map((c) => row.get(c));
      return rows.length ? rows.reduce((a, b) => a + b, 0) / rows.length : -1;
    };
    const keys = new Map(col.map((n) => [n, key(n)]));
    col.sort((a, b) => keys.get(a) - keys.get(b) || (a < b ? -1 : a > b ? 1 : 0));
    col.forEach((n, i) => row.set(n, i));
  }
  const COL_W = 230;
  const ROW_H = 130;
  const MARGIN_X = 90;
  const MARGIN_Y = 80;
  const at = new Map();
  const tallest = Math.max(1, ...columns.map((c) => (c ? c.length : 0)));
  columns.forEach((col, c) => {
    if (!col) return;
    // Shorter columns are centred against the tallest.
    const offset = ((tallest - col.length) * ROW_H) / 2;
    col.forEach((n, i) => at.set(n, { x: MARGIN_X + c * COL_W, y: MARGIN_Y + offset + i * ROW_H }));
  });
  return {
    at,
    width: MARGIN_X * 2 + Math.max(0, columns.length - 1) * COL_W,
    height: MARGIN_Y * 2 + (tallest - 1) * ROW_H + 20,
  };
}

/** A node: three concentric rings (1m inside, 15m outside), each coloured by its success rate. */
function nodeRings(node, x, y) {
  const g = s("g", { class: "rings" });
  for (const [w, r] of RINGS.slice().reverse()) {
    const rate = node.success_rate[w];
    g.append(
      s(
        "circle",
        {
          class: "ring",
          cx: x,
          cy: y,
          r,
          fill: "none",
          stroke: rateColour(rate),
          "stroke-width": RING_WIDTH,
          "data-ring": w,
          "data-rate": rate === null || rate === undefined ? "" : String(rate),
        },
        s("title", {}, `${w}: ${rate === null ? "no calls" : pct(rate)} success`),
      ),
    );
  }
  return g;
}

function edgePath(a, b, self) {
  if (self) {
    return `M ${a.x - 12} ${a.y - 38} C ${a.x - 60} ${a.y - 110}, ${a.x + 60} ${a.y - 110}, ${a.x + 12} ${a.y - 38}`;
  }
  const dx = b.x - a.x;
  const dy = b.y - a.y;
  const len = Math.hypot(dx, dy) || 1;
  const ux = dx / len;
  const uy = dy / len;
  const gap = RINGS[RINGS.length - 1][1] + RING_WIDTH;
  const x1 = a.x + ux * gap;
  const y1 = a.y + uy * gap;
  const x2 = b.x - ux * (gap + 4);
  const y2 = b.y - uy * (gap + 4);
  // Bent to the left of the direction of travel, so a->b and b->a do not overlap.
  const bend = Math.min(60, len * 0.12);
  const cx = (x1 + x2) / 2 + uy * bend;
  const cy = (y1 + y2) / 2 - ux * bend;
  // The label sits on the outer side of the bend, clear of the line.
  const label = { x: (x1 + 2 * cx + x2) / 4 + uy * 12, y: (y1 + 2 * cy + y2) / 4 - ux * 12 };
  return { d: `M ${x1} ${y1} Q ${cx} ${cy}, ${x2} ${y2}`, mid: label };
}

function graphSvg(graph) {
  const { at, width, height } = layout(graph.nodes, graph.edges);
  const svg = s("svg", {
    id: "graph",
    class: "graph",
    viewBox: `0 0 ${Math.max(width, 400)} ${Math.max(height, 200)}`,
    width: Math.max(width, 400),
    height: Math.max(height, 200),
    role: "img",
    "aria-label": "service graph",
    "data-window": graph.window,
    "data-generated-at": graph.generated_at,
    "data-node-count": graph.nodes.length,
    "data-edge-count": graph.edges.length,
  });
  svg.append(
    s(
      "defs",
      {},
      Object.entries(HEALTH_COLOURS).map(([health, colour]) =>
        s(
          "marker",
          { id: `arrow-${health}`, viewBox: "0 0 10 10", refX: 8, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
          s("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: colour }),
        ),
      ),
    ),
  );
  const edgeLayer = s("g", { class: "edges" });
  for (const e of graph.edges) {
    const a = at.get(e.client);
    const b = at.get(e.server);
    if (!a || !b) continue;
    const self = e.client === e.server;
    const path = edgePath(a, b, self);
    const d = self ? path : path.d;
    const mid = self ? { x: a.x, y: a.y - 92 } : path.mid;
    const lat = e.latency_seconds || {};
    edgeLayer.append(
      s(
        "g",
        { class: "edge-group" },
        s(
          "path",
          {
            class: `edge health-${e.health}`,
            d,
            fill: "none",
            stroke: HEALTH_COLOURS[e.health] || NO_DATA_COLOUR,
            "stroke-width": 2.5,
            "marker-end": `url(#arrow-${e.health})`,
            "data-edge": `${e.client}->${e.server}`,
            "data-connection-type": e.connection_type,
            "data-health": e.health,
            "data-calls": e.calls,
            "data-failed": e.failed,
          },
          s(
            "title",
            {},
            `${e.client} → ${e.server}${e.connection_type ? ` (${e.connection_type})` : ""}: ${num(e.calls)} calls, ` +
              `${perSec(e.rate_per_second)}/s, ${pct(e.error_rate)} failed, p50 ${ms(secsAsMs(lat.p50))} ms, ` +
              `p99 ${ms(secsAsMs(lat.p99))} ms (${graph.window})`,
          ),
        ),
        s("text", { class: "edge-label", x: mid.x, y: mid.y - 4, "text-anchor": "middle" }, `${perSec(e.rate_per_second)}/s · ${pct(e.error_rate)}`),
      ),
    );
  }
  svg.append(edgeLayer);
  const nodeLayer = s("g", { class: "nodes" });
  for (const n of graph.nodes) {
    const p = at.get(n.name);
    if (!p) continue;
    const rates = WINDOWS.map((w) => `${w} ${n.success_rate[w] === null ? "–" : pct(n.success_rate[w])}`).join(", ");
    nodeLayer.append(
      s(
        "a",
        { href: `#/service/${encodeURIComponent(n.name)}`, class: "node-link" },
        s(
          "g",
          { class: "node", "data-service": n.name, "data-calls": n.calls, "data-errors": n.errors, "data-source": n.source },
          s("title", {}, `${n.name}: success ${rates}; ${num(n.calls)} calls, ${num(n.errors)} errors in ${graph.window} (${n.source})`),
          s("circle", { class: "hit", cx: p.x, cy: p.y, r: RINGS[2][1] + RING_WIDTH, fill: "transparent" }),
          nodeRings(n, p.x, p.y),
          s("text", { class: "node-label", x: p.x, y: p.y + 56, "text-anchor": "middle" }, n.name),
        ),
      ),
    );
  }
  svg.append(nodeLayer);
  return svg;
}

function legend() {
  const rings = s("svg", { width: 80, height: 80, viewBox: "0 0 80 80", class: "legend-rings" });
  const sample = { success_rate: { "1m": 0.85, "5m": 0.95, "15m": 1 } };
  rings.append(nodeRings(sample, 40, 40));
  return h(
    "div",
    { class: "legend" },
    rings,
    h(
      "div",
      {},
      h("p", {}, "Rings: success rate over the last 1 minute (inside), 5 and 15 minutes (outside); green at 100%, yellow at 90%, red at 80% and below, grey without calls."),
      h("p", {}, "Arrows: caller → callee, coloured by the calls' health: ", healthBadge("ok"), " under 1% failed, ", healthBadge("degraded"), " from 1%, ", healthBadge("failing"), " from 5%."),
    ),
  );
}

function graphPage(app) {
  const stamp = h("span", { class: "stamp" });
  const body = h("div", { class: "graph-box" }, h("p", { class: "muted" }, "Loading…"));
  const note = h("p", { class: "muted" });
  add(app, 
    h("div", { class: "page-head" }, h("h1", {}, "Service graph"), windowPicker(() => route()), stamp),
    body,
    note,
    legend(),
  );
  run(async (current) => {
    const graph = await api(`graph?window=${state.window}`);
    if (!current()) return;
    if (!graph.nodes.length) {
      body.replaceChildren(h("p", { class: "muted", id: "graph-empty" }, "No span metrics in the last 15 minutes: gateways count spans once their policy has a span_metrics section."));
    } else {
      body.replaceChildren(graphSvg(graph));
    }
    note.textContent = graph.overflow_calls ? `${num(graph.overflow_calls)} spans were counted in overflow series (past span_metrics.max_series): they are in no node.` : "";
    updated(stamp, graph.generated_at);
  }, true);
}

// ---------------------------------------------------------------------------------------------
// A service

function histogramCells(hist, scale) {
  const v = (x) => (x === null || x === undefined ? null : x * scale);
  return [h("td", { class: "n" }, ms(v(hist.p50))), h("td", { class: "n" }, ms(v(hist.p95))), h("td", { class: "n" }, ms(v(hist.p99)))];
}

function table(headers, rows, empty) {
  if (!rows.length) return h("p", { class: "muted" }, empty);
  return h("table", {}, h("thead", {}, h("tr", {}, headers.map((t) => h("th", {}, t)))), h("tbody", {}, rows));
}

function edgeTable(edges, peerOf, label, empty, kind) {
  return table(
    [label, "Type", "Calls", "Rate/s", "Failed", "Error rate", "Health", "p50 ms", "p95 ms", "p99 ms"],
    edges.map((e) => {
      const peer = peerOf(e);
      return h(
        "tr",
        { "data-edge": `${e.client}->${e.server}`, "data-kind": kind },
        h("td", {}, h("a", { href: `#/service/${encodeURIComponent(peer)}` }, peer)),
        h("td", {}, e.connection_type || "call"),
        h("td", { class: "n" }, num(e.calls)),
        h("td", { class: "n" }, perSec(e.rate_per_second)),
        h("td", { class: "n" }, num(e.failed)),
        h("td", { class: "n" }, pct(e.error_rate)),
        h("td", {}, healthBadge(e.health)),
        histogramCells(e.latency_seconds, 1000),
      );
    }),
    empty,
  );
}

function servicePage(app, name) {
  const stamp = h("span", { class: "stamp" });
  const rings = h("div", { class: "service-rings" });
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  add(app, 
    h("p", {}, h("a", { href: "#/graph" }, "← service graph")),
    h("div", { class: "page-head" }, h("h1", { id: "service-name", "data-service": name }, name), windowPicker(() => route()), stamp),
    rings,
    body,
  );
  run(async (current) => {
    const [view, graph] = await Promise.all([
      api(`services/${encodeURIComponent(name)}?window=${state.window}`),
      api(`graph?window=${state.window}`).catch(() => null),
    ]);
    if (!current()) return;
    const node = graph && graph.nodes.find((n) => n.name === name);
    if (node) {
      const svg = s("svg", { width: 80, height: 80, viewBox: "0 0 80 80", class: "node-rings", "data-service": name });
      svg.append(nodeRings(node, 40, 40));
      rings.replaceChildren(
        svg,
        h(
          "dl",
          {},
          WINDOWS.map((w) => [h("dt", {}, `success ${w}`), h("dd", { "data-rate-window": w }, pct(node.success_rate[w]))]),
          h("dt", {}, `calls ${graph.window}`),
          h("dd", {}, `${num(node.calls)} (${num(node.errors)} errors, from ${node.source.replace("_", " ")})`),
        ),
      );
    }
    body.replaceChildren(
      h("h2", {}, "Operations"),
      table(
        ["Operation", "Kind", "Calls", "Rate/s", "Errors", "Error rate", "p50 ms", "p95 ms", "p99 ms", "Roots over SLA"],
        view.operations.map((o) =>
          h(
            "tr",
            { "data-operation": o.name, "data-kind": o.kind },
            h("td", {}, o.name),
            h("td", {}, o.kind.replace("SPAN_KIND_", "").toLowerCase()),
            h("td", { class: "n" }, num(o.calls)),
            h("td", { class: "n" }, perSec(o.rate_per_second)),
            h("td", { class: "n" }, num(o.errors)),
            h("td", { class: "n" }, pct(o.error_rate)),
            histogramCells(o.duration_ms, 1),
            h("td", { class: "n" }, num(o.root_sla_exceeded)),
          ),
        ),
        `No spans of ${name} in the last ${view.window}.`,
      ),
      h("h2", {}, "Callers"),
      edgeTable(view.callers, (e) => e.client, "Caller", "No calls into it in this window.", "caller"),
      h("h2", {}, "Callees"),
      edgeTable(view.callees, (e) => e.server, "Callee", "No calls out of it in this window.", "callee"),
    );
    updated(stamp, graph ? graph.generated_at : Math.floor(Date.now() / 1000));
  }, true);
}

// ---------------------------------------------------------------------------------------------
// Gateways

function labelChips(labels) {
  return Object.entries(labels || {}).map(([k, v]) => h("span", { class: "chip" }, `${k}=${v}`));
}

function gatewaysPage(app) {
  const stamp = h("span", { class: "stamp" });
  const summary = h("p", { class: "muted" });
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  add(app, h("div", { class: "page-head" }, h("h1", {}, "Gateways"), stamp), summary, body);
  run(async (current) => {
    const { gateways } = await api("gateways");
    if (!current()) return;
    const connected = gateways.filter((g) => g.connected).length;
    const settled = gateways.filter((g) => g.desired_version === null || g.desired_version === g.running_version).length;
    summary.textContent = `${gateways.length} gateways, ${connected} connected, ${settled} running the version they should.`;
    body.replaceChildren(
      table(
        ["Instance", "Connected", "Labels", "Build", "Running", "Desired", "Last report", "Last seen"],
        gateways.map((g) => {
          const behind = g.desired_version !== null && g.desired_version !== g.running_version;
          const report = g.last_report
            ? [
                h("span", { class: `badge report-${g.last_report}` }, g.last_report.toUpperCase()),
                ` v${g.last_report_version} at ${when(g.last_report_at)}`,
                g.last_error ? h("div", { class: "error small" }, g.last_error) : null,
              ]
            : "–";
          return h(
            "tr",
            {
              "data-gateway": g.instance_id,
              "data-running-version": g.running_version ?? "",
              "data-desired-version": g.desired_version ?? "",
              "data-last-report": g.last_report ?? "",
              "data-connected": g.connected,
            },
            h("td", {}, g.instance_id),
            h("td", {}, h("span", { class: g.connected ? "dot on" : "dot off", title: g.connected ? "watch stream open" : "not connected" }), g.connected ? " yes" : " no"),
            h("td", {}, labelChips(g.labels)),
            h("td", {}, g.build || "–"),
            h("td", { class: behind ? "n behind" : "n" }, g.running_version === null ? "–" : `v${g.running_version}`),
            h("td", { class: "n" }, g.desired_version === null ? "–" : `v${g.desired_version}`),
            h("td", {}, report),
            h("td", {}, when(g.last_seen)),
          );
        }),
        "No gateway has connected yet.",
      ),
    );
    updated(stamp, Math.floor(Date.now() / 1000));
  }, true);
}

// ---------------------------------------------------------------------------------------------
// Rollouts

function stageText(stage) {
  const parts = [];
  if (stage.selector && Object.keys(stage.selector).length) parts.push(Object.entries(stage.selector).map(([k, v]) => `${k}=${v}`).join(", "));
  if (stage.percent !== undefined && stage.percent !== null) parts.push(`${stage.percent}% of gateways`);
  if (stage.instances) parts.push(`instances ${stage.instances.join(", ")}`);
  return parts.length ? parts.join(" and ") : "every gateway";
}

/** The operations the API allows in each state. */
const ACTIONS = {
  active: ["promote", "pause", "rollback"],
  paused: ["resume", "rollback"],
  completed: ["rollback"],
  rolled_back: [],
};

function rolloutsPage(app) {
  const stamp = h("span", { class: "stamp" });
  const message = h("p", { class: "ok", id: "rollout-message", role: "status" });
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const admin = state.session && state.session.role === "admin";
  add(app, 
    h("div", { class: "page-head" }, h("h1", {}, "Rollouts"), stamp),
    admin ? null : h("p", { class: "muted" }, "Signed in as a viewer: promote, pause, resume and roll back need an admin token."),
    message,
    body,
  );
  let refresh = null;
  const act = async (rollout, action, button) => {
    for (const b of body.querySelectorAll("button[data-action]")) b.disabled = true;
    message.textContent = `${action} rollout ${rollout.id}…`;
    try {
      const after = await api(`rollouts/${rollout.id}/${action}`, { method: "POST" });
      message.textContent = `Rollout ${after.id} (v${after.version}): ${action} done, now ${after.state.replace("_", " ")}.`;
      message.dataset.action = action;
      message.dataset.rollout = after.id;
      message.dataset.state = after.state;
    } catch (e) {
      message.textContent = "";
      failed(e);
    } finally {
      button.blur();
      if (refresh) await refresh();
    }
  };
  run(async (current) => {
    const [{ rollouts }, { gateways }] = await Promise.all([api("rollouts"), api("gateways")]);
    if (!current()) return;
    refresh = async () => {
      try {
        const [r, g] = await Promise.all([api("rollouts"), api("gateways")]);
        if (current()) draw(r.rollouts, g.gateways);
      } catch (e) {
        if (current()) failed(e);
      }
    };
    draw(rollouts, gateways);
    updated(stamp, Math.floor(Date.now() / 1000));
  }, true);

  function draw(rollouts, gateways) {
    if (!rollouts.length) {
      body.replaceChildren(h("p", { class: "muted" }, "No rollout yet: start one with weirctl rollout start or POST /api/v1/rollouts."));
      return;
    }
    body.replaceChildren(
      ...rollouts.map((r) => {
        const stages = r.stages.length ? r.stages : [{}];
        const released = r.state === "completed" ? stages.length : Math.min(stages.length, r.current_stage + 1);
        const told = gateways.filter((g) => g.desired_version === r.version);
        const running = told.filter((g) => g.running_version === r.version);
        const buttons = admin
          ? (ACTIONS[r.state] || []).map((action) => {
              const b = h("button", { type: "button", class: `action ${action}`, "data-action": action, "data-rollout": r.id }, action.replace("rollback", "roll back"));
              b.addEventListener("click", () => act(r, action, b));
              return b;
            })
          : [];
        return h(
          "article",
          { class: `rollout state-${r.state}`, "data-rollout": r.id, "data-state": r.state, "data-version": r.version, "data-current-stage": r.current_stage },
          h(
            "header",
            {},
            h("h2", {}, `#${r.id}: v${r.version}`, r.previous_version !== null ? h("span", { class: "muted" }, ` (from v${r.previous_version})`) : null),
            h("span", { class: `badge state ${r.state}` }, r.state.replace("_", " ")),
            h("span", { class: "actions" }, buttons),
          ),
          h(
            "div",
            { class: "progress" },
            h("progress", { max: stages.length, value: r.state === "rolled_back" ? 0 : released }),
            h(
              "span",
              {},
              r.state === "rolled_back"
                ? `rolled back: its gateways return to v${r.previous_version}`
                : r.state === "completed"
                  ? "released to every gateway"
                  : `stage ${released} of ${stages.length} released`,
            ),
            h("span", { class: "muted" }, ` · ${running.length} of ${told.length} gateways told to run v${r.version} run it`),
          ),
          h(
            "ol",
            { class: "stages" },
            stages.map((st, i) =>
              h("li", { class: i < released && r.state !== "rolled_back" ? "released" : "pending", "data-stage": i }, stageText(st)),
            ),
          ),
          h("p", { class: "muted small" }, `started by ${r.created_by} at ${when(r.created_at)}, changed ${when(r.updated_at)}`),
        );
      }),
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Policies

function policiesPage(app) {
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  add(app, h("div", { class: "page-head" }, h("h1", {}, "Policies")), body);
  run(async (current) => {
    const { policies } = await api("policies");
    if (!current()) return;
    if (!policies.length) {
      body.replaceChildren(h("p", { class: "muted" }, "No policy stored yet."));
      return;
    }
    const versions = policies.map((p) => p.version);
    const select = (id, chosen) =>
      h("select", { id }, versions.map((v) => h("option", { value: v, selected: v === chosen }, `v${v}`)));
    const from = select("diff-from", versions.length > 1 ? versions[versions.length - 2] : versions[0]);
    const to = select("diff-to", versions[versions.length - 1]);
    body.replaceChildren(
      h(
        "form",
        {
          class: "diff-form",
          onsubmit: (ev) => {
            ev.preventDefault();
            location.hash = `#/policies/diff/${from.value}/${to.value}`;
          },
        },
        h("label", { for: "diff-from" }, "Compare "),
        from,
        h("label", { for: "diff-to" }, " with "),
        to,
        h("button", { type: "submit", id: "diff-button" }, "Show diff"),
      ),
      table(
        ["Version", "Format", "SHA-256", "Stored by", "Stored at"],
        policies
          .slice()
          .reverse()
          .map((p) =>
            h(
              "tr",
              { "data-policy": p.version },
              h("td", {}, h("a", { href: `#/policies/${p.version}` }, `v${p.version}`)),
              h("td", {}, p.format),
              h("td", {}, h("code", { title: p.sha256 }, p.sha256.slice(0, 12))),
              h("td", {}, p.created_by),
              h("td", {}, when(p.created_at)),
            ),
          ),
        "",
      ),
    );
  }, false);
}

function policyPage(app, version) {
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  add(app, h("p", {}, h("a", { href: "#/policies" }, "← policies")), h("h1", {}, `Policy v${version}`), body);
  run(async (current) => {
    const p = await api(`policies/${encodeURIComponent(version)}`);
    if (!current()) return;
    body.replaceChildren(
      h("p", { class: "muted" }, `${p.format}, sha256 ${p.sha256}, stored by ${p.created_by} at ${when(p.created_at)}`),
      h("pre", { class: "document", id: "policy-document" }, p.document),
    );
  }, false);
}

function diffPage(app, from, to) {
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  add(app, h("p", {}, h("a", { href: "#/policies" }, "← policies")), h("h1", {}, `Policy v${from} → v${to}`), body);
  run(async (current) => {
    const d = await api(`policies/${encodeURIComponent(from)}/diff/${encodeURIComponent(to)}`);
    if (!current()) return;
    if (!d.diff) {
      body.replaceChildren(h("p", { class: "muted", id: "policy-diff" }, "The two documents are identical."));
      return;
    }
    const lines = d.diff.replace(/\n$/, "").split("\n");
    const cls = (l) =>
      l.startsWith("+++") || l.startsWith("---") ? "meta" : l.startsWith("@@") ? "hunk" : l.startsWith("+") ? "add" : l.startsWith("-") ? "del" : "same";
    body.replaceChildren(h("pre", { class: "diff", id: "policy-diff" }, lines.map((l) => h("span", { class: `line ${cls(l)}` }, l, "\n"))));
  }, false);
}

// ---------------------------------------------------------------------------------------------
// Start

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const token = $("token").value.trim();
    const button = $("sign-in-button");
    button.disabled = true;
    $("sign-in-error").hidden = true;
    try {
      await signIn(token);
    } catch (e) {
      state.token = null;
      const error = $("sign-in-error");
      error.textContent = e.message;
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  });
  $("sign-out").addEventListener("click", () => signOut(""));
  window.addEventListener("hashchange", route);
  // Tells tests (and anyone curious) that the script is running.
  document.body.dataset.console = "ready";
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    signIn(saved).catch((e) => signOut(`Signed out: ${e.message}`));
  } else {
    $("token").focus();
  }
});
