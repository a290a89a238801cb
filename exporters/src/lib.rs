//! Where data leaves Weir. Today that is Kafka: records keyed for downstream consumers
//! (trace records by trace id, metric and log records by a stable hash of their resource),
//! never larger than the configured record size, acknowledged before the client is.

pub mod kafka;
