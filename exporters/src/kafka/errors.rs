//! Why records could not be delivered.

/// A failure to deliver a request's records to Kafka. Every variant is retryable by the client.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The producer could not be created from the config.
    #[error("cannot create the Kafka producer: {0}")]
    Config(String),
    /// Kafka did not acknowledge every record in time.
    #[error("Kafka did not acknowledge all {records} records within {timeout_ms} ms")]
    Timeout {
        /// Records in the request.
        records: usize,
        /// The configured export timeout.
        timeout_ms: u128,
    },
    /// Kafka refused or failed a record.
    #[error("Kafka failed to deliver a record to {topic}: {reason}")]
    Delivery {
        /// The topic.
        topic: String,
        /// librdkafka's reason.
        reason: String,
        /// The broker fenced the producer: it must be replaced to produce again.
        fenced: bool,
    },
}

impl ExportError {
    /// True when the broker fenced the producer that failed.
    pub fn is_fenced(&self) -> bool {
        matches!(self, ExportError::Delivery { fenced: true, .. })
    }
}
