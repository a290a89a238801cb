//! The exporter against librdkafka's in-process mock cluster: records land keyed by trace id,
//! split under the size limit, and `send` returns only once they are acknowledged.

use prost::Message;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::mocking::MockCluster;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use weir_config::gateway::{Encoding, KafkaConfig};
use weir_exporters::kafka::{KafkaExporter, TracePlan, Unlimited, traces_batch};
use weir_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
use weir_proto::otlp::trace::v1::{Span, TracesData};
use weir_proto::test_support::{named_span, string_kv, traces_request};
use weir_proto::wire::TraceRequestView;

fn request(traces: u8, spans_per_trace: u8, pad: usize) -> ExportTraceServiceRequest {
    let spans = (0..traces)
        .flat_map(|t| {
            (0..spans_per_trace).map(move |s| Span {
                attributes: vec![string_kv("pad", &"p".repeat(pad))],
                ..named_span(t + 1, s + 1, &format!("t{t}s{s}"))
            })
        })
        .collect();
    traces_request(spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_keyed_by_trace_and_split_under_the_limit() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("spans", 3, 1).unwrap();
    let cfg = KafkaConfig {
        brokers: vec![cluster.bootstrap_servers()],
        ..Default::default()
    };
    let exporter = KafkaExporter::new(&cfg, Duration::from_secs(10)).unwrap();

    let max = 16 * 1024;
    let body = request(3, 40, 1000).encode_to_vec();
    let view = TraceRequestView::parse(&body).unwrap();
    let batch = traces_batch(
        &body,
        &view,
        &TracePlan::everything_to("spans".into(), &view),
        Encoding::OtlpProto,
        max,
        &mut Unlimited,
    )
    .unwrap();
    assert_eq!(batch.rejected, 0);
    assert!(batch.records.len() > 3, "the 40 KB traces must be split");
    exporter.send(&batch.records).await.unwrap();

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("group.id", "test")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["spans"]).unwrap();
    let mut spans_by_key: HashMap<String, Vec<String>> = HashMap::new();
    let mut partitions: HashMap<String, i32> = HashMap::new();
    let mut records = 0;
    let start = Instant::now();
    while records < batch.records.len() && start.elapsed() < Duration::from_secs(30) {
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg.unwrap();
        records += 1;
        let value = msg.payload().unwrap();
        assert!(value.len() <= max, "record of {} bytes", value.len());
        let key = String::from_utf8(msg.key().unwrap().to_vec()).unwrap();
        assert_eq!(
            *partitions.entry(key.clone()).or_insert(msg.partition()),
            msg.partition()
        );
        let data = TracesData::decode(value).unwrap();
        for span in data
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
        {
            assert_eq!(hex::encode(&span.trace_id), key);
            spans_by_key
                .entry(key.clone())
                .or_default()
                .push(span.name.clone());
        }
    }
    assert_eq!(records, batch.records.len());
    assert_eq!(spans_by_key.len(), 3);
    for (t, key) in (1u8..=3).map(|t| (t - 1, hex::encode([t; 16]))) {
        let want: Vec<String> = (0..40).map(|s| format!("t{t}s{s}")).collect();
        assert_eq!(spans_by_key[&key], want, "trace {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_fails_in_time_when_the_broker_is_down() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("spans", 1, 1).unwrap();
    let cfg = KafkaConfig {
        brokers: vec![cluster.bootstrap_servers()],
        ..Default::default()
    };
    let exporter = KafkaExporter::new(&cfg, Duration::from_secs(2)).unwrap();
    cluster.broker_down(1).unwrap();
    let body = request(1, 1, 10).encode_to_vec();
    let view = TraceRequestView::parse(&body).unwrap();
    let batch = traces_batch(
        &body,
        &view,
        &TracePlan::everything_to("spans".into(), &view),
        Encoding::OtlpProto,
        1 << 20,
        &mut Unlimited,
    )
    .unwrap();
    let start = Instant::now();
    let err = exporter.send(&batch.records).await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "took {:?}",
        start.elapsed()
    );
    let text = err.to_string();
    assert!(text.contains("Kafka"), "{text}");
}
