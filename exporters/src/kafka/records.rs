//! From an OTLP request to Kafka records: grouping, keys, size bounds and encodings.
//!
//! - Traces (see `trace_records`): one record per trace id per request, key = the trace id as
//!   32 lowercase hex characters (the Collector's `partition_traces_by_id`), so every span of a
//!   trace lands in one partition.
//! - Metrics and logs: one record per distinct resource, key = a stable hash of the resource
//!   attributes (xxh3-64 over their sorted protobuf encoding, as 16 hex characters).
//!
//! Groups larger than the record budget are split (see `split`).

use super::split::{Container, Weighted, split};
use prost::Message;
use std::sync::Arc;
use weir_config::gateway::Encoding;
use weir_proto::json;
use weir_proto::otlp::collector::logs::v1::ExportLogsServiceRequest;
use weir_proto::otlp::collector::metrics::v1::ExportMetricsServiceRequest;
use weir_proto::otlp::common::v1::KeyValue;
use weir_proto::otlp::logs::v1::{LogsData, ResourceLogs};
use weir_proto::otlp::metrics::v1::{Metric, MetricsData, ResourceMetrics, metric::Data};
use weir_proto::otlp::resource::v1::Resource;

/// One Kafka record, ready to produce.
#[derive(Debug, Clone)]
pub struct Record {
    /// The topic.
    pub topic: Arc<str>,
    /// The record key.
    pub key: Vec<u8>,
    /// The encoded `TracesData`, `MetricsData` or `LogsData`.
    pub value: Vec<u8>,
    /// Spans, data points or log records in the value.
    pub items: u64,
    /// Record headers (the tenant, copied request metadata), shared by the request's records.
    pub headers: Option<RecordHeaders>,
}

/// Kafka record headers as (name, value) pairs, in order; a name may repeat.
pub type RecordHeaders = Arc<[(String, Vec<u8>)]>;

/// The records of one request, and what of it could not be made into records.
#[derive(Debug, Default)]
pub struct Batch {
    /// Records to produce.
    pub records: Vec<Record>,
    /// Items larger than a record can be; reported to the client as `partial_success`.
    pub rejected: u64,
    /// Why items were rejected, for `partial_success.error_message`.
    pub reject_reason: Option<String>,
}

/// Bytes kept free in a record for the key and Kafka's record framing, so that key + value +
/// framing stays within `kafka.max_message_size` as librdkafka counts it.
pub(crate) const RECORD_OVERHEAD: usize = 128;

/// The key of a trace record: the trace id as lowercase hex (32 characters for valid ids).
pub fn trace_key(trace_id: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; trace_id.len() * 2];
    // hex::encode_to_slice only fails when the output length is wrong, and it is right here.
    let _ = hex::encode_to_slice(trace_id, &mut out);
    out
}

/// The key of a metric or log record: a stable hash of the resource's attributes.
///
/// Attributes are hashed in key order, so the same resource gives the same key whatever order
/// an SDK sends them in, and xxh3 is a fixed algorithm, so keys do not change between builds.
pub fn resource_key(resource: Option<&Resource>) -> Vec<u8> {
    let mut attrs: Vec<&KeyValue> = resource
        .map(|r| r.attributes.iter().collect())
        .unwrap_or_default();
    attrs.sort_by(|a, b| a.key.cmp(&b.key));
    let mut buf = Vec::with_capacity(256);
    for kv in attrs {
        kv.encode_length_delimited(&mut buf)
            .expect("a Vec grows as needed");
    }
    let hash = xxhash_rust::xxh3::xxh3_64(&buf);
    trace_key(&hash.to_be_bytes())
}

/// The number of data points a metric holds.
pub fn data_points(m: &Metric) -> u64 {
    let n = match &m.data {
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => 0,
    };
    n as u64
}

fn budget(max_message_size: usize, key_len: usize) -> usize {
    max_message_size
        .saturating_sub(key_len + RECORD_OVERHEAD)
        .max(1)
}

/// The resource level of metrics (`ResourceMetrics`) and logs (`ResourceLogs`): what records
/// are keyed by, and how a chunk of them becomes a record value.
trait ResourceLevel: Container {
    /// What one item is called in `partial_success` messages.
    const ITEM: &'static str;
    /// The resource, whose attributes key the record.
    fn resource(&self) -> Option<&Resource>;
    /// Encodes a chunk as `MetricsData` or `LogsData`.
    fn encode_chunk(chunk: Vec<Self>, encoding: Encoding) -> Vec<u8>;
}

impl ResourceLevel for ResourceMetrics {
    const ITEM: &'static str = "metric data point";
    fn resource(&self) -> Option<&Resource> {
        self.resource.as_ref()
    }
    fn encode_chunk(resource_metrics: Vec<Self>, encoding: Encoding) -> Vec<u8> {
        encode(
            encoding,
            &MetricsData { resource_metrics },
            json::encode_metrics_data,
        )
    }
}

impl ResourceLevel for ResourceLogs {
    const ITEM: &'static str = "log record";
    fn resource(&self) -> Option<&Resource> {
        self.resource.as_ref()
    }
    fn encode_chunk(resource_logs: Vec<Self>, encoding: Encoding) -> Vec<u8> {
        encode(
            encoding,
            &LogsData { resource_logs },
            json::encode_logs_data,
        )
    }
}

/// One record per distinct resource (split when too large), keyed by `resource_key`.
pub fn metrics_batch(
    req: ExportMetricsServiceRequest,
    topic: &Arc<str>,
    encoding: Encoding,
    max_message_size: usize,
) -> Batch {
    resource_batch(req.resource_metrics, topic, encoding, max_message_size)
}

/// One record per distinct resource (split when too large), keyed by `resource_key`.
pub fn logs_batch(
    req: ExportLogsServiceRequest,
    topic: &Arc<str>,
    encoding: Encoding,
    max_message_size: usize,
) -> Batch {
    resource_batch(req.resource_logs, topic, encoding, max_message_size)
}

/// Groups `resources` by the key of their resource and splits each group into records of at
/// most `max_message_size`, counting what cannot fit.
fn resource_batch<R>(
    resources: Vec<R>,
    topic: &Arc<str>,
    encoding: Encoding,
    max_message_size: usize,
) -> Batch
where
    R: ResourceLevel,
    R::Child: Container,
    <R::Child as Container>::Child: Weighted,
{
    let mut batch = Batch::default();
    for (key, group) in group_by_resource(resources) {
        let budget = budget(max_message_size, key.len());
        let parts = split(group, budget);
        if parts.rejected > 0 {
            batch.rejected += parts.rejected;
            batch.reject_reason = Some(format!(
                "{} {}(s) too large for one Kafka record: the largest is {} bytes, the record value limit is {budget} bytes (kafka.max_message_size less key and framing)",
                batch.rejected,
                R::ITEM,
                parts.largest_rejected,
            ));
        }
        for chunk in parts.chunks {
            let items: u64 = chunk
                .iter()
                .flat_map(|r| r.children())
                .flat_map(|s| s.children())
                .map(Weighted::weight)
                .sum();
            if items > 0 {
                batch.records.push(Record {
                    topic: topic.clone(),
                    key: key.clone(),
                    value: R::encode_chunk(chunk, encoding),
                    items,
                    headers: None,
                });
            }
        }
    }
    batch
}

/// Groups resource-level entries by the key of their resource, in first-seen order.
fn group_by_resource<R: ResourceLevel>(resources: Vec<R>) -> Vec<(Vec<u8>, Vec<R>)> {
    let mut groups: Vec<(Vec<u8>, Vec<R>)> = Vec::new();
    for r in resources {
        let key = resource_key(r.resource());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(r),
            None => groups.push((key, vec![r])),
        }
    }
    groups
}

fn encode<M: Message>(encoding: Encoding, msg: &M, to_json: fn(&M, &mut Vec<u8>)) -> Vec<u8> {
    match encoding {
        Encoding::OtlpProto => msg.encode_to_vec(),
        Encoding::OtlpJson => {
            let mut out = Vec::with_capacity(msg.encoded_len() * 2);
            to_json(msg, &mut out);
            out
        }
    }
}
