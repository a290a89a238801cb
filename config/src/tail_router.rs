//! The bootstrap config of `weir-tail-router`: the hot, cold and decisions topics, the delay D
//! behind real time, how long decision windows are kept, the admin listener and logging.
//! Every key is documented in `config/tail-router.yaml` and `docs/tail-sampling.md`.

use crate::error::ConfigError;
use crate::gateway::{
    Acks, Compression, KafkaConfig, KafkaSecurity, Log, Partitioner, ScalarString, SignalTopic,
    is_topic_name,
};
use crate::load::ConfigFile;
use crate::units::{ByteSize, duration};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

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
