//! From an OTLP request to Kafka records: grouping, keys, size bounds and encodings.
//!
//! - Traces (see `trace_records`): one record per trace id per request, key = the trace id as
//!   32 lowercase hex characters (the Collector's `partition_traces_by_id`), so every span of a
//!   trace lands in one partition.
//! - Metrics and logs: one record per distinct resource, key = a stable hash of the resource
//!   attributes (xxh3-64 over their sorted protobuf encoding, as 16 hex characters).
//!
//! Groups larger than the record budget are split (see `split`). Records repeat their
//! resource and scope, so a small request can ask for far more bytes of records than it has:
//! every builder works out the exact size of the records first and charges it to an
//! [`OutputBudget`] before allocating any of them.

use super::split::{Container, Item, Weighted, split, split_len};
use prost::Message;
use std::collections::HashMap;
use std::sync::Arc;
use weir_config::gateway::Encoding;
use weir_proto::json;
use weir_proto::otlp::collector::logs::v1::ExportLogsServiceRequest;
use weir_proto::otlp::collector::metrics::v1::ExportMetricsServiceRequest;
use weir_proto::otlp::common::v1::KeyValue;
use weir_proto::otlp::logs::v1::{LogsData, ResourceLogs};
use weir_proto::otlp::metrics::v1::{Metric, MetricsData, ResourceMetrics, metric::Data};
use weir_proto::otlp::resource::v1::Resource;

/// What building one request's records may take: the caller's share of the in-flight bound.
/// Builders charge the size of the records (key and value bytes) before allocating them, and
/// stop at the first refusal.
pub trait OutputBudget {
    /// Takes `bytes` more for the request's records, or refuses them.
    fn charge(&mut self, bytes: usize) -> Result<(), OutputRefused>;
}

/// A request's records would not fit its budget: the numbers for the caller's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request's records would take {needed} bytes, over the {available} bytes available")]
pub struct OutputRefused {
    /// The bytes of records the request asked for, everything charged before included.
    pub needed: usize,
    /// The bytes the budget had for them.
    pub available: usize,
}

/// A budget that never refuses: for tests, fuzzing and benchmarks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unlimited;

impl OutputBudget for Unlimited {
    fn charge(&mut self, _bytes: usize) -> Result<(), OutputRefused> {
        Ok(())
    }
}

/// A fixed number of bytes, and what has been charged against it.
#[derive(Debug, Clone, Copy)]
pub struct OutputLimit {
    limit: usize,
    charged: usize,
}

impl OutputLimit {
    /// A budget of `limit` bytes, none charged yet.
    pub fn new(limit: usize) -> Self {
        Self { limit, charged: 0 }
    }

    /// The bytes charged so far.
    pub fn charged(&self) -> usize {
        self.charged
    }
}

impl OutputBudget for OutputLimit {
    fn charge(&mut self, bytes: usize) -> Result<(), OutputRefused> {
        let needed = self.charged.saturating_add(bytes);
        if needed > self.limit {
            return Err(OutputRefused {
                needed,
                available: self.limit,
            });
        }
        self.charged = needed;
        Ok(())
    }
}

/// Encodes `data` as OTLP/JSON and charges what the JSON takes beyond the protobuf size
/// (`proto_len`) that was charged for it up front: the JSON size is not known before
/// encoding, so each record is charged as it is made and building stops at the first refusal.
pub(crate) fn to_json<M>(
    data: &M,
    proto_len: usize,
    write: fn(&M, &mut Vec<u8>),
    budget: &mut dyn OutputBudget,
) -> Result<Vec<u8>, OutputRefused> {
    let mut out = Vec::with_capacity(proto_len * 2);
    write(data, &mut out);
    // What was charged is the length: keep no more than that.
    out.shrink_to_fit();
    if out.len() > proto_len {
        budget.charge(out.len() - proto_len)?;
    }
    Ok(out)
}

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
    trace_key(&resource_hash(resource).to_be_bytes())
}

/// The hash behind `resource_key`.
fn resource_hash(resource: Option<&Resource>) -> u64 {
    let mut attrs: Vec<&KeyValue> = resource
        .map(|r| r.attributes.iter().collect())
        .unwrap_or_default();
    attrs.sort_by(|a, b| a.key.cmp(&b.key));
    let mut buf = Vec::with_capacity(256);
    for kv in attrs {
        kv.encode_length_delimited(&mut buf)
            .expect("a Vec grows as needed");
    }
    xxhash_rust::xxh3::xxh3_64(&buf)
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

/// The largest record value for a key of `key_len` bytes.
pub(crate) fn value_limit(max_message_size: usize, key_len: usize) -> usize {
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
    /// Encodes a chunk as `MetricsData` or `LogsData`; JSON charges `budget` for what it
    /// takes beyond the protobuf size.
    fn encode_chunk(
        chunk: Vec<Self>,
        encoding: Encoding,
        budget: &mut dyn OutputBudget,
    ) -> Result<Vec<u8>, OutputRefused>;
}

impl ResourceLevel for ResourceMetrics {
    const ITEM: &'static str = "metric data point";
    fn resource(&self) -> Option<&Resource> {
        self.resource.as_ref()
    }
    fn encode_chunk(
        resource_metrics: Vec<Self>,
        encoding: Encoding,
        budget: &mut dyn OutputBudget,
    ) -> Result<Vec<u8>, OutputRefused> {
        encode(
            encoding,
            &MetricsData { resource_metrics },
            json::encode_metrics_data,
            budget,
        )
    }
}

impl ResourceLevel for ResourceLogs {
    const ITEM: &'static str = "log record";
    fn resource(&self) -> Option<&Resource> {
        self.resource.as_ref()
    }
    fn encode_chunk(
        resource_logs: Vec<Self>,
        encoding: Encoding,
        budget: &mut dyn OutputBudget,
    ) -> Result<Vec<u8>, OutputRefused> {
        encode(
            encoding,
            &LogsData { resource_logs },
            json::encode_logs_data,
            budget,
        )
    }
}

/// One record per distinct resource (split when too large), keyed by `resource_key`; the
/// records' size is charged to `budget` before they are built.
pub fn metrics_batch(
    req: ExportMetricsServiceRequest,
    topic: &Arc<str>,
    encoding: Encoding,
    max_message_size: usize,
    budget: &mut dyn OutputBudget,
) -> Result<Batch, OutputRefused> {
    resource_batch(
        req.resource_metrics,
        topic,
        encoding,
        max_message_size,
        budget,
    )
}

/// One record per distinct resource (split when too large), keyed by `resource_key`; the
/// records' size is charged to `budget` before they are built.
pub fn logs_batch(
    req: ExportLogsServiceRequest,
    topic: &Arc<str>,
    encoding: Encoding,
    max_message_size: usize,
    budget: &mut dyn OutputBudget,
) -> Result<Batch, OutputRefused> {
    resource_batch(req.resource_logs, topic, encoding, max_message_size, budget)
}

/// Groups `resources` by the key of their resource and splits each group into records of at
/// most `max_message_size`, counting what cannot fit. The records' protobuf size is charged
/// first (a sizes-only run of the split), JSON's excess record by record.
fn resource_batch<R>(
    resources: Vec<R>,
    topic: &Arc<str>,
    encoding: Encoding,
    max_message_size: usize,
    budget: &mut dyn OutputBudget,
) -> Result<Batch, OutputRefused>
where
    R: ResourceLevel,
    R::Child: Container,
    Item<R>: Weighted + Default,
{
    let mut groups = group_by_resource(resources);
    let mut needed = 0usize;
    for (key, group) in &mut groups {
        let size = split_len(group, value_limit(max_message_size, key.len()));
        needed = needed
            .saturating_add(size.value_bytes)
            .saturating_add(size.records.saturating_mul(key.len()));
    }
    budget.charge(needed)?;

    let mut batch = Batch::default();
    for (key, group) in groups {
        let limit = value_limit(max_message_size, key.len());
        let parts = split(group, limit);
        if parts.rejected > 0 {
            batch.rejected += parts.rejected;
            batch.reject_reason = Some(format!(
                "{} {}(s) too large for one Kafka record: the largest is {} bytes, the record value limit is {limit} bytes (kafka.max_message_size less key and framing)",
                batch.rejected,
                R::ITEM,
                parts.largest_rejected,
            ));
        }
        for (chunk, items) in parts.chunks {
            batch.records.push(Record {
                topic: topic.clone(),
                key: key.clone(),
                value: R::encode_chunk(chunk, encoding, budget)?,
                items,
                headers: None,
            });
        }
    }
    Ok(batch)
}

/// Groups resource-level entries by the key of their resource, in first-seen order. The map
/// is keyed by the resource's hash with a hasher seeded per process, so neither many distinct
/// resources nor chosen ones make grouping slower than linear.
fn group_by_resource<R: ResourceLevel>(resources: Vec<R>) -> Vec<(Vec<u8>, Vec<R>)> {
    let mut index: HashMap<u64, usize, foldhash::fast::RandomState> = HashMap::default();
    let mut groups: Vec<(Vec<u8>, Vec<R>)> = Vec::new();
    for r in resources {
        let hash = resource_hash(r.resource());
        match index.get(&hash) {
            Some(&i) => groups[i].1.push(r),
            None => {
                index.insert(hash, groups.len());
                groups.push((trace_key(&hash.to_be_bytes()), vec![r]));
            }
        }
    }
    groups
}

fn encode<M: Message>(
    encoding: Encoding,
    msg: &M,
    write_json: fn(&M, &mut Vec<u8>),
    budget: &mut dyn OutputBudget,
) -> Result<Vec<u8>, OutputRefused> {
    match encoding {
        Encoding::OtlpProto => Ok(msg.encode_to_vec()),
        Encoding::OtlpJson => to_json(msg, msg.encoded_len(), write_json, budget),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::{Duration, Instant};
    use weir_proto::otlp::common::v1::{AnyValue, InstrumentationScope, any_value::Value};
    use weir_proto::otlp::logs::v1::{LogRecord, ScopeLogs};
    use weir_proto::otlp::metrics::v1::{
        Gauge, NumberDataPoint, ScopeMetrics, Sum, number_data_point,
    };

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn resource(service: &str, pad: usize) -> Option<Resource> {
        Some(Resource {
            attributes: vec![kv("service.name", service), kv("pad", &"r".repeat(pad))],
            ..Default::default()
        })
    }

    fn logs(service: &str, resource_pad: usize, records: usize, pad: usize) -> ResourceLogs {
        ResourceLogs {
            resource: resource(service, resource_pad),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: format!("{service}-lib"),
                    ..Default::default()
                }),
                log_records: (0..records)
                    .map(|i| LogRecord {
                        time_unix_nano: i as u64,
                        body: Some(AnyValue {
                            value: Some(Value::StringValue(format!("{i:08}{}", "y".repeat(pad)))),
                        }),
                        ..Default::default()
                    })
                    .collect(),
                schema_url: String::new(),
            }],
            schema_url: "s".into(),
        }
    }

    fn metrics(service: &str, points: usize) -> ResourceMetrics {
        let point = |i: usize| NumberDataPoint {
            attributes: vec![kv("i", &i.to_string())],
            time_unix_nano: i as u64,
            value: Some(number_data_point::Value::AsInt(i as i64)),
            ..Default::default()
        };
        ResourceMetrics {
            resource: resource(service, 40),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![
                    Metric {
                        name: "gauge".into(),
                        data: Some(Data::Gauge(Gauge {
                            data_points: (0..points).map(point).collect(),
                        })),
                        ..Default::default()
                    },
                    // No data points: no record of its own.
                    Metric {
                        name: "empty".into(),
                        ..Default::default()
                    },
                    Metric {
                        name: "sum".into(),
                        data: Some(Data::Sum(Sum {
                            data_points: (0..points).map(point).collect(),
                            ..Default::default()
                        })),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            schema_url: String::new(),
        }
    }

    /// The key and value bytes of a batch's records: what a budget is charged for.
    pub(crate) fn built(batch: &Batch) -> usize {
        batch
            .records
            .iter()
            .map(|r| r.key.len() + r.value.len())
            .sum()
    }

    #[test]
    fn logs_and_metrics_are_charged_the_exact_size_of_their_records() {
        let log_requests = [
            vec![
                logs("a", 10, 30, 20),
                logs("b", 10, 5, 5),
                logs("a", 10, 7, 900),
            ],
            vec![logs("a", 3000, 200, 300), logs("b", 0, 300, 40)],
            vec![logs("c", 0, 0, 0)],
        ];
        for max in [1_000_000, 20_000, 4_000] {
            for resource_logs in &log_requests {
                let req = ExportLogsServiceRequest {
                    resource_logs: resource_logs.clone(),
                };
                let mut budget = OutputLimit::new(usize::MAX);
                let batch =
                    logs_batch(req, &"l".into(), Encoding::OtlpProto, max, &mut budget).unwrap();
                assert_eq!(budget.charged(), built(&batch), "max {max}");
            }
            let req = ExportMetricsServiceRequest {
                resource_metrics: vec![metrics("a", 300), metrics("b", 2), metrics("a", 40)],
            };
            let mut budget = OutputLimit::new(usize::MAX);
            let batch =
                metrics_batch(req, &"m".into(), Encoding::OtlpProto, max, &mut budget).unwrap();
            assert_eq!(budget.charged(), built(&batch), "max {max}");
            assert!(batch.records.iter().all(|r| r.items > 0));
        }
    }

    #[test]
    fn json_logs_are_charged_at_least_their_size() {
        let req = ExportLogsServiceRequest {
            resource_logs: vec![logs("a", 10, 300, 100), logs("b", 10, 5, 5)],
        };
        let mut budget = OutputLimit::new(usize::MAX);
        let batch = logs_batch(req, &"l".into(), Encoding::OtlpJson, 16_000, &mut budget).unwrap();
        assert!(budget.charged() >= built(&batch));
    }

    #[test]
    fn log_chunk_amplification_is_refused_before_chunks_are_built() {
        // 300 records of 100 KB under a 900 KB resource, and a record limit with room for the
        // resource and one of them: each chunk repeats the resource, so about 300 MB of
        // records from a 31 MB request.
        let req = ExportLogsServiceRequest {
            resource_logs: vec![logs("amplifier", 900_000, 300, 100_000)],
        };
        let mut budget = OutputLimit::new(256 << 20);
        let started = Instant::now();
        let refused = logs_batch(
            req,
            &"l".into(),
            Encoding::OtlpProto,
            1_080_000,
            &mut budget,
        )
        .unwrap_err();
        assert!(refused.needed > 290_000_000, "{refused:?}");
        assert_eq!(budget.charged(), 0);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn resources_are_grouped_by_key_in_first_seen_order() {
        let req = ExportLogsServiceRequest {
            resource_logs: vec![
                logs("b", 0, 1, 0),
                logs("a", 0, 2, 0),
                logs("b", 0, 3, 0),
                logs("c", 0, 4, 0),
            ],
        };
        let batch = logs_batch(
            req,
            &"l".into(),
            Encoding::OtlpProto,
            1_000_000,
            &mut Unlimited,
        )
        .unwrap();
        let items: Vec<u64> = batch.records.iter().map(|r| r.items).collect();
        assert_eq!(items, [4, 2, 4]);
        assert_eq!(
            batch.records[0].key,
            resource_key(resource("b", 0).as_ref())
        );
    }

    /// The fastest of three groupings of `n` single-record resources, all distinct.
    fn group_distinct(n: usize) -> Duration {
        let resources: Vec<ResourceLogs> =
            (0..n).map(|i| logs(&format!("svc-{i}"), 0, 1, 0)).collect();
        (0..3)
            .map(|_| {
                let input = resources.clone();
                let started = Instant::now();
                let groups = group_by_resource(input);
                let took = started.elapsed();
                assert_eq!(groups.len(), n);
                took
            })
            .min()
            .unwrap_or_default()
    }

    #[test]
    fn distinct_resources_group_in_linear_time() {
        // Sixteen times the resources: about sixteen times the time when grouping is linear,
        // 256 times with a linear search per resource. The bound between the two leaves room
        // for a loaded machine.
        let small = group_distinct(1_500);
        let large = group_distinct(24_000);
        assert!(
            large <= small * 64 + Duration::from_millis(100),
            "1,500 resources {small:?}, 24,000 {large:?}"
        );
    }
}
