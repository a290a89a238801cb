//! The gateway's side of the policy (the engine itself is the `weir-policy` crate): which
//! policy is in force and how each span of a request meets it.
//!
//! - `store.rs`: [`PolicyStore`], the compiled policy in force behind an `ArcSwap`, swapped by
//!   control-plane pushes and reloaded when the policy file changes or on SIGHUP;
//! - `plan.rs`: [`plan_traces`], the per-request span plan: every span evaluated against one
//!   policy version, kept or not, its topics and its rewritten tracestate;
//! - `view.rs`: the span view over the wire: a span as the policy reads it, from the request
//!   bytes;
//! - `metrics.rs`: the per-rule counters, counted per run of equal decisions.

mod metrics;
mod plan;
mod store;
mod view;

pub use plan::{plan_traces, plan_traces_for};
pub use store::{ActivePolicy, PolicyStore, read_policy_file};
