//! Why records could not be delivered.

/// A failure to deliver a request's records to Kafka. Every variant is retryable by the client
/// (a `Refused` record only once the cause is fixed).
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
    /// Kafka refused a record for a reason that sending it again cannot change (too large,
    /// not authorized, an invalid topic): it must not be kept for a later retry.
    #[error("Kafka refused a record for {topic}: {reason}")]
    Refused {
        /// The topic.
        topic: String,
        /// librdkafka's reason.
        reason: String,
        /// librdkafka's error code.
        code: Option<rdkafka::types::RDKafkaErrorCode>,
    },
    /// Kafka failed a record.
    #[error("Kafka failed to deliver a record to {topic}: {reason}")]
    Delivery {
        /// The topic.
        topic: String,
        /// librdkafka's reason.
        reason: String,
        /// The broker fenced the producer: it must be replaced to produce again.
        fenced: bool,
        /// librdkafka's error code, when it gave one.
        code: Option<rdkafka::types::RDKafkaErrorCode>,
    },
}

impl ExportError {
    /// True when the broker fenced the producer that failed.
    pub fn is_fenced(&self) -> bool {
        matches!(self, ExportError::Delivery { fenced: true, .. })
    }

    /// librdkafka's error code of a refused or failed record, for callers that tell failures
    /// apart more finely than `is_permanent` (the tail router's dead letters).
    pub fn kafka_code(&self) -> Option<rdkafka::types::RDKafkaErrorCode> {
        match self {
            ExportError::Refused { code, .. } | ExportError::Delivery { code, .. } => *code,
            ExportError::Config(_) | ExportError::Timeout { .. } => None,
        }
    }

    /// True when Kafka refused a record it will refuse again (`Refused`): a spool must not keep
    /// it, or its replay would retry it forever.
    pub fn is_permanent(&self) -> bool {
        matches!(self, ExportError::Refused { .. })
    }
}
