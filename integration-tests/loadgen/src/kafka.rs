//! The bare Kafka producer of `--transport kafka`: the latency floor of a gateway that replies
//! only after Kafka acknowledged its records.
//!
//! Per "request" it produces what Weir would for the same OTLP request (one `TracesData`
//! record per trace, keyed by the trace id in hex, see `Template::trace_records`) with the
//! producer settings Weir uses by default (acks=all, idempotence on, no compression, the FNV-1a
//! partitioner, one produce request in flight), and the request counts as acknowledged when every one of its records is.
//! `--kafka-linger-ms` sets `linger.ms` (0 by default: the floor is the broker's own time),
//! `--kafka-max-in-flight` the produce requests outstanding (1 by default, as in Weir).
//!
//! The floor must cost no more than the gateway's own producing, or it measures the load
//! generator's CPU: a request's records share one countdown (their delivery opaque) and one
//! channel, so the delivery callback wakes the waiting task once per request, not per record.
//! The producer is warmed up before the first request (see [`KafkaSink::connect`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use tokio::sync::oneshot;

use crate::client::Outcome;
use crate::generator::write_hex;

/// The reports still to come for one request's records, shared by those records.
struct Pending {
    /// Records whose delivery report has not come yet.
    remaining: AtomicUsize,
    /// The first failure's code, if any record failed.
    failure: Mutex<Option<String>>,
    /// Told the outcome by the last report.
    done: Mutex<Option<oneshot::Sender<Option<String>>>>,
}

impl Pending {
    /// Counts one record's report; the last one sends the request's outcome.
    fn report(&self, failure: Option<String>) {
        if let Some(code) = failure {
            lock(&self.failure).get_or_insert(code);
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(done) = lock(&self.done).take()
        {
            let _ = done.send(lock(&self.failure).take());
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Routes each delivery report to its request's [`Pending`].
struct Reports;

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Arc<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, pending: Self::DeliveryOpaque) {
        pending.report(result.as_ref().err().map(|(e, _)| kafka_code(e)));
    }
}

/// A connected producer and the topic every record goes to.
pub struct KafkaSink {
    producer: ThreadedProducer<Reports>,
    topic: String,
}

impl KafkaSink {
    /// Creates the producer for `brokers` (`host:port[,host:port]`), checks that `topic`
    /// exists, so that a wrong broker or topic fails at once rather than as a run of timeouts,
    /// and produces one empty record (an empty `TracesData`, no spans) and waits for it: the
    /// idempotent producer's id and the connection then exist before the first timed request.
    pub async fn connect(
        brokers: &str,
        topic: &str,
        linger: Duration,
        max_in_flight: u8,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let producer: ThreadedProducer<Reports> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("client.id", "weir-loadgen")
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("compression.codec", "none")
            .set("partitioner", "fnv1a_random")
            .set("linger.ms", linger.as_millis().to_string())
            .set(
                "max.in.flight.requests.per.connection",
                max_in_flight.to_string(),
            )
            .set("message.timeout.ms", timeout.as_millis().max(1).to_string())
            .create_with_context(Reports)
            .context("cannot create the Kafka producer")?;
        let metadata = producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .with_context(|| format!("cannot read Kafka metadata from {brokers}"))?;
        match metadata.topics().iter().find(|t| t.name() == topic) {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {}
            _ => bail!("Kafka topic {topic:?} does not exist on {brokers}"),
        }
        let sink = Self {
            producer,
            topic: topic.to_string(),
        };
        let (pending, warmed) = sink.pending(1);
        sink.producer
            .send(
                BaseRecord::with_opaque_to(&sink.topic, pending)
                    .key(&b"weir-loadgen-warm-up"[..])
                    .payload(&[][..]),
            )
            .map_err(|(e, _)| e)
            .context("cannot produce the warm-up record")?;
        match warmed.await {
            Ok(None) => Ok(sink),
            Ok(Some(code)) => bail!("the warm-up record to {topic:?} failed: {code}"),
            Err(_) => bail!("the warm-up record to {topic:?} got no delivery report"),
        }
    }

    /// A countdown for `records` reports and the receiver of its outcome.
    fn pending(&self, records: usize) -> (Arc<Pending>, oneshot::Receiver<Option<String>>) {
        let (done, outcome) = oneshot::channel();
        let pending = Arc::new(Pending {
            remaining: AtomicUsize::new(records),
            failure: Mutex::new(None),
            done: Mutex::new(Some(done)),
        });
        (pending, outcome)
    }

    /// Produces `records` (one per trace, keyed by `trace_ids` of the same index) and waits
    /// until Kafka acknowledged all of them.
    pub async fn produce(&self, records: &[Vec<u8>], trace_ids: &[[u8; 16]]) -> Outcome {
        if records.is_empty() {
            return Outcome::Accepted { rejected: 0 };
        }
        let (pending, outcome) = self.pending(records.len());
        let mut key = [0u8; 32];
        for (i, (record, trace_id)) in records.iter().zip(trace_ids).enumerate() {
            write_hex(&mut key, trace_id);
            let sent = self.producer.send(
                BaseRecord::with_opaque_to(&self.topic, Arc::clone(&pending))
                    .key(&key[..])
                    .payload(record.as_slice()),
            );
            if let Err((e, _)) = sent {
                // The records already queued are still delivered and reported; the request
                // failed anyway. Count the unsent ones (this one included) as reported.
                for _ in i..records.len() {
                    pending.report(Some(kafka_code(&e)));
                }
                break;
            }
        }
        match outcome.await {
            Ok(None) => Outcome::Accepted { rejected: 0 },
            Ok(Some(code)) => Outcome::Failed(code),
            Err(_) => Outcome::Failed("KAFKA_CANCELLED".to_string()),
        }
    }
}

/// A failure code for the report: the librdkafka error code's name when there is one.
fn kafka_code(error: &KafkaError) -> String {
    match error.rdkafka_error_code() {
        Some(code) => format!("KAFKA_{code:?}"),
        None => "KAFKA_ERROR".to_string(),
    }
}
