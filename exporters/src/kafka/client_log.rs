//! librdkafka's own log lines and client errors, routed into `tracing` under the `librdkafka`
//! target: the one place every Weir Kafka client (the gateway's producer, the tail router's
//! consumers and producer) sends them, from their `ClientContext`.

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;

/// Writes one librdkafka log line to `tracing`; for contexts that do more than log (e.g. a
/// consumer's rebalance handling) to call from their `ClientContext::log`.
pub fn log_to_tracing(level: RDKafkaLogLevel, fac: &str, log_message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", facility = fac, "{log_message}")
        }
        RDKafkaLogLevel::Warning => {
            tracing::warn!(target: "librdkafka", facility = fac, "{log_message}")
        }
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", facility = fac, "{log_message}")
        }
        RDKafkaLogLevel::Debug => {
            tracing::debug!(target: "librdkafka", facility = fac, "{log_message}")
        }
    }
}

/// Writes a client-level librdkafka error (broker down, authentication failed) to `tracing`;
/// the request that suffers from it reports it on its own path.
pub fn error_to_tracing(error: KafkaError, reason: &str) {
    tracing::warn!(target: "librdkafka", %error, "{reason}");
}
