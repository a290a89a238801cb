//! The three OTLP signals, described once so the receivers and the pipeline handle traces,
//! metrics and logs with the same code.

use crate::validate;
use prost::Message;
use weir_config::gateway::{KafkaConfig, SignalTopic};
use weir_exporters::kafka::{Batch, logs_batch, metrics_batch, traces_batch};
use weir_proto::json::{self, JsonError};
use weir_proto::otlp::collector::logs::v1::{ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse};
use weir_proto::otlp::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use weir_proto::otlp::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse};

/// What differs between traces, metrics and logs on their way through the gateway.
pub trait Signal: Send + Sync + 'static {
    /// The OTLP Export request.
    type Request: Message + Default + Send + 'static;
    /// The OTLP Export response.
    type Response: Message + Default + Send + 'static;
    /// The gRPC service name, e.g. `opentelemetry.proto.collector.trace.v1.TraceService`.
    const GRPC_SERVICE: &'static str;
    /// The full gRPC path of the Export method.
    const GRPC_PATH: &'static str;
    /// The OTLP/HTTP path, e.g. `/v1/traces`.
    const HTTP_PATH: &'static str;
    /// `weir_receiver_accepted_<items>_total`.
    const ACCEPTED_METRIC: &'static str;
    /// `weir_receiver_refused_<items>_total`.
    const REFUSED_METRIC: &'static str;
    /// `weir_exporter_sent_<items>_total`.
    const SENT_METRIC: &'static str;
    /// `weir_exporter_send_failed_<items>_total`.
    const FAILED_METRIC: &'static str;

    /// Decodes an OTLP/JSON request body.
    fn decode_json(body: &[u8]) -> Result<Self::Request, JsonError>;
    /// Encodes a response as OTLP/JSON.
    fn encode_json_response(resp: &Self::Response, out: &mut Vec<u8>);
    /// Spans, metric data points or log records in a request.
    fn items(req: &Self::Request) -> u64;
    /// Checks what protobuf decoding does not: id lengths.
    fn validate(req: &Self::Request) -> Result<(), String>;
    /// The topic and encoding of this signal.
    fn topic(cfg: &KafkaConfig) -> &SignalTopic;
    /// Groups, splits and encodes the request into records.
    fn batch(req: Self::Request, topic: &SignalTopic, max_message_size: usize) -> Batch;
    /// The response, with `partial_success` when items were rejected.
    fn response(rejected: u64, reason: Option<String>) -> Self::Response;
}

/// Spans.
pub struct Traces;
/// Metric data points.
pub struct Metrics;
/// Log records.
pub struct Logs;

impl Signal for Traces {
    type Request = ExportTraceServiceRequest;
    type Response = ExportTraceServiceResponse;
    const GRPC_SERVICE: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const GRPC_PATH: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    const HTTP_PATH: &'static str = "/v1/traces";
    const ACCEPTED_METRIC: &'static str = "weir_receiver_accepted_spans_total";
    const REFUSED_METRIC: &'static str = "weir_receiver_refused_spans_total";
    const SENT_METRIC: &'static str = "weir_exporter_sent_spans_total";
    const FAILED_METRIC: &'static str = "weir_exporter_send_failed_spans_total";

    fn decode_json(body: &[u8]) -> Result<Self::Request, JsonError> {
        json::decode_trace_request(body)
    }
    fn encode_json_response(resp: &Self::Response, out: &mut Vec<u8>) {
        json::encode_trace_response(resp, out)
    }
    fn items(req: &Self::Request) -> u64 {
        req.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len() as u64).sum()
    }
    fn validate(req: &Self::Request) -> Result<(), String> {
        validate::traces(req)
    }
    fn topic(cfg: &KafkaConfig) -> &SignalTopic {
        &cfg.traces
    }
    fn batch(req: Self::Request, topic: &SignalTopic, max: usize) -> Batch {
        traces_batch(req, topic.encoding, max)
    }
    fn response(rejected: u64, reason: Option<String>) -> Self::Response {
        ExportTraceServiceResponse {
            partial_success: reason.map(|error_message| ExportTracePartialSuccess { rejected_spans: rejected as i64, error_message }),
        }
    }
}

impl Signal for Metrics {
    type Request = ExportMetricsServiceRequest;
    type Response = ExportMetricsServiceResponse;
    const GRPC_SERVICE: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    const GRPC_PATH: &'static str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
    const HTTP_PATH: &'static str = "/v1/metrics";
    const ACCEPTED_METRIC: &'static str = "weir_receiver_accepted_metric_points_total";
    const REFUSED_METRIC: &'static str = "weir_receiver_refused_metric_points_total";
    const SENT_METRIC: &'static str = "weir_exporter_sent_metric_points_total";
    const FAILED_METRIC: &'static str = "weir_exporter_send_failed_metric_points_total";

    fn decode_json(body: &[u8]) -> Result<Self::Request, JsonError> {
        json::decode_metrics_request(body)
    }
    fn encode_json_response(resp: &Self::Response, out: &mut Vec<u8>) {
        json::encode_metrics_response(resp, out)
    }
    fn items(req: &Self::Request) -> u64 {
        req.resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .map(weir_exporters::kafka::data_points)
            .sum()
    }
    fn validate(req: &Self::Request) -> Result<(), String> {
        validate::metrics(req)
    }
    fn topic(cfg: &KafkaConfig) -> &SignalTopic {
        &cfg.metrics
    }
    fn batch(req: Self::Request, topic: &SignalTopic, max: usize) -> Batch {
        metrics_batch(req, topic.encoding, max)
    }
    fn response(rejected: u64, reason: Option<String>) -> Self::Response {
        ExportMetricsServiceResponse {
            partial_success: reason
                .map(|error_message| ExportMetricsPartialSuccess { rejected_data_points: rejected as i64, error_message }),
        }
    }
}

impl Signal for Logs {
    type Request = ExportLogsServiceRequest;
    type Response = ExportLogsServiceResponse;
    const GRPC_SERVICE: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    const GRPC_PATH: &'static str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    const HTTP_PATH: &'static str = "/v1/logs";
    const ACCEPTED_METRIC: &'static str = "weir_receiver_accepted_log_records_total";
    const REFUSED_METRIC: &'static str = "weir_receiver_refused_log_records_total";
    const SENT_METRIC: &'static str = "weir_exporter_sent_log_records_total";
    const FAILED_METRIC: &'static str = "weir_exporter_send_failed_log_records_total";

    fn decode_json(body: &[u8]) -> Result<Self::Request, JsonError> {
        json::decode_logs_request(body)
    }
    fn encode_json_response(resp: &Self::Response, out: &mut Vec<u8>) {
        json::encode_logs_response(resp, out)
    }
    fn items(req: &Self::Request) -> u64 {
        req.resource_logs.iter().flat_map(|r| &r.scope_logs).map(|s| s.log_records.len() as u64).sum()
    }
    fn validate(req: &Self::Request) -> Result<(), String> {
        validate::logs(req)
    }
    fn topic(cfg: &KafkaConfig) -> &SignalTopic {
        &cfg.logs
    }
    fn batch(req: Self::Request, topic: &SignalTopic, max: usize) -> Batch {
        logs_batch(req, topic.encoding, max)
    }
    fn response(rejected: u64, reason: Option<String>) -> Self::Response {
        ExportLogsServiceResponse {
            partial_success: reason
                .map(|error_message| ExportLogsPartialSuccess { rejected_log_records: rejected as i64, error_message }),
        }
    }
}
