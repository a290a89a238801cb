//! The decoded-size bounds against what decoding really allocates, counted by a global
//! allocator (this test binary's own, so other tests are not slowed by it).

use prost::Message;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};
use weir_proto::decoded_size::{
    json_decoded_size_bound, logs_request_decoded_size, metrics_request_decoded_size,
};
use weir_proto::json;
use weir_proto::otlp::collector::logs::v1::ExportLogsServiceRequest;
use weir_proto::otlp::collector::metrics::v1::ExportMetricsServiceRequest;
use weir_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
use weir_proto::otlp::common::v1::{
    AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use weir_proto::otlp::logs::v1::{LogRecord, LogsData, ResourceLogs, ScopeLogs};
use weir_proto::otlp::metrics::v1::exponential_histogram_data_point::Buckets;
use weir_proto::otlp::metrics::v1::summary_data_point::ValueAtQuantile;
use weir_proto::otlp::metrics::v1::{
    Exemplar, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram,
    HistogramDataPoint, Metric, MetricsData, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    Summary, SummaryDataPoint, exemplar, metric, number_data_point,
};
use weir_proto::otlp::resource::v1::Resource;
use weir_proto::otlp::trace::v1::span::{Event, Link};
use weir_proto::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, TracesData};

/// Counts the bytes each thread holds, and the most it held since the last reset.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is passed on to `System` unchanged; only the bookkeeping is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        account(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            account(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `decode` and returns what it returned with the heap its result holds.
fn held_by<T>(decode: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.with(Cell::get);
    let value = decode();
    let after = LIVE.with(Cell::get);
    (value, (after - before).max(0) as usize)
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.into())
}

fn attributes(n: usize, seed: usize) -> Vec<KeyValue> {
    (0..n)
        .map(|i| match i % 5 {
            0 => kv(&format!("attr.{i}"), s(&format!("value-{seed}-{i}"))),
            1 => kv("count", any_value::Value::IntValue(i as i64)),
            2 => kv("bytes", any_value::Value::BytesValue(vec![i as u8; 12])),
            3 => kv(
                "list",
                any_value::Value::ArrayValue(ArrayValue {
                    values: vec![
                        AnyValue {
                            value: Some(s("a")),
                        },
                        AnyValue {
                            value: Some(any_value::Value::DoubleValue(1.5)),
                        },
                    ],
                }),
            ),
            _ => kv(
                "map",
                any_value::Value::KvlistValue(KeyValueList {
                    values: vec![
                        kv("inner", s("x")),
                        kv("deep", any_value::Value::BoolValue(true)),
                    ],
                }),
            ),
        })
        .collect()
}

fn resource(service: &str) -> Option<Resource> {
    Some(Resource {
        attributes: vec![
            kv("service.name", s(service)),
            kv("host.name", s("host-1.example")),
        ],
        entity_refs: vec![EntityRef {
            r#type: "service".into(),
            id_keys: vec!["service.name".into()],
            ..Default::default()
        }],
        ..Default::default()
    })
}

fn scope(name: &str) -> Option<InstrumentationScope> {
    Some(InstrumentationScope {
        name: name.into(),
        version: "1.2.3".into(),
        attributes: attributes(2, 0),
        ..Default::default()
    })
}

fn logs_request(resources: usize, scopes: usize, records: usize) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: (0..resources)
            .map(|r| ResourceLogs {
                resource: resource(&format!("svc-{r}")),
                scope_logs: (0..scopes)
                    .map(|sc| ScopeLogs {
                        scope: scope(&format!("lib-{sc}")),
                        log_records: (0..records)
                            .map(|i| LogRecord {
                                time_unix_nano: i as u64,
                                severity_number: 9,
                                severity_text: "INFO".into(),
                                body: Some(AnyValue {
                                    value: Some(s(&format!("log line {i} of scope {sc}"))),
                                }),
                                attributes: attributes(i % 7, i),
                                trace_id: if i.is_multiple_of(2) {
                                    vec![1; 16]
                                } else {
                                    Vec::new()
                                },
                                span_id: if i.is_multiple_of(2) {
                                    vec![2; 8]
                                } else {
                                    Vec::new()
                                },
                                ..Default::default()
                            })
                            .collect(),
                        schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
                    })
                    .collect(),
                schema_url: String::new(),
            })
            .collect(),
    }
}

fn metrics_request(resources: usize, points: usize) -> ExportMetricsServiceRequest {
    let number = |i: usize| NumberDataPoint {
        attributes: attributes(i % 4, i),
        time_unix_nano: i as u64,
        exemplars: if i.is_multiple_of(3) {
            vec![Exemplar {
                filtered_attributes: attributes(1, i),
                span_id: vec![3; 8],
                trace_id: vec![4; 16],
                value: Some(exemplar::Value::AsDouble(0.5)),
                ..Default::default()
            }]
        } else {
            Vec::new()
        },
        value: Some(number_data_point::Value::AsInt(i as i64)),
        ..Default::default()
    };
    let metrics = |r: usize| -> Vec<Metric> {
        vec![
            Metric {
                name: format!("gauge.{r}"),
                description: "a gauge".into(),
                unit: "1".into(),
                metadata: attributes(1, r),
                data: Some(metric::Data::Gauge(Gauge {
                    data_points: (0..points).map(number).collect(),
                })),
            },
            Metric {
                name: "sum".into(),
                data: Some(metric::Data::Sum(Sum {
                    data_points: (0..points).map(number).collect(),
                    aggregation_temporality: 2,
                    is_monotonic: true,
                })),
                ..Default::default()
            },
            Metric {
                name: "histogram".into(),
                data: Some(metric::Data::Histogram(Histogram {
                    data_points: (0..points)
                        .map(|i| HistogramDataPoint {
                            attributes: attributes(2, i),
                            count: 10,
                            bucket_counts: vec![1, 2, 3, 4, 0],
                            explicit_bounds: vec![0.1, 1.0, 10.0, 100.0],
                            sum: Some(3.5),
                            ..Default::default()
                        })
                        .collect(),
                    aggregation_temporality: 1,
                })),
                ..Default::default()
            },
            Metric {
                name: "exponential".into(),
                data: Some(metric::Data::ExponentialHistogram(ExponentialHistogram {
                    data_points: (0..points)
                        .map(|i| ExponentialHistogramDataPoint {
                            attributes: attributes(1, i),
                            scale: 3,
                            positive: Some(Buckets {
                                offset: -2,
                                bucket_counts: vec![1, 300, 70_000, 0, 5],
                            }),
                            negative: Some(Buckets {
                                offset: 0,
                                bucket_counts: vec![9],
                            }),
                            ..Default::default()
                        })
                        .collect(),
                    aggregation_temporality: 1,
                })),
                ..Default::default()
            },
            Metric {
                name: "summary".into(),
                data: Some(metric::Data::Summary(Summary {
                    data_points: (0..points)
                        .map(|i| SummaryDataPoint {
                            attributes: attributes(1, i),
                            quantile_values: vec![
                                ValueAtQuantile {
                                    quantile: 0.5,
                                    value: 1.0,
                                },
                                ValueAtQuantile {
                                    quantile: 0.99,
                                    value: 7.0,
                                },
                            ],
                            ..Default::default()
                        })
                        .collect(),
                })),
                ..Default::default()
            },
        ]
    };
    ExportMetricsServiceRequest {
        resource_metrics: (0..resources)
            .map(|r| ResourceMetrics {
                resource: resource(&format!("svc-{r}")),
                scope_metrics: vec![ScopeMetrics {
                    scope: scope("meter"),
                    metrics: metrics(r),
                    schema_url: String::new(),
                }],
                schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
            })
            .collect(),
    }
}

fn traces_request(spans: usize) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource("checkout"),
            scope_spans: vec![ScopeSpans {
                scope: scope("tracer"),
                spans: (0..spans)
                    .map(|i| Span {
                        trace_id: vec![i as u8 | 1; 16],
                        span_id: vec![2; 8],
                        parent_span_id: if i.is_multiple_of(2) {
                            vec![3; 8]
                        } else {
                            Vec::new()
                        },
                        name: format!("GET /api/{i}"),
                        kind: 2,
                        start_time_unix_nano: 1,
                        end_time_unix_nano: 2,
                        attributes: attributes(6, i),
                        events: vec![Event {
                            name: "exception".into(),
                            attributes: attributes(2, i),
                            ..Default::default()
                        }],
                        links: if i.is_multiple_of(4) {
                            vec![Link {
                                trace_id: vec![5; 16],
                                span_id: vec![6; 8],
                                trace_state: "k=v".into(),
                                ..Default::default()
                            }]
                        } else {
                            Vec::new()
                        },
                        status: Some(Status {
                            message: "oops \"quoted\" \u{e9}".into(),
                            code: 2,
                        }),
                        ..Default::default()
                    })
                    .collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// The bound holds the decoded size and, for requests of usual shapes, is within 4x of it.
fn assert_close(what: &str, estimate: usize, held: usize) {
    assert!(held > 0, "{what}: nothing decoded");
    assert!(
        estimate >= held,
        "{what}: estimate {estimate} < decoded {held}"
    );
    assert!(
        estimate <= 4 * held,
        "{what}: estimate {estimate} over 4x the decoded {held}"
    );
}

#[test]
fn logs_estimate_bounds_the_decoded_size() {
    for (resources, scopes, records) in [(1, 1, 1), (1, 1, 5), (3, 2, 50), (2, 3, 400), (20, 1, 3)]
    {
        let body = logs_request(resources, scopes, records).encode_to_vec();
        let estimate = logs_request_decoded_size(&body).unwrap();
        let (decoded, held) = held_by(|| ExportLogsServiceRequest::decode(&body[..]).unwrap());
        assert_close(
            &format!("logs {resources}x{scopes}x{records}"),
            estimate,
            held,
        );
        drop(decoded);
    }
}

#[test]
fn metrics_estimate_bounds_the_decoded_size() {
    for (resources, points) in [(1, 1), (1, 9), (4, 30), (10, 200)] {
        let body = metrics_request(resources, points).encode_to_vec();
        let estimate = metrics_request_decoded_size(&body).unwrap();
        let (decoded, held) = held_by(|| ExportMetricsServiceRequest::decode(&body[..]).unwrap());
        assert_close(&format!("metrics {resources}x{points}"), estimate, held);
        drop(decoded);
    }
}

#[test]
fn fields_repeated_out_of_order_and_merged_messages_stay_bounded() {
    // A resource sent twice (prost merges the second into the first), a scope's records
    // interleaved with its other fields, and unknown fields of every wire type.
    let one = logs_request(1, 1, 3);
    let mut body = one.encode_to_vec();
    body.extend_from_slice(&one.encode_to_vec());
    let mut rl = Vec::new();
    let resource = resource("again").unwrap().encode_to_vec();
    for _ in 0..3 {
        rl.push(0x0a);
        prost::encoding::encode_varint(resource.len() as u64, &mut rl);
        rl.extend_from_slice(&resource);
    }
    // Unknown fields: 15 varint, 16 fixed64, 17 group holding a varint, 18 fixed32.
    rl.extend_from_slice(&[0x78, 0x96, 0x01]);
    rl.extend_from_slice(&[0x81, 0x01, 1, 2, 3, 4, 5, 6, 7, 8]);
    rl.extend_from_slice(&[0x8b, 0x01, 0x08, 0x01, 0x8c, 0x01]);
    rl.extend_from_slice(&[0x95, 0x01, 1, 2, 3, 4]);
    body.push(0x0a);
    prost::encoding::encode_varint(rl.len() as u64, &mut body);
    body.extend_from_slice(&rl);
    let estimate = logs_request_decoded_size(&body).unwrap();
    let (decoded, held) = held_by(|| ExportLogsServiceRequest::decode(&body[..]).unwrap());
    assert_eq!(decoded.resource_logs.len(), 3);
    assert!(estimate >= held, "estimate {estimate} < decoded {held}");
}

#[test]
fn bodies_prost_refuses_are_refused() {
    let body = logs_request(1, 1, 3).encode_to_vec();
    for cut in [1, 5, body.len() / 2, body.len() - 1] {
        let truncated = &body[..cut];
        assert!(ExportLogsServiceRequest::decode(truncated).is_err());
        assert!(
            logs_request_decoded_size(truncated).is_err(),
            "cut at {cut}"
        );
    }
    // A message field with a varint wire type.
    assert!(metrics_request_decoded_size(&[0x08, 0x01]).is_err());
    // Nested deeper than prost allows: arrays of arrays.
    let mut value = Vec::new();
    for _ in 0..120 {
        let mut outer = vec![0x2a];
        let mut array = vec![0x0a];
        prost::encoding::encode_varint(value.len() as u64, &mut array);
        array.extend_from_slice(&value);
        prost::encoding::encode_varint(array.len() as u64, &mut outer);
        outer.extend_from_slice(&array);
        value = outer;
    }
    let record = [vec![0x2a], varint(value.len()), value].concat();
    let scope = [vec![0x12], varint(record.len()), record].concat();
    let resource = [vec![0x12], varint(scope.len()), scope].concat();
    let body = [vec![0x0a], varint(resource.len()), resource].concat();
    assert!(ExportLogsServiceRequest::decode(&body[..]).is_err());
    let err = logs_request_decoded_size(&body).unwrap_err();
    assert_eq!(err.reason(), "recursion limit reached");
}

fn varint(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_varint(n as u64, &mut out);
    out
}

/// A request whose one scope holds `n` empty elements (2 bytes each on the wire): log
/// records (`ScopeLogs.log_records`, 2) or metrics (`ScopeMetrics.metrics`, 2).
fn empty_elements(n: usize) -> Vec<u8> {
    let elements = b"\x12\x00".repeat(n);
    // ResourceX.scope_x (2) holding the scope, in Export*Request.resource_x (1).
    let resource = [vec![0x12], varint(elements.len()), elements].concat();
    [vec![0x0a], varint(resource.len()), resource].concat()
}

#[test]
fn empty_log_records_are_estimated_at_their_decoded_size_quickly() {
    let body = empty_elements(30_000_000);
    let started = Instant::now();
    let logs = logs_request_decoded_size(&body).unwrap();
    let metrics = metrics_request_decoded_size(&body).unwrap();
    let took = started.elapsed();
    assert!(logs > 2_000_000_000, "{logs}");
    assert!(metrics > 2_000_000_000, "{metrics}");
    // Twice through 60 MB; an unoptimized build is allowed more.
    let allowed = if cfg!(debug_assertions) { 10 } else { 1 };
    assert!(took < Duration::from_secs(allowed * 2), "took {took:?}");

    // A small one, decoded, to check the estimate against the real thing.
    let body = empty_elements(10_000);
    let estimate = logs_request_decoded_size(&body).unwrap();
    let (decoded, held) = held_by(|| ExportLogsServiceRequest::decode(&body[..]).unwrap());
    assert_close("10,000 empty log records", estimate, held);
    drop(decoded);
}

#[test]
fn json_bound_holds_for_every_signal() {
    let mut out = Vec::new();
    for records in [1, 40, 500] {
        out.clear();
        let req = logs_request(2, 2, records);
        json::encode_logs_data(
            &LogsData {
                resource_logs: req.resource_logs,
            },
            &mut out,
        );
        let bound = json_decoded_size_bound(&out);
        let (decoded, held) = held_by(|| json::decode_logs_request(&out).unwrap());
        assert!(bound >= held, "logs: bound {bound} < decoded {held}");
        assert!(
            bound <= 4 * held + out.len(),
            "logs: bound {bound}, decoded {held}"
        );
        drop(decoded);
    }
    for points in [1, 50] {
        out.clear();
        let req = metrics_request(3, points);
        json::encode_metrics_data(
            &MetricsData {
                resource_metrics: req.resource_metrics,
            },
            &mut out,
        );
        let bound = json_decoded_size_bound(&out);
        let (decoded, held) = held_by(|| json::decode_metrics_request(&out).unwrap());
        assert!(bound >= held, "metrics: bound {bound} < decoded {held}");
        assert!(
            bound <= 4 * held + out.len(),
            "metrics: bound {bound}, decoded {held}"
        );
        drop(decoded);
    }
    for spans in [1, 30, 300] {
        out.clear();
        let req = traces_request(spans);
        json::encode_traces_data(
            &TracesData {
                resource_spans: req.resource_spans,
            },
            &mut out,
        );
        let bound = json_decoded_size_bound(&out);
        let (decoded, held) = held_by(|| json::decode_trace_request(&out).unwrap());
        assert!(bound >= held, "traces: bound {bound} < decoded {held}");
        assert!(
            bound <= 4 * held + out.len(),
            "traces: bound {bound}, decoded {held}"
        );
        drop(decoded);
    }
}

#[test]
fn json_bound_holds_for_escapes_snake_case_and_errors() {
    let bodies: [&[u8]; 6] = [
        // Escaped keys and values; snake_case names.
        br#"{"resource_spans":[{"scope_spans":[{"sp\u0061ns":[{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","name":"a\"b\\c\u00e9\ud83d\ude00"}]}]}]}"#,
        // Unknown keys holding arrays, nested arrays, whitespace.
        b"{ \"other\" : [[1,2],[3]], \"resourceLogs\" : [ { \"scopeLogs\" : [ { \"logRecords\" : [ {}, {}, {\"body\":{\"stringValue\":\"x\"}} ] } ] } ] }",
        // Truncated inside a list: what was decoded before the error is still bounded.
        br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{},{},{},{"attributes":[{"key":"k","value":{"stringValue":"v"}}"#,
        // Strings holding brackets and escaped quotes.
        br#"{"resourceLogs":[{"resource":{"attributes":[{"key":"[[[{{{","value":{"stringValue":"]]]\"}}}"}}]}}]}"#,
        // Base64 bytes and a histogram's numbers.
        br#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"h","histogram":{"dataPoints":[{"bucketCounts":["1",2,3],"explicitBounds":[0.5,1e3]}]}}]}]}]}"#,
        br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"bytesValue":"aGVsbG8gd29ybGQ"}}]}]}]}"#,
    ];
    for body in bodies {
        let bound = json_decoded_size_bound(body);
        let text = String::from_utf8_lossy(body).into_owned();
        let (_, traces) = held_by(|| json::decode_trace_request(body).ok());
        let (_, logs) = held_by(|| json::decode_logs_request(body).ok());
        let (_, metrics) = held_by(|| json::decode_metrics_request(body).ok());
        for held in [traces, logs, metrics] {
            assert!(bound >= held, "bound {bound} < {held} for {text}");
        }
    }
}

#[test]
fn json_of_empty_spans_is_bounded_at_gigabytes() {
    let n = 20_000_000;
    let mut body = br#"{"resourceSpans":[{"scopeSpans":[{"spans":["#.to_vec();
    body.extend_from_slice(&b"{},".repeat(n - 1));
    body.extend_from_slice(b"{}]}]}]}");
    let started = Instant::now();
    let bound = json_decoded_size_bound(&body);
    let took = started.elapsed();
    assert!(bound > 2_000_000_000, "{bound}");
    let allowed = if cfg!(debug_assertions) { 10 } else { 1 };
    assert!(took < Duration::from_secs(allowed), "took {took:?}");
}
