//! A fixed amount of policy work on requests shaped like `weir-loadgen`'s (5 services, 100 spans
//! in traces of 10 spread over the services, durations from 0.1 to 50 ms, 5 attributes of 16
//! random letters per span), for counting instructions per span under callgrind:
//!
//! ```text
//! valgrind --tool=callgrind --callgrind-out-file=a target/release/examples/profile_tail 200 POLICY
//! valgrind --tool=callgrind --callgrind-out-file=b target/release/examples/profile_tail 1000 POLICY
//! ```
//!
//! The difference of the two totals over 80,000 spans (800 requests) is the instructions per
//! span of `plan_traces` with that policy (tail marks go to one set of decision windows, as
//! in the gateway).
//! Outside valgrind it prints the wall time per span, which on a shared machine is only a hint.

use prost::Message;
use std::hint::black_box;
use std::time::Instant;
use weir_gateway::policy::{PolicyStore, plan_traces};
use weir_gateway::tail::DecisionWindows;
use weir_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
use weir_proto::otlp::trace::v1::Span;
use weir_proto::test_support::{resource_spans, scope, service, string_kv};
use weir_proto::wire::TraceRequestView;

/// Distinct requests cycled through.
const REQUESTS: usize = 64;
const SPANS: usize = 100;
const PER_TRACE: usize = 10;
const SERVICES: usize = 5;

/// A deterministic generator (a 64-bit LCG), so that every run does the same work.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 11
    }

    /// `n` random bytes, none zero (an all-zero id is invalid).
    fn id(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next() as u8) | 1).collect()
    }

    fn letters(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'a' + (self.next() % 26) as u8))
            .collect()
    }
}

/// One request of `weir-loadgen`'s shape, encoded.
fn request(rng: &mut Lcg) -> Vec<u8> {
    let mut per_service: Vec<Vec<Span>> = vec![Vec::new(); SERVICES];
    let (mut trace_id, mut root_id) = (Vec::new(), Vec::new());
    for k in 0..SPANS {
        let (trace, position) = (k / PER_TRACE, k % PER_TRACE);
        if position == 0 {
            trace_id = rng.id(16);
        }
        let span_id = rng.id(8);
        let parent_span_id = if position == 0 {
            root_id = span_id.clone();
            Vec::new()
        } else {
            root_id.clone()
        };
        let start = 1_700_000_000_000_000_000 + k as u64 * 1_000_000;
        per_service[(trace + position) % SERVICES].push(Span {
            trace_id: trace_id.clone(),
            span_id,
            parent_span_id,
            name: format!("operation-{position}"),
            // Server roots, internal children, as the load generator sends them.
            kind: if position == 0 { 2 } else { 1 },
            start_time_unix_nano: start,
            end_time_unix_nano: start + 100_000 + rng.next() % 49_900_000,
            attributes: (0..5)
                .map(|a| string_kv(&format!("attr.{a}"), &rng.letters(16)))
                .collect(),
            ..Default::default()
        });
    }
    ExportTraceServiceRequest {
        resource_spans: per_service
            .into_iter()
            .enumerate()
            .map(|(i, spans)| {
                resource_spans(
                    Some(service(&format!("service-{i}"))),
                    Some(scope("weir-loadgen")),
                    spans,
                )
            })
            .collect(),
    }
    .encode_to_vec()
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let store = PolicyStore::new(args.next().map(Into::into))?;
    let mut rng = Lcg(42);
    let bodies: Vec<Vec<u8>> = (0..REQUESTS).map(|_| request(&mut rng)).collect();
    let views = bodies
        .iter()
        .map(|b| TraceRequestView::parse(b))
        .collect::<Result<Vec<_>, _>>()?;
    let active = store.load();
    let windows = DecisionWindows::default();
    let started = Instant::now();
    let mut routes = 0;
    for i in 0..n {
        let j = i % REQUESTS;
        routes += plan_traces(
            &active,
            &windows,
            black_box(&bodies[j]),
            &views[j],
            "otlp_spans",
        )
        .routes
        .len();
    }
    let per_span = started.elapsed().as_nanos() as f64 / (n * SPANS) as f64;
    println!(
        "{n} requests of {SPANS} spans -> {routes} routes (policy version {}): {per_span:.1} ns per span",
        active.policy.version()
    );
    Ok(())
}
