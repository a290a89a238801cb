//! The gateway's admin listener (8888): weir-runtime's `/healthz`, `/readyz` and `/metrics`,
//! shared with the tail router; the gateway feeds its readiness from the broker probe in `run`.

pub use weir_runtime::admin::{Readiness, serve_with};
