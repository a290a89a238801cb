//! The gateway's own metrics, through the `metrics` crate with weir-runtime's Prometheus
//! recorder (logs are set up by weir-runtime too). Metric names mirror the Collector's with a
//! `weir_` prefix.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::PrometheusHandle;

/// Installs the Prometheus recorder and describes every metric the gateway emits.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = weir_runtime::admin::install_metrics_recorder()?;
    for (name, what) in [
        (
            "weir_receiver_accepted_spans_total",
            "Spans acknowledged to clients, after Kafka acknowledged them.",
        ),
        (
            "weir_receiver_refused_spans_total",
            "Spans refused: invalid, too large, or not acknowledged by Kafka in time.",
        ),
        (
            "weir_receiver_accepted_metric_points_total",
            "Metric data points acknowledged to clients.",
        ),
        (
            "weir_receiver_refused_metric_points_total",
            "Metric data points refused.",
        ),
        (
            "weir_receiver_accepted_log_records_total",
            "Log records acknowledged to clients.",
        ),
        (
            "weir_receiver_refused_log_records_total",
            "Log records refused.",
        ),
        (
            "weir_receiver_refused_requests_total",
            "Requests refused before export, by reason.",
        ),
        (
            "weir_exporter_sent_records_total",
            "Kafka records acknowledged by the brokers.",
        ),
        (
            "weir_exporter_send_failed_records_total",
            "Kafka records that failed or timed out.",
        ),
        (
            "weir_exporter_sent_spans_total",
            "Spans in acknowledged Kafka records.",
        ),
        (
            "weir_exporter_send_failed_spans_total",
            "Spans in failed Kafka records.",
        ),
        (
            "weir_exporter_sent_metric_points_total",
            "Metric data points in acknowledged Kafka records.",
        ),
        (
            "weir_exporter_send_failed_metric_points_total",
            "Metric data points in failed Kafka records.",
        ),
        (
            "weir_exporter_sent_log_records_total",
            "Log records in acknowledged Kafka records.",
        ),
        (
            "weir_exporter_send_failed_log_records_total",
            "Log records in failed Kafka records.",
        ),
    ] {
        describe_counter!(name, what);
    }
    describe_gauge!(
        "weir_receiver_inflight_bytes",
        Unit::Bytes,
        "Request bytes held by requests in flight."
    );
    describe_histogram!(
        "weir_exporter_produce_latency_seconds",
        Unit::Seconds,
        "Time from producing a request's records to Kafka acknowledging all of them."
    );
    Ok(handle)
}
