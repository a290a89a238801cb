//! The three OTLP signals, described once so the receivers and the pipeline handle traces,
//! metrics and logs with the same code.

use crate::attribute_limits::AttributeLimitPolicy;
use crate::policy::{ActivePolicy, plan_traces_for};
use crate::receivers::request::Format;
use crate::spanmetrics::SpanMetrics;
use crate::tail::DecisionWindows;
use prost::Message;
use weir_config::gateway::{KafkaConfig, SignalTopic};
use weir_exporters::kafka::{
    Batch, OutputBudget, OutputRefused, logs_batch, metrics_batch, traces_batch,
};
use weir_proto::decoded_size;
use weir_proto::json;
use weir_proto::otlp::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use weir_proto::otlp::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use weir_proto::otlp::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use weir_proto::wire::{TraceRequestView, validate};

/// What differs between traces, metrics and logs on their way through the gateway.
pub trait Signal: Send + Sync + 'static {
    /// The OTLP Export response.
    type Response: Message + Default + Send + 'static;
    /// The gRPC service name, e.g. `opentelemetry.proto.collector.trace.v1.TraceService`.
    const GRPC_SERVICE: &'static str;
    /// The full gRPC path of the Export method.
    const GRPC_PATH: &'static str;
    /// The OTLP/HTTP path, e.g. `/v1/traces`.
    const HTTP_PATH: &'static str;
    /// `otelcol_receiver_accepted_<items>`: the Collector's name, so its dashboards work.
    const ACCEPTED_METRIC: &'static str;
    /// `otelcol_receiver_refused_<items>`.
    const REFUSED_METRIC: &'static str;
    /// `otelcol_exporter_sent_<items>`.
    const SENT_METRIC: &'static str;
    /// `otelcol_exporter_send_failed_<items>`.
    const FAILED_METRIC: &'static str;

    /// Encodes a response as OTLP/JSON.
    fn encode_json_response(resp: &Self::Response, out: &mut Vec<u8>);
    /// The topic and encoding of this signal.
    fn topic(cfg: &KafkaConfig) -> &SignalTopic;
    /// Decodes and validates a request body and turns it into records, charging what
    /// decoding and the records will hold to `budget` before allocating it; `Err` says what is
    /// wrong with the body (an INVALID_ARGUMENT) or what did not fit.
    fn records(
        body: &[u8],
        format: Format,
        route: &Route<'_>,
        budget: &mut dyn OutputBudget,
    ) -> Result<Prepared, RecordsError>;
    /// The response, with `partial_success` when items were rejected.
    fn response(rejected: u64, reason: Option<String>) -> Self::Response;
}

/// Where a request's records go and how they are bounded.
pub struct Route<'a> {
    /// The signal's topic and encoding.
    pub topic: &'a SignalTopic,
    /// `kafka.max_message_size`.
    pub max_message_size: usize,
    /// The policy version this request follows from start to end.
    pub policy: &'a ActivePolicy,
    /// The decision windows its tail rules mark traces in.
    pub windows: &'a DecisionWindows,
    /// The authenticated tenant of the request, when authentication is on.
    pub tenant: Option<&'a str>,
    /// Caps on span attributes and what to do past them, when configured.
    pub attribute_limits: Option<AttributeLimitPolicy>,
    /// Where every span is counted before sampling, when the policy has `span_metrics`.
    pub span_metrics: &'a SpanMetrics,
}

/// A request turned into records.
pub struct Prepared {
    /// The records, and what could not be made into records.
    pub batch: Batch,
    /// Spans, metric data points or log records in the request.
    pub items: u64,
}

/// Why a request was not made into records.
#[derive(Debug)]
pub enum RecordsError {
    /// The body is malformed: what is wrong with it, as the client is told.
    Invalid(String),
    /// Decoding the body would hold more than the in-flight budget has.
    DecodeTooLarge(OutputRefused),
    /// The records would take more than the in-flight budget has.
    OutputTooLarge(OutputRefused),
}

impl From<String> for RecordsError {
    fn from(message: String) -> Self {
        RecordsError::Invalid(message)
    }
}

/// Charges what decoding `body` will hold before it is decoded: protobuf metrics and logs are
/// walked on the wire (an empty element is 2 bytes there and hundreds decoded), OTLP/JSON is
/// bounded by one scan. A body the walk refuses is left to the decoder for its message.
fn charge_decoding(
    body: &[u8],
    format: Format,
    protobuf_size: fn(&[u8]) -> Result<usize, decoded_size::DecodeError>,
    budget: &mut dyn OutputBudget,
) -> Result<(), RecordsError> {
    let size = match format {
        Format::Protobuf => match protobuf_size(body) {
            Ok(size) => size,
            Err(_) => return Ok(()),
        },
        Format::Json => decoded_size::json_decoded_size_bound(body),
    };
    budget.charge(size).map_err(RecordsError::DecodeTooLarge)
}

/// Why a body does not decode, as the client is told.
fn undecodable(format: Format, err: impl std::fmt::Display) -> String {
    match format {
        Format::Protobuf => format!("the body is not a valid OTLP protobuf message: {err}"),
        Format::Json => format!("the body is not valid OTLP/JSON: {err}"),
    }
}

/// Decodes a metrics or logs request in either format, once what decoding will hold is
/// charged to `budget`.
fn decode<M: Message + Default>(
    body: &[u8],
    format: Format,
    protobuf_size: fn(&[u8]) -> Result<usize, decoded_size::DecodeError>,
    json: fn(&[u8]) -> Result<M, json::JsonError>,
    budget: &mut dyn OutputBudget,
) -> Result<M, RecordsError> {
    charge_decoding(body, format, protobuf_size, budget)?;
    Ok(match format {
        Format::Protobuf => M::decode(body).map_err(|e| undecodable(format, e))?,
        Format::Json => json(body).map_err(|e| undecodable(format, e))?,
    })
}

/// Spans.
pub struct Traces;
/// Metric data points.
pub struct Metrics;
/// Log records.
pub struct Logs;

impl Signal for Traces {
    type Response = ExportTraceServiceResponse;
    const GRPC_SERVICE: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const GRPC_PATH: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    const HTTP_PATH: &'static str = "/v1/traces";
    const ACCEPTED_METRIC: &'static str = "otelcol_receiver_accepted_spans";
    const REFUSED_METRIC: &'static str = "otelcol_receiver_refused_spans";
    const SENT_METRIC: &'static str = "otelcol_exporter_sent_spans";
    const FAILED_METRIC: &'static str = "otelcol_exporter_send_failed_spans";

    fn encode_json_response(resp: &Self::Response, out: &mut Vec<u8>) {
        json::encode_trace_response(resp, out)
    }
    fn topic(cfg: &KafkaConfig) -> &SignalTopic {
        &cfg.traces
    }
    /// Spans take the byte-level path: validated and grouped without being decoded. JSON is
    /// decoded, then encoded once to protobuf to join the same path.
    fn records(
        body: &[u8],
        format: Format,
        route: &Route<'_>,
        budget: &mut dyn OutputBudget,
    ) -> Result<Prepared, RecordsError> {
        let encoded;
        let body = match format {
            Format::Protobuf => body,
            Format::Json => {
                // The decoded request and its protobuf copy (at most the JSON's size) are held
                // at once.
                budget
                    .charge(decoded_size::json_decoded_size_bound(body).saturating_add(body.len()))
                    .map_err(RecordsError::DecodeTooLarge)?;
                encoded = json::decode_trace_request(body)
                    .map_err(|e| undecodable(format, e))?
                    .encode_to_vec();
                &encoded[..]
            }
        };
        let view = TraceRequestView::parse(body).map_err(|e| {
            if e.is_invalid_id() {
                e.to_string()
            } else {
                undecodable(Format::Protobuf, e)
            }
        })?;
        let items = view.spans.len() as u64;
        // Before sampling and routing: every span counts.
        if let Some(section) = route.policy.policy.span_metrics() {
            route.span_metrics.observe(section, body, &view);
        }
        let mut plan = plan_traces_for(
            route.policy,
            route.windows,
            body,
            &view,
            &route.topic.topic,
            route.tenant,
        );
        let over_limits = route
            .attribute_limits
            .and_then(|limits| limits.apply(body, &view, &mut plan));
        let mut batch = traces_batch(
            body,
            &view,
            &plan,
            route.topic.encoding,
            route.max_message_size,
            budget,
        )
        .map_err(RecordsError::OutputTooLarge)?;
        if let Some((rejected, reason)) = over_limits {
            batch.rejected += rejected;
            batch.reject_reason = Some(match batch.reject_reason.take() {
                Some(other) => format!("{reason}; {other}"),
                None => reason,
            });
        }
        Ok(Prepared { batch, items })
    }
    fn response(rejected: u64, reason: Option<String>) -> Self::Response {
        ExportTraceServiceResponse {
            partial_success: reason.map(|error_message| ExportTracePartialSuccess {
                rejected_spans: rejected as i64,
                error_message,
            }),
        }
    }
}

impl Signal for Metrics {
    type Response = ExportMetricsServiceResponse;
    const GRPC_SERVICE: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    const GRPC_PATH: &'static str =
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
    const HTTP_PATH: &'static str = "/v1/metrics";
    const ACCEPTED_METRIC: &'static str = "otelcol_receiver_accepted_metric_points";
    const REFUSED_METRIC: &'static str = "otelcol_receiver_refused_metric_points";
    const SENT_METRIC: &'static str = "otelcol_exporter_sent_metric_points";
    const FAILED_METRIC: &'static str = "otelcol_exporter_send_failed_metric_points";

    fn encode_json_response(resp: &Self::Response, out: &mut Vec<u8>) {
        json::encode_metrics_response(resp, out)
    }
    fn topic(cfg: &KafkaConfig) -> &SignalTopic {
        &cfg.metrics
    }
    fn records(
        body: &[u8],
        format: Format,
        route: &Route<'_>,
        budget: &mut dyn OutputBudget,
    ) -> Result<Prepared, RecordsError> {
        let req: ExportMetricsServiceRequest = decode(
            body,
            format,
            decoded_size::metrics_request_decoded_size,
            json::decode_metrics_request,
            budget,
        )?;
        validate::metrics_request(&req).map_err(|e| e.to_string())?;
        let items = req
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .map(weir_exporters::kafka::data_points)
            .sum();
        Ok(Prepared {
            batch: metrics_batch(
                req,
                &route.topic.topic.as_str().into(),
                route.topic.encoding,
                route.max_message_size,
                budget,
            )
            .map_err(RecordsError::OutputTooLarge)?,
            items,
        })
    }
    fn response(rejected: u64, reason: Option<String>) -> Self::Response {
        ExportMetricsServiceResponse {
            partial_success: reason.map(|error_message| ExportMetricsPartialSuccess {
                rejected_data_points: rejected as i64,
                error_message,
            }),
        }
    }
}

impl Signal for Logs {
    type Response = ExportLogsServiceResponse;
    const GRPC_SERVICE: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    const GRPC_PATH: &'static str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    const HTTP_PATH: &'static str = "/v1/logs";
    const ACCEPTED_METRIC: &'static str = "otelcol_receiver_accepted_log_records";
    const REFUSED_METRIC: &'static str = "otelcol_receiver_refused_log_records";
    const SENT_METRIC: &'static str = "otelcol_exporter_sent_log_records";
    const FAILED_METRIC: &'static str = "otelcol_exporter_send_failed_log_records";

    fn encode_json_response(resp: &Self::Response, out: &mut Vec<u8>) {
        json::encode_logs_response(resp, out)
    }
    fn topic(cfg: &KafkaConfig) -> &SignalTopic {
        &cfg.logs
    }
    fn records(
        body: &[u8],
        format: Format,
        route: &Route<'_>,
        budget: &mut dyn OutputBudget,
    ) -> Result<Prepared, RecordsError> {
        let req: ExportLogsServiceRequest = decode(
            body,
            format,
            decoded_size::logs_request_decoded_size,
            json::decode_logs_request,
            budget,
        )?;
        validate::logs_request(&req).map_err(|e| e.to_string())?;
        let items = req
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len() as u64)
            .sum();
        Ok(Prepared {
            batch: logs_batch(
                req,
                &route.topic.topic.as_str().into(),
                route.topic.encoding,
                route.max_message_size,
                budget,
            )
            .map_err(RecordsError::OutputTooLarge)?,
            items,
        })
    }
    fn response(rejected: u64, reason: Option<String>) -> Self::Response {
        ExportLogsServiceResponse {
            partial_success: reason.map(|error_message| ExportLogsPartialSuccess {
                rejected_log_records: rejected as i64,
                error_message,
            }),
        }
    }
}
