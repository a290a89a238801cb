//! Validation of OTLP logs requests: decoding with `prost` checks the bytes; what it cannot
//! check is the trace context a log record may carry, which must be well-formed when set.

use super::{SPAN_ID_LEN, TRACE_ID_LEN, check_id};
use crate::otlp::collector::logs::v1::ExportLogsServiceRequest;
use crate::wire::reader::Result;

/// Checks the ids of every log record's trace context: each empty, or of the right length.
pub fn logs_request(req: &ExportLogsServiceRequest) -> Result<()> {
    for (ri, r) in req.resource_logs.iter().enumerate() {
        for (si, s) in r.scope_logs.iter().enumerate() {
            for (i, rec) in s.log_records.iter().enumerate() {
                let at = || format!("resource_logs[{ri}].scope_logs[{si}].log_records[{i}]");
                check_id(&rec.trace_id, TRACE_ID_LEN, false, || {
                    format!("{}.trace_id", at())
                })?;
                check_id(&rec.span_id, SPAN_ID_LEN, false, || {
                    format!("{}.span_id", at())
                })?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::logs::v1::LogRecord;
    use crate::test_support;

    fn req(trace_id: usize, span_id: usize) -> ExportLogsServiceRequest {
        test_support::logs_request(vec![
            LogRecord::default(),
            LogRecord {
                trace_id: vec![1; trace_id],
                span_id: vec![2; span_id],
                ..Default::default()
            },
        ])
    }

    #[test]
    fn empty_or_well_formed_ids_pass() {
        logs_request(&req(0, 0)).unwrap();
        logs_request(&req(16, 8)).unwrap();
    }

    #[test]
    fn bad_ids_name_the_field() {
        let e = logs_request(&req(15, 8)).unwrap_err().to_string();
        assert_eq!(
            e,
            "resource_logs[0].scope_logs[0].log_records[1].trace_id: must be 16 bytes or empty, got 15 bytes"
        );
        let e = logs_request(&req(16, 7)).unwrap_err().to_string();
        assert!(
            e.ends_with("log_records[1].span_id: must be 8 bytes or empty, got 7 bytes"),
            "{e}"
        );
    }
}
