//! The bootstrap config of `weir-tail-router`: the hot, cold and decisions topics, the delay D
//! behind real time, how long decision windows are kept, the admin listener and logging.
//! Every key is documented in `config/tail-router.yaml` and `docs/tail-sampling.md`.

use crate::error::ConfigError;
use crate::gateway::{
    Acks, Compression, KafkaConfig, KafkaSecurity, Log, Partitioner, ScalarString, SignalTopic,
    is_topic_name,
};
use crate::load::ConfigFile;
use crate::secret::Secret;
use crate::units::{ByteSize, duration};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use weir_proto::decision::MAX_FILTER_BYTES;

/// The whole bootstrap config of `weir-tail-router`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TailRouterConfig {
    /// Brokers, topics, the consumer group and client settings.
    pub kafka: RouterKafka,
    /// D: a hot record is processed once its timestamp is at least this old. Longer than
    /// the longest trace plus the gateways' publish interval.
    #[serde(deserialize_with = "duration")]
    pub delay: Duration,
    /// Decision windows that ended longer ago than this are freed (and records of them
    /// arriving later are skipped).
    #[serde(deserialize_with = "duration")]
    pub window_retention: Duration,
    /// Hot records decided per batch; the batch's kept records are produced and
    /// acknowledged before its offsets are committed.
    pub batch_size: usize,
    /// How long a cold produce may wait for acknowledgement before it is retried.
    #[serde(deserialize_with = "duration")]
    pub produce_timeout: Duration,
    /// The admin listener (/healthz, /readyz, /metrics).
    pub admin: RouterAdmin,
    /// How long shutdown waits for the batch in progress.
    #[serde(deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    /// Logging.
    pub log: Log,
    /// What the router accepts of the decision records it reads.
    pub decisions: RouterDecisions,
    /// What happens to a record the cold topic refuses for good.
    pub cold: RouterCold,
    /// Hot record timestamps (CreateTime) further ahead of the router's clock than this are
    /// taken as now plus this, so a gateway with a clock running ahead cannot hold a
    /// partition back for the length of its skew.
    #[serde(deserialize_with = "duration")]
    pub max_timestamp_lead: Duration,
}

/// Cold writes: a record the cold topic refuses for a reason a retry cannot change (too large,
/// an unknown topic or partition, an invalid record) is written to the dead-letter topic, or
/// skipped without one; either way counted, and its partition moves on.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterCold {
    /// Where records the cold topic refuses for good are written, with headers saying why;
    /// none: they are skipped.
    pub dead_letter_topic: Option<String>,
}

/// Bounds on the decision records the router merges, and their signature. Records past a
/// bound are counted (`weir_tail_router_decision_records_total{result="out_of_bounds"}`) and
/// skipped, so that whoever can produce to the decisions topic cannot make the router
/// allocate, hash or hold without bound.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterDecisions {
    /// The longest window length (the policy allows up to 24h).
    #[serde(deserialize_with = "duration")]
    pub max_window_length: Duration,
    /// How far past the router's clock a window may start (gateways' clocks ahead of it).
    #[serde(deserialize_with = "duration")]
    pub max_window_lead: Duration,
    /// The most filters (parameter sets) one window may have; a policy change mid-window
    /// gives two.
    pub max_filters_per_window: usize,
    /// The most hash functions of a filter (30 at the policy's lowest rate, 1e-9).
    pub max_hashes: u32,
    /// The largest filter (the policy allows up to 256MiB).
    pub max_filter_bytes: ByteSize,
    /// The most filter bytes held over all windows; a new filter past it is refused.
    pub max_total_bytes: ByteSize,
    /// The most marked traces a filter may be sized for.
    pub max_expected_items: u64,
    /// The key that gateways sign decision records with (HMAC-SHA256, their
    /// `tail.signing_key`); when set, unsigned and wrongly signed records are skipped.
    /// Exactly one of `signing_key`, `signing_key_file`, `signing_key_env`, or none.
    pub signing_key: Option<String>,
    /// A file holding the signing key.
    pub signing_key_file: Option<PathBuf>,
    /// An environment variable holding the signing key.
    pub signing_key_env: Option<String>,
}

impl Default for RouterDecisions {
    fn default() -> Self {
        Self {
            max_window_length: Duration::from_secs(24 * 3600),
            max_window_lead: Duration::from_secs(5 * 60),
            max_filters_per_window: 4,
            max_hashes: 32,
            max_filter_bytes: ByteSize(MAX_FILTER_BYTES),
            max_total_bytes: ByteSize(1 << 30),
            max_expected_items: 1 << 40,
            signing_key: None,
            signing_key_file: None,
            signing_key_env: None,
        }
    }
}

impl RouterDecisions {
    /// The signing key records must carry a valid signature of, when one is configured.
    pub fn signing_key(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        Secret::read_optional_key(
            "decisions",
            "signing_key",
            self.signing_key.as_ref(),
            self.signing_key_file.as_ref(),
            self.signing_key_env.as_ref(),
        )
    }
}

impl Default for TailRouterConfig {
    fn default() -> Self {
        Self {
            kafka: RouterKafka::default(),
            delay: Duration::from_secs(120),
            window_retention: Duration::from_secs(30 * 60),
            batch_size: 5000,
            produce_timeout: Duration::from_secs(30),
            admin: RouterAdmin::default(),
            shutdown_timeout: Duration::from_secs(30),
            log: Log::default(),
            decisions: RouterDecisions::default(),
            cold: RouterCold::default(),
            max_timestamp_lead: Duration::from_secs(10),
        }
    }
}

/// Kafka settings of the tail router.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterKafka {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// The client id of its consumers and producer.
    pub client_id: String,
    /// The consumer group on the hot topic; routers of one group share its partitions.
    pub group_id: String,
    /// The hot topic: every kept span, keyed by trace id.
    pub hot_topic: String,
    /// The cold topic: spans of marked (and baseline) traces, same key and value.
    pub cold_topic: String,
    /// The gateways' decision records.
    pub decisions_topic: String,
    /// The largest record the producer sends (as the gateway's `kafka.max_message_size`).
    pub max_message_size: ByteSize,
    /// Cold record batch compression.
    pub compression: Compression,
    /// How cold records' keys map to partitions (as the gateway's `kafka.partitioner`).
    pub partitioner: Partitioner,
    /// How long the producer waits to fill a batch.
    #[serde(deserialize_with = "duration")]
    pub linger: Duration,
    /// Protocol, SASL and TLS to the brokers.
    pub security: KafkaSecurity,
    /// Raw librdkafka properties of both consumers; they win over the keys above.
    pub consumer_properties: BTreeMap<String, ScalarString>,
    /// Raw librdkafka properties of the producer; they win over the keys above.
    pub producer_properties: BTreeMap<String, ScalarString>,
}

impl Default for RouterKafka {
    fn default() -> Self {
        Self {
            brokers: vec!["127.0.0.1:9092".into()],
            client_id: "weir-tail-router".into(),
            group_id: "weir-tail-router".into(),
            hot_topic: "otlp_spans".into(),
            cold_topic: "otlp_spans_cold".into(),
            decisions_topic: "weir.tail.decisions".into(),
            max_message_size: ByteSize(1_000_000),
            compression: Compression::None,
            partitioner: Partitioner::default(),
            linger: Duration::from_millis(5),
            security: KafkaSecurity::default(),
            consumer_properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
        }
    }
}

impl RouterKafka {
    /// The producer's settings as the Kafka exporter takes them (acks=all, idempotent).
    pub fn producer(&self) -> KafkaConfig {
        KafkaConfig {
            brokers: self.brokers.clone(),
            client_id: self.client_id.clone(),
            traces: SignalTopic {
                topic: self.cold_topic.clone(),
                encoding: Default::default(),
            },
            max_message_size: self.max_message_size,
            acks: Acks::All,
            compression: self.compression,
            partitioner: self.partitioner,
            linger: self.linger,
            security: self.security.clone(),
            properties: self.producer_properties.clone(),
            ..KafkaConfig::default()
        }
    }
}

/// The tail router's admin listener.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterAdmin {
    /// `host:port` to bind, default 0.0.0.0:8889.
    pub endpoint: String,
}

impl Default for RouterAdmin {
    fn default() -> Self {
        Self {
            endpoint: "0.0.0.0:8889".into(),
        }
    }
}

impl ConfigFile for TailRouterConfig {
    fn empty() -> Option<Self> {
        Some(Self::default())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let k = &self.kafka;
        crate::gateway::check_brokers(&k.brokers)?;
        for (key, name) in [
            ("kafka.hot_topic", &k.hot_topic),
            ("kafka.cold_topic", &k.cold_topic),
            ("kafka.decisions_topic", &k.decisions_topic),
        ] {
            if !is_topic_name(name) {
                return Err(ConfigError::invalid(
                    key,
                    format!("`{name}` is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"),
                ));
            }
        }
        if let Some(dlq) = &self.cold.dead_letter_topic {
            if !is_topic_name(dlq) {
                return Err(ConfigError::invalid(
                    "cold.dead_letter_topic",
                    format!("`{dlq}` is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"),
                ));
            }
            if [&k.hot_topic, &k.cold_topic, &k.decisions_topic].contains(&dlq) {
                return Err(ConfigError::invalid(
                    "cold.dead_letter_topic",
                    format!("`{dlq}` is already the hot, cold or decisions topic"),
                ));
            }
        }
        if k.hot_topic == k.cold_topic {
            return Err(ConfigError::invalid(
                "kafka.cold_topic",
                "is the hot topic: the router would copy its own output forever",
            ));
        }
        if k.group_id.is_empty() {
            return Err(ConfigError::invalid("kafka.group_id", "must not be empty"));
        }
        if k.max_message_size.0 < 1024 || k.max_message_size.0 > 1_000_000_000 {
            return Err(ConfigError::invalid(
                "kafka.max_message_size",
                "is out of range: use 1KiB to 1GB",
            ));
        }
        if self.delay > Duration::from_secs(7 * 24 * 3600) {
            return Err(ConfigError::invalid(
                "delay",
                "is over 7 days: records would outlive most topics' retention before being decided",
            ));
        }
        if self.window_retention <= self.delay {
            return Err(ConfigError::invalid(
                "window_retention",
                format!(
                    "{:?} is not longer than delay ({:?}): windows would be freed before the records they decide; keep at least delay plus two windows",
                    self.window_retention, self.delay
                ),
            ));
        }
        if self.batch_size == 0 || self.batch_size > 1_000_000 {
            return Err(ConfigError::invalid(
                "batch_size",
                "is out of range: use 1 to 1000000",
            ));
        }
        if self.produce_timeout < Duration::from_millis(100) {
            return Err(ConfigError::invalid(
                "produce_timeout",
                "must be at least 100ms",
            ));
        }
        if self.shutdown_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "shutdown_timeout",
                "must be greater than zero",
            ));
        }
        let d = &self.decisions;
        if d.max_window_length < Duration::from_secs(1)
            || d.max_window_length > Duration::from_secs(24 * 3600)
        {
            return Err(ConfigError::invalid(
                "decisions.max_window_length",
                "is out of range: use 1s to 24h (a policy's windows last 1s to 24h)",
            ));
        }
        if d.max_window_lead > Duration::from_secs(24 * 3600) {
            return Err(ConfigError::invalid(
                "decisions.max_window_lead",
                "is over 24h: a window that far ahead is a clock error, not a decision",
            ));
        }
        if d.max_filters_per_window == 0 || d.max_filters_per_window > 64 {
            return Err(ConfigError::invalid(
                "decisions.max_filters_per_window",
                "is out of range: use 1 to 64",
            ));
        }
        if d.max_hashes == 0 || d.max_hashes > 64 {
            return Err(ConfigError::invalid(
                "decisions.max_hashes",
                "is out of range: use 1 to 64",
            ));
        }
        if d.max_filter_bytes.0 == 0 || d.max_filter_bytes.0 > MAX_FILTER_BYTES {
            return Err(ConfigError::invalid(
                "decisions.max_filter_bytes",
                format!("is out of range: use 1 to {MAX_FILTER_BYTES} (256MiB)"),
            ));
        }
        if d.max_total_bytes.0 < d.max_filter_bytes.0 {
            return Err(ConfigError::invalid(
                "decisions.max_total_bytes",
                "is below decisions.max_filter_bytes: not even one largest filter would fit",
            ));
        }
        if d.max_expected_items == 0 {
            return Err(ConfigError::invalid(
                "decisions.max_expected_items",
                "must be at least 1",
            ));
        }
        d.signing_key()?;
        if self.max_timestamp_lead > Duration::from_secs(3600) {
            return Err(ConfigError::invalid(
                "max_timestamp_lead",
                "is over 1h: keep it near the clock skew you tolerate between gateways and router",
            ));
        }
        if self.admin.endpoint.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::invalid(
                "admin.endpoint",
                format!("`{}` is not ip:port", self.admin.endpoint),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_document_is_the_default() {
        let c = TailRouterConfig::from_yaml("").unwrap();
        assert_eq!(c.kafka.hot_topic, "otlp_spans");
        assert_eq!(c.kafka.cold_topic, "otlp_spans_cold");
        assert_eq!(c.kafka.decisions_topic, "weir.tail.decisions");
        assert_eq!(c.admin.endpoint, "0.0.0.0:8889");
        assert_eq!(c.delay, Duration::from_secs(120));
    }

    #[test]
    fn the_example_file_is_valid() {
        let text = include_str!("../tail-router.yaml");
        let c = TailRouterConfig::from_yaml(text).unwrap();
        assert_eq!(c.kafka.group_id, "weir-tail-router");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (doc, key) in [
            ("delay: soon", "delay"),
            ("kafka: { cold_topic: otlp_spans }", "kafka.cold_topic"),
            ("kafka: { hot_topic: 'a b' }", "kafka.hot_topic"),
            ("delay: 10m\nwindow_retention: 5m", "window_retention"),
            ("batch_size: 0", "batch_size"),
            ("admin: { endpoint: nowhere }", "admin.endpoint"),
            ("kafka: { brokers: [] }", "kafka.brokers"),
            ("decisions: { max_hashes: 0 }", "decisions.max_hashes"),
            (
                "decisions: { max_window_length: 48h }",
                "decisions.max_window_length",
            ),
            (
                "decisions: { max_filter_bytes: 1GiB }",
                "decisions.max_filter_bytes",
            ),
            (
                "decisions: { max_total_bytes: 1MiB, max_filter_bytes: 2MiB }",
                "decisions.max_total_bytes",
            ),
            (
                "decisions: { signing_key: a, signing_key_env: B }",
                "decisions",
            ),
            ("max_timestamp_lead: 2h", "max_timestamp_lead"),
            (
                "cold: { dead_letter_topic: otlp_spans_cold }",
                "cold.dead_letter_topic",
            ),
            (
                "cold: { dead_letter_topic: 'a b' }",
                "cold.dead_letter_topic",
            ),
            ("colour: red", "colour"),
        ] {
            let e = TailRouterConfig::from_yaml(doc).unwrap_err();
            assert_eq!(e.key(), Some(key), "{doc}: {e}");
        }
    }

    #[test]
    fn the_producer_acknowledges_with_all_replicas() {
        let c = TailRouterConfig::from_yaml("kafka: { cold_topic: cold }").unwrap();
        let p = c.kafka.producer();
        assert_eq!(p.acks, Acks::All);
        assert_eq!(p.traces.topic, "cold");
    }
}
