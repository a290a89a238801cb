//! The per-request path shared by both receivers, below their layers (authentication,
//! decompression, admission: `receivers/`):
//! decode -> validate -> group and split into records -> produce -> wait for Kafka
//! -> answer. The OTLP success reply is built only after Kafka acknowledged every record.

use crate::attribute_limits::AttributeLimitPolicy;
use crate::policy::PolicyStore;
use crate::receivers::request::{Format, RequestMeta, Transport};
use crate::signal::{Route, Signal};
use crate::tail::DecisionWindows;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use weir_config::GatewayConfig;
use weir_exporters::kafka::KafkaExporter;

/// Bodies larger than this are turned into records off the async worker's hot loop.
const BLOCKING_BODY_BYTES: usize = 512 * 1024;

/// Why a request was refused, each with the OTLP status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// 400 / INVALID_ARGUMENT: the body does not decode, or an id is malformed. Not retryable.
    #[error("{0}")]
    InvalidArgument(String),
    /// 413 / RESOURCE_EXHAUSTED: the request is over the size limit. Not retryable.
    #[error("{0}")]
    TooLarge(String),
    /// 429 / RESOURCE_EXHAUSTED with a retry delay: the in-flight bound is reached (the
    /// receivers' admission layer).
    #[error("{0}")]
    Overloaded(String),
    /// 503 / UNAVAILABLE with a retry delay: Kafka did not acknowledge in time.
    #[error("{0}")]
    Unavailable(String),
}

/// Everything a request needs, shared by all receivers.
pub struct Pipeline {
    exporter: Arc<KafkaExporter>,
    config: Arc<GatewayConfig>,
    policies: Arc<PolicyStore>,
    /// The tail sampling decision windows the requests' spans are marked in.
    windows: Arc<DecisionWindows>,
    attribute_limits: Option<AttributeLimitPolicy>,
}

impl Pipeline {
    /// A pipeline over an exporter with the limits of `config`, marking tail-sampled traces
    /// in `windows`.
    pub fn new(
        config: Arc<GatewayConfig>,
        exporter: Arc<KafkaExporter>,
        policies: Arc<PolicyStore>,
        windows: Arc<DecisionWindows>,
    ) -> Self {
        let attribute_limits = AttributeLimitPolicy::from_config(&config.limits);
        Self {
            exporter,
            config,
            policies,
            windows,
            attribute_limits,
        }
    }

    /// The largest message accepted, after decompression.
    pub fn max_message_size(&self) -> usize {
        self.config.limits.max_message_size.as_usize()
    }

    /// The delay clients are asked to wait before retrying.
    pub fn retry_after(&self) -> Duration {
        self.config.limits.retry_after
    }

    /// Handles one Export request whose (decompressed) body is `body`.
    pub async fn export<S: Signal>(
        &self,
        body: Bytes,
        format: Format,
        transport: Transport,
        meta: &RequestMeta,
    ) -> Result<S::Response, PipelineError> {
        // One policy version for the whole request.
        let policy = self.policies.load();
        let route = Route {
            topic: S::topic(&self.config.kafka),
            max_message_size: self.config.kafka.max_message_size.as_usize(),
            policy: &policy,
            windows: &self.windows,
            tenant: meta.tenant.as_deref(),
            attribute_limits: self.attribute_limits,
        };
        // Large bodies take long enough to hold up other requests on this worker thread.
        let prepared = if body.len() > BLOCKING_BODY_BYTES {
            tokio::task::block_in_place(|| S::records(&body, format, &route))
        } else {
            S::records(&body, format, &route)
        };
        let prepared = prepared.map_err(|e| {
            self.refused_request(transport, "invalid");
            PipelineError::InvalidArgument(e)
        })?;
        drop(body);
        let (mut batch, items) = (prepared.batch, prepared.items);
        if let Some(headers) = &meta.record_headers {
            for r in &mut batch.records {
                r.headers = Some(headers.clone());
            }
        }
        let sent_items: u64 = batch.records.iter().map(|r| r.items).sum();
        match self.exporter.send(&batch.records).await {
            Ok(()) => {
                let labels = [("transport", transport.label())];
                // Accepted: everything but what could not be made into records. Spans a policy
                // dropped were accepted; the policy's own counters say where they went.
                metrics::counter!(S::ACCEPTED_METRIC, &labels)
                    .increment(items.saturating_sub(batch.rejected));
                if batch.rejected > 0 {
                    metrics::counter!(S::REFUSED_METRIC, &labels).increment(batch.rejected);
                }
                metrics::counter!("weir_exporter_sent_records_total", "exporter" => "kafka")
                    .increment(batch.records.len() as u64);
                metrics::counter!(S::SENT_METRIC, "exporter" => "kafka").increment(sent_items);
                Ok(S::response(batch.rejected, batch.reject_reason))
            }
            Err(e) => {
                metrics::counter!(S::REFUSED_METRIC, "transport" => transport.label())
                    .increment(items);
                metrics::counter!("weir_exporter_send_failed_records_total", "exporter" => "kafka")
                    .increment(batch.records.len() as u64);
                metrics::counter!(S::FAILED_METRIC, "exporter" => "kafka").increment(sent_items);
                tracing::warn!(error = %e, records = batch.records.len(), "export failed; the client is told to retry");
                Err(PipelineError::Unavailable(format!("{e}; retry later")))
            }
        }
    }

    fn refused_request(&self, transport: Transport, reason: &'static str) {
        metrics::counter!("weir_receiver_refused_requests_total", "transport" => transport.label(), "reason" => reason)
            .increment(1);
    }
}
