//! Validation of OTLP requests, one file per signal: what a body must be before the gateway
//! accepts it. Traces are checked at the wire level as they are indexed (`traces.rs`: as
//! `prost` decoding would check them, plus id lengths); metrics and logs are decoded by
//! `prost` first, then their ids are checked (`metrics.rs`, `logs.rs`). A request that fails
//! is refused whole (400 / INVALID_ARGUMENT), and the error names the field at fault.

mod common;
mod logs;
mod message;
mod metrics;
mod traces;

pub use logs::logs_request;
pub use metrics::metrics_request;

use super::reader::{Result, WireError};

/// The length of a trace id.
const TRACE_ID_LEN: usize = 16;
/// The length of a span id.
const SPAN_ID_LEN: usize = 8;

/// Checks an id's length: `required` ids must have `len` bytes, others may also be empty.
/// `path` names the id in the error, built only when there is one.
#[inline]
fn check_id(bytes: &[u8], len: usize, required: bool, path: impl FnOnce() -> String) -> Result<()> {
    if bytes.len() == len || (!required && bytes.is_empty()) {
        return Ok(());
    }
    let optional = if required { "" } else { " or empty" };
    Err(WireError::invalid_id(
        path(),
        format!("must be {len} bytes{optional}, got {} bytes", bytes.len()),
    ))
}
