//! Writing kept records to the cold topic. Each record is acknowledged on its own: one the
//! cold topic refuses for good (too large, an unknown topic or partition, an invalid record)
//! goes to the dead-letter topic when one is configured, or is skipped, counted either way,
//! so its partition moves on; every other failure is retried with backoff before the batch's
//! offsets are committed (only the records that failed are produced again).

use futures::future::join_all;
use rdkafka::types::RDKafkaErrorCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use weir_exporters::kafka::{ExportError, KafkaExporter, Record};

/// Header of a dead letter: why the cold topic refused it (the metric's `reason`).
pub const DEAD_LETTER_REASON_HEADER: &str = "weir-dead-letter-reason";
/// Header of a dead letter: Kafka's error.
pub const DEAD_LETTER_ERROR_HEADER: &str = "weir-dead-letter-error";
/// Header of a dead letter: the topic that refused it.
pub const DEAD_LETTER_TOPIC_HEADER: &str = "weir-dead-letter-topic";

/// The longest wait between two attempts of records that failed transiently.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why a write failed for good (the `reason` label of
/// `weir_tail_router_dead_letter_records_total`), or `None` when a retry may succeed.
/// Authorization failures are retried: they are fixed by granting the ACL, and the records
/// are then written where they belong.
pub fn permanent_reason(e: &ExportError) -> Option<&'static str> {
    match e.kafka_code()? {
        RDKafkaErrorCode::MessageSizeTooLarge => Some("message_too_large"),
        RDKafkaErrorCode::UnknownTopicOrPartition
        | RDKafkaErrorCode::UnknownTopic
        | RDKafkaErrorCode::UnknownPartition
        | RDKafkaErrorCode::InvalidTopic => Some("unknown_topic_or_partition"),
        RDKafkaErrorCode::InvalidRecord
        | RDKafkaErrorCode::InvalidMessage
        | RDKafkaErrorCode::InvalidMessageSize
        | RDKafkaErrorCode::PolicyViolation => Some("invalid_record"),
        _ => None,
    }
}

/// A record still to be written: to the cold topic, or (with the reason) as a dead letter.
struct Pending {
    record: Record,
    dead_letter_reason: Option<&'static str>,
}

/// Writes kept records to the cold topic (and dead letters).
pub struct ColdWriter {
    /// Produces and waits for acknowledgement.
    pub exporter: Arc<KafkaExporter>,
    /// The cold topic (`kafka.cold_topic`), named in the dead letters' headers.
    pub cold_topic: Arc<str>,
    /// `cold.dead_letter_topic`.
    pub dead_letter_topic: Option<Arc<str>>,
}

impl ColdWriter {
    /// Writes `records` until each is acknowledged, dead-lettered or skipped. False when
    /// `stop` came first (the batch must not be committed).
    pub async fn deliver(&self, records: Vec<Record>, stop: &CancellationToken) -> bool {
        let mut pending: Vec<Pending> = records
            .into_iter()
            .map(|record| Pending {
                record,
                dead_letter_reason: None,
            })
            .collect();
        let mut attempt = 0u32;
        while !pending.is_empty() {
            let outcomes = self.send_each(&pending).await;
            let mut again = Vec::new();
            let mut transient: Option<ExportError> = None;
            let mut written = 0u64;
            for (p, outcome) in pending.into_iter().zip(outcomes) {
                match (outcome, p.dead_letter_reason) {
                    (Ok(()), None) => written += 1,
                    (Ok(()), Some(reason)) => {
                        metrics::counter!("weir_tail_router_dead_letter_records_total", "reason" => reason, "destination" => "dead_letter_topic").increment(1);
                    }
                    (Err(e), was_dead_letter) => match (permanent_reason(&e), was_dead_letter) {
                        (None, _) => {
                            again.push(p);
                            transient = Some(e);
                        }
                        (Some(reason), None) => match &self.dead_letter_topic {
                            Some(topic) => {
                                again.push(self.dead_letter(p.record, reason, &e, topic))
                            }
                            None => self.skip(&p.record, reason, &e),
                        },
                        // The dead-letter topic refuses it too: counted under the cold
                        // topic's reason.
                        (Some(_), Some(reason)) => self.skip(&p.record, reason, &e),
                    },
                }
            }
            if written > 0 {
                metrics::counter!("weir_tail_router_cold_records_total").increment(written);
            }
            pending = again;
            let Some(e) = transient else {
                // Only dead letters left (or nothing): write them without waiting.
                continue;
            };
            attempt += 1;
            metrics::counter!("weir_tail_router_cold_produce_failures_total").increment(1);
            tracing::warn!(error = %e, records = pending.len(), attempt, "producing to the cold topic failed; retrying before committing");
            let backoff = (Duration::from_millis(200) * attempt.min(25)).min(MAX_BACKOFF);
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(backoff) => {}
            }
        }
        true
    }

    /// Produces every record, then waits for each acknowledgement: one outcome per record.
    async fn send_each(&self, pending: &[Pending]) -> Vec<Result<(), ExportError>> {
        let mut produced = Vec::with_capacity(pending.len());
        for p in pending {
            produced.push(self.exporter.produce(std::slice::from_ref(&p.record)).await);
        }
        join_all(produced.into_iter().map(|p| async move {
            match p {
                Ok(p) => self.exporter.acknowledgement(p).await,
                Err(e) => Err(e),
            }
        }))
        .await
    }

    /// The dead letter of `record`: same key, value and headers, plus why.
    fn dead_letter(
        &self,
        mut record: Record,
        reason: &'static str,
        e: &ExportError,
        topic: &Arc<str>,
    ) -> Pending {
        tracing::warn!(error = %e, reason, dead_letter_topic = %topic, "the cold topic refused a record for good; writing it to the dead-letter topic");
        let mut headers: Vec<(String, Vec<u8>)> = record
            .headers
            .take()
            .map(|h| h.to_vec())
            .unwrap_or_default();
        headers.push((DEAD_LETTER_REASON_HEADER.into(), reason.as_bytes().to_vec()));
        headers.push((DEAD_LETTER_ERROR_HEADER.into(), e.to_string().into_bytes()));
        headers.push((
            DEAD_LETTER_TOPIC_HEADER.into(),
            self.cold_topic.as_bytes().to_vec(),
        ));
        record.topic = topic.clone();
        record.headers = Some(headers.into());
        Pending {
            record,
            dead_letter_reason: Some(reason),
        }
    }

    fn skip(&self, record: &Record, reason: &'static str, e: &ExportError) {
        tracing::warn!(error = %e, reason, topic = %record.topic, key = %String::from_utf8_lossy(&record.key), bytes = record.value.len(), "a record was refused for good and is skipped (it stays in the hot topic)");
        metrics::counter!("weir_tail_router_dead_letter_records_total", "reason" => reason, "destination" => "skipped").increment(1);
    }
}
