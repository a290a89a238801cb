//! The cold writer against librdkafka's in-process mock cluster: a record the cold topic
//! refuses for good goes to the dead-letter topic (or is skipped) and the batch moves on; a
//! transient failure is retried until the record is written.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use weir_config::gateway::KafkaConfig;
use weir_exporters::kafka::{KafkaExporter, Record};
use weir_tail_router::cold::{
    ColdWriter, DEAD_LETTER_REASON_HEADER, DEAD_LETTER_TOPIC_HEADER, permanent_reason,
};

const COLD: &str = "cold";
const DEAD: &str = "dead";

fn cluster() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(COLD, 1, 1).unwrap();
    cluster.create_topic(DEAD, 1, 1).unwrap();
    cluster
}

fn writer(
    bootstrap: String,
    produce_timeout: Duration,
    dead_letter_topic: Option<&str>,
) -> ColdWriter {
    let cfg = KafkaConfig {
        brokers: vec![bootstrap],
        ..Default::default()
    };
    ColdWriter {
        exporter: Arc::new(KafkaExporter::new(&cfg, produce_timeout).unwrap()),
        cold_topic: COLD.into(),
        dead_letter_topic: dead_letter_topic.map(Into::into),
    }
}

fn record(key: &str, bytes: usize) -> Record {
    Record {
        topic: COLD.into(),
        key: key.as_bytes().to_vec(),
        value: vec![b'v'; bytes],
        items: 1,
        headers: Some(vec![("tenant".to_string(), b"shop".to_vec())].into()),
    }
}

/// The records of `topic` (key, then its headers by name), read until `want` are there or
/// `within` passed.
fn read(
    bootstrap: &str,
    topic: &str,
    want: usize,
    within: Duration,
) -> Vec<(String, BTreeMap<String, String>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("read-{topic}"))
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let start = Instant::now();
    while out.len() < want && start.elapsed() < within {
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.unwrap();
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push((
            String::from_utf8_lossy(m.key().unwrap()).into_owned(),
            headers,
        ));
    }
    out
}

/// What `topic` holds, read for a few seconds (the mock cluster answers at once).
fn read_all(bootstrap: &str, topic: &str) -> Vec<(String, BTreeMap<String, String>)> {
    read(bootstrap, topic, usize::MAX, Duration::from_secs(3))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_cold_topic_refuses_for_good_goes_to_the_dead_letter_topic() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    let w = writer(bootstrap.clone(), Duration::from_secs(10), Some(DEAD));
    // The broker refuses the next produce request as too large (a cold topic whose
    // max.message.bytes is below the record); the dead letter's request goes through.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let stop = CancellationToken::new();
    let done = tokio::time::timeout(
        Duration::from_secs(30),
        w.deliver(vec![record("too-large", 100)], &stop),
    )
    .await
    .expect("a permanent refusal must not be retried forever");
    assert!(done);
    assert!(read_all(&bootstrap, COLD).is_empty());
    let dead = read(&bootstrap, DEAD, 1, Duration::from_secs(15));
    assert_eq!(dead.len(), 1, "{dead:?}");
    let (key, headers) = &dead[0];
    assert_eq!(key, "too-large");
    assert_eq!(headers[DEAD_LETTER_REASON_HEADER], "message_too_large");
    assert_eq!(headers[DEAD_LETTER_TOPIC_HEADER], COLD);
    assert_eq!(
        headers["tenant"], "shop",
        "the record's own headers are kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_dead_letter_topic_the_refused_record_is_skipped_and_the_rest_written() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    // The producer's own limit (message.max.bytes, about 1 MB) refuses the 2 MB record before
    // it is sent.
    let w = writer(bootstrap.clone(), Duration::from_secs(10), None);
    let stop = CancellationToken::new();
    let batch = vec![
        record("a", 100),
        record("huge", 2_000_000),
        record("b", 100),
    ];
    let done = tokio::time::timeout(Duration::from_secs(30), w.deliver(batch, &stop))
        .await
        .expect("a permanent refusal must not be retried forever");
    assert!(done);
    let mut keys: Vec<String> = read_all(&bootstrap, COLD)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    keys.sort();
    assert_eq!(keys, ["a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_retried_until_the_record_is_written() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    let w = writer(bootstrap.clone(), Duration::from_secs(1), Some(DEAD));
    // Let the producer connect, then take the broker down for longer than produce_timeout.
    let stop = CancellationToken::new();
    assert!(w.deliver(vec![record("first", 10)], &stop).await);
    cluster.broker_down(1).unwrap();
    let back_up = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.broker_up(1).unwrap();
    };
    let (done, ()) = tokio::join!(
        tokio::time::timeout(
            Duration::from_secs(60),
            w.deliver(vec![record("second", 10)], &stop),
        ),
        back_up
    );
    assert!(done.expect("written once the broker is back"));
    let keys: Vec<String> = read(&bootstrap, COLD, 2, Duration::from_secs(15))
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(keys.contains(&"second".to_string()), "{keys:?}");
    assert!(
        read_all(&bootstrap, DEAD).is_empty(),
        "a timeout is not a dead letter"
    );
}

#[test]
fn only_refusals_a_retry_cannot_change_are_permanent() {
    use rdkafka::types::RDKafkaErrorCode as C;
    use weir_exporters::kafka::ExportError;
    let refused = |code| ExportError::Refused {
        topic: COLD.into(),
        reason: String::new(),
        code: Some(code),
    };
    let failed = |code| ExportError::Delivery {
        topic: COLD.into(),
        reason: String::new(),
        fenced: false,
        code: Some(code),
    };
    assert_eq!(
        permanent_reason(&refused(C::MessageSizeTooLarge)),
        Some("message_too_large")
    );
    assert_eq!(
        permanent_reason(&failed(C::UnknownTopicOrPartition)),
        Some("unknown_topic_or_partition")
    );
    assert_eq!(
        permanent_reason(&refused(C::InvalidRecord)),
        Some("invalid_record")
    );
    assert_eq!(
        permanent_reason(&refused(C::TopicAuthorizationFailed)),
        None
    );
    assert_eq!(permanent_reason(&failed(C::NotEnoughReplicas)), None);
    assert_eq!(
        permanent_reason(&ExportError::Timeout {
            records: 1,
            timeout_ms: 1
        }),
        None
    );
}
