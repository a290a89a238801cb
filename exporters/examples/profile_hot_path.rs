//! A fixed amount of hot-path work for `valgrind --tool=callgrind`, whose instruction counts
//! repeat on a noisy machine where timings do not:
//! `valgrind --tool=callgrind target/release/examples/profile_hot_path 2000`
//! then divide the total by 2000 requests x 100 spans.

#[path = "../benches/fixture/mod.rs"]
mod fixture;

use prost::Message;
use std::hint::black_box;
use weir_config::gateway::Encoding;
use weir_exporters::kafka::{TracePlan, Unlimited, traces_batch};
use weir_proto::wire::TraceRequestView;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let body = fixture::request().encode_to_vec();
    let mut records = 0;
    for _ in 0..n {
        let view = TraceRequestView::parse(black_box(&body)).expect("the fixture is valid");
        records += traces_batch(
            &body,
            &view,
            &TracePlan::everything_to("otlp_spans".into(), &view),
            Encoding::OtlpProto,
            1_000_000,
            &mut Unlimited,
        )
        .unwrap()
        .records
        .len();
    }
    println!(
        "{n} requests of {} spans -> {records} records",
        fixture::SPANS
    );
}
