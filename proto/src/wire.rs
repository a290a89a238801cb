//! Zero-copy reading of OTLP trace requests in the protobuf wire format.
//!
//! `TraceRequestView::parse` walks an `ExportTraceServiceRequest` (or `TracesData`, the same
//! bytes) once: it checks every nested message as `prost` decoding would (wire types, lengths,
//! UTF-8 strings, nesting depth), checks trace and span id lengths, and records where each
//! span's bytes are and which trace it belongs to. It allocates per resource and scope, never
//! per span attribute, so grouping spans by trace id can copy span bytes as they came instead
//! of decoding and re-encoding them.

use std::fmt;
use std::ops::Range;

/// Why a body is not a valid OTLP trace request; `path` names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    path: String,
    reason: String,
    invalid_id: bool,
}

impl WireError {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            path: String::new(),
            reason: reason.into(),
            invalid_id: false,
        }
    }

    /// Prepends a path segment as the error travels out of nested messages.
    fn within(mut self, segment: &str) -> Self {
        self.path = if self.path.is_empty() {
            segment.to_string()
        } else {
            format!("{segment}.{}", self.path)
        };
        self
    }

    /// The path of the field at fault, e.g. `resource_spans[0].scope_spans[0].spans[3].trace_id`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong with it.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// True when the bytes decode but an id has the wrong length.
    pub fn is_invalid_id(&self) -> bool {
        self.invalid_id
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

impl std::error::Error for WireError {}

type Result<T> = std::result::Result<T, WireError>;

/// The nesting limit, the same as `prost`'s.
const MAX_DEPTH: u32 = 100;

/// Protobuf wire types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WireType {
    Varint,
    I64,
    Len,
    I32,
}

/// One field as read from the wire.
struct Field<'a> {
    number: u32,
    wire: WireType,
    /// The payload of a LEN field (empty for the others).
    bytes: &'a [u8],
    /// The value of a VARINT field, or the little-endian value of a fixed-width one (0 for LEN).
    value: u64,
    /// Where the whole field (tag included) starts and ends in the buffer being read.
    span: Range<usize>,
}

/// Reads fields one after another from a message's bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    #[inline(always)]
    fn varint(&mut self) -> Result<u64> {
        // Tags and short lengths are one byte: the common case, kept short.
        if let Some(&b) = self.buf.get(self.pos)
            && b < 0x80
        {
            self.pos += 1;
            return Ok(u64::from(b));
        }
        self.varint_slow()
    }

    fn varint_slow(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(WireError::new("truncated varint"));
            };
            self.pos += 1;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                if i == 9 && b > 1 {
                    return Err(WireError::new("varint overflows 64 bits"));
                }
                return Ok(value);
            }
        }
        Err(WireError::new("varint longer than 10 bytes"))
    }

    #[inline(always)]
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                WireError::new(format!(
                    "field of {n} bytes runs past the end of its message"
                ))
            })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    #[inline(always)]
    fn next(&mut self) -> Result<Option<Field<'a>>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let start = self.pos;
        let tag = self.varint()?;
        // A key is at most 32 bits (field numbers end at 2^29 - 1), as prost checks: a longer
        // one in an unknown field would pass here and break decoding of the records built
        // from these bytes (found by fuzzing).
        let number = u32::try_from(tag)
            .map(|key| key >> 3)
            .map_err(|_| WireError::new("field number out of range"))?;
        if number == 0 {
            return Err(WireError::new("field number 0 is invalid"));
        }
        let (wire, bytes, value) = match tag & 7 {
            0 => (WireType::Varint, &[][..], self.varint()?),
            1 => {
                let b = self.take(8)?;
                let value = u64::from_le_bytes(b.try_into().expect("8 bytes taken"));
                (WireType::I64, &[][..], value)
            }
            2 => {
                let len = self.varint()?;
                let len =
                    usize::try_from(len).map_err(|_| WireError::new("length out of range"))?;
                (WireType::Len, self.take(len)?, 0)
            }
            5 => {
                let b = self.take(4)?;
                let value = u32::from_le_bytes(b.try_into().expect("4 bytes taken"));
                (WireType::I32, &[][..], u64::from(value))
            }
            3 | 4 => {
                return Err(WireError::new(format!(
                    "field {number} uses the deprecated group wire type"
                )));
            }
            w => {
                return Err(WireError::new(format!(
                    "field {number} has invalid wire type {w}"
                )));
            }
        };
        Ok(Some(Field {
            number,
            wire,
            bytes,
            value,
            span: start..self.pos,
        }))
    }
}

/// What a known field must be.
#[derive(Clone, Copy)]
enum Kind {
    Varint,
    Fixed64,
    Fixed32,
    Bytes,
    Str,
    /// A singular message field, checked by the function.
    Msg(fn(&[u8], u32) -> Result<()>),
    /// A repeated message field: errors name the entry's index.
    Repeated(fn(&[u8], u32) -> Result<()>),
}

impl Kind {
    fn wire(self) -> WireType {
        match self {
            Kind::Varint => WireType::Varint,
            Kind::Fixed64 => WireType::I64,
            Kind::Fixed32 => WireType::I32,
            Kind::Bytes | Kind::Str | Kind::Msg(_) | Kind::Repeated(_) => WireType::Len,
        }
    }
}

/// Checks one known field's wire type and content; errors carry the path below the field.
#[inline(always)]
fn check_field(f: &Field<'_>, kind: Kind, depth: u32) -> Result<()> {
    if f.wire != kind.wire() {
        return Err(WireError::new(format!(
            "wire type {:?}, expected {:?}",
            f.wire,
            kind.wire()
        )));
    }
    match kind {
        // Most attribute keys and values are ASCII, which `is_ascii` checks a word at a time.
        Kind::Str if f.bytes.is_ascii() || std::str::from_utf8(f.bytes).is_ok() => Ok(()),
        Kind::Str => Err(WireError::new("string is not valid UTF-8")),
        Kind::Msg(check) | Kind::Repeated(check) => check(f.bytes, depth + 1),
        _ => Ok(()),
    }
}

/// The path segment of a field: `name`, or `name[i]` for the i-th entry of a repeated one.
fn segment(name: &str, kind: Kind, index: u32) -> String {
    match kind {
        Kind::Repeated(_) => format!("{name}[{index}]"),
        _ => name.to_string(),
    }
}

/// Validates a message against a table of its known fields; unknown fields are skipped.
/// Calls `seen` with each known field (number, LEN payload, scalar value), so callers can pick
/// values out in the same pass.
fn walk<'a>(
    buf: &'a [u8],
    depth: u32,
    fields: &[(u32, &str, Kind)],
    mut seen: impl FnMut(u32, &'a [u8], u64),
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(WireError::new(format!(
            "messages nested deeper than {MAX_DEPTH} levels"
        )));
    }
    // Entries seen so far of each field, to name repeated ones by index.
    let mut counts = [0u32; 16];
    let mut r = Reader::new(buf);
    while let Some(f) = r.next()? {
        // Tables list fields by number, mostly 1, 2, 3...: try the direct index first.
        let direct = (f.number as usize)
            .checked_sub(1)
            .filter(|&i| fields.get(i).is_some_and(|e| e.0 == f.number));
        let Some(pos) = direct.or_else(|| fields.iter().position(|(n, _, _)| *n == f.number))
        else {
            continue;
        };
        let (_, name, kind) = fields[pos];
        let index = counts.get(pos).copied().unwrap_or(0);
        if let Some(c) = counts.get_mut(pos) {
            *c += 1;
        }
        check_field(&f, kind, depth).map_err(|e| e.within(&segment(name, kind, index)))?;
        seen(f.number, f.bytes, f.value);
    }
    Ok(())
}

fn check_message(buf: &[u8], depth: u32, fields: &[(u32, &str, Kind)]) -> Result<()> {
    walk(buf, depth, fields, |_, _, _| {})
}

fn any_value(buf: &[u8], depth: u32) -> Result<()> {
    check_message(
        buf,
        depth,
        &[
            (1, "string_value", Kind::Str),
            (2, "bool_value", Kind::Varint),
            (3, "int_value", Kind::Varint),
            (4, "double_value", Kind::Fixed64),
            (5, "array_value", Kind::Msg(array_value)),
            (6, "kvlist_value", Kind::Msg(kvlist_value)),
            (7, "bytes_value", Kind::Bytes),
            (8, "string_value_strindex", Kind::Varint),
        ],
    )
}

fn array_value(buf: &[u8], depth: u32) -> Result<()> {
    check_message(buf, depth, &[(1, "values", Kind::Repeated(any_value))])
}

fn kvlist_value(buf: &[u8], depth: u32) -> Result<()> {
    check_message(buf, depth, &[(1, "values", Kind::Repeated(key_value))])
}

fn key_value(buf: &[u8], depth: u32) -> Result<()> {
    check_message(
        buf,
        depth,
        &[
            (1, "key", Kind::Str),
            (2, "value", Kind::Msg(any_value)),
            (3, "key_strindex", Kind::Varint),
        ],
    )
}

fn entity_ref(buf: &[u8], depth: u32) -> Result<()> {
    check_message(
        buf,
        depth,
        &[
            (1, "schema_url", Kind::Str),
            (2, "type", Kind::Str),
            (3, "id_keys", Kind::Str),
            (4, "description_keys", Kind::Str),
        ],
    )
}

fn resource(buf: &[u8], depth: u32) -> Result<()> {
    check_message(
        buf,
        depth,
        &[
            (1, "attributes", Kind::Repeated(key_value)),
            (2, "dropped_attributes_count", Kind::Varint),
            (3, "entity_refs", Kind::Repeated(entity_ref)),
        ],
    )
}

fn scope(buf: &[u8], depth: u32) -> Result<()> {
    check_message(
        buf,
        depth,
        &[
            (1, "name", Kind::Str),
            (2, "version", Kind::Str),
            (3, "attributes", Kind::Repeated(key_value)),
            (4, "dropped_attributes_count", Kind::Varint),
        ],
    )
}

fn event(buf: &[u8], depth: u32) -> Result<()> {
    check_message(
        buf,
        depth,
        &[
            (1, "time_unix_nano", Kind::Fixed64),
            (2, "name", Kind::Str),
            (3, "attributes", Kind::Repeated(key_value)),
            (4, "dropped_attributes_count", Kind::Varint),
        ],
    )
}

fn status(buf: &[u8], depth: u32) -> Result<()> {
    check_message(
        buf,
        depth,
        &[(2, "message", Kind::Str), (3, "code", Kind::Varint)],
    )
}

/// Checks an id's length: `required` ids must have `len` bytes, others may also be empty.
fn check_id(bytes: &[u8], name: &str, len: usize, required: bool) -> Result<()> {
    if bytes.len() == len || (!required && bytes.is_empty()) {
        return Ok(());
    }
    let optional = if required { "" } else { " or empty" };
    Err(WireError {
        path: name.to_string(),
        reason: format!("must be {len} bytes{optional}, got {} bytes", bytes.len()),
        invalid_id: true,
    })
}

fn link(buf: &[u8], depth: u32) -> Result<()> {
    let (mut trace_id, mut span_id) = (&[][..], &[][..]);
    walk(
        buf,
        depth,
        &[
            (1, "trace_id", Kind::Bytes),
            (2, "span_id", Kind::Bytes),
            (3, "trace_state", Kind::Str),
            (4, "attributes", Kind::Repeated(key_value)),
            (5, "dropped_attributes_count", Kind::Varint),
            (6, "flags", Kind::Fixed32),
        ],
        |n, b, _| match n {
            1 => trace_id = b,
            2 => span_id = b,
            _ => {}
        },
    )?;
    check_id(trace_id, "trace_id", 16, true)?;
    check_id(span_id, "span_id", 8, true)
}

/// The fields of `Span`.
const SPAN_FIELDS: &[(u32, &str, Kind)] = &[
    (1, "trace_id", Kind::Bytes),
    (2, "span_id", Kind::Bytes),
    (3, "trace_state", Kind::Str),
    (4, "parent_span_id", Kind::Bytes),
    (5, "name", Kind::Str),
    (6, "kind", Kind::Varint),
    (7, "start_time_unix_nano", Kind::Fixed64),
    (8, "end_time_unix_nano", Kind::Fixed64),
    (9, "attributes", Kind::Repeated(key_value)),
    (10, "dropped_attributes_count", Kind::Varint),
    (11, "events", Kind::Repeated(event)),
    (12, "dropped_events_count", Kind::Varint),
    (13, "links", Kind::Repeated(link)),
    (14, "dropped_links_count", Kind::Varint),
    (15, "status", Kind::Msg(status)),
    (16, "flags", Kind::Fixed32),
];

/// Validates a span and records what later readers need, so that they never walk its bytes
/// again: its trace id, its scalar fields, and where its name, trace state and attributes are.
fn span(buf: &[u8], depth: u32, entry: &mut SpanEntry) -> Result<()> {
    let (mut trace_id, mut span_id, mut parent) = (&[][..], &[][..], &[][..]);
    let mut attributes = (u32::MAX, 0);
    // Payloads are subslices of `buf`: their offsets are pointer differences.
    let offset = |b: &[u8]| (b.as_ptr() as usize - buf.as_ptr() as usize) as u32;
    let range = |b: &[u8]| (offset(b), offset(b) + b.len() as u32);
    walk(buf, depth, SPAN_FIELDS, |n, b, value| match n {
        1 => trace_id = b,
        2 => span_id = b,
        3 => entry.trace_state = range(b),
        4 => parent = b,
        5 => entry.name = range(b),
        // An enum is an int32: a negative value is sign-extended to 64 bits on the wire.
        6 => entry.kind = value as i32,
        7 => entry.start_time_unix_nano = value,
        8 => entry.end_time_unix_nano = value,
        9 => {
            // Field 9's tag is one byte, then the length.
            let field_start = offset(b) - 1 - varint_len(b.len() as u64) as u32;
            attributes = (attributes.0.min(field_start), offset(b) + b.len() as u32);
        }
        // A repeated message field merges: a later `status` without a code keeps the earlier
        // code, as prost and every consumer read it (found by fuzzing).
        15 => {
            if let Some(code) = Validated::new(b)
                .filter(|s| s.number == 3 && s.wire == VARINT)
                .last()
            {
                entry.status_code = code.value as i32;
            }
        }
        _ => {}
    })?;
    check_id(trace_id, "trace_id", 16, true)?;
    check_id(span_id, "span_id", 8, true)?;
    check_id(parent, "parent_span_id", 8, false)?;
    entry.trace_id = trace_id.try_into().expect("length checked above");
    entry.is_root = parent.is_empty();
    entry.attributes = (attributes.0.min(attributes.1), attributes.1);
    Ok(())
}

/// A `ResourceSpans` of the request: its fields other than `scope_spans`, as they came.
#[derive(Debug, Clone, Default)]
pub struct ResourceEntry {
    /// The encoded fields other than `scope_spans` (the resource, the schema URL, unknown ones).
    pub head: Vec<u8>,
}

/// A `ScopeSpans` of the request: its resource and its fields other than `spans`.
#[derive(Debug, Clone, Default)]
pub struct ScopeEntry {
    /// Index into `TraceRequestView::resources`.
    pub resource: u32,
    /// The encoded fields other than `spans` (the scope, the schema URL, unknown ones).
    pub head: Vec<u8>,
}

/// A span of the request: where its bytes are, which trace it belongs to, and the fields a
/// policy reads, as validation found them.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpanEntry {
    /// Index into `TraceRequestView::scopes`.
    pub scope: u32,
    /// The span message's bytes (without tag and length) in the request body.
    pub start: u32,
    /// End of the span's bytes.
    pub end: u32,
    /// The span's trace id.
    pub trace_id: [u8; 16],
    /// Where the name's bytes are, as offsets into the span's bytes (start, end).
    pub name: (u32, u32),
    /// Where the span's attribute fields are, from the first one's tag to the last one's end,
    /// as offsets into the span's bytes.
    pub attributes: (u32, u32),
    /// Where the `trace_state` bytes are, as offsets into the span's bytes.
    pub trace_state: (u32, u32),
    /// `kind` (0 when absent).
    pub kind: i32,
    /// `status.code` (0 when absent).
    pub status_code: i32,
    /// `start_time_unix_nano`.
    pub start_time_unix_nano: u64,
    /// `end_time_unix_nano`.
    pub end_time_unix_nano: u64,
    /// True when `parent_span_id` is empty.
    pub is_root: bool,
}

impl SpanEntry {
    /// The span's range in the request body.
    pub fn range(&self) -> Range<usize> {
        self.start as usize..self.end as usize
    }

    /// The name's bytes (UTF-8, as validated), given the span's bytes.
    pub fn name<'a>(&self, span: &'a [u8]) -> &'a [u8] {
        part(span, self.name)
    }

    /// The `trace_state` bytes (UTF-8, as validated), given the span's bytes.
    pub fn trace_state<'a>(&self, span: &'a [u8]) -> &'a [u8] {
        part(span, self.trace_state)
    }

    /// The span's attributes as bytes (see [`raw_attributes`]), given the span's bytes: reads
    /// only where validation found them.
    pub fn raw_attributes<'a>(&self, span: &'a [u8]) -> RawAttributes<'a> {
        raw_attributes(part(span, self.attributes), 9)
    }

    /// The span's attributes, in order, given the span's bytes: reads only where validation
    /// found them.
    pub fn attributes<'a>(
        &self,
        span: &'a [u8],
    ) -> impl Iterator<Item = (&'a str, WireValue<'a>)> + 'a {
        attributes(part(span, self.attributes), 9)
    }

    /// Calls `visit` with the key and string value (see [`raw_attributes`]) of each attribute
    /// whose key `wanted` accepts, given the span's bytes. A key is read before its value, and
    /// the value only when the key is wanted: most keys are not, and cost a few comparisons.
    #[inline]
    pub fn scan_attributes<'a>(
        &self,
        span: &'a [u8],
        wanted: impl Fn(&[u8]) -> bool,
        mut visit: impl FnMut(&'a [u8], Option<&'a [u8]>),
    ) {
        let region = part(span, self.attributes);
        let mut pos = 0;
        while let Some(rest) = region.get(pos..)
            && !rest.is_empty()
        {
            // The usual entry: tag 9 LEN, a one-byte length, the key first with a one-byte
            // length.
            if let [0x4a, len, entry @ ..] = rest
                && *len < 0x80
                && let Some(kv) = entry.get(..usize::from(*len))
                && let [0x0a, key_len, key_rest @ ..] = kv
                && *key_len < 0x80
                && let Some(key) = key_rest.get(..usize::from(*key_len))
            {
                pos += 2 + kv.len();
                if wanted(key) {
                    let (k, text) = key_and_text(kv);
                    visit(k, text);
                }
                continue;
            }
            // Anything else: the general reader, from here to the end.
            for (k, text) in raw_attributes(rest, 9) {
                if wanted(k) {
                    visit(k, text);
                }
            }
            return;
        }
    }
}

/// The bytes of `span` between the offsets `(start, end)` that validation recorded.
fn part(span: &[u8], (start, end): (u32, u32)) -> &[u8] {
    span.get(start as usize..end as usize).unwrap_or(&[])
}

/// A validated trace request, as positions in its body.
#[derive(Debug, Default)]
pub struct TraceRequestView {
    /// The resources, in request order.
    pub resources: Vec<ResourceEntry>,
    /// The scopes, in request order.
    pub scopes: Vec<ScopeEntry>,
    /// The spans, in request order.
    pub spans: Vec<SpanEntry>,
}

impl TraceRequestView {
    /// Validates `body` as an `ExportTraceServiceRequest` and indexes its spans.
    pub fn parse(body: &[u8]) -> Result<Self> {
        if u32::try_from(body.len()).is_err() {
            return Err(WireError::new(
                "a trace request over 4 GiB is not supported",
            ));
        }
        let mut view = TraceRequestView::default();
        let mut top = Reader::new(body);
        let mut ri = 0usize;
        while let Some(f) = top.next()? {
            if f.number != 1 {
                continue;
            }
            let seg = || format!("resource_spans[{ri}]");
            if f.wire != WireType::Len {
                return Err(WireError::new("wire type is not Len").within(&seg()));
            }
            view.resource_spans(body, f.bytes, 2)
                .map_err(|e| e.within(&seg()))?;
            ri += 1;
        }
        Ok(view)
    }

    fn resource_spans(&mut self, body: &[u8], buf: &[u8], depth: u32) -> Result<()> {
        let resource_index = self.resources.len() as u32;
        self.resources.push(ResourceEntry::default());
        let mut head = Vec::new();
        let mut si = 0usize;
        let mut r = Reader::new(buf);
        while let Some(f) = r.next()? {
            match f.number {
                1 => {
                    check_field(&f, Kind::Msg(resource), depth).map_err(|e| e.within("resource"))?
                }
                2 => {
                    let seg = || format!("scope_spans[{si}]");
                    if f.wire != WireType::Len {
                        return Err(WireError::new("wire type is not Len").within(&seg()));
                    }
                    self.scope_spans(body, f.bytes, resource_index, depth + 1)
                        .map_err(|e| e.within(&seg()))?;
                    si += 1;
                    continue;
                }
                3 => check_field(&f, Kind::Str, depth).map_err(|e| e.within("schema_url"))?,
                _ => {}
            }
            head.extend_from_slice(&buf[f.span.clone()]);
        }
        self.resources[resource_index as usize].head = head;
        Ok(())
    }

    fn scope_spans(&mut self, body: &[u8], buf: &[u8], resource: u32, depth: u32) -> Result<()> {
        let scope_index = self.scopes.len() as u32;
        self.scopes.push(ScopeEntry {
            resource,
            head: Vec::new(),
        });
        let mut head = Vec::new();
        let mut i = 0usize;
        let mut r = Reader::new(buf);
        while let Some(f) = r.next()? {
            match f.number {
                1 => check_field(&f, Kind::Msg(scope), depth).map_err(|e| e.within("scope"))?,
                2 => {
                    let seg = || format!("spans[{i}]");
                    if f.wire != WireType::Len {
                        return Err(WireError::new("wire type is not Len").within(&seg()));
                    }
                    // The payload is a subslice of `body`: its offset is a pointer difference.
                    let start = f.bytes.as_ptr() as usize - body.as_ptr() as usize;
                    let mut entry = SpanEntry {
                        scope: scope_index,
                        start: start as u32,
                        end: (start + f.bytes.len()) as u32,
                        ..SpanEntry::default()
                    };
                    span(f.bytes, depth + 1, &mut entry).map_err(|e| e.within(&seg()))?;
                    self.spans.push(entry);
                    i += 1;
                    continue;
                }
                3 => check_field(&f, Kind::Str, depth).map_err(|e| e.within("schema_url"))?,
                _ => {}
            }
            head.extend_from_slice(&buf[f.span.clone()]);
        }
        self.scopes[scope_index as usize].head = head;
        Ok(())
    }
}

/// An attribute value read from the wire. Arrays, maps and bytes are `Other`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WireValue<'a> {
    /// `string_value`.
    Str(&'a str),
    /// `int_value`.
    Int(i64),
    /// `double_value`.
    Double(f64),
    /// `bool_value`.
    Bool(bool),
    /// An array, key-value list or bytes value, or no value.
    Other,
}

/// Reads a validated message's fields, ignoring what cannot be read (it was validated).
fn fields(buf: &[u8]) -> impl Iterator<Item = Field<'_>> {
    let mut r = Reader::new(buf);
    std::iter::from_fn(move || r.next().ok().flatten())
}

/// A field of bytes that validation accepted, read by [`Validated`].
#[derive(Clone, Copy)]
struct Raw<'a> {
    number: u32,
    wire: u8,
    /// A LEN field's payload, or a fixed field's little-endian bytes.
    bytes: &'a [u8],
    /// A varint field's value.
    value: u64,
}

/// Reads the fields of validated bytes with no error reporting (the hot path's reader:
/// validation already said what was wrong); stops at anything malformed.
struct Validated<'a> {
    buf: &'a [u8],
    pos: usize,
}

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;

impl<'a> Validated<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    #[inline(always)]
    fn varint(&mut self) -> Option<u64> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        if b < 0x80 {
            return Some(u64::from(b));
        }
        let mut value = u64::from(b & 0x7f);
        for i in 1..10 {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Some(value);
            }
        }
        None
    }

    #[inline(always)]
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }
}

impl<'a> Iterator for Validated<'a> {
    type Item = Raw<'a>;

    #[inline(always)]
    fn next(&mut self) -> Option<Raw<'a>> {
        let tag = self.varint()?;
        let wire = (tag & 7) as u8;
        let (bytes, value) = match wire {
            VARINT => (&[][..], self.varint()?),
            I64 => (self.take(8)?, 0),
            LEN => {
                let n = usize::try_from(self.varint()?).ok()?;
                (self.take(n)?, 0)
            }
            5 => (self.take(4)?, 0),
            _ => return None,
        };
        Some(Raw {
            number: (tag >> 3) as u32,
            wire,
            bytes,
            value,
        })
    }
}

/// The little-endian u64 of a fixed64 field read by [`Validated`].
fn fixed64_of(f: &Raw<'_>) -> u64 {
    f.bytes.try_into().map_or(0, u64::from_le_bytes)
}

/// A validated string read by [`Validated`] (non-UTF-8 cannot occur; it reads as empty).
fn text_of<'a>(f: &Raw<'a>) -> &'a str {
    std::str::from_utf8(f.bytes).unwrap_or("")
}

/// The value of a varint field, read again from its bytes.
fn varint_at(buf: &[u8], f: &Field<'_>) -> u64 {
    let mut r = Reader::new(&buf[f.span.clone()]);
    let _ = r.varint();
    r.varint().unwrap_or(0)
}

/// A validated string field (non-UTF-8 cannot occur after validation; it reads as empty).
fn str_of<'a>(f: &Field<'a>) -> &'a str {
    std::str::from_utf8(f.bytes).unwrap_or("")
}

fn any_value_of(buf: &[u8]) -> WireValue<'_> {
    let mut out = WireValue::Other;
    for f in Validated::new(buf) {
        out = match (f.number, f.wire) {
            (1, LEN) => WireValue::Str(text_of(&f)),
            (2, VARINT) => WireValue::Bool(f.value != 0),
            (3, VARINT) => WireValue::Int(f.value as i64),
            (4, I64) => WireValue::Double(f64::from_bits(fixed64_of(&f))),
            _ => WireValue::Other,
        };
    }
    out
}

/// A `KeyValue`'s key and value bytes.
#[inline]
fn key_and_value(kv: &[u8]) -> (&[u8], Option<&[u8]>) {
    // The usual layout, key then value, each shorter than 128 bytes, read without a loop.
    if let [0x0a, key_len, rest @ ..] = kv
        && *key_len < 0x80
        && let Some((k, rest)) = rest.split_at_checked(usize::from(*key_len))
        && let [0x12, value_len, v @ ..] = rest
        && *value_len < 0x80
        && usize::from(*value_len) == v.len()
    {
        return (k, Some(v));
    }
    let (mut k, mut v) = (&[][..], None);
    for f in Validated::new(kv) {
        match (f.number, f.wire) {
            (1, LEN) => k = f.bytes,
            (2, LEN) => v = Some(f.bytes),
            _ => {}
        }
    }
    (k, v)
}

/// The `KeyValue` entries in field `field` of a validated message, in order.
pub fn attributes(message: &[u8], field: u32) -> impl Iterator<Item = (&str, WireValue<'_>)> {
    Validated::new(message)
        .filter(move |f| f.number == field && f.wire == LEN)
        .map(|f| {
            let (k, v) = key_and_value(f.bytes);
            let k = std::str::from_utf8(k).unwrap_or("");
            (k, v.map_or(WireValue::Other, any_value_of))
        })
}

/// The `KeyValue` entries in field `field` of a validated message as bytes: the key, and the
/// value when it is a string. No UTF-8 check and no number decoding, for lookups by bytes.
pub fn raw_attributes(message: &[u8], field: u32) -> RawAttributes<'_> {
    RawAttributes {
        fields: Validated::new(message),
        // Fields below 16 have one-byte tags, which the fast path compares directly.
        tag: if field < 16 {
            (field << 3) as u8 | LEN
        } else {
            0
        },
        field,
    }
}

/// The iterator of [`raw_attributes`].
pub struct RawAttributes<'a> {
    fields: Validated<'a>,
    tag: u8,
    field: u32,
}

impl<'a> Iterator for RawAttributes<'a> {
    type Item = (&'a [u8], Option<&'a [u8]>);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            // The usual entry: a one-byte tag and a one-byte length, read without the loop.
            let rest = self.fields.buf.get(self.fields.pos..)?;
            if let [tag, len, entry @ ..] = rest
                && *tag == self.tag
                && *len < 0x80
                && let Some(kv) = entry.get(..usize::from(*len))
            {
                self.fields.pos += 2 + kv.len();
                return Some(key_and_text(kv));
            }
            let f = self.fields.next()?;
            if f.number == self.field && f.wire == LEN {
                return Some(key_and_text(f.bytes));
            }
        }
    }
}

/// A `KeyValue`'s key, and its value when that is a string.
#[inline]
fn key_and_text(kv: &[u8]) -> (&[u8], Option<&[u8]>) {
    let (k, v) = key_and_value(kv);
    let text = v.and_then(|v| {
        // A short string value alone in its AnyValue, the usual case, without a loop.
        if let [0x0a, len, s @ ..] = v
            && *len < 0x80
            && usize::from(*len) == s.len()
        {
            return Some(s);
        }
        let mut text = None;
        for f in Validated::new(v) {
            text = (f.number == 1 && f.wire == LEN).then_some(f.bytes);
        }
        text
    });
    (k, text)
}

/// The attributes of a `ResourceEntry::head`, in order.
pub fn resource_attributes(head: &[u8]) -> impl Iterator<Item = (&str, WireValue<'_>)> {
    last_len_field(head, 1)
        .into_iter()
        .flat_map(|resource| attributes(resource, 1))
}

/// The payload of the last field `number` of a validated message, if it has one.
fn last_len_field(message: &[u8], number: u32) -> Option<&[u8]> {
    fields(message)
        .filter(|f| f.number == number && f.wire == WireType::Len)
        .last()
        .map(|f| f.bytes)
}

/// The scope name in a `ScopeEntry::head` (empty when absent).
pub fn scope_name(head: &[u8]) -> &str {
    last_len_field(head, 1)
        .and_then(|scope| last_len_field(scope, 1))
        .and_then(|n| std::str::from_utf8(n).ok())
        .unwrap_or("")
}

/// Writes span `bytes` with its `trace_state` replaced by `trace_state`: every other field is
/// copied as it came, the new `trace_state` (field 3) goes last.
pub fn write_span_with_trace_state(bytes: &[u8], trace_state: &str, out: &mut Vec<u8>) {
    for f in fields(bytes) {
        if f.number != 3 {
            out.extend_from_slice(&bytes[f.span.clone()]);
        }
    }
    if !trace_state.is_empty() {
        out.push(0x1a);
        put_varint(out, trace_state.len() as u64);
        out.extend_from_slice(trace_state.as_bytes());
    }
}

/// The encoded length of `write_span_with_trace_state`'s output.
pub fn span_with_trace_state_len(bytes: &[u8], trace_state: &str) -> usize {
    let old: usize = fields(bytes)
        .filter(|f| f.number == 3)
        .map(|f| f.span.len())
        .sum();
    let new = if trace_state.is_empty() {
        0
    } else {
        1 + varint_len(trace_state.len() as u64) + trace_state.len()
    };
    bytes.len() - old + new
}

/// Appends `v` as a protobuf varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The bytes `put_varint` writes for `v`.
pub fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Caps on a span's attributes (`limits.max_span_attributes`,
/// `limits.max_attribute_value_size`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttributeLimits {
    /// The most attributes a span keeps (`u32::MAX`: no cap).
    pub max_count: u32,
    /// The largest string or bytes value; arrays and maps count their encoded size
    /// (`usize::MAX`: no cap).
    pub max_value_size: usize,
}

/// How far a span goes past its `AttributeLimits`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttributeExcess {
    /// Attributes past the count, and array or map values over the size: dropped on truncation.
    pub dropped: u32,
    /// String and bytes values over the size: cut on truncation.
    pub truncated: u32,
}

impl AttributeExcess {
    /// True when the span is within its limits.
    pub fn is_empty(&self) -> bool {
        self.dropped == 0 && self.truncated == 0
    }
}

/// What to do with one attribute under the limits.
enum AttrFate<'a> {
    Keep,
    Drop,
    /// Keep the key field (its whole bytes) and a cut value: (AnyValue field tag, bytes).
    Cut(&'a [u8], u8, &'a [u8]),
}

/// Decides the fate of the `KeyValue` `kv` when `kept` attributes are already kept.
fn attribute_fate<'a>(kv: &'a [u8], kept: u32, limits: &AttributeLimits) -> AttrFate<'a> {
    let (mut key, mut value) = (&[][..], None);
    for f in fields(kv) {
        match (f.number, f.wire) {
            (1, WireType::Len) => key = &kv[f.span.clone()],
            (2, WireType::Len) => value = Some(f.bytes),
            _ => {}
        }
    }
    // The last field of an AnyValue is its value (a oneof: the last one wins).
    let last = value.and_then(|v| fields(v).last());
    if let Some(v) = &last
        && v.wire == WireType::Len
        && v.bytes.len() > limits.max_value_size
    {
        match v.number {
            1 => {
                let s = str_of(v);
                let mut n = limits.max_value_size;
                while !s.is_char_boundary(n) {
                    n -= 1;
                }
                if kept >= limits.max_count {
                    return AttrFate::Drop;
                }
                return AttrFate::Cut(key, 0x0a, &s.as_bytes()[..n]);
            }
            7 => {
                if kept >= limits.max_count {
                    return AttrFate::Drop;
                }
                return AttrFate::Cut(key, 0x3a, &v.bytes[..limits.max_value_size]);
            }
            _ => return AttrFate::Drop,
        }
    }
    if kept >= limits.max_count {
        AttrFate::Drop
    } else {
        AttrFate::Keep
    }
}

/// How far the validated span `bytes` goes past `limits` (its attributes only; events' and
/// links' attributes are not capped).
pub fn attribute_excess(bytes: &[u8], limits: &AttributeLimits) -> AttributeExcess {
    let mut out = AttributeExcess::default();
    let mut kept = 0u32;
    for f in fields(bytes) {
        if f.number != 9 || f.wire != WireType::Len {
            continue;
        }
        match attribute_fate(f.bytes, kept, limits) {
            AttrFate::Keep => kept += 1,
            AttrFate::Drop => out.dropped += 1,
            AttrFate::Cut(..) => {
                kept += 1;
                out.truncated += 1;
            }
        }
    }
    out
}

/// Writes the validated span `bytes` within `limits`: attributes past the count and array or
/// map values over the size are left out (and added to `dropped_attributes_count`, which
/// goes last), long string and bytes values are cut (strings on a character boundary).
/// Every other field is copied as it came.
pub fn write_span_within_limits(
    bytes: &[u8],
    limits: &AttributeLimits,
    out: &mut Vec<u8>,
) -> AttributeExcess {
    let mut excess = AttributeExcess::default();
    let mut kept = 0u32;
    let mut dropped_before = 0u64;
    for f in fields(bytes) {
        match (f.number, f.wire) {
            (9, WireType::Len) => match attribute_fate(f.bytes, kept, limits) {
                AttrFate::Keep => {
                    kept += 1;
                    out.extend_from_slice(&bytes[f.span.clone()]);
                }
                AttrFate::Drop => excess.dropped += 1,
                AttrFate::Cut(key, tag, value) => {
                    kept += 1;
                    excess.truncated += 1;
                    let any_len = 1 + varint_len(value.len() as u64) + value.len();
                    let kv_len = key.len() + 1 + varint_len(any_len as u64) + any_len;
                    out.push(0x4a);
                    put_varint(out, kv_len as u64);
                    out.extend_from_slice(key);
                    out.push(0x12);
                    put_varint(out, any_len as u64);
                    out.push(tag);
                    put_varint(out, value.len() as u64);
                    out.extend_from_slice(value);
                }
            },
            (10, WireType::Varint) => dropped_before = varint_at(bytes, &f),
            _ => out.extend_from_slice(&bytes[f.span.clone()]),
        }
    }
    let dropped = (dropped_before as u32).saturating_add(excess.dropped);
    if dropped > 0 {
        out.push(0x50);
        put_varint(out, u64::from(dropped));
    }
    excess
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::collector::trace::v1::ExportTraceServiceRequest;
    use crate::otlp::common::v1::{
        AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value::Value,
    };
    use crate::otlp::resource::v1::Resource;
    use crate::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span, span::Link};
    use prost::Message;

    fn kv(k: &str, v: Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn span(t: u8, s: u8) -> Span {
        Span {
            trace_id: vec![t; 16],
            span_id: vec![s; 8],
            name: format!("s{s}"),
            attributes: vec![
                kv("a", Value::StringValue("b".into())),
                kv("n", Value::IntValue(-5)),
            ],
            links: vec![Link {
                trace_id: vec![9; 16],
                span_id: vec![9; 8],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", Value::StringValue("svc".into()))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "lib".into(),
                        ..Default::default()
                    }),
                    spans,
                    schema_url: "s".into(),
                }],
                schema_url: "r".into(),
            }],
        }
    }

    #[test]
    fn indexes_spans_and_heads() {
        let req = request(vec![span(1, 1), span(2, 2), span(1, 3)]);
        let body = req.encode_to_vec();
        let view = TraceRequestView::parse(&body).unwrap();
        assert_eq!(view.resources.len(), 1);
        assert_eq!(view.scopes.len(), 1);
        assert_eq!(view.spans.len(), 3);
        assert_eq!(view.spans[1].trace_id, [2; 16]);
        for (entry, want) in view
            .spans
            .iter()
            .zip(&req.resource_spans[0].scope_spans[0].spans)
        {
            assert_eq!(Span::decode(&body[entry.range()]).unwrap(), *want);
        }
        let head = ResourceSpans::decode(&view.resources[0].head[..]).unwrap();
        assert_eq!(head.resource, req.resource_spans[0].resource);
        assert_eq!(head.schema_url, "r");
        let head = ScopeSpans::decode(&view.scopes[0].head[..]).unwrap();
        assert_eq!(head.scope.unwrap().name, "lib");
        assert_eq!(head.schema_url, "s");
    }

    #[test]
    fn bad_ids_are_named() {
        let mut bad = span(1, 1);
        bad.trace_id.pop();
        let body = request(vec![span(1, 1), bad]).encode_to_vec();
        let e = TraceRequestView::parse(&body).unwrap_err();
        assert!(e.is_invalid_id());
        assert_eq!(
            e.to_string(),
            "resource_spans[0].scope_spans[0].spans[1].trace_id: must be 16 bytes, got 15 bytes"
        );
        let mut bad = span(1, 1);
        bad.links[0].span_id = vec![1; 7];
        let e = TraceRequestView::parse(&request(vec![bad]).encode_to_vec()).unwrap_err();
        assert_eq!(
            e.path(),
            "resource_spans[0].scope_spans[0].spans[0].links[0].span_id"
        );
        let mut bad = span(1, 1);
        bad.parent_span_id = vec![1; 3];
        let e = TraceRequestView::parse(&request(vec![bad]).encode_to_vec()).unwrap_err();
        assert!(e.reason().contains("or empty"), "{e}");
    }

    #[test]
    fn agrees_with_prost_on_malformed_bodies() {
        let good = request(vec![span(1, 1), span(2, 2)]).encode_to_vec();
        // Every truncation and a set of byte flips: we must refuse whatever prost refuses.
        for cut in 0..good.len() {
            let b = &good[..cut];
            if ExportTraceServiceRequest::decode(b).is_err() {
                assert!(
                    TraceRequestView::parse(b).is_err(),
                    "accepted a body prost refuses (cut {cut})"
                );
            }
        }
        for i in 0..good.len() {
            for x in [0x80u8, 0xff, 0x01, 0x07] {
                let mut b = good.clone();
                b[i] ^= x;
                if ExportTraceServiceRequest::decode(&b[..]).is_err() {
                    assert!(
                        TraceRequestView::parse(&b).is_err(),
                        "accepted a body prost refuses (byte {i} ^ {x:#x})"
                    );
                }
            }
        }
    }

    /// Fuzzing regression (gateway/fuzz, otlp_proto_traces): a key over 32 bits, in a field
    /// the validator skips, was accepted while prost refuses it; records copied from such a
    /// body did not decode (a panic in the otlp_json encoding).
    #[test]
    fn keys_over_32_bits_are_refused() {
        let body = [0xd0, 0xfe, 0xc6, 0x93, 0x75, 0x00];
        assert!(ExportTraceServiceRequest::decode(&body[..]).is_err());
        let e = TraceRequestView::parse(&body).unwrap_err();
        assert_eq!(e.reason(), "field number out of range");
        // The largest valid field number still reads, as an unknown field.
        let mut body = Vec::new();
        put_varint(&mut body, ((1u64 << 29) - 1) << 3); // wire type 0, varint
        body.push(0);
        assert!(ExportTraceServiceRequest::decode(&body[..]).is_ok());
        assert!(TraceRequestView::parse(&body).unwrap().spans.is_empty());
    }

    /// Fuzzing regression (gateway/fuzz, otlp_proto_traces): a span with two `status` fields,
    /// the second without a code, read as UNSET while prost (and consumers) merge them into
    /// ERROR, so a policy's `status: error` missed it.
    #[test]
    fn a_later_status_without_code_keeps_the_code() {
        let body = hex::decode(
            "0a2c122a12280a100102030405060708090a0b0c0d0e0f10120801020304050607082a01737a0218027a03120178",
        )
        .unwrap();
        let decoded = ExportTraceServiceRequest::decode(&body[..]).unwrap();
        let status = decoded.resource_spans[0].scope_spans[0].spans[0]
            .status
            .clone();
        assert_eq!(status.map(|s| (s.code, s.message)), Some((2, "x".into())));
        let view = TraceRequestView::parse(&body).unwrap();
        assert_eq!(view.spans[0].status_code, 2, "as validation recorded it");
    }

    #[test]
    fn validation_records_the_span_fields() {
        use crate::otlp::trace::v1::Status;
        let mut sp = span(1, 1);
        sp.kind = 3;
        sp.start_time_unix_nano = 10;
        sp.end_time_unix_nano = u64::MAX;
        sp.trace_state = "ot=th:8".into();
        sp.parent_span_id = vec![7; 8];
        sp.status = Some(Status {
            code: 2,
            message: "boom".into(),
        });
        let mut negative = span(2, 2);
        negative.kind = -3;
        let body = request(vec![sp, negative]).encode_to_vec();
        let view = TraceRequestView::parse(&body).unwrap();
        let (e, bytes) = (&view.spans[0], &body[view.spans[0].range()]);
        assert_eq!(
            (e.name(bytes), e.trace_state(bytes), e.kind, e.status_code),
            (&b"s1"[..], &b"ot=th:8"[..], 3, 2)
        );
        assert_eq!(
            (e.start_time_unix_nano, e.end_time_unix_nano),
            (10, u64::MAX)
        );
        assert!(!e.is_root);
        let other = &view.spans[1];
        assert_eq!(
            (other.kind, other.status_code, other.is_root),
            (-3, 0, true)
        );
        assert_eq!(other.trace_state(&body[other.range()]), b"");
    }

    #[test]
    fn scanning_attributes_reads_only_wanted_keys_in_any_layout() {
        let long_key = "k".repeat(200);
        let mut sp = span(1, 1);
        sp.attributes = vec![
            kv("a", Value::StringValue("b".into())),
            kv(&long_key, Value::StringValue("long".into())),
            kv("n", Value::IntValue(-5)),
            kv("c", Value::StringValue("x".repeat(300))),
        ];
        let body = request(vec![sp]).encode_to_vec();
        let view = TraceRequestView::parse(&body).unwrap();
        let (e, bytes) = (&view.spans[0], &body[view.spans[0].range()]);
        let scan = |wanted: &dyn Fn(&[u8]) -> bool| {
            let mut out = Vec::new();
            e.scan_attributes(bytes, wanted, |k, v| {
                out.push((k.to_vec(), v.map(<[u8]>::to_vec)))
            });
            out
        };
        let all = scan(&|_| true);
        let expected: Vec<_> = e
            .raw_attributes(bytes)
            .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
            .collect();
        assert_eq!(all, expected);
        assert_eq!(all.len(), 4);
        let x300 = "x".repeat(300).into_bytes();
        assert_eq!(
            scan(&|k| k != b"a"),
            vec![
                (long_key.clone().into_bytes(), Some(b"long".to_vec())),
                (b"n".to_vec(), None),
                (b"c".to_vec(), Some(x300)),
            ]
        );
        assert_eq!(
            scan(&|k| k == b"a"),
            vec![(b"a".to_vec(), Some(b"b".to_vec()))]
        );
        // A key-value with its value first and its key second, and another field between
        // attributes: read by the general reader.
        let mut odd = Vec::new();
        odd.extend_from_slice(&[0x4a, 7, 0x12, 2, 0x0a, 0, 0x0a, 1, b'z']);
        odd.extend_from_slice(&[0x50, 1]); // dropped_attributes_count
        odd.extend_from_slice(&[0x4a, 3, 0x0a, 1, b'y']);
        let region_entry = SpanEntry {
            attributes: (0, odd.len() as u32),
            ..SpanEntry::default()
        };
        let mut got = Vec::new();
        region_entry.scan_attributes(
            &odd,
            |_| true,
            |k, v| got.push((k.to_vec(), v.map(<[u8]>::to_vec))),
        );
        assert_eq!(
            got,
            vec![(b"z".to_vec(), Some(Vec::new())), (b"y".to_vec(), None)]
        );
    }

    #[test]
    fn invalid_utf8_and_deep_nesting_are_refused() {
        let mut s = span(1, 1);
        s.name = "\u{e9}".into();
        let mut body = request(vec![s]).encode_to_vec();
        let pos = body.windows(2).position(|w| w == [0xc3, 0xa9]).unwrap();
        body[pos] = 0xff;
        let e = TraceRequestView::parse(&body).unwrap_err();
        assert!(
            e.to_string()
                .contains("spans[0].name: string is not valid UTF-8"),
            "{e}"
        );

        let mut v = AnyValue {
            value: Some(Value::IntValue(1)),
        };
        for _ in 0..120 {
            v = AnyValue {
                value: Some(Value::ArrayValue(ArrayValue { values: vec![v] })),
            };
        }
        let mut s = span(1, 1);
        s.attributes = vec![KeyValue {
            key: "deep".into(),
            value: Some(v),
            ..Default::default()
        }];
        let e = TraceRequestView::parse(&request(vec![s]).encode_to_vec()).unwrap_err();
        assert!(e.reason().contains("nested deeper"), "{e}");
    }

    #[test]
    fn reads_span_fields_and_attributes() {
        use crate::otlp::trace::v1::Status;
        let mut sp = span(1, 1);
        sp.kind = 3;
        sp.start_time_unix_nano = 10;
        sp.end_time_unix_nano = 250;
        sp.trace_state = "ot=th:8".into();
        sp.status = Some(Status {
            code: 2,
            message: "boom".into(),
        });
        sp.attributes.push(kv("ratio", Value::DoubleValue(0.5)));
        sp.attributes.push(kv("ok", Value::BoolValue(true)));
        let req = request(vec![sp.clone()]);
        let body = req.encode_to_vec();
        let view = TraceRequestView::parse(&body).unwrap();
        let (f, bytes) = (&view.spans[0], &body[view.spans[0].range()]);
        assert_eq!(
            (
                f.name(bytes),
                f.kind,
                f.status_code,
                f.trace_state(bytes),
                f.is_root
            ),
            (&b"s1"[..], 3, 2, &b"ot=th:8"[..], true)
        );
        assert_eq!((f.start_time_unix_nano, f.end_time_unix_nano), (10, 250));
        // The last entry with a key wins, as when the span is decoded.
        let attribute = |key: &str| {
            f.attributes(bytes)
                .filter(|(k, _)| *k == key)
                .last()
                .map(|(_, v)| v)
        };
        assert_eq!(attribute("a"), Some(WireValue::Str("b")));
        assert_eq!(attribute("n"), Some(WireValue::Int(-5)));
        assert_eq!(attribute("ratio"), Some(WireValue::Double(0.5)));
        assert_eq!(attribute("ok"), Some(WireValue::Bool(true)));
        assert_eq!(attribute("missing"), None);
        assert_eq!(
            resource_attributes(&view.resources[0].head)
                .find(|(k, _)| *k == "service.name")
                .map(|(_, v)| v),
            Some(WireValue::Str("svc"))
        );
        assert_eq!(scope_name(&view.scopes[0].head), "lib");
    }

    #[test]
    fn rewrites_trace_state() {
        let mut sp = span(1, 1);
        sp.trace_state = "ot=rv:abc".into();
        let bytes = sp.encode_to_vec();
        let mut out = Vec::new();
        write_span_with_trace_state(&bytes, "ot=rv:abc;th:8", &mut out);
        assert_eq!(
            out.len(),
            span_with_trace_state_len(&bytes, "ot=rv:abc;th:8")
        );
        let back = Span::decode(&out[..]).unwrap();
        assert_eq!(back.trace_state, "ot=rv:abc;th:8");
        assert_eq!(
            Span {
                trace_state: sp.trace_state.clone(),
                ..back
            },
            sp
        );
        for v in [0u64, 1, 127, 128, 16383, 16384, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
        }
    }
}

#[cfg(test)]
mod attribute_limit_tests {
    use super::*;
    use crate::otlp::common::v1::{AnyValue, ArrayValue, KeyValue, any_value::Value};
    use crate::otlp::trace::v1::Span;
    use prost::Message;

    fn kv(k: &str, v: Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn span(attributes: Vec<KeyValue>, dropped: u32) -> Vec<u8> {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            name: "op".into(),
            attributes,
            dropped_attributes_count: dropped,
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn limit(bytes: &[u8], max_count: u32, max_value_size: usize) -> (Span, AttributeExcess) {
        let limits = AttributeLimits {
            max_count,
            max_value_size,
        };
        let mut out = Vec::new();
        let excess = write_span_within_limits(bytes, &limits, &mut out);
        assert_eq!(excess, attribute_excess(bytes, &limits));
        (Span::decode(&out[..]).expect("a valid span"), excess)
    }

    #[test]
    fn spans_within_the_limits_are_unchanged() {
        let bytes = span(vec![kv("a", Value::StringValue("abc".into()))], 0);
        let (s, excess) = limit(&bytes, 1, 3);
        assert!(excess.is_empty());
        assert_eq!(s, Span::decode(&bytes[..]).unwrap());
    }

    #[test]
    fn counts_past_the_cap_are_dropped_and_recorded() {
        let attrs = (0..5)
            .map(|i| kv(&format!("k{i}"), Value::IntValue(i)))
            .collect();
        let (s, excess) = limit(&span(attrs, 2), 3, usize::MAX);
        assert_eq!(
            excess,
            AttributeExcess {
                dropped: 2,
                truncated: 0
            }
        );
        let keys: Vec<_> = s.attributes.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(keys, ["k0", "k1", "k2"]);
        assert_eq!(s.dropped_attributes_count, 4, "2 before + 2 now");
        assert_eq!(s.name, "op");
    }

    #[test]
    fn long_values_are_cut_on_char_boundaries_and_long_arrays_dropped() {
        let attrs = vec![
            kv("s", Value::StringValue("héllo".into())),
            kv("b", Value::BytesValue(vec![7; 10])),
            kv(
                "arr",
                Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(Value::StringValue("long enough".into())),
                    }],
                }),
            ),
            kv("i", Value::IntValue(1)),
        ];
        let (s, excess) = limit(&span(attrs, 0), 100, 2);
        assert_eq!(
            excess,
            AttributeExcess {
                dropped: 1,
                truncated: 2
            }
        );
        // "hé" is three bytes: the cut falls back to "h".
        assert_eq!(s.attributes[0], kv("s", Value::StringValue("h".into())));
        assert_eq!(s.attributes[1], kv("b", Value::BytesValue(vec![7; 2])));
        assert_eq!(s.attributes[2], kv("i", Value::IntValue(1)));
        assert_eq!(s.dropped_attributes_count, 1);
    }
}
