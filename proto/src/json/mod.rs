//! OTLP/JSON: the lenient decoder the OTLP/HTTP receiver uses for `application/json` bodies,
//! and the exact encoder behind the `otlp_json` Kafka encoding and JSON error/response bodies.
//!
//! Decoding accepts what the OpenTelemetry Collector accepts: lowerCamelCase and snake_case
//! keys, hex ids in either case, enums as integers or names, 64-bit integers as strings or
//! numbers, `"NaN"`/`"Infinity"` doubles, and it ignores unknown keys. Encoding writes canonical
//! proto3 JSON with OTLP's hex ids, straight into the caller's buffer.

mod decode;
mod encode;
mod reader;
#[cfg(test)]
mod tests;

use crate::otlp::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use crate::otlp::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use crate::otlp::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use crate::otlp::logs::v1::LogsData;
use crate::otlp::metrics::v1::MetricsData;
use crate::otlp::trace::v1::TracesData;

/// A body that is not valid OTLP/JSON: where in the document (`path`) and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}{sep}{reason}", sep = if .path.is_empty() { "" } else { ": " })]
pub struct JsonError {
    path: String,
    reason: String,
}

impl JsonError {
    pub(crate) fn new(path: String, reason: impl Into<String>) -> Self {
        Self {
            path,
            reason: reason.into(),
        }
    }

    /// Where the error is, e.g. `resourceSpans[0].scopeSpans[1].spans[3].traceId`; empty for
    /// a syntax error or a problem with the whole document.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What was wrong, e.g. `invalid hex: odd length 31`.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Decodes an OTLP/JSON `ExportTraceServiceRequest` (the body of `POST /v1/traces`).
pub fn decode_trace_request(body: &[u8]) -> Result<ExportTraceServiceRequest, JsonError> {
    decode::trace_request(body)
}

/// Decodes an OTLP/JSON `ExportMetricsServiceRequest` (the body of `POST /v1/metrics`).
pub fn decode_metrics_request(body: &[u8]) -> Result<ExportMetricsServiceRequest, JsonError> {
    decode::metrics_request(body)
}

/// Decodes an OTLP/JSON `ExportLogsServiceRequest` (the body of `POST /v1/logs`).
pub fn decode_logs_request(body: &[u8]) -> Result<ExportLogsServiceRequest, JsonError> {
    decode::logs_request(body)
}

/// Appends `data` to `out` as OTLP/JSON (the same document an `ExportTraceServiceRequest` has).
pub fn encode_traces_data(data: &TracesData, out: &mut Vec<u8>) {
    encode::traces_data(data, out);
}

/// Appends `data` to `out` as OTLP/JSON (the same document an `ExportMetricsServiceRequest` has).
pub fn encode_metrics_data(data: &MetricsData, out: &mut Vec<u8>) {
    encode::metrics_data(data, out);
}

/// Appends `data` to `out` as OTLP/JSON (the same document an `ExportLogsServiceRequest` has).
pub fn encode_logs_data(data: &LogsData, out: &mut Vec<u8>) {
    encode::logs_data(data, out);
}

/// Appends the JSON body of a `/v1/traces` response, with `partialSuccess` when present.
pub fn encode_trace_response(r: &ExportTraceServiceResponse, out: &mut Vec<u8>) {
    encode::trace_response(r, out);
}

/// Appends the JSON body of a `/v1/metrics` response, with `partialSuccess` when present.
pub fn encode_metrics_response(r: &ExportMetricsServiceResponse, out: &mut Vec<u8>) {
    encode::metrics_response(r, out);
}

/// Appends the JSON body of a `/v1/logs` response, with `partialSuccess` when present.
pub fn encode_logs_response(r: &ExportLogsServiceResponse, out: &mut Vec<u8>) {
    encode::logs_response(r, out);
}

/// Appends a `google.rpc.Status` error body; `RetryInfo` details become `"retryDelay": "1s"`.
pub fn encode_status(s: &crate::rpc::Status, out: &mut Vec<u8>) {
    encode::status(s, out);
}
