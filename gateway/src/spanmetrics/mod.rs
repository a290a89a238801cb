//! Span metrics: every span counted before head sampling, routing or rate limits drop any,
//! so that rates, errors, latencies and the service graph are exact whatever share of traces
//! is kept. What to count comes from the policy's `span_metrics` section.
//!
//! - `aggregate.rs`: the sharded in-memory maps the pipeline counts each request into, from
//!   the wire index (no span is decoded);
//! - `edge.rs`: the edge rules (which service a CLIENT or PRODUCER span calls);
//! - `encode.rs`: an interval as OTLP metrics, named as the Collector's spanmetrics and
//!   servicegraph connectors name them;
//! - this file: the flusher, which sends an interval to Kafka every `flush_interval`.
//!
//! Docs: `docs/span-metrics.md`.

mod aggregate;
mod edge;
mod encode;

#[cfg(test)]
mod tests;

pub use aggregate::{EdgeCalls, EdgeKey, Histogram, Interval, SeriesKey, SpanMetrics};
pub use encode::{
    CALLS, DURATION, EDGE_CALLS, EDGE_FAILED, EDGE_LATENCY, SLA_EXCEEDED, Window, kind_label,
    metrics_data, status_label,
};

use crate::policy::PolicyStore;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use weir_config::gateway::Encoding;
use weir_exporters::kafka::{KafkaExporter, Unlimited, metrics_batch};
use weir_policy::SpanMetricsPolicy;
use weir_proto::otlp::collector::metrics::v1::ExportMetricsServiceRequest;

/// How often the flusher looks again while the policy has no `span_metrics` section.
const IDLE_INTERVAL: Duration = Duration::from_secs(1);

/// Sends the aggregated intervals to Kafka.
pub struct Flusher {
    exporter: Arc<KafkaExporter>,
    policies: Arc<PolicyStore>,
    metrics: Arc<SpanMetrics>,
    gateway_id: String,
    max_message_size: usize,
    /// The section last seen: an interval aggregated before the section was removed still
    /// goes to its topic.
    last: Option<Arc<SpanMetricsPolicy>>,
    /// The end of the last flush, Unix nanoseconds.
    since: u64,
}

/// Now, in Unix nanoseconds.
fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Flusher {
    /// A flusher of `metrics` through `exporter`, the resource naming `gateway_id`.
    pub fn new(
        exporter: Arc<KafkaExporter>,
        policies: Arc<PolicyStore>,
        metrics: Arc<SpanMetrics>,
        gateway_id: String,
        max_message_size: usize,
    ) -> Self {
        Self {
            exporter,
            policies,
            metrics,
            gateway_id,
            max_message_size,
            last: None,
            since: unix_nanos(),
        }
    }

    /// Flushes every `flush_interval` until `stop`, then once more (call it after the
    /// receivers have drained, so the last spans are counted).
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            let section = self.policies.load().policy.span_metrics().cloned();
            let wait = section.as_ref().map_or(IDLE_INTERVAL, |s| s.flush_interval);
            if section.is_some() {
                self.last = section;
            }
            tokio::select! {
                _ = stop.cancelled() => {
                    self.flush().await;
                    return;
                }
                _ = tokio::time::sleep(wait) => self.flush().await,
            }
        }
    }

    /// Sends what was aggregated since the last flush. A failed send loses that interval (it
    /// is counted in `weir_span_metrics_flush_failures_total`): metrics of later intervals
    /// are worth more than a backlog.
    async fn flush(&mut self) {
        let end = unix_nanos();
        let interval = self.metrics.take();
        let window = Window {
            start: self.since,
            end,
        };
        self.since = end;
        // The policy may have gained the section while this flusher slept without one: the
        // spans counted since then go to its topic, not nowhere.
        if let Some(current) = self.policies.load().policy.span_metrics() {
            self.last = Some(current.clone());
        }
        let Some(section) = &self.last else {
            return;
        };
        if interval.is_empty() {
            return;
        }
        let data = metrics_data(&interval, window, &self.gateway_id);
        let points =
            (interval.series.len() * 2 + interval.edges.len() * 3 + interval.over_sla.len()) as u64;
        let batch = match metrics_batch(
            ExportMetricsServiceRequest {
                resource_metrics: data.resource_metrics,
            },
            &section.topic.as_str().into(),
            Encoding::OtlpProto,
            self.max_message_size,
            &mut Unlimited,
        ) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(
                    ?e,
                    "span metrics: the interval could not be made into records"
                );
                metrics::counter!("weir_span_metrics_flush_failures_total").increment(1);
                return;
            }
        };
        match self.exporter.send(&batch.records).await {
            Ok(()) => {
                metrics::counter!("weir_span_metrics_flushed_points_total").increment(points);
            }
            Err(e) => {
                tracing::warn!(error = %e, topic = section.topic, "span metrics: the interval was not sent; it is lost");
                metrics::counter!("weir_span_metrics_flush_failures_total").increment(1);
            }
        }
    }
}
