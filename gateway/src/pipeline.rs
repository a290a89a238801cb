//! The per-request path shared by both receivers, below their layers (authentication,
//! decompression, admission: `receivers/`):
//! decode -> validate -> group and split into records -> produce -> wait for Kafka
//! -> answer. The OTLP success reply is built only after Kafka acknowledged every record.

use crate::attribute_limits::AttributeLimitPolicy;
use crate::policy::PolicyStore;
use crate::receivers::admission::{Admission, Admitted};
use crate::receivers::request::{Format, RequestMeta, Transport};
use crate::signal::{RecordsError, Route, Signal};
use crate::tail::DecisionWindows;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use weir_config::GatewayConfig;
use weir_exporters::kafka::{KafkaExporter, OutputBudget, OutputRefused};

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
    /// 408 (OTLP/HTTP) / DEADLINE_EXCEEDED: the body did not arrive within
    /// `body_read_timeout`. Retryable.
    #[error("{0}")]
    BodyTimeout(String),
}

/// Everything a request needs, shared by all receivers.
pub struct Pipeline {
    exporter: Arc<KafkaExporter>,
    config: Arc<GatewayConfig>,
    policies: Arc<PolicyStore>,
    /// The tail sampling decision windows the requests' spans are marked in.
    windows: Arc<DecisionWindows>,
    attribute_limits: Option<AttributeLimitPolicy>,
    /// The in-flight byte budget: the receivers reserve bodies in it, the pipeline what
    /// decoding and the records hold.
    admission: Admission,
}

/// A request's share of the in-flight budget for what it decodes and the records it builds,
/// on top of its body (reserved by the receivers' admission layer).
struct RequestBudget<'a> {
    admission: &'a Admission,
    held: Admitted,
    body: usize,
}

impl OutputBudget for RequestBudget<'_> {
    fn charge(&mut self, bytes: usize) -> Result<(), OutputRefused> {
        if self.admission.grow(&mut self.held, bytes) {
            return Ok(());
        }
        Err(OutputRefused {
            needed: self
                .body
                .saturating_add(self.held.bytes())
                .saturating_add(bytes),
            available: self.admission.max_bytes(),
        })
    }
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
        let admission = Admission::new(config.limits.max_in_flight_bytes.as_usize());
        Self {
            exporter,
            config,
            policies,
            windows,
            attribute_limits,
            admission,
        }
    }

    /// The in-flight byte budget the receivers and the pipeline share.
    pub fn admission(&self) -> &Admission {
        &self.admission
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
        // Held until the reply: what decoding and the records take of the in-flight budget.
        let mut budget = RequestBudget {
            admission: &self.admission,
            held: self.admission.empty(),
            body: body.len(),
        };
        // Large bodies take long enough to hold up other requests on this worker thread.
        let prepared = if body.len() > BLOCKING_BODY_BYTES {
            tokio::task::block_in_place(|| S::records(&body, format, &route, &mut budget))
        } else {
            S::records(&body, format, &route, &mut budget)
        };
        let prepared = prepared.map_err(|e| self.refused(transport, e))?;
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

    /// The client's answer to a request that was not made into records: INVALID_ARGUMENT for
    /// a malformed body; for one that would hold more than the in-flight budget,
    /// RESOURCE_EXHAUSTED, retryable (429) only when it could fit once the budget is free.
    fn refused(&self, transport: Transport, e: RecordsError) -> PipelineError {
        let (what, refused) = match e {
            RecordsError::Invalid(message) => {
                self.refused_request(transport, "invalid");
                return PipelineError::InvalidArgument(message);
            }
            RecordsError::DecodeTooLarge(r) => ("decoding the request would hold", r),
            RecordsError::OutputTooLarge(r) => ("the request's records would take", r),
        };
        let limit = self.config.limits.max_in_flight_bytes.0;
        if refused.needed > refused.available {
            self.refused_request(transport, "too_large");
            return PipelineError::TooLarge(format!(
                "{what} {} bytes with the request, over limits.max_in_flight_bytes ({limit})",
                refused.needed
            ));
        }
        self.refused_request(transport, "in_flight_limit");
        PipelineError::Overloaded(format!(
            "{what} {} bytes with the request, and the gateway holds its limit of {limit} in-flight bytes (limits.max_in_flight_bytes); retry later",
            refused.needed
        ))
    }

    fn refused_request(&self, transport: Transport, reason: &'static str) {
        metrics::counter!("weir_receiver_refused_requests_total", "transport" => transport.label(), "reason" => reason)
            .increment(1);
    }
}
