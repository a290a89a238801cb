//! The per-request hot path of a trace export, stage by stage, on the benchmark's load shape
//! (100 spans per request, 10 spans per trace, 5 attributes of 16 bytes per span):
//! validation and indexing of the request bytes, grouping by trace id into records
//! (`traces_batch`), and the two together; a full `prost` decode is measured for reference.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use std::hint::black_box;
use weir_config::gateway::Encoding;
use weir_exporters::kafka::traces_batch;
use weir_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
use weir_proto::otlp::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value};
use weir_proto::otlp::resource::v1::Resource;
use weir_proto::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span, span::SpanKind};
use weir_proto::wire::TraceRequestView;

const SPANS: usize = 100;
const PER_TRACE: usize = 10;

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn request() -> ExportTraceServiceRequest {
    let spans = (0..SPANS)
        .map(|i| {
            let t = (i / PER_TRACE) as u8;
            Span {
                trace_id: [t.wrapping_mul(37).wrapping_add(1); 16].to_vec(),
                span_id: (i as u64 + 1).to_be_bytes().to_vec(),
                parent_span_id: if i % PER_TRACE == 0 {
                    vec![]
                } else {
                    (i as u64).to_be_bytes().to_vec()
                },
                name: format!("operation-{}", i % 7),
                kind: SpanKind::Server as i32,
                start_time_unix_nano: 1_700_000_000_000_000_000 + i as u64,
                end_time_unix_nano: 1_700_000_000_000_500_000 + i as u64,
                attributes: (0..5)
                    .map(|a| kv(&format!("attr.{a}"), "0123456789abcdef"))
                    .collect(),
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "checkout"), kv("host.name", "node-1")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "io.opentelemetry.bench".into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn hot_path(c: &mut Criterion) {
    let body = request().encode_to_vec();
    let mut g = c.benchmark_group("trace_request_100_spans");
    g.throughput(Throughput::Elements(SPANS as u64));
    g.bench_function("prost_decode_for_reference", |b| {
        b.iter(|| ExportTraceServiceRequest::decode(black_box(&body[..])).unwrap())
    });
    g.bench_function("validate_and_index", |b| {
        b.iter(|| TraceRequestView::parse(black_box(&body[..])).unwrap())
    });
    let view = TraceRequestView::parse(&body).unwrap();
    g.bench_function("group_split_encode", |b| {
        b.iter(|| traces_batch(black_box(&body), &view, Encoding::OtlpProto, 1_000_000))
    });
    g.bench_function("validate_group_split_encode", |b| {
        b.iter(|| {
            let view = TraceRequestView::parse(black_box(&body[..])).unwrap();
            traces_batch(&body, &view, Encoding::OtlpProto, 1_000_000)
        })
    });
    g.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
