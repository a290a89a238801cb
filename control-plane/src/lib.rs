//! The Weir control plane: stores versioned policy documents, releases them to gateways through
//! rollouts (label selectors, stable-hash percentages, instance lists, stages), serves the REST
//! API on 8080 and the gRPC watch stream on 8081, and keeps an audit log of every change.
//!
//! - `state.rs`: [`ControlPlane`], what both listeners work through;
//! - `store.rs`: storage (SQLite or PostgreSQL) and migrations;
//! - `targeting.rs`: which gateways a rollout stage reaches;
//! - `auth.rs`: bearer tokens and roles;
//! - `identity.rs`: the bounds on what a gateway claims, and which instances a token may be;
//! - `api/`: the REST API, its problem documents and its OpenAPI document generated from the
//!   code (served by weir-runtime's listener, as the gateway's listeners are);
//! - `watch.rs`: the gRPC watch stream;
//! - `console.rs` + `console/`: the web console, static files embedded in the binary and
//!   served on the REST listener;
//! - `graph/`: the gateways' span metrics read from Kafka into 1/5/15-minute windows, for
//!   the service graph and per-service RED metrics.

pub mod api;
pub mod auth;
pub mod console;
pub mod graph;
pub mod identity;
pub mod state;
pub mod store;
pub mod targeting;
pub mod watch;

#[cfg(test)]
mod tests;

pub use state::{ControlPlane, Error, GatewayHello, PolicyVersion};
