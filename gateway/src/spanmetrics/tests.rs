//! The aggregation counted against spans built here, and its OTLP form.

use super::*;
use prost::Message;
use weir_policy::Policy;
use weir_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
use weir_proto::otlp::metrics::v1::metric::Data;
use weir_proto::otlp::trace::v1::{ResourceSpans, Span, Status};
use weir_proto::test_support::{named_span, resource_spans, service, string_kv};
use weir_proto::wire::TraceRequestView;

fn policy(section: &str) -> Arc<SpanMetricsPolicy> {
    Policy::parse(&format!("version: 1\nspan_metrics:\n{section}"))
        .unwrap()
        .span_metrics()
        .unwrap()
        .clone()
}

/// A span of `name` and `kind` lasting `millis`, with `status` and attributes.
fn span(name: &str, kind: i32, millis: u64, status: i32, attrs: &[(&str, &str)]) -> Span {
    Span {
        kind,
        start_time_unix_nano: 1_000_000_000,
        end_time_unix_nano: 1_000_000_000 + millis * 1_000_000,
        status: Some(Status {
            code: status,
            ..Default::default()
        }),
        attributes: attrs.iter().map(|(k, v)| string_kv(k, v)).collect(),
        parent_span_id: vec![1; 8],
        ..named_span(7, 7, name)
    }
}

fn root(mut s: Span) -> Span {
    s.parent_span_id.clear();
    s
}

fn of(service_name: &str, spans: Vec<Span>) -> ResourceSpans {
    resource_spans(Some(service(service_name)), None, spans)
}

fn observe(m: &SpanMetrics, p: &SpanMetricsPolicy, resources: Vec<ResourceSpans>) {
    let body = ExportTraceServiceRequest {
        resource_spans: resources,
    }
    .encode_to_vec();
    let view = TraceRequestView::parse(&body).unwrap();
    m.observe(p, &body, &view);
}

fn series<'a>(i: &'a Interval, service: &str, name: &str, status: i32) -> &'a Histogram {
    &i.series
        .iter()
        .find(|(k, _)| {
            k.as_ref()
                .is_some_and(|k| k.service == service && k.name == name && k.status == status)
        })
        .unwrap_or_else(|| panic!("no series {service}/{name}/{status} in {:?}", i.series))
        .1
}

#[test]
fn calls_errors_and_buckets_per_series() {
    let p = policy("  duration_buckets: [10ms, 100ms]\n");
    let m = SpanMetrics::default();
    observe(
        &m,
        &p,
        vec![
            of(
                "shop",
                vec![
                    span("GET /", 2, 10, 0, &[]),
                    span("GET /", 2, 11, 0, &[]),
                    span("GET /", 2, 500, 2, &[]),
                ],
            ),
            of("pay", vec![span("charge", 2, 100, 1, &[])]),
        ],
    );
    observe(&m, &p, vec![of("shop", vec![span("GET /", 2, 1, 0, &[])])]);
    let i = m.take();
    assert_eq!(i.series.len(), 3);
    let ok = series(&i, "shop", "GET /", 0);
    assert_eq!((ok.count, &ok.buckets[..]), (3, &[2, 1, 0][..]));
    assert_eq!(ok.sum_nanos, 22_000_000);
    let err = series(&i, "shop", "GET /", 2);
    assert_eq!((err.count, &err.buckets[..]), (1, &[0, 0, 1][..]));
    assert_eq!(series(&i, "pay", "charge", 1).buckets[..], [0, 1, 0]);
    assert!(i.edges.is_empty() && i.over_sla.is_empty());
    // Taken means gone.
    assert!(m.take().is_empty());
}

#[test]
fn edges_come_from_client_and_producer_spans_only() {
    let p = policy("  edge_latency_buckets: [50ms]\n");
    let m = SpanMetrics::default();
    observe(
        &m,
        &p,
        vec![of(
            "shop",
            vec![
                span("call pay", 3, 20, 0, &[("peer.service", "pay")]),
                span("call pay", 3, 80, 2, &[("peer.service", "pay")]),
                span("query", 3, 5, 0, &[("db.system", "postgresql")]),
                span("send", 4, 1, 0, &[("messaging.destination.name", "orders")]),
                // A server span names no callee; a client span without attributes makes no edge.
                span("serve", 2, 1, 0, &[("peer.service", "nobody")]),
                span("bare", 3, 1, 0, &[]),
            ],
        )],
    );
    let i = m.take();
    #[allow(clippy::type_complexity)]
    let edges: Vec<(String, String, &str, u64, u64, Vec<u64>)> = i
        .edges
        .iter()
        .map(|(k, e)| {
            let k = k.as_ref().unwrap();
            (
                k.client.clone(),
                k.server.clone(),
                k.connection_type().label(),
                e.latency.count,
                e.failed,
                e.latency.buckets.to_vec(),
            )
        })
        .collect();
    assert_eq!(
        edges,
        vec![
            (
                "shop".into(),
                "orders".into(),
                "messaging_system",
                1,
                0,
                vec![1, 0]
            ),
            ("shop".into(), "pay".into(), "", 2, 1, vec![1, 1]),
            (
                "shop".into(),
                "postgresql".into(),
                "database",
                1,
                0,
                vec![1, 0]
            ),
        ]
    );
    // Every span is still a series, edge or not.
    assert_eq!(i.series.iter().map(|s| s.1.count).sum::<u64>(), 6);
}

#[test]
fn series_past_the_cap_go_to_one_overflow_series() {
    let p = policy("  max_series: 2\n  max_edges: 1\n");
    let m = SpanMetrics::default();
    let spans = (0..5)
        .map(|n| {
            span(
                &format!("op{n}"),
                3,
                1,
                0,
                &[("peer.service", &format!("s{n}"))],
            )
        })
        .collect();
    observe(&m, &p, vec![of("a", spans)]);
    let i = m.take();
    assert_eq!(i.series.len(), 3);
    assert_eq!(i.series[0].0, None, "the overflow series sorts first");
    assert_eq!(i.series[0].1.count, 3);
    assert_eq!(i.series.iter().map(|s| s.1.count).sum::<u64>(), 5);
    assert_eq!(i.edges.len(), 2);
    assert_eq!(i.edges[0].0, None);
    assert_eq!(i.edges[0].1.latency.count, 4);
    // The caps are per interval.
    observe(
        &m,
        &p,
        vec![of(
            "a",
            vec![span("x", 2, 1, 0, &[]), span("y", 2, 1, 0, &[])],
        )],
    );
    assert!(m.take().series.iter().all(|s| s.0.is_some()));
}

#[test]
fn root_spans_over_their_sla_are_counted_per_operation() {
    let p = policy(
        "  root_sla:\n    default: 100ms\n    services:\n      shop:\n        operations:\n          checkout: 10ms\n",
    );
    let m = SpanMetrics::default();
    observe(
        &m,
        &p,
        vec![
            of(
                "shop",
                vec![
                    root(span("checkout", 2, 11, 0, &[])),
                    root(span("checkout", 2, 10, 0, &[])),
                    // Not a root span: no SLA.
                    span("checkout", 2, 500, 0, &[]),
                    root(span("list", 2, 101, 0, &[])),
                    root(span("list", 2, 99, 0, &[])),
                ],
            ),
            of("pay", vec![root(span("charge", 2, 150, 0, &[]))]),
        ],
    );
    let i = m.take();
    assert_eq!(
        i.over_sla,
        vec![
            (Some(("pay".into(), "charge".into())), 1),
            (Some(("shop".into(), "checkout".into())), 1),
            (Some(("shop".into(), "list".into())), 1),
        ]
    );
}

#[test]
fn a_resource_without_service_name_is_unknown_service() {
    let p = policy("  enabled: true\n");
    let m = SpanMetrics::default();
    observe(
        &m,
        &p,
        vec![resource_spans(None, None, vec![span("x", 1, 1, 0, &[])])],
    );
    assert_eq!(
        m.take().series[0].0.as_ref().unwrap().service,
        "unknown_service"
    );
}

#[test]
fn otlp_names_attributes_and_units_follow_the_connectors() {
    let p = policy(
        "  duration_buckets: [10ms]\n  edge_latency_buckets: [10ms]\n  max_series: 1\n  root_sla:\n    default: 1ms\n",
    );
    let m = SpanMetrics::default();
    observe(
        &m,
        &p,
        vec![of(
            "shop",
            vec![
                root(span("GET", 3, 20, 2, &[("server.address", "api")])),
                span("other", 1, 1, 0, &[]),
            ],
        )],
    );
    let data = metrics_data(&m.take(), Window { start: 5, end: 9 }, "gw-1");
    let resource = data.resource_metrics[0].resource.as_ref().unwrap();
    assert_eq!(
        resource.attributes[1],
        string_kv("service.instance.id", "gw-1")
    );
    let metrics: Vec<_> = data
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .collect();
    let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            CALLS,
            DURATION,
            EDGE_CALLS,
            EDGE_FAILED,
            EDGE_LATENCY,
            SLA_EXCEEDED
        ]
    );
    let Some(Data::Histogram(duration)) = &metrics[1].data else {
        panic!("duration is a histogram")
    };
    assert_eq!(metrics[1].unit, "ms");
    assert_eq!(duration.aggregation_temporality, 1, "delta");
    // Sorted: the overflow series first, then shop/GET.
    let overflow = &duration.data_points[0];
    assert_eq!(
        overflow.attributes,
        vec![string_kv("otel.metric.overflow", "true")]
    );
    let get = &duration.data_points[1];
    assert_eq!(
        get.attributes,
        vec![
            string_kv("service.name", "shop"),
            string_kv("span.name", "GET"),
            string_kv("span.kind", "SPAN_KIND_CLIENT"),
            string_kv("status.code", "STATUS_CODE_ERROR"),
        ]
    );
    assert_eq!(
        (get.count, get.sum, get.explicit_bounds.clone()),
        (1, Some(20.0), vec![10.0])
    );
    assert_eq!(get.bucket_counts, vec![0, 1]);
    assert_eq!((get.start_time_unix_nano, get.time_unix_nano), (5, 9));
    let Some(Data::Histogram(latency)) = &metrics[4].data else {
        panic!("latency is a histogram")
    };
    assert_eq!(metrics[4].unit, "s");
    let edge = &latency.data_points[0];
    assert_eq!(
        edge.attributes,
        vec![
            string_kv("client", "shop"),
            string_kv("server", "api"),
            string_kv("connection_type", ""),
        ]
    );
    assert_eq!(
        (edge.explicit_bounds.clone(), edge.sum),
        (vec![0.01], Some(0.02))
    );
    let Some(Data::Sum(failed)) = &metrics[3].data else {
        panic!("failed is a sum")
    };
    assert!(failed.is_monotonic);
    assert_eq!(
        failed.data_points[0].value,
        Some(weir_proto::otlp::metrics::v1::number_data_point::Value::AsInt(1))
    );
}
