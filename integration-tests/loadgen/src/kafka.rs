//! The bare Kafka producer of `--transport kafka`: the latency floor of a gateway that replies
//! only after Kafka acknowledged its records.
//!
//! Per "request" it produces what Weir would for the same OTLP request (one `TracesData`
//! record per trace, keyed by the trace id in hex, see `Template::trace_records`) with the
//! producer settings Weir uses (acks=all, idempotence on, no compression, the FNV-1a
//! partitioner), and the request counts as acknowledged when every one of its records is.
//! `--kafka-linger-ms` sets `linger.ms` (0 by default: the floor is the broker's own time).

use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use crate::client::Outcome;
use crate::generator::write_hex;

/// A connected producer and the topic every record goes to.
pub struct KafkaSink {
    producer: FutureProducer,
    topic: String,
}

impl KafkaSink {
    /// Creates the producer for `brokers` (`host:port[,host:port]`) and checks that `topic`
    /// exists, so that a wrong broker or topic fails at once rather than as a run of timeouts.
    pub fn connect(
        brokers: &str,
        topic: &str,
        linger: Duration,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("client.id", "weir-loadgen")
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("compression.codec", "none")
            .set("partitioner", "fnv1a_random")
            .set("linger.ms", linger.as_millis().to_string())
            .set("message.timeout.ms", timeout.as_millis().max(1).to_string())
            .create()
            .context("cannot create the Kafka producer")?;
        let metadata = producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .with_context(|| format!("cannot read Kafka metadata from {brokers}"))?;
        match metadata.topics().iter().find(|t| t.name() == topic) {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {}
            _ => bail!("Kafka topic {topic:?} does not exist on {brokers}"),
        }
        Ok(Self {
            producer,
            topic: topic.to_string(),
        })
    }

    /// Produces `records` (one per trace, keyed by `trace_ids` of the same index) and waits
    /// until Kafka acknowledged all of them.
    pub async fn produce(&self, records: &[Vec<u8>], trace_ids: &[[u8; 16]]) -> Outcome {
        let mut deliveries: Vec<DeliveryFuture> = Vec::with_capacity(records.len());
        let mut key = [0u8; 32];
        for (record, trace_id) in records.iter().zip(trace_ids) {
            write_hex(&mut key, trace_id);
            let sent = self.producer.send_result(
                FutureRecord::to(&self.topic)
                    .key(&key[..])
                    .payload(record.as_slice()),
            );
            match sent {
                Ok(delivery) => deliveries.push(delivery),
                // The records already queued are still delivered; the request failed anyway.
                Err((e, _)) => return Outcome::Failed(kafka_code(&e)),
            }
        }
        let mut failure = None;
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => failure = Some(kafka_code(&e)),
                Err(_) => failure = Some("KAFKA_CANCELLED".to_string()),
            }
        }
        match failure {
            None => Outcome::Accepted { rejected: 0 },
            Some(code) => Outcome::Failed(code),
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
