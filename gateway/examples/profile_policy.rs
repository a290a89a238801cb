//! A fixed amount of policy work for `valgrind --tool=callgrind`: plans N requests of the
//! benchmark's shape against a policy file (e.g. the 100-rule one `scripts/bench.sh` writes for
//! its weir-rules target), or without a policy when none is given:
//! `valgrind --tool=callgrind target/release/examples/profile_policy 2000 [POLICY]`.

#[path = "../../exporters/benches/fixture/mod.rs"]
mod fixture;

use prost::Message;
use std::hint::black_box;
use weir_gateway::policy::{PolicyStore, plan_traces};
use weir_gateway::tail::DecisionWindows;
use weir_proto::wire::TraceRequestView;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let store = PolicyStore::new(args.next().map(Into::into))?;
    let body = fixture::request().encode_to_vec();
    let view = TraceRequestView::parse(&body)?;
    let active = store.load();
    let windows = DecisionWindows::default();
    let mut routes = 0;
    for _ in 0..n {
        routes += plan_traces(&active, &windows, black_box(&body), &view, "otlp_spans")
            .routes
            .len();
    }
    let version = active.policy.version();
    println!(
        "{n} requests of {} spans -> {routes} routes (policy version {version})",
        fixture::SPANS
    );
    Ok(())
}
