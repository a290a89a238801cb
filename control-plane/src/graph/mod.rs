//! The service graph and per-service RED metrics, from the span metrics every gateway counts
//! before sampling (`gateway/src/spanmetrics/`):
//!
//! - `reader.rs`: the Kafka topic read by every replica, from 15 minutes back;
//! - `records.rs`: the OTLP records folded into
//! - `windows.rs`: 5-second slots summed over 1, 5 or 15 minutes;
//! - this file: what `/api/v1/graph` and `/api/v1/services/{name}` answer.
//!
//! Docs: `docs/span-metrics.md`.

pub mod reader;
pub mod records;
pub mod windows;

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};
use windows::{Buckets, EdgeKey, EdgeStats, OperationStats, Totals, Window, Windows};

/// An edge's error rate at or above which it is `degraded`.
const DEGRADED: f64 = 0.01;
/// An edge's error rate at or above which it is `failing`.
const FAILING: f64 = 0.05;

/// Now, in Unix seconds.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Success rates of a node over the three windows; `None` where it had no calls.
#[derive(Serialize, Debug, utoipa::ToSchema)]
pub struct SuccessRates {
    #[serde(rename = "1m")]
    one: Option<f64>,
    #[serde(rename = "5m")]
    five: Option<f64>,
    #[serde(rename = "15m")]
    fifteen: Option<f64>,
}

/// A service of the graph.
#[derive(Serialize, Debug, utoipa::ToSchema)]
pub struct Node {
    /// The service (or, for a callee that sends no spans, the name callers give it).
    pub name: String,
    /// Calls and errors in the requested window, from the node's `source`.
    pub calls: u64,
    /// Errors among `calls`.
    pub errors: u64,
    /// 1 - errors/calls over 1, 5 and 15 minutes (the console's three rings).
    pub success_rate: SuccessRates,
    /// `server_spans`: its SERVER and CONSUMER spans; `spans`: all of its spans (it has no
    /// entry spans); `edges`: the calls into it (it sends no spans).
    pub source: &'static str,
}

/// A histogram as the API shows it.
#[derive(Serialize, Debug, utoipa::ToSchema)]
pub struct HistogramView {
    /// Upper bounds of the buckets.
    pub bounds: Vec<f64>,
    /// Counts, one more than the bounds.
    pub bucket_counts: Vec<u64>,
    /// The sum of the values.
    pub sum: f64,
    /// Quantiles interpolated within buckets.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
}

impl From<&Buckets> for HistogramView {
    fn from(b: &Buckets) -> Self {
        Self {
            bounds: b.bounds.clone(),
            bucket_counts: b.counts.clone(),
            sum: b.sum,
            p50: b.quantile(0.5),
            p95: b.quantile(0.95),
            p99: b.quantile(0.99),
        }
    }
}

/// An edge of the graph.
#[derive(Serialize, Debug, utoipa::ToSchema)]
pub struct EdgeView {
    /// The caller.
    pub client: String,
    /// The callee.
    pub server: String,
    /// `""`, `database` or `messaging_system`.
    pub connection_type: String,
    /// Calls in the window.
    pub calls: u64,
    /// Failed calls.
    pub failed: u64,
    /// failed / calls.
    pub error_rate: Option<f64>,
    /// Calls per second over the window.
    pub rate_per_second: f64,
    /// `ok`, `degraded` (error rate from 1%) or `failing` (from 5%).
    pub health: &'static str,
    /// Latency as the caller saw it, in seconds.
    pub latency_seconds: HistogramView,
}

fn edge_view(k: &EdgeKey, s: &EdgeStats, window: Window) -> EdgeView {
    let error_rate = ratio(s.failed, s.calls);
    EdgeView {
        client: k.client.clone(),
        server: k.server.clone(),
        connection_type: k.connection_type.clone(),
        calls: s.calls,
        failed: s.failed,
        error_rate,
        rate_per_second: s.calls as f64 / window.seconds() as f64,
        health: match error_rate.unwrap_or(0.0) {
            r if r >= FAILING => "failing",
            r if r >= DEGRADED => "degraded",
            _ => "ok",
        },
        latency_seconds: (&s.latency).into(),
    }
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// `/api/v1/graph`.
#[derive(Serialize, Debug, utoipa::ToSchema)]
pub struct Graph {
    /// The window of `calls`, `errors` and the edges.
    pub window: &'static str,
    /// When it was computed, Unix seconds.
    pub generated_at: u64,
    /// Every service seen in the 15 minutes.
    pub nodes: Vec<Node>,
    /// Every edge with calls in the window.
    pub edges: Vec<EdgeView>,
    /// Spans counted in gateways' overflow series (past `span_metrics.max_series`): in no
    /// node.
    pub overflow_calls: u64,
}

/// Calls and errors of a node by the rule `Node::source` documents.
fn node_counts(name: &str, t: &Totals) -> Option<(u64, u64, &'static str)> {
    let mut entry = (0, 0, false);
    let mut all = (0, 0, false);
    for (k, s) in t.operations.iter().filter(|(k, _)| k.service == name) {
        if k.kind.is_empty() {
            continue;
        }
        all = (all.0 + s.calls, all.1 + s.errors, true);
        if k.kind == "SPAN_KIND_SERVER" || k.kind == "SPAN_KIND_CONSUMER" {
            entry = (entry.0 + s.calls, entry.1 + s.errors, true);
        }
    }
    if entry.2 {
        return Some((entry.0, entry.1, "server_spans"));
    }
    if all.2 {
        return Some((all.0, all.1, "spans"));
    }
    let into = t
        .edges
        .iter()
        .filter(|(k, _)| k.server == name)
        .fold((0, 0, false), |a, (_, s)| {
            (a.0 + s.calls, a.1 + s.failed, true)
        });
    into.2.then_some((into.0, into.1, "edges"))
}

/// The graph over `window`, with every node's success rates over all three.
pub fn graph(windows: &Windows, window: Window, now: u64) -> Graph {
    let totals: Vec<(Window, Totals)> = Window::ALL
        .into_iter()
        .map(|w| (w, windows.totals(w, now, |_| true)))
        .collect();
    let of = |w: Window| &totals.iter().find(|(x, _)| *x == w).unwrap_or(&totals[2]).1;
    let widest = of(Window::FifteenMinutes);
    let mut names: BTreeSet<&str> = BTreeSet::new();
    for k in widest.operations.keys().filter(|k| !k.kind.is_empty()) {
        names.insert(&k.service);
    }
    for k in widest.edges.keys() {
        names.insert(&k.client);
        names.insert(&k.server);
    }
    let rate = |w: Window, name: &str| {
        node_counts(name, of(w))
            .and_then(|(calls, errors, _)| ratio(calls - errors.min(calls), calls))
    };
    let chosen = of(window);
    let nodes = names
        .into_iter()
        .map(|name| {
            let (calls, errors, source) = node_counts(name, chosen)
                .or_else(|| node_counts(name, widest).map(|(_, _, s)| (0, 0, s)))
                .unwrap_or((0, 0, "spans"));
            Node {
                name: name.to_string(),
                calls,
                errors,
                success_rate: SuccessRates {
                    one: rate(Window::OneMinute, name),
                    five: rate(Window::FiveMinutes, name),
                    fifteen: rate(Window::FifteenMinutes, name),
                },
                source,
            }
        })
        .collect();
    Graph {
        window: window.label(),
        generated_at: now,
        nodes,
        edges: chosen
            .edges
            .iter()
            .map(|(k, s)| edge_view(k, s, window))
            .collect(),
        overflow_calls: chosen.overflow_calls,
    }
}

/// An operation of a service.
#[derive(Serialize, Debug, utoipa::ToSchema)]
pub struct OperationView {
    /// The span name.
    pub name: String,
    /// The span kind, `SPAN_KIND_SERVER`...
    pub kind: String,
    /// Spans in the window.
    pub calls: u64,
    /// Spans with status ERROR.
    pub errors: u64,
    /// Spans per second over the window.
    pub rate_per_second: f64,
    /// errors / calls.
    pub error_rate: Option<f64>,
    /// Durations in milliseconds, with p50/p95/p99.
    pub duration_ms: HistogramView,
    /// Root spans of this name over their SLA (`span_metrics.root_sla`), all kinds.
    pub root_sla_exceeded: u64,
}

/// `/api/v1/services/{name}`.
#[derive(Serialize, Debug, utoipa::ToSchema)]
pub struct ServiceView {
    /// The service.
    pub service: String,
    /// The window of every count.
    pub window: &'static str,
    /// Its operations.
    pub operations: Vec<OperationView>,
    /// Edges into it.
    pub callers: Vec<EdgeView>,
    /// Edges out of it.
    pub callees: Vec<EdgeView>,
}

/// The operations and edges of `name` over `window`; `None` when the 15 minutes hold
/// nothing of it.
pub fn service(windows: &Windows, name: &str, window: Window, now: u64) -> Option<ServiceView> {
    let t = windows.totals(window, now, |s| s == name);
    if t.operations.is_empty()
        && t.edges.is_empty()
        && windows
            .totals(Window::FifteenMinutes, now, |s| s == name)
            .operations
            .is_empty()
    {
        return None;
    }
    let sla: BTreeMap<&str, u64> = t
        .operations
        .iter()
        .filter(|(k, _)| k.service == name && k.kind.is_empty())
        .map(|(k, s)| (k.name.as_str(), s.sla_exceeded))
        .collect();
    let operations = t
        .operations
        .iter()
        .filter(|(k, _)| k.service == name && !k.kind.is_empty())
        .map(|(k, s): (_, &OperationStats)| OperationView {
            name: k.name.clone(),
            kind: k.kind.clone(),
            calls: s.calls,
            errors: s.errors,
            rate_per_second: s.calls as f64 / window.seconds() as f64,
            error_rate: ratio(s.errors, s.calls),
            duration_ms: (&s.duration).into(),
            root_sla_exceeded: sla.get(k.name.as_str()).copied().unwrap_or(0),
        })
        .collect();
    let edges = |into: bool| {
        t.edges
            .iter()
            .filter(|(k, _)| {
                if into {
                    k.server == name
                } else {
                    k.client == name
                }
            })
            .map(|(k, s)| edge_view(k, s, window))
            .collect()
    };
    Some(ServiceView {
        service: name.to_string(),
        window: window.label(),
        operations,
        callers: edges(true),
        callees: edges(false),
    })
}

#[cfg(test)]
mod tests {
    use super::windows::{Fold, OperationKey};
    use super::*;

    fn op(service: &str, name: &str, kind: &str) -> OperationKey {
        OperationKey {
            service: service.into(),
            name: name.into(),
            kind: kind.into(),
        }
    }

    #[test]
    fn nodes_rate_their_entry_spans_and_callees_their_incoming_edges() {
        let w = Windows::default();
        let now = 100_000;
        let calls = |key, error, calls, age| {
            w.fold(now - age, now, Fold::Calls { key, error, calls });
        };
        calls(op("shop", "GET", "SPAN_KIND_SERVER"), false, 9, 10);
        calls(op("shop", "GET", "SPAN_KIND_SERVER"), true, 1, 10);
        calls(op("shop", "GET", "SPAN_KIND_SERVER"), true, 10, 200);
        // Client spans do not count towards the node once it has server spans.
        calls(op("shop", "call", "SPAN_KIND_CLIENT"), true, 50, 10);
        calls(op("cron", "tick", "SPAN_KIND_INTERNAL"), false, 4, 10);
        let edge = EdgeKey {
            client: "shop".into(),
            server: "db".into(),
            connection_type: "database".into(),
        };
        w.fold(now - 10, now, Fold::EdgeCalls(edge.clone(), 20));
        w.fold(now - 10, now, Fold::EdgeFailed(edge, 2));
        let g = graph(&w, Window::OneMinute, now);
        let names: Vec<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["cron", "db", "shop"]);
        let shop = &g.nodes[2];
        assert_eq!(
            (shop.calls, shop.errors, shop.source),
            (10, 1, "server_spans")
        );
        assert_eq!(shop.success_rate.one, Some(0.9));
        assert_eq!(shop.success_rate.five, Some(0.45));
        let db = &g.nodes[1];
        assert_eq!((db.calls, db.errors, db.source), (20, 2, "edges"));
        assert_eq!(g.nodes[0].source, "spans");
        assert_eq!(g.edges[0].health, "failing");
        assert_eq!(g.edges[0].error_rate, Some(0.1));
        let s = service(&w, "shop", Window::FiveMinutes, now).unwrap();
        assert_eq!(s.operations.len(), 2);
        assert_eq!(s.callees.len(), 1);
        assert!(service(&w, "nobody", Window::FiveMinutes, now).is_none());
    }
}
