//! The per-request path shared by both receivers, below their layers (authentication,
//! decompression, admission: `receivers/`):
//! decode -> validate -> group and split into records -> produce -> wait for Kafka
//! (with a spool: at most `spool.ack_deadline`, then append to the spool) -> answer. The OTLP
//! success reply is built only after Kafka acknowledged every record, or the spool fsynced them.

use crate::attribute_limits::AttributeLimitPolicy;
use crate::blocking::BlockingSections;
use crate::kafka_health::KafkaHealth;
use crate::policy::PolicyStore;
use crate::receivers::admission::{Admission, Admitted};
use crate::receivers::request::{Format, RequestMeta, Transport};
use crate::signal::{RecordsError, Route, Signal};
use crate::spanmetrics::SpanMetrics;
use crate::spool::{Spool, SpoolError};
use crate::tail::DecisionWindows;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use weir_config::GatewayConfig;
use weir_exporters::kafka::{ExportError, KafkaExporter, OutputBudget, OutputRefused, Record};

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
    /// 503 / UNAVAILABLE with a retry delay: Kafka did not acknowledge in time (and the spool
    /// is off, full or failed).
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
    /// Span metrics, counted from every span before sampling; flushed by `spanmetrics::Flusher`.
    span_metrics: Arc<SpanMetrics>,
    attribute_limits: Option<AttributeLimitPolicy>,
    /// The in-flight byte budget: the receivers reserve bodies in it, the pipeline what
    /// decoding and the records hold.
    admission: Admission,
    /// Where decoding a large body runs, a bounded number at once (shared with the OTLP/HTTP
    /// receiver's inflation).
    blocking: BlockingSections,
    /// What recent sends say about Kafka; shared with the replayer and `/readyz`.
    health: Arc<KafkaHealth>,
    /// Where records go when Kafka does not acknowledge them in time; `None`: the request
    /// gets 503 after `limits.export_timeout`.
    spool: Option<SpoolFallback>,
}

/// The spool as the request path uses it.
struct SpoolFallback {
    spool: Spool,
    /// How long a request waits for Kafka before its records are spooled.
    ack_deadline: Duration,
}

/// Where a request's records were made durable.
enum Durable {
    /// Kafka acknowledged every record.
    Kafka,
    /// The spool fsynced them; replay sends them to Kafka later.
    Spooled,
}

/// Kafka's acknowledgement of records a request stopped waiting for (it settles within
/// `limits.export_timeout` of their produce).
type PendingAcknowledgement =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ExportError>> + Send>>;

/// How a request's wait for Kafka ended.
enum Waited {
    /// Every record acknowledged.
    Acknowledged,
    /// A record failed.
    Failed(ExportError),
    /// `ack_deadline` passed; the acknowledgement still to come, when it can be followed.
    Deadline(Option<PendingAcknowledgement>),
}

/// Why a request's records went to the spool rather than Kafka.
#[derive(Clone, Copy, Debug)]
enum SpoolReason {
    /// Recent sends failed: the request did not wait for Kafka.
    KafkaDown,
    /// Kafka failed a record.
    Failed,
    /// Kafka did not acknowledge within the ack deadline.
    Deadline,
}

impl SpoolReason {
    /// The `reason` label of `weir_spool_spooled_requests_total`.
    fn label(self) -> &'static str {
        match self {
            Self::KafkaDown => "kafka_down",
            Self::Failed => "failed",
            Self::Deadline => "deadline",
        }
    }
}

impl std::fmt::Display for SpoolReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::KafkaDown => "Kafka is down",
            Self::Failed => "Kafka failed the records",
            Self::Deadline => "Kafka did not acknowledge the records in time",
        })
    }
}

/// Why a request's records were made durable nowhere.
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("{0}")]
    Kafka(ExportError),
    #[error("{why}, and the records could not be spooled: {spool}")]
    Spool { why: SpoolReason, spool: SpoolError },
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
            span_metrics: Arc::new(SpanMetrics::default()),
            attribute_limits,
            admission,
            blocking: BlockingSections::per_runtime_worker(),
            health: Arc::new(KafkaHealth::default()),
            spool: None,
        }
    }

    /// The same pipeline, spooling the records of a request that Kafka does not acknowledge
    /// within `ack_deadline` (or at once while Kafka is known down) into `spool`.
    pub fn with_spool(mut self, spool: Spool, ack_deadline: Duration) -> Self {
        self.spool = Some(SpoolFallback {
            spool,
            ack_deadline,
        });
        self
    }

    /// What the request path's sends say about Kafka, for the replayer and `/readyz`.
    pub fn kafka_health(&self) -> Arc<KafkaHealth> {
        self.health.clone()
    }

    /// The span metrics the requests are counted in, for the flusher.
    pub fn span_metrics(&self) -> Arc<SpanMetrics> {
        self.span_metrics.clone()
    }

    /// The in-flight byte budget the receivers and the pipeline share.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// The bounded blocking sections large bodies are decoded and inflated in.
    pub fn blocking_sections(&self) -> &BlockingSections {
        &self.blocking
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
            span_metrics: &self.span_metrics,
        };
        // Held until the reply: what decoding and the records take of the in-flight budget.
        let mut budget = RequestBudget {
            admission: &self.admission,
            held: self.admission.empty(),
            body: body.len(),
        };
        // Large bodies take long enough to hold up other requests on this worker thread; the
        // bound keeps many of them at once from growing a thread (and malloc arena) each.
        let prepared = if body.len() > BLOCKING_BODY_BYTES {
            self.blocking
                .run(|| S::records(&body, format, &route, &mut budget))
                .await
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
        // The Collector's labels; both counters of a pair move (by 0 too), as the Collector's
        // do, so every series a dashboard queries exists once a request came in.
        let receiver = [("receiver", "otlp"), ("transport", transport.label())];
        let exporter = [("exporter", "kafka")];
        match self.make_durable(&batch.records).await {
            Ok(durable) => {
                // Accepted: everything but what could not be made into records. Spans a policy
                // dropped were accepted; the policy's own counters say where they went.
                metrics::counter!(S::ACCEPTED_METRIC, &receiver)
                    .increment(items.saturating_sub(batch.rejected));
                metrics::counter!(S::REFUSED_METRIC, &receiver).increment(batch.rejected);
                match durable {
                    Durable::Kafka => {
                        count_records("weir_exporter_sent_records_total", &batch.records);
                        metrics::counter!(S::SENT_METRIC, &exporter).increment(sent_items);
                        metrics::counter!(S::FAILED_METRIC, &exporter).increment(0);
                    }
                    // Counted by `make_durable`, and by replay once in Kafka.
                    Durable::Spooled => {}
                }
                Ok(S::response(batch.rejected, batch.reject_reason))
            }
            Err(e) => {
                metrics::counter!(S::ACCEPTED_METRIC, &receiver).increment(0);
                metrics::counter!(S::REFUSED_METRIC, &receiver).increment(items);
                count_records("weir_exporter_send_failed_records_total", &batch.records);
                metrics::counter!(S::SENT_METRIC, &exporter).increment(0);
                metrics::counter!(S::FAILED_METRIC, &exporter).increment(sent_items);
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

    /// Makes `records` durable: in Kafka, or (with a spool, when Kafka does not acknowledge
    /// them within the ack deadline, fails them, or is known down) fsynced in the spool.
    async fn make_durable(&self, records: &[Record]) -> Result<Durable, DeliveryError> {
        let Some(fallback) = &self.spool else {
            return self
                .send_to_kafka(records)
                .await
                .map(|()| Durable::Kafka)
                .map_err(DeliveryError::Kafka);
        };
        let mut original = None;
        let why = if self.health.known_down() {
            SpoolReason::KafkaDown
        } else {
            match self.wait_for_kafka(records, fallback.ack_deadline).await {
                Waited::Acknowledged => {
                    self.health.acknowledged();
                    return Ok(Durable::Kafka);
                }
                // Spooled, its replay would fail the same way forever: the client hears of it.
                Waited::Failed(e) if e.is_permanent() => return Err(DeliveryError::Kafka(e)),
                Waited::Failed(e) => {
                    self.health.failed();
                    tracing::debug!(error = %e, "Kafka failed the request's records; spooling them");
                    SpoolReason::Failed
                }
                Waited::Deadline(still_sending) => {
                    self.health.failed();
                    original = still_sending;
                    SpoolReason::Deadline
                }
            }
        };
        let appended = match original {
            // The records may still reach Kafka: replay holds their frame back until that send
            // settles, and skips it if Kafka got them (no duplicate).
            Some(acknowledgement) => match fallback.spool.append_awaiting_original(records).await {
                Ok(pending) => {
                    let health = self.health.clone();
                    tokio::spawn(async move {
                        let delivered = acknowledgement.await.is_ok();
                        if delivered {
                            health.acknowledged();
                        }
                        pending.settle(delivered);
                    });
                    Ok(())
                }
                Err(e) => Err(e),
            },
            None => fallback.spool.append(records).await.map(|_| ()),
        };
        match appended {
            Ok(()) => {
                let reason = why.label();
                metrics::counter!("weir_spool_spooled_requests_total", "reason" => reason)
                    .increment(1);
                metrics::counter!("weir_spool_spooled_records_total", "reason" => reason)
                    .increment(records.len() as u64);
                Ok(Durable::Spooled)
            }
            Err(spool) => Err(DeliveryError::Spool { why, spool }),
        }
    }

    /// Produces `records` and waits at most `deadline` for Kafka's acknowledgement.
    async fn wait_for_kafka(&self, records: &[Record], deadline: Duration) -> Waited {
        let started = tokio::time::Instant::now();
        let produced = match tokio::time::timeout(deadline, self.exporter.produce(records)).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Waited::Failed(e),
            // The producer's queue stayed full: some records may be in it, untracked.
            Err(_) => return Waited::Deadline(None),
        };
        let exporter = self.exporter.clone();
        let mut acknowledgement: PendingAcknowledgement =
            Box::pin(async move { exporter.acknowledgement(produced).await });
        match tokio::time::timeout_at(started + deadline, &mut acknowledgement).await {
            Ok(Ok(())) => Waited::Acknowledged,
            Ok(Err(e)) => Waited::Failed(e),
            Err(_) => Waited::Deadline(Some(acknowledgement)),
        }
    }

    /// Sends to Kafka and waits up to `limits.export_timeout`, recording the outcome.
    async fn send_to_kafka(&self, records: &[Record]) -> Result<(), ExportError> {
        let sent = self.exporter.send(records).await;
        match &sent {
            Ok(()) => self.health.acknowledged(),
            Err(e) if !e.is_permanent() => self.health.failed(),
            Err(_) => {}
        }
        sent
    }

    fn refused_request(&self, transport: Transport, reason: &'static str) {
        metrics::counter!("weir_receiver_refused_requests_total", "transport" => transport.label(), "reason" => reason)
            .increment(1);
    }
}

/// Counts `records` in the per-topic counter `name` (`weir_exporter_sent_records_total` or
/// `..._send_failed_...`): the Collector has no per-topic series. A request's records mostly
/// share one topic, so a run of them is one counter update.
fn count_records(name: &'static str, records: &[Record]) {
    let mut rest = records;
    while let Some(first) = rest.first() {
        let run = rest.iter().take_while(|r| r.topic == first.topic).count();
        metrics::counter!(name, "exporter" => "kafka", "topic" => first.topic.clone())
            .increment(run as u64);
        rest = &rest[run..];
    }
}
