//! What a request will cost in memory once decoded, known from its bytes before decoding it.
//!
//! Logs and metrics are decoded with `prost`, and OTLP/JSON with `json`, into owned messages
//! that are far larger than their encoding: an empty log record is 2 bytes on the wire and a
//! `LogRecord` of about 200 bytes decoded. Admission must charge the decoded size, not the
//! body's, so these functions walk the bytes (tags and lengths only, no allocation) and return
//! an upper bound of the heap the decoded message holds:
//!
//! - every `Vec` of a repeated field: its element size times its capacity, counted as twice
//!   its length (at least 4): decoders push elements one by one, and a `Vec` doubles its
//!   capacity when full;
//! - every string and bytes field: its length (at least 8, the smallest allocation a `Vec<u8>`
//!   makes);
//! - messages held in an `Option` or a oneof are inline in their parent, so they cost nothing
//!   beyond the repeated and string fields they hold.
//!
//! What the bound leaves out: the request struct itself (a few bytes on the stack), and while
//! decoding, a `Vec` that grows briefly holds its old buffer beside the new one (at most half
//! the size of that `Vec`, one `Vec` at a time).

use crate::otlp::common::v1::{AnyValue, EntityRef, KeyValue};
use crate::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use crate::otlp::metrics::v1::summary_data_point::ValueAtQuantile;
use crate::otlp::metrics::v1::{
    Exemplar, ExponentialHistogramDataPoint, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, SummaryDataPoint,
};
use crate::otlp::trace::v1::span::{Event, Link};
use crate::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};
use std::mem::size_of;

/// A body that is not valid protobuf for the message walked: where and what. `prost` refuses
/// such a body too, so the caller can answer it as undecodable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid protobuf at byte {offset}: {reason}")]
pub struct DecodeError {
    offset: usize,
    reason: &'static str,
}

impl DecodeError {
    /// Where in the body the walk stopped.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// What was wrong there.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

/// An upper bound of the heap an `ExportLogsServiceRequest` decoded from `body` by `prost`
/// holds (see the module doc), or why `body` is not one.
pub fn logs_request_decoded_size(body: &[u8]) -> Result<usize, DecodeError> {
    message(body, 0, &LOGS_REQUEST, 0)
}

/// An upper bound of the heap an `ExportMetricsServiceRequest` decoded from `body` by `prost`
/// holds (see the module doc), or why `body` is not one.
pub fn metrics_request_decoded_size(body: &[u8]) -> Result<usize, DecodeError> {
    message(body, 0, &METRICS_REQUEST, 0)
}

// ---------------------------------------------------------------------------------------------
// The protobuf walk.

/// The nesting limit of `prost`: a message nested deeper is refused by the decoder.
const MAX_DEPTH: u32 = 100;

/// The most fields a schema below lists (`Schema::fields`), for the per-message counters.
const MAX_FIELDS: usize = 9;

/// How one field of a message takes memory once decoded.
#[derive(Clone, Copy)]
enum Kind {
    /// `string` or `bytes`: its length on the heap.
    Bytes,
    /// `repeated string`: a `String` in the `Vec`, and its length on the heap.
    RepeatedBytes,
    /// A singular message or a oneof's message member: inline in its parent.
    Message(&'static Schema),
    /// A repeated message: an element of the given size in the `Vec`.
    RepeatedMessage(&'static Schema, usize),
    /// `repeated fixed64` or `double`, packed or not: 8 bytes per element.
    RepeatedFixed64,
    /// `repeated uint64` (varints), packed or not: 8 bytes per element.
    RepeatedVarint64,
}

/// A field of a message that holds heap memory once decoded; other fields (scalars, unknown
/// fields) are skipped.
struct Field {
    number: u32,
    kind: Kind,
}

/// The fields of one message type that hold heap memory.
struct Schema {
    fields: &'static [Field],
}

const fn field(number: u32, kind: Kind) -> Field {
    Field { number, kind }
}

/// The bytes a `Vec` of `len` elements of `size` bytes can hold, allowing for growth slack.
fn vec_bytes(len: usize, size: usize) -> usize {
    if len == 0 {
        0
    } else {
        len.saturating_mul(2).max(4).saturating_mul(size)
    }
}

/// The bytes a decoded string or bytes field of `len` bytes holds.
fn bytes_len(len: usize) -> usize {
    if len == 0 { 0 } else { len.max(8) }
}

/// Protobuf wire types, as in a field's key.
const VARINT: u64 = 0;
const I64: u64 = 1;
const LEN: u64 = 2;
const START_GROUP: u64 = 3;
const END_GROUP: u64 = 4;
const I32: u64 = 5;

/// A cursor over one message's bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Where `buf` starts in the body.
    base: usize,
}

impl<'a> Cursor<'a> {
    fn error(&self, reason: &'static str) -> DecodeError {
        DecodeError {
            offset: self.base + self.pos,
            reason,
        }
    }

    #[inline]
    fn varint(&mut self) -> Result<u64, DecodeError> {
        if let Some(&b) = self.buf.get(self.pos)
            && b < 0x80
        {
            self.pos += 1;
            return Ok(u64::from(b));
        }
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.error("truncated varint"));
            };
            self.pos += 1;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                if i == 9 && b > 1 {
                    return Err(self.error("varint overflows 64 bits"));
                }
                return Ok(value);
            }
        }
        Err(self.error("varint longer than 10 bytes"))
    }

    /// A field's key: (field number, wire type), checked as `prost` checks it.
    fn key(&mut self) -> Result<(u32, u64), DecodeError> {
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| self.error("invalid key"))?;
        let wire = key & 7;
        if wire > I32 {
            return Err(self.error("invalid wire type"));
        }
        if number == 0 {
            return Err(self.error("invalid tag: 0"));
        }
        Ok((number, wire))
    }

    /// The payload of a LEN field whose key was just read.
    fn payload(&mut self) -> Result<(&'a [u8], usize), DecodeError> {
        let len = self.varint()?;
        let start = self.pos;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| start.checked_add(len))
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| self.error("length past the end of the message"))?;
        self.pos = end;
        Ok((&self.buf[start..end], self.base + start))
    }

    fn advance(&mut self, n: usize) -> Result<(), DecodeError> {
        if self.buf.len() - self.pos < n {
            return Err(self.error("truncated fixed-width value"));
        }
        self.pos += n;
        Ok(())
    }

    /// Skips the run of empty elements (`key` and a zero length) that follows, and returns
    /// how many there were; a long run is compared a block at a time.
    fn empty_run(&mut self, key: u8) -> usize {
        const SHORT: usize = 64;
        const BLOCK: usize = 512;
        let start = self.pos;
        let pairs = |c: &mut Self, most: usize| {
            let mut n = 0;
            while n < most
                && c.buf.len() - c.pos >= 2
                && c.buf[c.pos] == key
                && c.buf[c.pos + 1] == 0
            {
                c.pos += 2;
                n += 1;
            }
            n
        };
        if pairs(self, SHORT) == SHORT {
            let mut pattern = [0u8; BLOCK];
            for pair in pattern.chunks_exact_mut(2) {
                pair[0] = key;
            }
            while self.buf.len() - self.pos >= BLOCK
                && self.buf[self.pos..self.pos + BLOCK] == pattern
            {
                self.pos += BLOCK;
            }
            pairs(self, usize::MAX);
        }
        (self.pos - start) / 2
    }

    /// Skips a field that holds no heap memory once decoded, group fields included (walked
    /// as a flat run of fields up to the matching end: no recursion a body could deepen).
    fn skip(&mut self, wire: u64) -> Result<(), DecodeError> {
        let mut groups = 0usize;
        let mut wire = wire;
        loop {
            match wire {
                VARINT => {
                    self.varint()?;
                }
                I64 => self.advance(8)?,
                I32 => self.advance(4)?,
                LEN => {
                    self.payload()?;
                }
                START_GROUP => groups += 1,
                END_GROUP => {
                    if groups == 0 {
                        return Err(self.error("unexpected end group"));
                    }
                    groups -= 1;
                }
                _ => return Err(self.error("invalid wire type")),
            }
            if groups == 0 {
                return Ok(());
            }
            wire = self.key()?.1;
        }
    }
}

/// The heap held by the decoded fields of one message of type `schema` (its bytes are `buf`, at
/// `base` in the body), nested `depth` messages deep.
fn message(
    buf: &[u8],
    base: usize,
    schema: &'static Schema,
    depth: u32,
) -> Result<usize, DecodeError> {
    let mut c = Cursor { buf, pos: 0, base };
    // Elements of each repeated field, by the field's index in `schema.fields`: a field may
    // come back later in the message, and all its elements go to one `Vec`.
    let mut counts = [0usize; MAX_FIELDS];
    let mut total = 0usize;
    while c.pos < buf.len() {
        let (number, wire) = c.key()?;
        let Some(i) = schema.fields.iter().position(|f| f.number == number) else {
            c.skip(wire)?;
            continue;
        };
        match schema.fields[i].kind {
            Kind::Bytes | Kind::RepeatedBytes => {
                if wire != LEN {
                    return Err(c.error("invalid wire type for a string or bytes field"));
                }
                let (bytes, _) = c.payload()?;
                total = total.saturating_add(bytes_len(bytes.len()));
                counts[i] += 1;
            }
            Kind::Message(inner) | Kind::RepeatedMessage(inner, _) => {
                if wire != LEN {
                    return Err(c.error("invalid wire type for a message field"));
                }
                if depth >= MAX_DEPTH {
                    return Err(c.error("recursion limit reached"));
                }
                let (bytes, at) = c.payload()?;
                counts[i] += 1;
                if !bytes.is_empty() {
                    let inner_total = message(bytes, at, inner, depth + 1)?;
                    total = total.saturating_add(inner_total);
                } else if let Kind::RepeatedMessage(..) = schema.fields[i].kind
                    && let Ok(key) = u8::try_from(number << 3 | LEN as u32)
                {
                    // An empty element holds nothing of its own, and hostile bodies repeat
                    // them by the million: count the run at once.
                    counts[i] += c.empty_run(key);
                }
            }
            Kind::RepeatedFixed64 => match wire {
                I64 => {
                    c.advance(8)?;
                    counts[i] += 1;
                }
                LEN => counts[i] += c.payload()?.0.len().div_ceil(8),
                _ => return Err(c.error("invalid wire type for a repeated fixed64")),
            },
            Kind::RepeatedVarint64 => match wire {
                VARINT => {
                    c.varint()?;
                    counts[i] += 1;
                }
                // Every varint ends with the one byte of it under 0x80.
                LEN => counts[i] += c.payload()?.0.iter().filter(|&&b| b < 0x80).count(),
                _ => return Err(c.error("invalid wire type for a repeated uint64")),
            },
        }
    }
    for (f, &n) in schema.fields.iter().zip(&counts) {
        let size = match f.kind {
            Kind::Bytes | Kind::Message(_) => continue,
            Kind::RepeatedBytes => size_of::<String>(),
            Kind::RepeatedMessage(_, size) => size,
            Kind::RepeatedFixed64 | Kind::RepeatedVarint64 => size_of::<u64>(),
        };
        total = total.saturating_add(vec_bytes(n, size));
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------------
// The OTLP/JSON scan.

/// An upper bound of the heap an OTLP/JSON request (traces, metrics or logs) decoded from
/// `body` by [`crate::json`] holds, found by one pass over the text that tells strings apart
/// (a `]` inside a string closes nothing).
///
/// The bound holds for any body, valid or not (the decoder allocates only for what it read
/// before an error):
/// - each array the decoder makes a `Vec` of: its element size (known from the key before it,
///   e.g. `"spans"`; the largest OTLP list element for an escaped key, a nested or top-level
///   array) times twice its element count (at least 4), elements counted as its commas plus
///   one; arrays under keys the decoder has no list for cost nothing (it skips them);
/// - each string value: its length, plus 4 for base64 rounding; with escapes, three times its
///   length plus 16 (the unescaped copy, its growth, and what is decoded from it); each key
///   with escapes: the same (a key without escapes is borrowed from the body);
/// - numbers, `true`, `false`, `null` and objects: nothing (objects become messages inline
///   in a parent, or elements counted with their array).
pub fn json_decoded_size_bound(body: &[u8]) -> usize {
    /// An open array or object.
    #[derive(Clone, Copy, Default)]
    struct Open {
        array: bool,
        /// For an array: the size of one element of its `Vec`.
        element: usize,
        /// For an array: the commas at its level, and whether a value began in it.
        commas: usize,
        nonempty: bool,
    }
    fn close(open: Open) -> usize {
        if open.array {
            vec_bytes(open.commas + usize::from(open.nonempty), open.element)
        } else {
            0
        }
    }
    let mut stack = [Open::default(); JSON_MAX_DEPTH];
    let mut depth = 0usize;
    let mut total = 0usize;
    // The element size of a list under the last key read.
    let mut keyed_element = 0usize;
    let mut i = 0usize;
    while i < body.len() {
        let b = body[i];
        i += 1;
        if matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
            continue;
        }
        if matches!(b, b']' | b'}' | b',' | b':') {
            match b {
                b',' if depth > 0 && stack[depth - 1].array => stack[depth - 1].commas += 1,
                b']' | b'}' if depth > 0 => {
                    depth -= 1;
                    total = total.saturating_add(close(stack[depth]));
                }
                _ => {}
            }
            continue;
        }
        // A value (or a key) begins here.
        let parent_is_array = depth == 0 || stack[depth - 1].array;
        if depth > 0 && stack[depth - 1].array {
            stack[depth - 1].nonempty = true;
        }
        match b {
            b'"' => {
                let start = i;
                let mut escaped = false;
                while i < body.len() && body[i] != b'"' {
                    if body[i] == b'\\' {
                        escaped = true;
                        i += 1;
                    }
                    i += 1;
                }
                let text = &body[start..i.min(body.len())];
                i += 1;
                let mut after = i;
                while after < body.len() && matches!(body[after], b' ' | b'\n' | b'\r' | b'\t') {
                    after += 1;
                }
                let is_key = !parent_is_array && body.get(after) == Some(&b':');
                if escaped {
                    total = total.saturating_add(text.len().saturating_mul(3) + 16);
                }
                if is_key {
                    keyed_element = if escaped {
                        LARGEST_LIST_ELEMENT
                    } else {
                        list_element(text)
                    };
                } else if !escaped {
                    total = total.saturating_add(text.len() + 4);
                }
            }
            b'[' | b'{' => {
                if depth == JSON_MAX_DEPTH {
                    // The decoder refuses to go deeper: it stops here.
                    break;
                }
                let element = if parent_is_array {
                    LARGEST_LIST_ELEMENT
                } else {
                    keyed_element
                };
                stack[depth] = Open {
                    array: b == b'[',
                    element,
                    ..Open::default()
                };
                depth += 1;
            }
            // A number or a literal: no heap of its own.
            _ => {}
        }
    }
    stack[..depth]
        .iter()
        .fold(total, |t, &o| t.saturating_add(close(o)))
}

/// The JSON decoder's nesting limit (`json::reader`): it refuses a container this deep.
const JSON_MAX_DEPTH: usize = 128;

/// The size of one element of the `Vec` the JSON decoder makes of a list under `key`; 0 for
/// keys of no list (the decoder skips unknown keys, and refuses an array for a known scalar).
fn list_element(key: &[u8]) -> usize {
    match key {
        b"resourceSpans" | b"resource_spans" => size_of::<ResourceSpans>(),
        b"scopeSpans" | b"scope_spans" => size_of::<ScopeSpans>(),
        b"spans" => size_of::<Span>(),
        b"events" => size_of::<Event>(),
        b"links" => size_of::<Link>(),
        b"attributes" | b"metadata" | b"filteredAttributes" | b"filtered_attributes" => {
            size_of::<KeyValue>()
        }
        // `ArrayValue.values` and `KeyValueList.values`.
        b"values" => max(size_of::<AnyValue>(), size_of::<KeyValue>()),
        b"entityRefs" | b"entity_refs" => size_of::<EntityRef>(),
        b"idKeys" | b"id_keys" | b"descriptionKeys" | b"description_keys" => size_of::<String>(),
        b"resourceMetrics" | b"resource_metrics" => size_of::<ResourceMetrics>(),
        b"scopeMetrics" | b"scope_metrics" => size_of::<ScopeMetrics>(),
        b"metrics" => size_of::<Metric>(),
        b"dataPoints" | b"data_points" => DATA_POINT,
        b"bucketCounts" | b"bucket_counts" | b"explicitBounds" | b"explicit_bounds" => {
            size_of::<u64>()
        }
        b"exemplars" => size_of::<Exemplar>(),
        b"quantileValues" | b"quantile_values" => size_of::<ValueAtQuantile>(),
        b"resourceLogs" | b"resource_logs" => size_of::<ResourceLogs>(),
        b"scopeLogs" | b"scope_logs" => size_of::<ScopeLogs>(),
        b"logRecords" | b"log_records" => size_of::<LogRecord>(),
        _ => 0,
    }
}

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

/// The largest data point type (`dataPoints` of any metric).
const DATA_POINT: usize = max(
    max(
        size_of::<NumberDataPoint>(),
        size_of::<HistogramDataPoint>(),
    ),
    max(
        size_of::<ExponentialHistogramDataPoint>(),
        size_of::<SummaryDataPoint>(),
    ),
);

/// The largest element of any list the JSON decoder makes: for a list whose key is unknown
/// until unescaped.
const LARGEST_LIST_ELEMENT: usize = max(
    max(
        max(size_of::<ResourceSpans>(), size_of::<ScopeSpans>()),
        max(
            size_of::<Span>(),
            max(size_of::<Event>(), size_of::<Link>()),
        ),
    ),
    max(
        max(
            max(size_of::<KeyValue>(), size_of::<AnyValue>()),
            max(size_of::<EntityRef>(), DATA_POINT),
        ),
        max(
            max(size_of::<ResourceMetrics>(), size_of::<ScopeMetrics>()),
            max(
                max(size_of::<Metric>(), size_of::<Exemplar>()),
                max(
                    size_of::<ResourceLogs>(),
                    max(size_of::<ScopeLogs>(), size_of::<LogRecord>()),
                ),
            ),
        ),
    ),
);

// ---------------------------------------------------------------------------------------------
// The schemas: the fields of each OTLP message that hold heap memory once decoded (the field
// numbers are those of opentelemetry-proto's .proto files).

use Kind::{Bytes, Message, RepeatedBytes, RepeatedFixed64, RepeatedMessage, RepeatedVarint64};

static ANY_VALUE: Schema = Schema {
    fields: &[
        field(1, Bytes),                 // string_value
        field(5, Message(&ARRAY_VALUE)), // array_value
        field(6, Message(&KEY_VALUE_LIST)),
        field(7, Bytes), // bytes_value
    ],
};
static ARRAY_VALUE: Schema = Schema {
    fields: &[field(1, RepeatedMessage(&ANY_VALUE, size_of::<AnyValue>()))],
};
static KEY_VALUE_LIST: Schema = Schema {
    fields: &[field(1, RepeatedMessage(&KEY_VALUE, size_of::<KeyValue>()))],
};
static KEY_VALUE: Schema = Schema {
    fields: &[field(1, Bytes), field(2, Message(&ANY_VALUE))],
};
const ATTRIBUTES: Kind = RepeatedMessage(&KEY_VALUE, size_of::<KeyValue>());
static SCOPE: Schema = Schema {
    fields: &[field(1, Bytes), field(2, Bytes), field(3, ATTRIBUTES)],
};
static ENTITY_REF: Schema = Schema {
    fields: &[
        field(1, Bytes),
        field(2, Bytes),
        field(3, RepeatedBytes),
        field(4, RepeatedBytes),
    ],
};
static RESOURCE: Schema = Schema {
    fields: &[
        field(1, ATTRIBUTES),
        field(3, RepeatedMessage(&ENTITY_REF, size_of::<EntityRef>())),
    ],
};

static LOGS_REQUEST: Schema = Schema {
    fields: &[field(
        1,
        RepeatedMessage(&RESOURCE_LOGS, size_of::<ResourceLogs>()),
    )],
};
static RESOURCE_LOGS: Schema = Schema {
    fields: &[
        field(1, Message(&RESOURCE)),
        field(2, RepeatedMessage(&SCOPE_LOGS, size_of::<ScopeLogs>())),
        field(3, Bytes),
    ],
};
static SCOPE_LOGS: Schema = Schema {
    fields: &[
        field(1, Message(&SCOPE)),
        field(2, RepeatedMessage(&LOG_RECORD, size_of::<LogRecord>())),
        field(3, Bytes),
    ],
};
static LOG_RECORD: Schema = Schema {
    fields: &[
        field(3, Bytes),               // severity_text
        field(5, Message(&ANY_VALUE)), // body
        field(6, ATTRIBUTES),
        field(9, Bytes),  // trace_id
        field(10, Bytes), // span_id
        field(12, Bytes), // event_name
    ],
};

static METRICS_REQUEST: Schema = Schema {
    fields: &[field(
        1,
        RepeatedMessage(&RESOURCE_METRICS, size_of::<ResourceMetrics>()),
    )],
};
static RESOURCE_METRICS: Schema = Schema {
    fields: &[
        field(1, Message(&RESOURCE)),
        field(
            2,
            RepeatedMessage(&SCOPE_METRICS, size_of::<ScopeMetrics>()),
        ),
        field(3, Bytes),
    ],
};
static SCOPE_METRICS: Schema = Schema {
    fields: &[
        field(1, Message(&SCOPE)),
        field(2, RepeatedMessage(&METRIC, size_of::<Metric>())),
        field(3, Bytes),
    ],
};
static METRIC: Schema = Schema {
    fields: &[
        field(1, Bytes), // name
        field(2, Bytes), // description
        field(3, Bytes), // unit
        field(5, Message(&NUMBER_POINTS)),
        field(7, Message(&NUMBER_POINTS)),
        field(9, Message(&HISTOGRAM)),
        field(10, Message(&EXPONENTIAL_HISTOGRAM)),
        field(11, Message(&SUMMARY)),
        field(12, ATTRIBUTES), // metadata
    ],
};
/// `Gauge` and `Sum`: their data points (1).
static NUMBER_POINTS: Schema = Schema {
    fields: &[field(
        1,
        RepeatedMessage(&NUMBER_DATA_POINT, size_of::<NumberDataPoint>()),
    )],
};
static HISTOGRAM: Schema = Schema {
    fields: &[field(
        1,
        RepeatedMessage(&HISTOGRAM_DATA_POINT, size_of::<HistogramDataPoint>()),
    )],
};
static EXPONENTIAL_HISTOGRAM: Schema = Schema {
    fields: &[field(
        1,
        RepeatedMessage(
            &EXPONENTIAL_HISTOGRAM_DATA_POINT,
            size_of::<ExponentialHistogramDataPoint>(),
        ),
    )],
};
static SUMMARY: Schema = Schema {
    fields: &[field(
        1,
        RepeatedMessage(&SUMMARY_DATA_POINT, size_of::<SummaryDataPoint>()),
    )],
};
const EXEMPLARS: Kind = RepeatedMessage(&EXEMPLAR, size_of::<Exemplar>());
static NUMBER_DATA_POINT: Schema = Schema {
    fields: &[field(7, ATTRIBUTES), field(5, EXEMPLARS)],
};
static HISTOGRAM_DATA_POINT: Schema = Schema {
    fields: &[
        field(9, ATTRIBUTES),
        field(6, RepeatedFixed64), // bucket_counts
        field(7, RepeatedFixed64), // explicit_bounds
        field(8, EXEMPLARS),
    ],
};
static EXPONENTIAL_HISTOGRAM_DATA_POINT: Schema = Schema {
    fields: &[
        field(1, ATTRIBUTES),
        field(8, Message(&BUCKETS)), // positive
        field(9, Message(&BUCKETS)), // negative
        field(11, EXEMPLARS),
    ],
};
static BUCKETS: Schema = Schema {
    fields: &[field(2, RepeatedVarint64)],
};
static SUMMARY_DATA_POINT: Schema = Schema {
    fields: &[
        field(7, ATTRIBUTES),
        field(
            6,
            RepeatedMessage(&VALUE_AT_QUANTILE, size_of::<ValueAtQuantile>()),
        ),
    ],
};
static VALUE_AT_QUANTILE: Schema = Schema { fields: &[] };
static EXEMPLAR: Schema = Schema {
    fields: &[
        field(7, ATTRIBUTES),
        field(4, Bytes), // span_id
        field(5, Bytes), // trace_id
    ],
};
