//! Checks that protobuf decoding cannot make: trace and span ids of the right length.
//! A request that fails is refused whole (400 / INVALID_ARGUMENT) with the path of the
//! first bad id, so the client can find it.

use weir_proto::otlp::collector::logs::v1::ExportLogsServiceRequest;
use weir_proto::otlp::collector::metrics::v1::ExportMetricsServiceRequest;
use weir_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
use weir_proto::otlp::metrics::v1::{Exemplar, metric::Data};

/// How an id field may be set.
#[derive(Clone, Copy)]
enum Id {
    /// Exactly this many bytes.
    Required(usize),
    /// Empty, or exactly this many bytes.
    Optional(usize),
}

fn check(id: &[u8], rule: Id, path: impl FnOnce() -> String) -> Result<(), String> {
    let ok = match rule {
        Id::Required(n) => id.len() == n,
        Id::Optional(n) => id.is_empty() || id.len() == n,
    };
    if ok {
        return Ok(());
    }
    let (n, optional) = match rule {
        Id::Required(n) => (n, ""),
        Id::Optional(n) => (n, " or empty"),
    };
    Err(format!("{}: must be {n} bytes{optional}, got {} bytes", path(), id.len()))
}

const TRACE_ID: usize = 16;
const SPAN_ID: usize = 8;

/// Every span needs a 16-byte trace id and an 8-byte span id; parent and link ids must be
/// well-formed too.
pub fn traces(req: &ExportTraceServiceRequest) -> Result<(), String> {
    for (ri, r) in req.resource_spans.iter().enumerate() {
        for (si, s) in r.scope_spans.iter().enumerate() {
            for (i, span) in s.spans.iter().enumerate() {
                let at = || format!("resource_spans[{ri}].scope_spans[{si}].spans[{i}]");
                check(&span.trace_id, Id::Required(TRACE_ID), || format!("{}.trace_id", at()))?;
                check(&span.span_id, Id::Required(SPAN_ID), || format!("{}.span_id", at()))?;
                check(&span.parent_span_id, Id::Optional(SPAN_ID), || format!("{}.parent_span_id", at()))?;
                for (li, link) in span.links.iter().enumerate() {
                    check(&link.trace_id, Id::Required(TRACE_ID), || format!("{}.links[{li}].trace_id", at()))?;
                    check(&link.span_id, Id::Required(SPAN_ID), || format!("{}.links[{li}].span_id", at()))?;
                }
            }
        }
    }
    Ok(())
}

/// Log records may carry a trace context; when they do it must be well-formed.
pub fn logs(req: &ExportLogsServiceRequest) -> Result<(), String> {
    for (ri, r) in req.resource_logs.iter().enumerate() {
        for (si, s) in r.scope_logs.iter().enumerate() {
            for (i, rec) in s.log_records.iter().enumerate() {
                let at = || format!("resource_logs[{ri}].scope_logs[{si}].log_records[{i}]");
                check(&rec.trace_id, Id::Optional(TRACE_ID), || format!("{}.trace_id", at()))?;
                check(&rec.span_id, Id::Optional(SPAN_ID), || format!("{}.span_id", at()))?;
            }
        }
    }
    Ok(())
}

/// Exemplars may carry a trace context; when they do it must be well-formed.
pub fn metrics(req: &ExportMetricsServiceRequest) -> Result<(), String> {
    for (ri, r) in req.resource_metrics.iter().enumerate() {
        for (si, s) in r.scope_metrics.iter().enumerate() {
            for (mi, m) in s.metrics.iter().enumerate() {
                let exemplars: Box<dyn Iterator<Item = &Exemplar>> = match &m.data {
                    Some(Data::Gauge(g)) => Box::new(g.data_points.iter().flat_map(|p| &p.exemplars)),
                    Some(Data::Sum(g)) => Box::new(g.data_points.iter().flat_map(|p| &p.exemplars)),
                    Some(Data::Histogram(g)) => Box::new(g.data_points.iter().flat_map(|p| &p.exemplars)),
                    Some(Data::ExponentialHistogram(g)) => Box::new(g.data_points.iter().flat_map(|p| &p.exemplars)),
                    Some(Data::Summary(_)) | None => Box::new(std::iter::empty()),
                };
                for e in exemplars {
                    let at = || format!("resource_metrics[{ri}].scope_metrics[{si}].metrics[{mi}] ({}) exemplar", m.name);
                    check(&e.trace_id, Id::Optional(TRACE_ID), || format!("{}.trace_id", at()))?;
                    check(&e.span_id, Id::Optional(SPAN_ID), || format!("{}.span_id", at()))?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn req(trace_id: usize, span_id: usize, parent: usize) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![
                        Span { trace_id: vec![1; 16], span_id: vec![1; 8], ..Default::default() },
                        Span {
                            trace_id: vec![1; trace_id],
                            span_id: vec![2; span_id],
                            parent_span_id: vec![3; parent],
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn good_ids_pass() {
        traces(&req(16, 8, 0)).unwrap();
        traces(&req(16, 8, 8)).unwrap();
    }

    #[test]
    fn bad_ids_name_the_field() {
        let e = traces(&req(15, 8, 0)).unwrap_err();
        assert_eq!(e, "resource_spans[0].scope_spans[0].spans[1].trace_id: must be 16 bytes, got 15 bytes");
        let e = traces(&req(16, 7, 0)).unwrap_err();
        assert!(e.ends_with("spans[1].span_id: must be 8 bytes, got 7 bytes"), "{e}");
        let e = traces(&req(16, 8, 4)).unwrap_err();
        assert!(e.contains("parent_span_id: must be 8 bytes or empty"), "{e}");
        assert!(traces(&req(0, 8, 0)).is_err());
    }
}
