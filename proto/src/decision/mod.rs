//! Tail sampling decisions, shared by the gateways that mark trace ids and the tail router
//! that looks them up:
//!
//! - `filter.rs`: a decision window's Bloom filter, its parameters and its hash scheme (the
//!   bit positions of a trace id), merged from published bits with a bitwise OR;
//! - `record.rs`: the decision record that carries a window's filter bits to Kafka
//!   (header and payload codec);
//! - `signature.rs`: records signed with a shared key (HMAC-SHA256 in a Kafka header).
//!
//! Both sides must agree on every bit, so the record format and the positions it carries
//! live together here.

pub mod filter;
pub mod record;
pub mod signature;

pub use record::*;

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, by the wall clock: decision windows are aligned to it,
/// so that every gateway and the tail router agree on them.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
