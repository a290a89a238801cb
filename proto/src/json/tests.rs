use prost::Message as _;
use serde_json::{Value, json};

use super::*;
use crate::otlp::collector::logs::v1::ExportLogsPartialSuccess;
use crate::otlp::collector::metrics::v1::ExportMetricsPartialSuccess;
use crate::otlp::collector::trace::v1::ExportTracePartialSuccess;
use crate::otlp::common::v1::{
    AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList,
    any_value::Value as V,
};
use crate::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use crate::otlp::metrics::v1::exponential_histogram_data_point::Buckets;
use crate::otlp::metrics::v1::summary_data_point::ValueAtQuantile;
use crate::otlp::metrics::v1::{
    Exemplar, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram,
    HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary,
    SummaryDataPoint, exemplar, metric::Data, number_data_point,
};
use crate::otlp::resource::v1::Resource;
use crate::otlp::trace::v1::span::{Event, Link};
use crate::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use crate::test_support::{kv, resource_metrics};

// ---------------------------------------------------------------------------------------------
// Fixtures: every field set, every AnyValue kind, values that stress the encoding.

fn any(v: V) -> AnyValue {
    AnyValue { value: Some(v) }
}

fn rich_attributes() -> Vec<KeyValue> {
    vec![
        kv(
            "str",
            V::StringValue("quote \" backslash \\ newline \n tab \t nul \0 é 😀".into()),
        ),
        kv("empty.str", V::StringValue(String::new())),
        kv("bool", V::BoolValue(true)),
        kv("bool.false", V::BoolValue(false)),
        kv("int", V::IntValue(i64::MIN)),
        kv("int.zero", V::IntValue(0)),
        kv("int.max", V::IntValue(i64::MAX)),
        kv("double", V::DoubleValue(-1.25e-300)),
        kv("double.zero", V::DoubleValue(0.0)),
        kv("double.big", V::DoubleValue(1.7976931348623157e308)),
        kv("bytes", V::BytesValue(vec![0, 1, 2, 0xfb, 0xff, 0xfe])),
        kv("bytes.empty", V::BytesValue(Vec::new())),
        kv(
            "array",
            V::ArrayValue(ArrayValue {
                values: vec![
                    any(V::StringValue("a".into())),
                    any(V::IntValue(7)),
                    AnyValue { value: None },
                    any(V::ArrayValue(ArrayValue {
                        values: vec![any(V::BoolValue(true))],
                    })),
                ],
            }),
        ),
        kv("array.empty", V::ArrayValue(ArrayValue::default())),
        kv(
            "kvlist",
            V::KvlistValue(KeyValueList {
                values: vec![
                    kv("nested", V::DoubleValue(2.5)),
                    KeyValue {
                        key: "no.value".into(),
                        value: None,
                        key_strindex: 0,
                    },
                    kv(
                        "deeper",
                        V::KvlistValue(KeyValueList {
                            values: vec![kv("x", V::IntValue(1))],
                        }),
                    ),
                ],
            }),
        ),
        KeyValue {
            key: "empty.any".into(),
            value: Some(AnyValue { value: None }),
            key_strindex: 0,
        },
        KeyValue {
            key: String::new(),
            value: Some(any(V::StringValueStrindex(5))),
            key_strindex: 3,
        },
    ]
}

fn rich_resource() -> Resource {
    Resource {
        attributes: vec![kv("service.name", V::StringValue("checkout".into()))],
        dropped_attributes_count: 2,
        entity_refs: vec![EntityRef {
            schema_url: "https://opentelemetry.io/schemas/1.30.0".into(),
            r#type: "service".into(),
            id_keys: vec!["service.name".into(), "service.namespace".into()],
            description_keys: vec!["service.version".into()],
        }],
    }
}

fn rich_scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "weir.test".into(),
        version: "1.2.3".into(),
        attributes: vec![kv("scope.attr", V::StringValue("s".into()))],
        dropped_attributes_count: 1,
    }
}

fn rich_traces() -> TracesData {
    let span = Span {
        trace_id: (1..=16).collect(),
        span_id: vec![0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 1],
        trace_state: "vendor=x,other=y".into(),
        parent_span_id: vec![0xab; 8],
        flags: 0x301,
        name: "GET /checkout".into(),
        kind: 2,
        start_time_unix_nano: 1_544_712_660_000_000_000,
        end_time_unix_nano: u64::MAX,
        attributes: rich_attributes(),
        dropped_attributes_count: 3,
        events: vec![Event {
            time_unix_nano: 1_544_712_660_500_000_000,
            name: "exception".into(),
            attributes: vec![kv("exception.message", V::StringValue("boom".into()))],
            dropped_attributes_count: 4,
        }],
        dropped_events_count: 5,
        links: vec![Link {
            trace_id: vec![0xff; 16],
            span_id: vec![0x11; 8],
            trace_state: "k=v".into(),
            attributes: vec![kv("link.attr", V::IntValue(-1))],
            dropped_attributes_count: 6,
            flags: 0x100,
        }],
        dropped_links_count: 7,
        status: Some(Status {
            message: "it failed".into(),
            code: 2,
        }),
    };
    let minimal = Span {
        trace_id: vec![2; 16],
        span_id: vec![3; 8],
        kind: 99, // unknown enum values are kept
        status: Some(Status::default()),
        ..Default::default()
    };
    TracesData {
        resource_spans: vec![
            ResourceSpans {
                resource: Some(rich_resource()),
                scope_spans: vec![
                    ScopeSpans {
                        scope: Some(rich_scope()),
                        spans: vec![span, minimal],
                        schema_url: "https://opentelemetry.io/schemas/1.21.0".into(),
                    },
                    ScopeSpans {
                        scope: None,
                        spans: vec![],
                        schema_url: String::new(),
                    },
                ],
                schema_url: "https://opentelemetry.io/schemas/1.24.0".into(),
            },
            ResourceSpans {
                resource: Some(Resource::default()),
                ..Default::default()
            },
        ],
    }
}

fn rich_exemplars() -> Vec<Exemplar> {
    vec![
        Exemplar {
            filtered_attributes: vec![kv("user", V::StringValue("u1".into()))],
            time_unix_nano: 17,
            span_id: vec![9; 8],
            trace_id: vec![8; 16],
            value: Some(exemplar::Value::AsDouble(0.0)),
        },
        Exemplar {
            value: Some(exemplar::Value::AsInt(-42)),
            ..Default::default()
        },
        Exemplar::default(),
    ]
}

fn rich_metrics() -> MetricsData {
    let number_points = vec![
        NumberDataPoint {
            attributes: vec![kv("host", V::StringValue("a".into()))],
            start_time_unix_nano: 1,
            time_unix_nano: 2,
            exemplars: rich_exemplars(),
            flags: 1,
            value: Some(number_data_point::Value::AsDouble(3.5)),
        },
        NumberDataPoint {
            value: Some(number_data_point::Value::AsInt(0)),
            ..Default::default()
        },
        NumberDataPoint {
            value: Some(number_data_point::Value::AsInt(i64::MIN)),
            ..Default::default()
        },
        NumberDataPoint {
            value: None,
            ..Default::default()
        },
    ];
    let metrics = vec![
        Metric {
            name: "gauge".into(),
            description: "a gauge".into(),
            unit: "1".into(),
            metadata: vec![kv("meta", V::BoolValue(true))],
            data: Some(Data::Gauge(Gauge {
                data_points: number_points.clone(),
            })),
        },
        Metric {
            name: "sum".into(),
            data: Some(Data::Sum(Sum {
                data_points: number_points,
                aggregation_temporality: 2,
                is_monotonic: true,
            })),
            ..Default::default()
        },
        Metric {
            name: "histogram".into(),
            unit: "ms".into(),
            data: Some(Data::Histogram(Histogram {
                data_points: vec![
                    HistogramDataPoint {
                        attributes: vec![kv("route", V::StringValue("/".into()))],
                        start_time_unix_nano: 10,
                        time_unix_nano: 20,
                        count: 6,
                        sum: Some(0.0),
                        bucket_counts: vec![1, 0, 5, u64::MAX],
                        explicit_bounds: vec![-1.5, 0.0, 1e21],
                        exemplars: rich_exemplars(),
                        flags: 1,
                        min: Some(-2.0),
                        max: Some(1e-7),
                    },
                    HistogramDataPoint::default(),
                ],
                aggregation_temporality: 1,
            })),
            ..Default::default()
        },
        Metric {
            name: "exponential".into(),
            data: Some(Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![
                    ExponentialHistogramDataPoint {
                        attributes: vec![kv("k", V::IntValue(1))],
                        start_time_unix_nano: 100,
                        time_unix_nano: 200,
                        count: 12,
                        sum: Some(33.25),
                        scale: -3,
                        zero_count: 2,
                        positive: Some(Buckets {
                            offset: -2,
                            bucket_counts: vec![1, 2, 3],
                        }),
                        negative: Some(Buckets::default()),
                        flags: 1,
                        exemplars: rich_exemplars(),
                        min: Some(0.0),
                        max: Some(9.5),
                        zero_threshold: 1e-9,
                    },
                    ExponentialHistogramDataPoint::default(),
                ],
                aggregation_temporality: 2,
            })),
            ..Default::default()
        },
        Metric {
            name: "summary".into(),
            data: Some(Data::Summary(Summary {
                data_points: vec![SummaryDataPoint {
                    attributes: vec![kv("k", V::StringValue("v".into()))],
                    start_time_unix_nano: 5,
                    time_unix_nano: 6,
                    count: 7,
                    sum: 8.5,
                    quantile_values: vec![
                        ValueAtQuantile {
                            quantile: 0.0,
                            value: 1.0,
                        },
                        ValueAtQuantile {
                            quantile: 0.99,
                            value: 0.0,
                        },
                        ValueAtQuantile {
                            quantile: 1.0,
                            value: 123.0,
                        },
                    ],
                    flags: 1,
                }],
            })),
            ..Default::default()
        },
        Metric {
            name: "no.data".into(),
            ..Default::default()
        },
    ];
    MetricsData {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(rich_resource()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(rich_scope()),
                metrics,
                schema_url: "https://opentelemetry.io/schemas/1.21.0".into(),
            }],
            schema_url: "https://opentelemetry.io/schemas/1.24.0".into(),
        }],
    }
}

fn rich_logs() -> LogsData {
    LogsData {
        resource_logs: vec![ResourceLogs {
            resource: Some(rich_resource()),
            scope_logs: vec![ScopeLogs {
                scope: Some(rich_scope()),
                log_records: vec![
                    LogRecord {
                        time_unix_nano: 1_544_712_660_300_000_000,
                        observed_time_unix_nano: 1_544_712_660_300_000_001,
                        severity_number: 17,
                        severity_text: "ERROR".into(),
                        body: Some(any(V::KvlistValue(KeyValueList {
                            values: vec![kv("msg", V::StringValue("disk full".into()))],
                        }))),
                        attributes: rich_attributes(),
                        dropped_attributes_count: 1,
                        flags: 1,
                        trace_id: vec![0x5b; 16],
                        span_id: vec![0xee; 8],
                        event_name: "device.app.lifecycle".into(),
                    },
                    LogRecord {
                        body: Some(AnyValue { value: None }),
                        ..Default::default()
                    },
                    LogRecord::default(),
                ],
                schema_url: "https://opentelemetry.io/schemas/1.21.0".into(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn encoded<T>(data: &T, encode: fn(&T, &mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    encode(data, &mut out);
    out
}

fn parsed(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("the encoder must write valid JSON")
}

/// Renames every object key of the encoder's output from lowerCamelCase to the proto field
/// name. Textual, because re-serializing a `serde_json::Value` would change doubles (its
/// default float parsing is not correctly rounded).
fn to_snake_case(json: &[u8]) -> String {
    let text = std::str::from_utf8(json).unwrap();
    let mut out = String::with_capacity(text.len() + 256);
    let mut rest = text;
    while let Some(start) = rest.find('"') {
        out.push_str(&rest[..=start]);
        rest = &rest[start + 1..];
        let len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        // A key is a quoted identifier followed by a colon; a string value never is.
        if len > 0 && rest[len..].starts_with("\":") {
            for c in rest[..len].chars() {
                if c.is_ascii_uppercase() {
                    out.push('_');
                    out.push(c.to_ascii_lowercase());
                } else {
                    out.push(c);
                }
            }
            out.push_str("\":");
            rest = &rest[len + 2..];
        } else {
            // Inside a string value: copy through its closing quote.
            let mut escaped = false;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    let closing = c == '"' && !escaped;
                    escaped = c == '\\' && !escaped;
                    closing
                })
                .map(|(i, _)| i)
                .unwrap();
            out.push_str(&rest[..=end]);
            rest = &rest[end + 1..];
        }
    }
    out.push_str(rest);
    out
}

fn trace_error(body: &str) -> JsonError {
    decode_trace_request(body.as_bytes()).expect_err("the body must be rejected")
}

// ---------------------------------------------------------------------------------------------
// Round trips.

#[test]
fn traces_round_trip() {
    let data = rich_traces();
    let json = encoded(&data, encode_traces_data);
    let back = TracesData {
        resource_spans: decode_trace_request(&json).unwrap().resource_spans,
    };
    assert_eq!(back, data);
    assert_eq!(back.encode_to_vec(), data.encode_to_vec());
}

#[test]
fn metrics_round_trip() {
    let data = rich_metrics();
    let json = encoded(&data, encode_metrics_data);
    let back = MetricsData {
        resource_metrics: decode_metrics_request(&json).unwrap().resource_metrics,
    };
    assert_eq!(back, data);
    assert_eq!(back.encode_to_vec(), data.encode_to_vec());
}

#[test]
fn logs_round_trip() {
    let data = rich_logs();
    let json = encoded(&data, encode_logs_data);
    let back = LogsData {
        resource_logs: decode_logs_request(&json).unwrap().resource_logs,
    };
    assert_eq!(back, data);
    assert_eq!(back.encode_to_vec(), data.encode_to_vec());
}

#[test]
fn snake_case_keys_round_trip() {
    let traces = rich_traces();
    let snake = to_snake_case(&encoded(&traces, encode_traces_data));
    assert!(snake.contains("\"start_time_unix_nano\":") && !snake.contains("Nano\""));
    let back = decode_trace_request(snake.as_bytes()).unwrap();
    assert_eq!(back.resource_spans, traces.resource_spans);

    let metrics = rich_metrics();
    let snake = to_snake_case(&encoded(&metrics, encode_metrics_data));
    assert!(snake.contains("\"exponential_histogram\":") && !snake.contains("Points\""));
    let back = decode_metrics_request(snake.as_bytes()).unwrap();
    assert_eq!(back.resource_metrics, metrics.resource_metrics);

    let logs = rich_logs();
    let snake = to_snake_case(&encoded(&logs, encode_logs_data));
    assert!(snake.contains("\"observed_time_unix_nano\":") && !snake.contains("Records\""));
    let back = decode_logs_request(snake.as_bytes()).unwrap();
    assert_eq!(back.resource_logs, logs.resource_logs);
}

#[test]
fn doubles_round_trip_exactly() {
    // Pseudo-random doubles across magnitudes; serde_json's default parser gets about one in
    // ten of these wrong by one ulp, so this fails if decoding goes through it.
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut bounds = Vec::new();
    for i in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
        bounds.push(unit * 10f64.powi(i % 40 - 20));
    }
    bounds.extend([
        994.1414234139935,
        -1.25e-300,
        5e-324,
        f64::MAX,
        f64::MIN_POSITIVE,
        0.1 + 0.2,
    ]);
    let data = MetricsData {
        resource_metrics: vec![resource_metrics(
            None,
            None,
            vec![Metric {
                data: Some(Data::Histogram(Histogram {
                    data_points: vec![HistogramDataPoint {
                        explicit_bounds: bounds.clone(),
                        ..Default::default()
                    }],
                    aggregation_temporality: 0,
                })),
                ..Default::default()
            }],
        )],
    };
    let back = decode_metrics_request(&encoded(&data, encode_metrics_data)).unwrap();
    let Some(Data::Histogram(h)) = &back.resource_metrics[0].scope_metrics[0].metrics[0].data
    else {
        panic!("expected a histogram")
    };
    let decoded = &h.data_points[0].explicit_bounds;
    assert_eq!(decoded.len(), bounds.len());
    for (got, want) in decoded.iter().zip(&bounds) {
        assert_eq!(
            got.to_bits(),
            want.to_bits(),
            "{want:?} came back as {got:?}"
        );
    }
}

#[test]
fn non_finite_doubles_round_trip() {
    let point = |v: f64| NumberDataPoint {
        value: Some(number_data_point::Value::AsDouble(v)),
        ..Default::default()
    };
    let data = MetricsData {
        resource_metrics: vec![resource_metrics(
            None,
            None,
            vec![Metric {
                data: Some(Data::Gauge(Gauge {
                    data_points: vec![
                        point(f64::NAN),
                        point(f64::INFINITY),
                        point(f64::NEG_INFINITY),
                        point(-0.0),
                    ],
                })),
                ..Default::default()
            }],
        )],
    };
    let json = encoded(&data, encode_metrics_data);
    let points = &parsed(&json)["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["gauge"]["dataPoints"];
    assert_eq!(points[0]["asDouble"], "NaN");
    assert_eq!(points[1]["asDouble"], "Infinity");
    assert_eq!(points[2]["asDouble"], "-Infinity");
    let back = decode_metrics_request(&json).unwrap();
    // NaN != NaN, so compare the protobuf encodings.
    assert_eq!(back.encode_to_vec(), data.encode_to_vec());
    let Some(Data::Gauge(g)) = &back.resource_metrics[0].scope_metrics[0].metrics[0].data else {
        panic!("expected a gauge");
    };
    let values: Vec<f64> = g
        .data_points
        .iter()
        .map(|p| match p.value {
            Some(number_data_point::Value::AsDouble(v)) => v,
            ref other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert!(values[0].is_nan());
    assert_eq!(values[1], f64::INFINITY);
    assert_eq!(values[2], f64::NEG_INFINITY);
    assert!(values[3] == 0.0 && values[3].is_sign_negative());
}

// ---------------------------------------------------------------------------------------------
// The encoder's exact form.

#[test]
fn encoded_traces_follow_proto3_json() {
    let json = parsed(&encoded(&rich_traces(), encode_traces_data));
    let span = &json["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
    assert_eq!(span["traceId"], "0102030405060708090a0b0c0d0e0f10");
    assert_eq!(span["spanId"], "deadbeef00000001");
    assert_eq!(span["startTimeUnixNano"], "1544712660000000000");
    assert_eq!(span["endTimeUnixNano"], "18446744073709551615");
    assert_eq!(span["kind"], 2);
    assert_eq!(span["flags"], 0x301);
    assert_eq!(span["droppedLinksCount"], 7);
    assert_eq!(span["status"], json!({"message": "it failed", "code": 2}));
    assert_eq!(span["events"][0]["timeUnixNano"], "1544712660500000000");
    assert_eq!(
        span["links"][0]["traceId"],
        "ffffffffffffffffffffffffffffffff"
    );

    let attrs = span["attributes"].as_array().unwrap();
    let attr = |key: &str| &attrs.iter().find(|a| a["key"] == key).unwrap()["value"];
    assert_eq!(
        attr("str")["stringValue"],
        "quote \" backslash \\ newline \n tab \t nul \0 é 😀"
    );
    // Set oneof members are written even when they hold the default value.
    assert_eq!(*attr("empty.str"), json!({"stringValue": ""}));
    assert_eq!(*attr("bool.false"), json!({"boolValue": false}));
    assert_eq!(*attr("int.zero"), json!({"intValue": "0"}));
    assert_eq!(*attr("int"), json!({"intValue": "-9223372036854775808"}));
    assert_eq!(*attr("double.zero"), json!({"doubleValue": 0.0}));
    assert_eq!(*attr("bytes"), json!({"bytesValue": "AAEC+//+"}));
    assert_eq!(*attr("bytes.empty"), json!({"bytesValue": ""}));
    assert_eq!(*attr("array.empty"), json!({"arrayValue": {}}));
    assert_eq!(*attr("empty.any"), json!({}));
    assert_eq!(
        attr("kvlist")["kvlistValue"]["values"][1],
        json!({"key": "no.value"})
    );

    // Defaults are omitted.
    let minimal = &json["resourceSpans"][0]["scopeSpans"][0]["spans"][1];
    assert_eq!(
        *minimal,
        json!({
            "traceId": "02020202020202020202020202020202",
            "spanId": "0303030303030303",
            "kind": 99,
            "status": {}
        })
    );
    assert_eq!(json["resourceSpans"][0]["scopeSpans"][1], json!({}));
    assert_eq!(json["resourceSpans"][1], json!({"resource": {}}));
}

#[test]
fn encoded_metrics_follow_proto3_json() {
    let json = parsed(&encoded(&rich_metrics(), encode_metrics_data));
    let metrics = &json["resourceMetrics"][0]["scopeMetrics"][0]["metrics"];
    let point = &metrics[0]["gauge"]["dataPoints"][0];
    assert_eq!(point["timeUnixNano"], "2");
    assert_eq!(point["asDouble"], 3.5);
    assert_eq!(point["exemplars"][0]["asDouble"], 0.0);
    assert_eq!(
        point["exemplars"][0]["traceId"],
        "08080808080808080808080808080808"
    );
    assert_eq!(point["exemplars"][1], json!({"asInt": "-42"}));
    assert_eq!(metrics[0]["gauge"]["dataPoints"][1], json!({"asInt": "0"}));
    assert_eq!(metrics[1]["sum"]["aggregationTemporality"], 2);
    assert_eq!(metrics[1]["sum"]["isMonotonic"], true);
    let h = &metrics[2]["histogram"]["dataPoints"][0];
    assert_eq!(h["count"], "6");
    assert_eq!(h["sum"], 0.0);
    assert_eq!(
        h["bucketCounts"],
        json!(["1", "0", "5", "18446744073709551615"])
    );
    assert_eq!(h["explicitBounds"], json!([-1.5, 0.0, 1e21]));
    assert_eq!(h["max"], 1e-7);
    assert_eq!(metrics[2]["histogram"]["dataPoints"][1], json!({}));
    let e = &metrics[3]["exponentialHistogram"]["dataPoints"][0];
    assert_eq!(e["scale"], -3);
    assert_eq!(e["zeroCount"], "2");
    assert_eq!(
        e["positive"],
        json!({"offset": -2, "bucketCounts": ["1", "2", "3"]})
    );
    assert_eq!(e["negative"], json!({}));
    assert_eq!(e["min"], 0.0);
    assert_eq!(e["zeroThreshold"], 1e-9);
    let s = &metrics[4]["summary"]["dataPoints"][0];
    assert_eq!(s["quantileValues"][0], json!({"value": 1.0}));
    assert_eq!(s["quantileValues"][1], json!({"quantile": 0.99}));
    assert_eq!(metrics[5], json!({"name": "no.data"}));
}

#[test]
fn encoded_logs_follow_proto3_json() {
    let json = parsed(&encoded(&rich_logs(), encode_logs_data));
    let records = &json["resourceLogs"][0]["scopeLogs"][0]["logRecords"];
    assert_eq!(records[0]["timeUnixNano"], "1544712660300000000");
    assert_eq!(records[0]["observedTimeUnixNano"], "1544712660300000001");
    assert_eq!(records[0]["severityNumber"], 17);
    assert_eq!(records[0]["traceId"], "5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b");
    assert_eq!(records[0]["eventName"], "device.app.lifecycle");
    assert_eq!(records[0]["body"]["kvlistValue"]["values"][0]["key"], "msg");
    assert_eq!(records[1], json!({"body": {}}));
    assert_eq!(records[2], json!({}));
    assert_eq!(
        json["resourceLogs"][0]["scopeLogs"][0]["scope"]["droppedAttributesCount"],
        1
    );
}

#[test]
fn doubles_use_the_shortest_json_number() {
    let mut out = Vec::new();
    for v in [0.1, 1.0, -2.5, 1e300, 1e-300, 123456789.125, 5e-324] {
        out.clear();
        super::encode::write_f64(&mut out, v);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.len() <= 24, "{text} is too long");
        assert_eq!(serde_json::from_str::<f64>(text).unwrap(), v, "{text}");
    }
}

#[test]
fn responses_carry_partial_success() {
    let mut out = Vec::new();
    encode_trace_response(&ExportTraceServiceResponse::default(), &mut out);
    assert_eq!(out, b"{}");

    out.clear();
    let r = ExportTraceServiceResponse {
        partial_success: Some(ExportTracePartialSuccess {
            rejected_spans: 5,
            error_message: "5 spans had invalid \"ids\"".into(),
        }),
    };
    encode_trace_response(&r, &mut out);
    assert_eq!(
        parsed(&out),
        json!({"partialSuccess": {"rejectedSpans": "5", "errorMessage": "5 spans had invalid \"ids\""}})
    );

    out.clear();
    let r = ExportMetricsServiceResponse {
        partial_success: Some(ExportMetricsPartialSuccess {
            rejected_data_points: 2,
            error_message: String::new(),
        }),
    };
    encode_metrics_response(&r, &mut out);
    assert_eq!(
        parsed(&out),
        json!({"partialSuccess": {"rejectedDataPoints": "2"}})
    );

    out.clear();
    let r = ExportLogsServiceResponse {
        partial_success: Some(ExportLogsPartialSuccess {
            rejected_log_records: 0,
            error_message: "slow down".into(),
        }),
    };
    encode_logs_response(&r, &mut out);
    assert_eq!(
        parsed(&out),
        json!({"partialSuccess": {"errorMessage": "slow down"}})
    );
}

#[test]
fn status_renders_retry_info_and_other_details() {
    use crate::rpc::{self, prost_types_any::Any};

    let mut out = Vec::new();
    let s = rpc::Status::new(rpc::code::UNAVAILABLE, "queue full")
        .with_retry_after(std::time::Duration::from_secs(1));
    encode_status(&s, &mut out);
    assert_eq!(
        parsed(&out),
        json!({
            "code": 14,
            "message": "queue full",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}]
        })
    );

    out.clear();
    let mut s = rpc::Status::new(rpc::code::INVALID_ARGUMENT, "bad trace id")
        .with_retry_after(std::time::Duration::from_millis(1500))
        .with_retry_after(std::time::Duration::from_nanos(2_000_000_007));
    s.details.push(Any {
        type_url: "type.example/Other".into(),
        value: vec![1, 2, 3],
    });
    encode_status(&s, &mut out);
    let json = parsed(&out);
    assert_eq!(json["code"], 3);
    assert_eq!(json["details"][0]["retryDelay"], "1.500s");
    assert_eq!(json["details"][1]["retryDelay"], "2.000000007s");
    assert_eq!(
        json["details"][2],
        json!({"@type": "type.example/Other", "value": "AQID"})
    );

    out.clear();
    encode_status(&rpc::Status::new(rpc::code::INTERNAL, ""), &mut out);
    assert_eq!(out, br#"{"code":13}"#);
}

#[test]
fn encoding_appends_to_the_buffer() {
    let mut out = b"prefix".to_vec();
    encode_logs_data(&LogsData::default(), &mut out);
    assert_eq!(out, b"prefix{}");
}

// ---------------------------------------------------------------------------------------------
// Decoding what senders write.

const SPEC_TRACE: &str = r#"{
  "resourceSpans": [
    {
      "resource": {
        "attributes": [
          { "key": "service.name", "value": { "stringValue": "my.service" } }
        ]
      },
      "scopeSpans": [
        {
          "scope": {
            "name": "my.library",
            "version": "1.0.0",
            "attributes": [
              { "key": "my.scope.attribute", "value": { "stringValue": "some scope attribute" } }
            ]
          },
          "spans": [
            {
              "traceId": "5B8EFFF798038103D269B633813FC60C",
              "spanId": "EEE19B7EC3C1B174",
              "parentSpanId": "EEE19B7EC3C1B173",
              "name": "I'm a server span",
              "startTimeUnixNano": "1544712660000000000",
              "endTimeUnixNano": "1544712661000000000",
              "kind": 2,
              "attributes": [
                { "key": "my.span.attr", "value": { "stringValue": "some value" } },
                { "key": "retries", "value": { "intValue": "3" } },
                { "key": "ratio", "value": { "doubleValue": 0.5 } },
                { "key": "ok", "value": { "boolValue": true } },
                { "key": "tags", "value": { "arrayValue": { "values": [ { "stringValue": "a" } ] } } }
              ],
              "events": [
                { "timeUnixNano": "1544712660500000000", "name": "cache.miss" }
              ],
              "links": [
                { "traceId": "5b8efff798038103d269b633813fc60d", "spanId": "eee19b7ec3c1b175" }
              ],
              "status": { "code": 2, "message": "boom" }
            }
          ]
        }
      ]
    }
  ]
}"#;

#[test]
fn decodes_the_spec_trace_example() {
    let req = decode_trace_request(SPEC_TRACE.as_bytes()).unwrap();
    let rs = &req.resource_spans[0];
    assert_eq!(
        rs.resource.as_ref().unwrap().attributes[0],
        kv("service.name", V::StringValue("my.service".into()))
    );
    let ss = &rs.scope_spans[0];
    assert_eq!(ss.scope.as_ref().unwrap().name, "my.library");
    assert_eq!(ss.scope.as_ref().unwrap().version, "1.0.0");
    let span = &ss.spans[0];
    assert_eq!(
        hex::encode(&span.trace_id),
        "5b8efff798038103d269b633813fc60c"
    );
    assert_eq!(
        span.span_id,
        [0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74]
    );
    assert_eq!(hex::encode(&span.parent_span_id), "eee19b7ec3c1b173");
    assert_eq!(span.name, "I'm a server span");
    assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
    assert_eq!(span.end_time_unix_nano, 1_544_712_661_000_000_000);
    assert_eq!(span.kind, 2);
    assert_eq!(span.attributes[1], kv("retries", V::IntValue(3)));
    assert_eq!(span.attributes[2], kv("ratio", V::DoubleValue(0.5)));
    assert_eq!(span.attributes[3], kv("ok", V::BoolValue(true)));
    assert_eq!(
        span.attributes[4],
        kv(
            "tags",
            V::ArrayValue(ArrayValue {
                values: vec![any(V::StringValue("a".into()))]
            })
        )
    );
    assert_eq!(span.events[0].time_unix_nano, 1_544_712_660_500_000_000);
    assert_eq!(span.events[0].name, "cache.miss");
    assert_eq!(hex::encode(&span.links[0].span_id), "eee19b7ec3c1b175");
    assert_eq!(
        span.status,
        Some(Status {
            message: "boom".into(),
            code: 2
        })
    );
}

const SPEC_METRICS: &str = r#"{
  "resourceMetrics": [
    {
      "resource": {
        "attributes": [ { "key": "service.name", "value": { "stringValue": "my.service" } } ]
      },
      "scopeMetrics": [
        {
          "scope": { "name": "my.library", "version": "1.0.0" },
          "metrics": [
            {
              "name": "my.counter",
              "unit": "1",
              "description": "I am a Counter",
              "sum": {
                "aggregationTemporality": 1,
                "isMonotonic": true,
                "dataPoints": [
                  {
                    "asDouble": 5,
                    "startTimeUnixNano": "1544712660300000000",
                    "timeUnixNano": "1544712660300000000",
                    "attributes": [ { "key": "my.counter.attr", "value": { "stringValue": "some value" } } ]
                  }
                ]
              }
            },
            {
              "name": "my.gauge",
              "unit": "1",
              "description": "I am a Gauge",
              "gauge": {
                "dataPoints": [ { "asInt": "10", "timeUnixNano": "1544712660300000000" } ]
              }
            },
            {
              "name": "my.histogram",
              "unit": "1",
              "description": "I am a Histogram",
              "histogram": {
                "aggregationTemporality": 1,
                "dataPoints": [
                  {
                    "startTimeUnixNano": "1544712660300000000",
                    "timeUnixNano": "1544712660300000000",
                    "count": 2,
                    "sum": 2,
                    "bucketCounts": [1, "1"],
                    "explicitBounds": [1],
                    "min": 0,
                    "max": 2
                  }
                ]
              }
            },
            {
              "name": "my.exponential.histogram",
              "exponentialHistogram": {
                "aggregationTemporality": 1,
                "dataPoints": [
                  {
                    "timeUnixNano": "1544712660300000000",
                    "count": "3",
                    "sum": 10,
                    "scale": 0,
                    "zeroCount": 1,
                    "positive": { "offset": 1, "bucketCounts": [0, 2] },
                    "min": 0,
                    "max": 5,
                    "zeroThreshold": 0
                  }
                ]
              }
            },
            {
              "name": "my.summary",
              "summary": {
                "dataPoints": [
                  {
                    "timeUnixNano": "1544712660300000000",
                    "count": "2",
                    "sum": 3.5,
                    "quantileValues": [ { "quantile": 0.5, "value": 1.5 }, { "quantile": 1, "value": 2 } ]
                  }
                ]
              }
            }
          ]
        }
      ]
    }
  ]
}"#;

#[test]
fn decodes_the_spec_metrics_example() {
    let req = decode_metrics_request(SPEC_METRICS.as_bytes()).unwrap();
    let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
    assert_eq!(metrics.len(), 5);
    assert_eq!(metrics[0].name, "my.counter");
    assert_eq!(metrics[0].description, "I am a Counter");
    let Some(Data::Sum(sum)) = &metrics[0].data else {
        panic!("expected a sum")
    };
    assert_eq!(sum.aggregation_temporality, 1);
    assert!(sum.is_monotonic);
    assert_eq!(
        sum.data_points[0].value,
        Some(number_data_point::Value::AsDouble(5.0))
    );
    assert_eq!(
        sum.data_points[0].start_time_unix_nano,
        1_544_712_660_300_000_000
    );
    assert_eq!(sum.data_points[0].attributes[0].key, "my.counter.attr");

    let Some(Data::Gauge(gauge)) = &metrics[1].data else {
        panic!("expected a gauge")
    };
    assert_eq!(
        gauge.data_points[0].value,
        Some(number_data_point::Value::AsInt(10))
    );

    let Some(Data::Histogram(h)) = &metrics[2].data else {
        panic!("expected a histogram")
    };
    let p = &h.data_points[0];
    assert_eq!(
        (p.count, p.sum, p.min, p.max),
        (2, Some(2.0), Some(0.0), Some(2.0))
    );
    assert_eq!(p.bucket_counts, [1, 1]);
    assert_eq!(p.explicit_bounds, [1.0]);

    let Some(Data::ExponentialHistogram(e)) = &metrics[3].data else {
        panic!("expected an exponential histogram")
    };
    let p = &e.data_points[0];
    assert_eq!((p.count, p.zero_count, p.scale), (3, 1, 0));
    assert_eq!(
        p.positive,
        Some(Buckets {
            offset: 1,
            bucket_counts: vec![0, 2]
        })
    );
    assert_eq!(p.negative, None);
    assert_eq!((p.min, p.max, p.sum), (Some(0.0), Some(5.0), Some(10.0)));

    let Some(Data::Summary(s)) = &metrics[4].data else {
        panic!("expected a summary")
    };
    let p = &s.data_points[0];
    assert_eq!((p.count, p.sum), (2, 3.5));
    assert_eq!(
        p.quantile_values[1],
        ValueAtQuantile {
            quantile: 1.0,
            value: 2.0
        }
    );
}

const SPEC_LOGS: &str = r#"{
  "resourceLogs": [
    {
      "resource": {
        "attributes": [ { "key": "service.name", "value": { "stringValue": "my.service" } } ]
      },
      "scopeLogs": [
        {
          "scope": { "name": "my.library", "version": "1.0.0" },
          "logRecords": [
            {
              "timeUnixNano": "1544712660300000000",
              "observedTimeUnixNano": "1544712660300000000",
              "severityNumber": 10,
              "severityText": "Information",
              "traceId": "5B8EFFF798038103D269B633813FC60C",
              "spanId": "EEE19B7EC3C1B174",
              "eventName": "app.started",
              "body": { "stringValue": "Example log record" },
              "attributes": [
                { "key": "string.attribute", "value": { "stringValue": "some string" } },
                { "key": "boolean.attribute", "value": { "boolValue": true } },
                { "key": "int.attribute", "value": { "intValue": "10" } },
                { "key": "double.attribute", "value": { "doubleValue": 637.704 } },
                { "key": "array.attribute", "value": { "arrayValue": { "values": [ { "stringValue": "many" }, { "stringValue": "values" } ] } } },
                { "key": "map.attribute", "value": { "kvlistValue": { "values": [ { "key": "some.map.key", "value": { "stringValue": "some value" } } ] } } }
              ]
            }
          ]
        }
      ]
    }
  ]
}"#;

#[test]
fn decodes_the_spec_logs_example() {
    let req = decode_logs_request(SPEC_LOGS.as_bytes()).unwrap();
    let r = &req.resource_logs[0].scope_logs[0].log_records[0];
    assert_eq!(r.time_unix_nano, 1_544_712_660_300_000_000);
    assert_eq!(r.observed_time_unix_nano, 1_544_712_660_300_000_000);
    assert_eq!(r.severity_number, 10);
    assert_eq!(r.severity_text, "Information");
    assert_eq!(hex::encode(&r.trace_id), "5b8efff798038103d269b633813fc60c");
    assert_eq!(hex::encode(&r.span_id), "eee19b7ec3c1b174");
    assert_eq!(r.event_name, "app.started");
    assert_eq!(
        r.body,
        Some(any(V::StringValue("Example log record".into())))
    );
    assert_eq!(r.attributes.len(), 6);
    assert_eq!(
        r.attributes[3],
        kv("double.attribute", V::DoubleValue(637.704))
    );
    assert_eq!(
        r.attributes[5],
        kv(
            "map.attribute",
            V::KvlistValue(KeyValueList {
                values: vec![kv("some.map.key", V::StringValue("some value".into()))]
            })
        )
    );
}

#[test]
fn enum_names_are_accepted() {
    let req = decode_trace_request(
        br#"{"resourceSpans":[{"scopeSpans":[{"spans":[
            {"kind":"SPAN_KIND_SERVER","status":{"code":"STATUS_CODE_ERROR"}},
            {"kind":"SPAN_KIND_CONSUMER","status":{"code":"STATUS_CODE_OK"}},
            {"kind":"3"}
        ]}]}]}"#,
    )
    .unwrap();
    let spans = &req.resource_spans[0].scope_spans[0].spans;
    assert_eq!(
        (spans[0].kind, spans[0].status.as_ref().unwrap().code),
        (2, 2)
    );
    assert_eq!(
        (spans[1].kind, spans[1].status.as_ref().unwrap().code),
        (5, 1)
    );
    assert_eq!(spans[2].kind, 3);

    let req = decode_logs_request(
        br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"severityNumber":"SEVERITY_NUMBER_INFO"},{"severity_number":"SEVERITY_NUMBER_FATAL4"}]}]}]}"#,
    )
    .unwrap();
    let records = &req.resource_logs[0].scope_logs[0].log_records;
    assert_eq!(
        (records[0].severity_number, records[1].severity_number),
        (9, 24)
    );

    let req = decode_metrics_request(
        br#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[
            {"sum":{"aggregationTemporality":"AGGREGATION_TEMPORALITY_CUMULATIVE"}},
            {"histogram":{"aggregation_temporality":"AGGREGATION_TEMPORALITY_DELTA"}},
            {"exponentialHistogram":{"aggregationTemporality":"AGGREGATION_TEMPORALITY_UNSPECIFIED"}}
        ]}]}]}"#,
    )
    .unwrap();
    let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
    assert!(matches!(&metrics[0].data, Some(Data::Sum(s)) if s.aggregation_temporality == 2));
    assert!(matches!(&metrics[1].data, Some(Data::Histogram(h)) if h.aggregation_temporality == 1));
    assert!(
        matches!(&metrics[2].data, Some(Data::ExponentialHistogram(h)) if h.aggregation_temporality == 0)
    );

    let e = trace_error(
        r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"kind":"SPAN_KIND_SERVERS"}]}]}]}"#,
    );
    assert_eq!(e.path(), "resourceSpans[0].scopeSpans[0].spans[0].kind");
    assert_eq!(e.reason(), r#"unknown SpanKind "SPAN_KIND_SERVERS""#);
    // A name from another enum is not a SpanKind.
    let e = trace_error(
        r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"kind":"STATUS_CODE_OK"}]}]}]}"#,
    );
    assert_eq!(e.reason(), r#"unknown SpanKind "STATUS_CODE_OK""#);
}

#[test]
fn unknown_keys_and_nulls_are_ignored() {
    let req = decode_trace_request(
        br#"{
          "resourceSpans": [{
            "futureField": {"nested": [1, 2, {"deep": true}]},
            "resource": null,
            "scopeSpans": [{
              "scope": {"name": "s", "unknown": 1},
              "spans": [{
                "traceId": "0102030405060708090a0b0c0d0e0f10",
                "spanId": null,
                "name": "n",
                "events": null,
                "status": {"code": null, "message": "m", "extra": "x"},
                "attributes": [{"key": "k", "value": {"stringValue": "v", "note": 1}, "x": 2}],
                "someNewThing": "ignored"
              }]
            }]
          }],
          "extra": 42
        }"#,
    )
    .unwrap();
    let rs = &req.resource_spans[0];
    assert_eq!(rs.resource, None);
    let span = &rs.scope_spans[0].spans[0];
    assert_eq!(span.name, "n");
    assert!(span.span_id.is_empty());
    assert!(span.events.is_empty());
    assert_eq!(
        span.status,
        Some(Status {
            message: "m".into(),
            code: 0
        })
    );
    assert_eq!(span.attributes[0], kv("k", V::StringValue("v".into())));

    assert_eq!(decode_trace_request(b"{}").unwrap(), Default::default());
    assert_eq!(
        decode_trace_request(br#"{"resourceSpans":null}"#).unwrap(),
        Default::default()
    );
}

#[test]
fn lenient_scalars() {
    let req = decode_metrics_request(
        br#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"histogram":{"dataPoints":[{
            "timeUnixNano": 1544712660300000000,
            "startTimeUnixNano": "1e3",
            "count": 1.5e1,
            "flags": "1",
            "sum": "NaN",
            "min": "-Infinity",
            "max": "Infinity",
            "explicitBounds": ["2.5", 3, -0.5e1],
            "bucketCounts": ["18446744073709551615", 0]
        }]}}]}]}]}"#,
    )
    .unwrap();
    let Some(Data::Histogram(h)) = &req.resource_metrics[0].scope_metrics[0].metrics[0].data else {
        panic!("expected a histogram")
    };
    let p = &h.data_points[0];
    assert_eq!(p.time_unix_nano, 1_544_712_660_300_000_000);
    assert_eq!(p.start_time_unix_nano, 1000);
    assert_eq!(p.count, 15);
    assert_eq!(p.flags, 1);
    assert!(p.sum.unwrap().is_nan());
    assert_eq!(p.min, Some(f64::NEG_INFINITY));
    assert_eq!(p.max, Some(f64::INFINITY));
    assert_eq!(p.explicit_bounds, [2.5, 3.0, -5.0]);
    assert_eq!(p.bucket_counts, [u64::MAX, 0]);

    let req = decode_trace_request(
        br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{
            "traceId": "", "spanId": "AbCdEf0123456789",
            "droppedAttributesCount": "4",
            "attributes": [
                {"key": "i", "value": {"intValue": -9223372036854775808}},
                {"key": "s", "value": {"intValue": "-12"}},
                {"key": "b64url", "value": {"bytesValue": "-_8"}},
                {"key": "b64nopad", "value": {"bytesValue": "AQI"}},
                {"key": "b64pad", "value": {"bytes_value": "AQI="}},
                {"key": "d", "value": {"doubleValue": "-1.5"}},
                {"key": "e", "value": {}}
            ]
        }]}]}]}"#,
    )
    .unwrap();
    let span = &req.resource_spans[0].scope_spans[0].spans[0];
    assert!(span.trace_id.is_empty());
    assert_eq!(
        span.span_id,
        [0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89]
    );
    assert_eq!(span.dropped_attributes_count, 4);
    let values: Vec<_> = span
        .attributes
        .iter()
        .map(|a| a.value.clone().unwrap())
        .collect();
    assert_eq!(values[0], any(V::IntValue(i64::MIN)));
    assert_eq!(values[1], any(V::IntValue(-12)));
    assert_eq!(values[2], any(V::BytesValue(vec![0xfb, 0xff])));
    assert_eq!(values[3], any(V::BytesValue(vec![1, 2])));
    assert_eq!(values[4], any(V::BytesValue(vec![1, 2])));
    assert_eq!(values[5], any(V::DoubleValue(-1.5)));
    assert_eq!(values[6], AnyValue { value: None });
}

// ---------------------------------------------------------------------------------------------
// Errors say where and what.

#[test]
fn errors_carry_the_path_and_reason() {
    let spans = |span: &str| {
        format!(
            r#"{{"resourceSpans":[{{}},{{"scopeSpans":[{{}},{{"spans":[{{}},{{}},{{}},{span}]}}]}}]}}"#
        )
    };

    let e = trace_error(&spans(r#"{"traceId":"5b8efff798038103d269b633813fc60"}"#));
    assert_eq!(e.path(), "resourceSpans[1].scopeSpans[1].spans[3].traceId");
    assert_eq!(e.reason(), "invalid hex: odd length 31");
    assert_eq!(
        e.to_string(),
        "resourceSpans[1].scopeSpans[1].spans[3].traceId: invalid hex: odd length 31"
    );

    let e = trace_error(&spans(r#"{"span_id":"zz"}"#));
    assert_eq!(e.path(), "resourceSpans[1].scopeSpans[1].spans[3].span_id");
    assert_eq!(e.reason(), "invalid hex: character 'z' at offset 0");

    let e = trace_error(&spans(r#"{"startTimeUnixNano":true}"#));
    assert_eq!(
        e.path(),
        "resourceSpans[1].scopeSpans[1].spans[3].startTimeUnixNano"
    );
    assert_eq!(e.reason(), "expected a string or integer, found true");

    let e = trace_error(&spans(r#"{"endTimeUnixNano":"soon"}"#));
    assert_eq!(e.reason(), r#"invalid integer "soon""#);

    let e = trace_error(&spans(r#"{"endTimeUnixNano":-1}"#));
    assert_eq!(e.reason(), "integer -1 out of range for uint64");

    let e = trace_error(&spans(r#"{"droppedAttributesCount":4294967296}"#));
    assert_eq!(e.reason(), "integer 4294967296 out of range for uint32");

    let e = trace_error(&spans(r#"{"flags":1.5}"#));
    assert_eq!(e.reason(), "expected an integer, found 1.5");

    let e = trace_error(&spans(r#"{"name":7}"#));
    assert_eq!(e.reason(), "expected a string, found 7");

    let e = trace_error(&spans(
        r#"{"attributes":[{"key":"a","value":{"arrayValue":{"values":[{"doubleValue":"fast"}]}}}]}"#,
    ));
    assert_eq!(
        e.path(),
        "resourceSpans[1].scopeSpans[1].spans[3].attributes[0].value.arrayValue.values[0].doubleValue"
    );
    assert_eq!(
        e.reason(),
        r#"expected a number or "NaN", "Infinity", "-Infinity", found "fast""#
    );

    let e = trace_error(&spans(
        r#"{"attributes":[{"key":"a","value":{"bytesValue":"!!"}}]}"#,
    ));
    assert_eq!(
        e.path(),
        "resourceSpans[1].scopeSpans[1].spans[3].attributes[0].value.bytesValue"
    );
    assert!(e.reason().starts_with("invalid base64: "), "{}", e.reason());

    let e = trace_error(&spans(
        r#"{"attributes":[{"key":"a","value":{"intValue":"1","stringValue":"x"}}]}"#,
    ));
    assert!(
        e.path()
            .starts_with("resourceSpans[1].scopeSpans[1].spans[3].attributes[0].value.")
    );
    assert!(
        e.reason()
            .ends_with("is also set; only one of them is allowed"),
        "{}",
        e.reason()
    );

    let e = trace_error(&spans(r#"{"links":{}}"#));
    assert_eq!(e.path(), "resourceSpans[1].scopeSpans[1].spans[3].links");
    assert_eq!(e.reason(), "expected an array, found an object");

    let e = trace_error(&spans(r#"{"status":[]}"#));
    assert_eq!(e.reason(), "expected an object, found an array");

    let e = trace_error(&spans(r#"{"events":[{"timeUnixNano":{}}]}"#));
    assert_eq!(
        e.path(),
        "resourceSpans[1].scopeSpans[1].spans[3].events[0].timeUnixNano"
    );

    let e = trace_error("[]");
    assert_eq!(e.path(), "");
    assert_eq!(e.reason(), "expected an object, found an array");
    assert_eq!(e.to_string(), "expected an object, found an array");

    let e = decode_metrics_request(
        br#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"gauge":{},"sum":{}}]}]}]}"#,
    )
    .unwrap_err();
    assert!(
        e.path()
            .starts_with("resourceMetrics[0].scopeMetrics[0].metrics[0]."),
        "{}",
        e.path()
    );

    let e = decode_logs_request(
        br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"boolValue":"yes"}}]}]}]}"#,
    )
    .unwrap_err();
    assert_eq!(
        e.path(),
        "resourceLogs[0].scopeLogs[0].logRecords[0].body.boolValue"
    );
    assert_eq!(e.reason(), r#"expected a boolean, found "yes""#);
}

#[test]
fn syntax_errors_have_no_path_and_say_where() {
    let e = trace_error("{\"resourceSpans\": [\n  {,}\n]}");
    assert_eq!(e.path(), "");
    assert!(e.reason().contains("line 2 column 4"), "{}", e.reason());
    assert!(decode_trace_request(b"").is_err());
    assert!(decode_trace_request(b"{} trailing").is_err());
}

#[test]
fn deep_nesting_is_bounded() {
    fn nested(depth: usize) -> String {
        let v = format!(
            r#"{}{{"stringValue":"leaf"}}{}"#,
            r#"{"arrayValue":{"values":["#.repeat(depth),
            "]}}".repeat(depth)
        );
        format!(r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"body":{v}}}]}}]}}]}}"#)
    }
    // Within serde_json's recursion limit: decodes.
    let req = decode_logs_request(nested(30).as_bytes()).unwrap();
    let mut body = req.resource_logs[0].scope_logs[0].log_records[0]
        .body
        .clone()
        .unwrap();
    let mut depth = 0;
    while let Some(V::ArrayValue(mut a)) = body.value {
        body = a.values.remove(0);
        depth += 1;
    }
    assert_eq!(
        (depth, body.value),
        (30, Some(V::StringValue("leaf".into())))
    );

    // Far beyond it: a clean error, not a stack overflow.
    let e = decode_logs_request(nested(10_000).as_bytes()).unwrap_err();
    assert_eq!(e.path(), "");
    assert!(
        e.reason().contains("recursion limit exceeded"),
        "{}",
        e.reason()
    );
}

// ---------------------------------------------------------------------------------------------
// The reader accepts exactly JSON: the same verdict as serde_json on every snippet.

#[test]
fn reader_agrees_with_serde_json_on_syntax() {
    let snippets: &[&[u8]] = &[
        // valid
        b"0",
        b"-0",
        b"-0.0e-0",
        b"1.5e+10",
        b"1E5",
        b"123456789012345678901234567890",
        br#""""#,
        br#""\u00e9 \ud83d\ude00 \/ \b\f\n\r\t \" \\""#,
        b"[]",
        b"{}",
        br#"[1,2,[3,{"a":null}],"x",true]"#,
        b" { \"a\" :\t[ true , false , null ] }\r\n",
        "\"caf\u{e9} \u{1f600}\"".as_bytes(),
        // invalid
        b"",
        b"01",
        b"-",
        b"1.",
        b".5",
        b"1e",
        b"1e+",
        b"+1",
        b"tru",
        b"nul",
        b"True",
        b"NaN",
        b"Infinity",
        b"'a'",
        br#""abc"#,
        br#""\x""#,
        br#""\u12""#,
        br#""\u12G4""#,
        br#""\ud800""#,
        br#""\udc00""#,
        br#""\ud800\u0041""#,
        br#""\ud800x""#,
        b"\"a\x01b\"",
        b"\"\xff\"",
        b"[1,]",
        b"[,1]",
        b"[1 2]",
        b"[",
        br#"{"a":1,}"#,
        b"{,}",
        br#"{"a" 1}"#,
        b"{1:2}",
        br#"{"a":1}}"#,
        br#"{"a"}"#,
        b"{",
    ];
    for snippet in snippets {
        for doc in [
            [br#"{"x":"#.as_slice(), snippet, b"}"].concat(),
            [
                br#"{"resourceSpans":[{"future":["#.as_slice(),
                snippet,
                b"]}]}",
            ]
            .concat(),
        ] {
            let ours = decode_trace_request(&doc);
            let theirs = serde_json::from_slice::<Value>(&doc);
            let shown = String::from_utf8_lossy(&doc);
            assert_eq!(
                ours.is_ok(),
                theirs.is_ok(),
                "{shown}: {ours:?} vs {theirs:?}"
            );
            if let Err(e) = ours {
                // Syntax errors are reported in serde_json's words, with no path.
                assert_eq!(e.path(), "", "{shown}");
                assert_eq!(e.reason(), theirs.unwrap_err().to_string(), "{shown}");
            }
        }
    }
    let e = decode_trace_request(b"{} x").unwrap_err();
    assert!(e.reason().contains("trailing characters"), "{e}");
}

#[test]
fn escaped_strings_decode_as_serde_json_does() {
    let strings = [
        r#""plain""#,
        r#""\u00e9\n\"\\\/\b\f\r\t\ud83d\ude00 tail""#,
        r#""\u0000 nul and \u001f""#,
        r#""caf\u00e9 and raw é 😀""#,
        r#""""#,
    ];
    for s in strings {
        let doc = format!(
            r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"name":{s},"attributes":[{{"key":{s},"value":{{"stringValue":{s}}}}}]}}]}}]}}]}}"#
        );
        let want: String = serde_json::from_str(s).unwrap();
        let req = decode_trace_request(doc.as_bytes()).unwrap();
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.name, want);
        assert_eq!(span.attributes[0], kv(&want, V::StringValue(want.clone())));
    }
    // Keys may be escaped too.
    let req = decode_trace_request(
        br#"{"resource\u0053pans":[{"scopeSpans":[{"spans":[{"trace\u0049d":"01"}]}]}]}"#,
    )
    .unwrap();
    assert_eq!(req.resource_spans[0].scope_spans[0].spans[0].trace_id, [1]);
}

#[test]
fn nesting_limit_matches_serde_json() {
    // Seven containers lead to the log body; each arrayValue level adds three, the leaf one.
    fn nested(depth: usize) -> String {
        format!(
            r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"body":{}{{"stringValue":"leaf"}}{}}}]}}]}}]}}"#,
            r#"{"arrayValue":{"values":["#.repeat(depth),
            "]}}".repeat(depth)
        )
    }
    for depth in [39, 40] {
        let doc = nested(depth);
        let ours = decode_logs_request(doc.as_bytes());
        let theirs = serde_json::from_str::<Value>(&doc);
        assert_eq!(ours.is_ok(), theirs.is_ok(), "depth {depth}");
    }
    assert!(decode_logs_request(nested(39).as_bytes()).is_ok());
    let e = decode_logs_request(nested(40).as_bytes()).unwrap_err();
    assert!(e.reason().starts_with("recursion limit exceeded"), "{e}");
}
