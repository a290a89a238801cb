//! The replayer's sink in the gateway: the Kafka exporter, whose acknowledgements also tell the
//! request path that Kafka is back.

use super::ReplaySink;
use crate::kafka_health::KafkaHealth;
use std::sync::Arc;
use weir_exporters::kafka::{ExportError, KafkaExporter, Record};

/// Replays spooled records through the gateway's Kafka producer.
pub struct KafkaReplaySink {
    exporter: Arc<KafkaExporter>,
    health: Arc<KafkaHealth>,
}

impl KafkaReplaySink {
    /// A sink over `exporter` that records each send's outcome in `health`.
    pub fn new(exporter: Arc<KafkaExporter>, health: Arc<KafkaHealth>) -> Self {
        Self { exporter, health }
    }
}

impl ReplaySink for KafkaReplaySink {
    type Error = ExportError;

    async fn send(&self, records: &[Record]) -> Result<(), ExportError> {
        let sent = self.exporter.send(records).await;
        match &sent {
            // Kafka is back: requests stop being spooled at once.
            Ok(()) => self.health.acknowledged(),
            // A refusal says the broker is up; retrying it is the replayer's concern.
            Err(e) if e.is_permanent() => {}
            Err(_) => self.health.replay_failed(),
        }
        sent
    }
}
