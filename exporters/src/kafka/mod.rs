//! The Kafka exporter: `records` turns an OTLP request into keyed, size-bounded records,
//! `exporter` produces them and waits for the brokers' acknowledgements.

mod client_log;
mod errors;
mod exporter;
mod records;
mod split;
mod trace_records;

pub use client_log::{error_to_tracing, log_to_tracing};
pub use errors::ExportError;
pub use exporter::{KafkaExporter, Produced, producer_config, set_security};
pub use records::{
    Batch, OutputBudget, OutputLimit, OutputRefused, Record, RecordHeaders, Unlimited, data_points,
    logs_batch, metrics_batch, resource_key, trace_key,
};
pub use split::{Container, Split, SplitLen, split, split_len};
pub use trace_records::{TracePlan, traces_batch};
