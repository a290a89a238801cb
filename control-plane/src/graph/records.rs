//! The gateways' span metrics records (OTLP `MetricsData`, protobuf) folded into the windows:
//! each data point by its metric name and attributes (see `docs/span-metrics.md`). Metrics of
//! other names are ignored, so the topic may carry other producers' metrics too.

use super::windows::{Buckets, EdgeKey, Fold, OperationKey, Windows};
use prost::Message;
use weir_proto::otlp::common::v1::{KeyValue, any_value};
use weir_proto::otlp::metrics::v1::{HistogramDataPoint, MetricsData, NumberDataPoint, metric};

const CALLS: &str = "traces.span.metrics.calls";
const DURATION: &str = "traces.span.metrics.duration";
const EDGE_CALLS: &str = "traces_service_graph_request_total";
const EDGE_FAILED: &str = "traces_service_graph_request_failed_total";
const EDGE_LATENCY: &str = "traces_service_graph_request_client_seconds";
const SLA_EXCEEDED: &str = "weir.root_span.sla_exceeded";

/// What a record held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Folded {
    /// Data points added to the windows.
    pub points: u64,
    /// Data points left out: too old, or of a shape this reader does not know.
    pub skipped: u64,
}

/// The string value of attribute `key`.
fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs.iter().rev().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

fn is_overflow(attrs: &[KeyValue]) -> bool {
    attr(attrs, "otel.metric.overflow") == Some("true")
}

fn operation(attrs: &[KeyValue]) -> Option<OperationKey> {
    Some(OperationKey {
        service: attr(attrs, "service.name")?.to_string(),
        name: attr(attrs, "span.name")?.to_string(),
        kind: attr(attrs, "span.kind")
            .unwrap_or("SPAN_KIND_UNSPECIFIED")
            .to_string(),
    })
}

fn edge(attrs: &[KeyValue]) -> Option<EdgeKey> {
    Some(EdgeKey {
        client: attr(attrs, "client")?.to_string(),
        server: attr(attrs, "server")?.to_string(),
        connection_type: attr(attrs, "connection_type").unwrap_or("").to_string(),
    })
}

fn count_of(p: &NumberDataPoint) -> u64 {
    use weir_proto::otlp::metrics::v1::number_data_point::Value;
    match p.value {
        Some(Value::AsInt(i)) => u64::try_from(i).unwrap_or(0),
        Some(Value::AsDouble(d)) if d.is_finite() && d > 0.0 => d as u64,
        _ => 0,
    }
}

fn buckets(p: &HistogramDataPoint) -> Option<Buckets> {
    (p.bucket_counts.len() == p.explicit_bounds.len() + 1).then(|| Buckets {
        bounds: p.explicit_bounds.clone(),
        counts: p.bucket_counts.clone(),
        sum: p.sum.unwrap_or(0.0),
    })
}

/// Decodes one record value and folds its points into `windows`; `Err` when it is not
/// `MetricsData`.
pub fn fold_record(
    windows: &Windows,
    value: &[u8],
    now_secs: u64,
) -> Result<Folded, prost::DecodeError> {
    let data = MetricsData::decode(value)?;
    let mut out = Folded::default();
    let mut add = |time_nanos: u64, fold: Option<Fold<'_>>| {
        let folded = fold.is_some_and(|f| windows.fold(time_nanos / 1_000_000_000, now_secs, f));
        if folded {
            out.points += 1;
        } else {
            out.skipped += 1;
        }
    };
    for metric in data
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
    {
        let name = metric.name.as_str();
        match &metric.data {
            Some(metric::Data::Sum(sum)) => {
                for p in &sum.data_points {
                    let a = &p.attributes;
                    let n = count_of(p);
                    let fold = if is_overflow(a) {
                        (name == CALLS).then_some(Fold::Overflow(n))
                    } else {
                        match name {
                            CALLS => operation(a).map(|key| Fold::Calls {
                                key,
                                error: attr(a, "status.code") == Some("STATUS_CODE_ERROR"),
                                calls: n,
                            }),
                            // Per (service, span name): no kind.
                            SLA_EXCEEDED => operation(a).map(|k| {
                                Fold::SlaExceeded(
                                    OperationKey {
                                        kind: String::new(),
                                        ..k
                                    },
                                    n,
                                )
                            }),
                            EDGE_CALLS => edge(a).map(|k| Fold::EdgeCalls(k, n)),
                            EDGE_FAILED => edge(a).map(|k| Fold::EdgeFailed(k, n)),
                            _ => None,
                        }
                    };
                    add(p.time_unix_nano, fold);
                }
            }
            Some(metric::Data::Histogram(h)) => {
                for p in &h.data_points {
                    let a = &p.attributes;
                    let Some(b) = buckets(p) else {
                        add(p.time_unix_nano, None);
                        continue;
                    };
                    let fold = match name {
                        _ if is_overflow(a) => None,
                        DURATION => operation(a).map(|k| Fold::Duration(k, &b)),
                        EDGE_LATENCY => edge(a).map(|k| Fold::EdgeLatency(k, &b)),
                        _ => None,
                    };
                    add(p.time_unix_nano, fold);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}
