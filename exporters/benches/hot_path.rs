//! The per-request hot path of a trace export, stage by stage, on the benchmark's load shape
//! (100 spans per request, 10 spans per trace, 5 attributes of 16 bytes per span):
//! validation and indexing of the request bytes, grouping by trace id into records
//! (`traces_batch`), and the two together; a full `prost` decode is measured for reference.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use std::hint::black_box;
use weir_config::gateway::Encoding;
use weir_exporters::kafka::{TracePlan, Unlimited, traces_batch};
use weir_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
use weir_proto::wire::TraceRequestView;

mod fixture;

use fixture::{SPANS, request};

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
        b.iter(|| {
            traces_batch(
                black_box(&body),
                &view,
                &TracePlan::everything_to("otlp_spans".into(), &view),
                Encoding::OtlpProto,
                1_000_000,
                &mut Unlimited,
            )
            .unwrap()
        })
    });
    g.bench_function("validate_group_split_encode", |b| {
        b.iter(|| {
            let view = TraceRequestView::parse(black_box(&body[..])).unwrap();
            traces_batch(
                &body,
                &view,
                &TracePlan::everything_to("otlp_spans".into(), &view),
                Encoding::OtlpProto,
                1_000_000,
                &mut Unlimited,
            )
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
