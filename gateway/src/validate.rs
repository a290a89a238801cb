//! Checks that protobuf decoding cannot make on metrics and logs: trace and span ids of the
//! right length where they are set (spans are checked by `weir_proto::wire` as they are read).
//! A request that fails is refused whole (400 / INVALID_ARGUMENT) with the path of the first
//! bad id, so the client can find it.

use weir_proto::otlp::collector::logs::v1::ExportLogsServiceRequest;
use weir_proto::otlp::collector::metrics::v1::ExportMetricsServiceRequest;
use weir_proto::otlp::metrics::v1::{Exemplar, metric::Data};

/// Checks an optional id: empty, or exactly `n` bytes.
fn check(id: &[u8], n: usize, path: impl FnOnce() -> String) -> Result<(), String> {
    if id.is_empty() || id.len() == n {
        return Ok(());
    }
    Err(format!(
        "{}: must be {n} bytes or empty, got {} bytes",
        path(),
        id.len()
    ))
}

const TRACE_ID: usize = 16;
const SPAN_ID: usize = 8;

/// Log records may carry a trace context; when they do it must be well-formed.
pub fn logs(req: &ExportLogsServiceRequest) -> Result<(), String> {
    for (ri, r) in req.resource_logs.iter().enumerate() {
        for (si, s) in r.scope_logs.iter().enumerate() {
            for (i, rec) in s.log_records.iter().enumerate() {
                let at = || format!("resource_logs[{ri}].scope_logs[{si}].log_records[{i}]");
                check(&rec.trace_id, TRACE_ID, || format!("{}.trace_id", at()))?;
                check(&rec.span_id, SPAN_ID, || format!("{}.span_id", at()))?;
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
                    Some(Data::Gauge(g)) => {
                        Box::new(g.data_points.iter().flat_map(|p| &p.exemplars))
                    }
                    Some(Data::Sum(g)) => Box::new(g.data_points.iter().flat_map(|p| &p.exemplars)),
                    Some(Data::Histogram(g)) => {
                        Box::new(g.data_points.iter().flat_map(|p| &p.exemplars))
                    }
                    Some(Data::ExponentialHistogram(g)) => {
                        Box::new(g.data_points.iter().flat_map(|p| &p.exemplars))
                    }
                    Some(Data::Summary(_)) | None => Box::new(std::iter::empty()),
                };
                for e in exemplars {
                    let at = || {
                        format!(
                            "resource_metrics[{ri}].scope_metrics[{si}].metrics[{mi}] ({}) exemplar",
                            m.name
                        )
                    };
                    check(&e.trace_id, TRACE_ID, || format!("{}.trace_id", at()))?;
                    check(&e.span_id, SPAN_ID, || format!("{}.span_id", at()))?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};

    fn req(trace_id: usize, span_id: usize) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![
                        LogRecord::default(),
                        LogRecord {
                            trace_id: vec![1; trace_id],
                            span_id: vec![2; span_id],
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
    fn empty_or_well_formed_ids_pass() {
        logs(&req(0, 0)).unwrap();
        logs(&req(16, 8)).unwrap();
    }

    #[test]
    fn bad_ids_name_the_field() {
        let e = logs(&req(15, 8)).unwrap_err();
        assert_eq!(
            e,
            "resource_logs[0].scope_logs[0].log_records[1].trace_id: must be 16 bytes or empty, got 15 bytes"
        );
        let e = logs(&req(16, 7)).unwrap_err();
        assert!(
            e.ends_with("log_records[1].span_id: must be 8 bytes or empty, got 7 bytes"),
            "{e}"
        );
    }
}
