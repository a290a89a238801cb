//! The gateway's own metrics, through the `metrics` crate with weir-runtime's Prometheus
//! recorder (logs are set up by weir-runtime too). Series the OpenTelemetry Collector also has
//! carry its names and labels, exactly as its Prometheus endpoint writes them
//! (`otelcol_receiver_accepted_spans{receiver="otlp",transport="grpc"}`: no `_total` suffix,
//! see docs/collector-migration.md), so its dashboards and alerts work; what only Weir has is
//! `weir_*`. weir-runtime adds the Collector's process metrics and `target_info`.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::PrometheusHandle;
use weir_runtime::process_metrics::{ServiceIdentity, set_service_identity};

/// Installs the Prometheus recorder, says who this gateway is (`target_info`, with
/// `instance_id` as `service_instance_id`) and describes every metric the gateway emits.
pub fn init_metrics(instance_id: String) -> anyhow::Result<PrometheusHandle> {
    let handle = weir_runtime::admin::install_metrics_recorder()?;
    set_service_identity(ServiceIdentity {
        name: "weir-gateway".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        instance_id,
    });
    for (name, what) in [
        (
            "otelcol_receiver_accepted_spans",
            "Number of spans successfully pushed into the pipeline (acknowledged to clients once Kafka or the spool has them).",
        ),
        (
            "otelcol_receiver_refused_spans",
            "Number of spans that could not be pushed into the pipeline (too large, over limits, or not made durable in time).",
        ),
        (
            "otelcol_receiver_accepted_metric_points",
            "Number of metric points successfully pushed into the pipeline.",
        ),
        (
            "otelcol_receiver_refused_metric_points",
            "Number of metric points that could not be pushed into the pipeline.",
        ),
        (
            "otelcol_receiver_accepted_log_records",
            "Number of log records successfully pushed into the pipeline.",
        ),
        (
            "otelcol_receiver_refused_log_records",
            "Number of log records that could not be pushed into the pipeline.",
        ),
        (
            "weir_receiver_refused_requests_total",
            "Requests refused before export, by reason.",
        ),
        (
            "weir_exporter_sent_records_total",
            "Kafka records acknowledged by the brokers, per topic.",
        ),
        (
            "weir_exporter_send_failed_records_total",
            "Kafka records that failed or timed out, per topic.",
        ),
        (
            "otelcol_exporter_sent_spans",
            "Number of spans successfully sent to destination (in records Kafka acknowledged).",
        ),
        (
            "otelcol_exporter_send_failed_spans",
            "Number of spans in failed attempts to send to destination.",
        ),
        (
            "otelcol_exporter_sent_metric_points",
            "Number of metric points successfully sent to destination.",
        ),
        (
            "otelcol_exporter_send_failed_metric_points",
            "Number of metric points in failed attempts to send to destination.",
        ),
        (
            "otelcol_exporter_sent_log_records",
            "Number of log records successfully sent to destination.",
        ),
        (
            "otelcol_exporter_send_failed_log_records",
            "Number of log records in failed attempts to send to destination.",
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
