//! Zero-copy handling of OTLP requests in the protobuf wire format, one file per job:
//!
//! - `reader.rs`: the wire format read field by field, and `WireError`, naming the field at
//!   fault;
//! - `validate/`: validation of requests of all three signals; trace requests are validated
//!   and indexed in one pass by `TraceRequestView::parse`, which allocates per resource and
//!   scope, never per span attribute;
//! - `index.rs`: the span index that pass builds (`TraceRequestView`, `SpanEntry`): where each
//!   span's bytes are, its trace id, and the fields a policy reads;
//! - `unchecked.rs`: readers of validated bytes (attributes, resource attributes, scope names);
//! - `rewrite.rs`: spans written back with a new `trace_state`, and the varint encoding;
//! - `attribute_limits.rs`: spans held to attribute caps the caller gives.

mod attribute_limits;
mod index;
mod reader;
mod rewrite;
mod unchecked;
pub mod validate;

pub use attribute_limits::{
    AttributeExcess, AttributeLimits, attribute_excess, write_span_within_limits,
};
pub use index::{ResourceEntry, ScopeEntry, SpanEntry, TraceRequestView};
pub use reader::WireError;
pub use rewrite::{put_varint, span_with_trace_state_len, varint_len, write_span_with_trace_state};
pub use unchecked::{
    RawAttributes, WireValue, attributes, raw_attributes, resource_attributes, scope_name,
};
