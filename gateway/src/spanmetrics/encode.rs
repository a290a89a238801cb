//! An interval's aggregates as OTLP metrics, named as the Collector's connectors name them:
//!
//! - spanmetrics: `traces.span.metrics.calls` (delta sum) and `traces.span.metrics.duration`
//!   (delta explicit-bucket histogram, milliseconds), attributes `service.name`, `span.name`,
//!   `span.kind` (`SPAN_KIND_SERVER`...), `status.code` (`STATUS_CODE_ERROR`...);
//! - servicegraph: `traces_service_graph_request_total`,
//!   `traces_service_graph_request_failed_total` (delta sums) and
//!   `traces_service_graph_request_client_seconds` (delta histogram, seconds), attributes
//!   `client`, `server`, `connection_type`;
//! - Weir's own `weir.root_span.sla_exceeded` (delta sum), attributes `service.name`,
//!   `span.name`.
//!
//! Overflow series carry the single attribute `otel.metric.overflow="true"`, as the Collector's
//! cardinality limit writes them. The resource names the gateway: `service.name=weir-gateway`,
//! `service.instance.id=<gateway id>`.

use super::aggregate::{EdgeCalls, Histogram, Interval};
use weir_proto::otlp::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use weir_proto::otlp::metrics::v1::{
    AggregationTemporality, HistogramDataPoint, Metric, MetricsData, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use weir_proto::otlp::resource::v1::Resource;

/// Calls per span series.
pub const CALLS: &str = "traces.span.metrics.calls";
/// Duration histogram per span series.
pub const DURATION: &str = "traces.span.metrics.duration";
/// Calls per edge.
pub const EDGE_CALLS: &str = "traces_service_graph_request_total";
/// Failed calls per edge.
pub const EDGE_FAILED: &str = "traces_service_graph_request_failed_total";
/// Latency histogram per edge, seen by the client.
pub const EDGE_LATENCY: &str = "traces_service_graph_request_client_seconds";
/// Root spans over their SLA per operation.
pub const SLA_EXCEEDED: &str = "weir.root_span.sla_exceeded";
/// The instrumentation scope of the metrics.
pub const SCOPE: &str = "weir.spanmetrics";

/// Series per `ResourceMetrics`: a flush is split into records between them, so that no
/// record outgrows `kafka.max_message_size`.
const SERIES_PER_CHUNK: usize = 256;

/// The `span.kind` value of an OTLP kind, as the spanmetrics connector writes it.
pub fn kind_label(kind: i32) -> &'static str {
    match kind {
        1 => "SPAN_KIND_INTERNAL",
        2 => "SPAN_KIND_SERVER",
        3 => "SPAN_KIND_CLIENT",
        4 => "SPAN_KIND_PRODUCER",
        5 => "SPAN_KIND_CONSUMER",
        _ => "SPAN_KIND_UNSPECIFIED",
    }
}

/// The `status.code` value of an OTLP status code.
pub fn status_label(status: i32) -> &'static str {
    match status {
        1 => "STATUS_CODE_OK",
        2 => "STATUS_CODE_ERROR",
        _ => "STATUS_CODE_UNSET",
    }
}

fn attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn overflow_attrs() -> Vec<KeyValue> {
    vec![attr("otel.metric.overflow", "true")]
}

/// The time range of a flush, Unix nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// The previous flush (or the start).
    pub start: u64,
    /// This flush.
    pub end: u64,
}

fn sum(name: &str, unit: &str, data_points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        data: Some(metric::Data::Sum(Sum {
            data_points,
            aggregation_temporality: AggregationTemporality::Delta as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

fn histogram(name: &str, unit: &str, data_points: Vec<HistogramDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        data: Some(metric::Data::Histogram(
            weir_proto::otlp::metrics::v1::Histogram {
                data_points,
                aggregation_temporality: AggregationTemporality::Delta as i32,
            },
        )),
        ..Default::default()
    }
}

fn point(attributes: Vec<KeyValue>, w: Window, value: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        start_time_unix_nano: w.start,
        time_unix_nano: w.end,
        value: Some(number_data_point::Value::AsInt(
            i64::try_from(value).unwrap_or(i64::MAX),
        )),
        ..Default::default()
    }
}

/// A histogram point; `scale` turns nanoseconds into the metric's unit.
fn histogram_point(
    attributes: Vec<KeyValue>,
    w: Window,
    h: &Histogram,
    bounds: Vec<f64>,
    scale: f64,
) -> HistogramDataPoint {
    HistogramDataPoint {
        attributes,
        start_time_unix_nano: w.start,
        time_unix_nano: w.end,
        count: h.count,
        sum: Some(h.sum_nanos as f64 / scale),
        bucket_counts: h.buckets.to_vec(),
        explicit_bounds: bounds,
        ..Default::default()
    }
}

/// The interval as `MetricsData`: one `ResourceMetrics` (the gateway's resource) per chunk
/// of series.
pub fn metrics_data(interval: &Interval, w: Window, gateway_id: &str) -> MetricsData {
    let resource = Resource {
        attributes: vec![
            attr("service.name", "weir-gateway"),
            attr("service.instance.id", gateway_id),
        ],
        ..Default::default()
    };
    let mut chunks: Vec<Vec<Metric>> = Vec::new();
    for chunk in interval.series.chunks(SERIES_PER_CHUNK) {
        let mut calls = Vec::with_capacity(chunk.len());
        let mut durations = Vec::with_capacity(chunk.len());
        for (key, h) in chunk {
            let attrs = match key {
                Some(k) => vec![
                    attr("service.name", &k.service),
                    attr("span.name", &k.name),
                    attr("span.kind", kind_label(k.kind)),
                    attr("status.code", status_label(k.status)),
                ],
                None => overflow_attrs(),
            };
            calls.push(point(attrs.clone(), w, h.count));
            durations.push(histogram_point(attrs, w, h, h.bounds.millis(), 1e6));
        }
        chunks.push(vec![
            sum(CALLS, "{call}", calls),
            histogram(DURATION, "ms", durations),
        ]);
    }
    for chunk in interval.edges.chunks(SERIES_PER_CHUNK) {
        let mut total = Vec::with_capacity(chunk.len());
        let mut failed = Vec::with_capacity(chunk.len());
        let mut latency = Vec::with_capacity(chunk.len());
        for (
            key,
            EdgeCalls {
                latency: h,
                failed: f,
            },
        ) in chunk
        {
            let attrs = match key {
                Some(k) => vec![
                    attr("client", &k.client),
                    attr("server", &k.server),
                    attr("connection_type", k.connection_type().label()),
                ],
                None => overflow_attrs(),
            };
            total.push(point(attrs.clone(), w, h.count));
            failed.push(point(attrs.clone(), w, *f));
            latency.push(histogram_point(attrs, w, h, h.bounds.seconds(), 1e9));
        }
        chunks.push(vec![
            sum(EDGE_CALLS, "{request}", total),
            sum(EDGE_FAILED, "{request}", failed),
            histogram(EDGE_LATENCY, "s", latency),
        ]);
    }
    for chunk in interval.over_sla.chunks(SERIES_PER_CHUNK) {
        let points = chunk
            .iter()
            .map(|(key, n)| {
                let attrs = match key {
                    Some((service, name)) => {
                        vec![attr("service.name", service), attr("span.name", name)]
                    }
                    None => overflow_attrs(),
                };
                point(attrs, w, *n)
            })
            .collect();
        chunks.push(vec![sum(SLA_EXCEEDED, "{span}", points)]);
    }
    MetricsData {
        resource_metrics: chunks
            .into_iter()
            .map(|metrics| ResourceMetrics {
                resource: Some(resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: SCOPE.into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    metrics,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect(),
    }
}
