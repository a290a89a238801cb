//! The lenient OTLP/JSON decoder: pulls tokens from a [`Reader`] and builds the prost
//! messages directly, matching each key against its lowerCamelCase and proto (snake_case)
//! names and skipping unknown ones.

use std::borrow::Cow;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use super::JsonError;
use super::reader::{Reader, SyntaxError, Token};
use crate::otlp::collector::logs::v1::ExportLogsServiceRequest;
use crate::otlp::collector::metrics::v1::ExportMetricsServiceRequest;
use crate::otlp::collector::trace::v1::ExportTraceServiceRequest;
use crate::otlp::common::v1::{
    AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use crate::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use crate::otlp::metrics::v1::exponential_histogram_data_point::Buckets;
use crate::otlp::metrics::v1::summary_data_point::ValueAtQuantile;
use crate::otlp::metrics::v1::{
    AggregationTemporality, Exemplar, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge,
    Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    Summary, SummaryDataPoint, exemplar, metric, number_data_point,
};
use crate::otlp::resource::v1::Resource;
use crate::otlp::trace::v1::span::{Event, Link, SpanKind};
use crate::otlp::trace::v1::status::StatusCode;
use crate::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

/// Why decoding stopped: the text is not JSON, or the JSON is not the message.
enum Error {
    Syntax(SyntaxError),
    Invalid(JsonError),
}

impl From<SyntaxError> for Error {
    fn from(e: SyntaxError) -> Self {
        Error::Syntax(e)
    }
}

type Result<T> = std::result::Result<T, Error>;

pub(super) fn trace_request(
    body: &[u8],
) -> std::result::Result<ExportTraceServiceRequest, JsonError> {
    document(body, |r, path| {
        let mut req = ExportTraceServiceRequest::default();
        fields(r, path, |r, key, p| {
            match key {
                "resourceSpans" | "resource_spans" => {
                    req.resource_spans = list(r, p, resource_spans)?
                }
                _ => r.skip()?,
            }
            Ok(())
        })?;
        Ok(req)
    })
}

pub(super) fn metrics_request(
    body: &[u8],
) -> std::result::Result<ExportMetricsServiceRequest, JsonError> {
    document(body, |r, path| {
        let mut req = ExportMetricsServiceRequest::default();
        fields(r, path, |r, key, p| {
            match key {
                "resourceMetrics" | "resource_metrics" => {
                    req.resource_metrics = list(r, p, resource_metrics)?
                }
                _ => r.skip()?,
            }
            Ok(())
        })?;
        Ok(req)
    })
}

pub(super) fn logs_request(
    body: &[u8],
) -> std::result::Result<ExportLogsServiceRequest, JsonError> {
    document(body, |r, path| {
        let mut req = ExportLogsServiceRequest::default();
        fields(r, path, |r, key, p| {
            match key {
                "resourceLogs" | "resource_logs" => req.resource_logs = list(r, p, resource_logs)?,
                _ => r.skip()?,
            }
            Ok(())
        })?;
        Ok(req)
    })
}

/// Decodes the whole body with `root`, then checks that nothing but whitespace follows.
fn document<T>(
    body: &[u8],
    root: impl FnOnce(&mut Reader<'_>, &Path<'_>) -> Result<T>,
) -> std::result::Result<T, JsonError> {
    let decoded = Reader::new(body).map_err(Error::from).and_then(|mut r| {
        let value = root(&mut r, &Path::ROOT)?;
        r.finish()?;
        Ok(value)
    });
    decoded.map_err(|e| match e {
        Error::Invalid(e) => e,
        Error::Syntax(e) => syntax_error(body, e),
    })
}

/// Syntax errors are worded as serde_json words them (`expected value at line 2 column 4`),
/// so the body is parsed a second time, on this error path only.
fn syntax_error(body: &[u8], e: SyntaxError) -> JsonError {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Err(serde_error) => JsonError::new(String::new(), serde_error.to_string()),
        // Not expected: the reader accepts exactly JSON. Report the reader's own finding.
        Ok(_) => {
            let before = &body[..e.at.min(body.len())];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
            JsonError::new(
                String::new(),
                format!("{} at line {line} column {column}", e.what),
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Where in the document we are. A chain of stack frames, rendered only when an error is built,
// so the happy path allocates nothing for it.

#[derive(Clone, Copy)]
struct Path<'a> {
    parent: Option<&'a Path<'a>>,
    segment: Segment<'a>,
}

#[derive(Clone, Copy)]
enum Segment<'a> {
    Root,
    Key(&'a str),
    Index(usize),
}

impl Path<'_> {
    const ROOT: Path<'static> = Path {
        parent: None,
        segment: Segment::Root,
    };

    fn key<'b>(&'b self, key: &'b str) -> Path<'b> {
        Path {
            parent: Some(self),
            segment: Segment::Key(key),
        }
    }

    fn index(&self, index: usize) -> Path<'_> {
        Path {
            parent: Some(self),
            segment: Segment::Index(index),
        }
    }

    fn render(&self) -> String {
        let mut segments = Vec::new();
        let mut at = Some(self);
        while let Some(p) = at {
            segments.push(p.segment);
            at = p.parent;
        }
        let mut out = String::new();
        for segment in segments.iter().rev() {
            match segment {
                Segment::Root => {}
                Segment::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Segment::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
            }
        }
        out
    }

    fn error(&self, reason: impl Into<String>) -> Error {
        Error::Invalid(JsonError::new(self.render(), reason))
    }
}

/// The error for a value of the wrong kind: `expected {what}, found {the value}`.
fn unexpected(r: &mut Reader<'_>, path: &Path<'_>, what: &str) -> Error {
    match describe_next(r) {
        Ok(found) => path.error(format!("expected {what}, found {found}")),
        Err(e) => e,
    }
}

/// Consumes the next value and describes it for an error message.
fn describe_next(r: &mut Reader<'_>) -> Result<String> {
    Ok(match r.peek()? {
        Token::Null => "null".to_string(),
        Token::Bool => r.boolean()?.to_string(),
        Token::Number => r.number()?.to_string(),
        Token::String => quoted(&r.string()?),
        Token::Array => "an array".to_string(),
        Token::Object => "an object".to_string(),
    })
}

/// A string quoted for an error message, cut short if long.
fn quoted(s: &str) -> String {
    const MAX: usize = 40;
    if s.len() <= MAX {
        return format!("{s:?}");
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}...", &s[..end])
}

// ---------------------------------------------------------------------------------------------
// Structure.

/// Calls `f` for every member of the object at the reader whose value is not `null` (a `null`
/// member means the field's default, so skipping it is all there is to do). `f` must consume
/// the member's value, with `Reader::skip` for keys it does not know.
fn fields<'b>(
    r: &mut Reader<'b>,
    path: &Path<'_>,
    mut f: impl FnMut(&mut Reader<'b>, &str, &Path<'_>) -> Result<()>,
) -> Result<()> {
    if r.peek()? != Token::Object {
        return Err(unexpected(r, path, "an object"));
    }
    r.begin_object()?;
    let mut first = true;
    while let Some(key) = r.next_key(first)? {
        first = false;
        if r.peek()? == Token::Null {
            r.null()?;
            continue;
        }
        f(r, &key, &path.key(&key))?;
    }
    Ok(())
}

/// Decodes every element of the array at the reader with `f`.
fn list<'b, T>(
    r: &mut Reader<'b>,
    path: &Path<'_>,
    mut f: impl FnMut(&mut Reader<'b>, &Path<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    if r.peek()? != Token::Array {
        return Err(unexpected(r, path, "an array"));
    }
    r.begin_array()?;
    let mut out = Vec::new();
    while r.next_element(out.is_empty())? {
        let item = f(r, &path.index(out.len()))?;
        out.push(item);
    }
    Ok(out)
}

/// Stores a member of a oneof, refusing a second member: which one was meant is ambiguous.
fn set_oneof<T>(
    slot: &mut Option<(&'static str, T)>,
    name: &'static str,
    value: T,
    path: &Path<'_>,
) -> Result<()> {
    if let Some((previous, _)) = slot {
        return Err(path.error(format!(
            "{previous:?} is also set; only one of them is allowed"
        )));
    }
    *slot = Some((name, value));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Scalars.

fn string(r: &mut Reader<'_>, path: &Path<'_>) -> Result<String> {
    match r.peek()? {
        Token::String => Ok(r.string()?.into_owned()),
        _ => Err(unexpected(r, path, "a string")),
    }
}

fn boolean(r: &mut Reader<'_>, path: &Path<'_>) -> Result<bool> {
    match r.peek()? {
        Token::Bool => Ok(r.boolean()?),
        _ => Err(unexpected(r, path, "a boolean")),
    }
}

/// Any integer, from a JSON number or a decimal string; exponent forms such as `1e9` are
/// accepted when their value is integral, as protobuf's JSON parser does.
fn integer(r: &mut Reader<'_>, path: &Path<'_>) -> Result<i128> {
    match r.peek()? {
        Token::Number => {
            let text = r.number()?;
            parse_integer(text)
                .ok_or_else(|| path.error(format!("expected an integer, found {text}")))
        }
        Token::String => {
            let text = r.string()?;
            parse_integer(&text)
                .ok_or_else(|| path.error(format!("invalid integer {}", quoted(&text))))
        }
        _ => Err(unexpected(r, path, "a string or integer")),
    }
}

fn parse_integer(text: &str) -> Option<i128> {
    text.parse::<i128>().ok().or_else(|| {
        let f = text.parse::<f64>().ok()?;
        // `as` saturates at i128's bounds, far outside every range checked afterwards.
        (f.is_finite() && f.fract() == 0.0).then_some(f as i128)
    })
}

fn ranged<T: TryFrom<i128>>(r: &mut Reader<'_>, path: &Path<'_>, type_name: &str) -> Result<T> {
    let n = integer(r, path)?;
    T::try_from(n).map_err(|_| path.error(format!("integer {n} out of range for {type_name}")))
}

fn uint64(r: &mut Reader<'_>, path: &Path<'_>) -> Result<u64> {
    ranged(r, path, "uint64")
}

fn int64(r: &mut Reader<'_>, path: &Path<'_>) -> Result<i64> {
    ranged(r, path, "int64")
}

fn uint32(r: &mut Reader<'_>, path: &Path<'_>) -> Result<u32> {
    ranged(r, path, "uint32")
}

fn int32(r: &mut Reader<'_>, path: &Path<'_>) -> Result<i32> {
    ranged(r, path, "int32")
}

/// A double from a JSON number, a numeric string, or `"NaN"`, `"Infinity"`, `"-Infinity"`.
fn double(r: &mut Reader<'_>, path: &Path<'_>) -> Result<f64> {
    match r.peek()? {
        Token::Number => {
            let text = r.number()?;
            // Every JSON number parses; only magnitudes beyond f64's range come out infinite.
            text.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .ok_or_else(|| path.error(format!("number {text} out of range for double")))
        }
        Token::String => {
            let text = r.string()?;
            match &*text {
                "NaN" => Ok(f64::NAN),
                "Infinity" => Ok(f64::INFINITY),
                "-Infinity" => Ok(f64::NEG_INFINITY),
                // Rust also reads "inf" and "nan"; only the three spellings above are JSON's.
                other => other
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| {
                        path.error(format!("expected {DOUBLE}, found {}", quoted(other)))
                    }),
            }
        }
        _ => Err(unexpected(r, path, DOUBLE)),
    }
}

const DOUBLE: &str = r#"a number or "NaN", "Infinity", "-Infinity""#;

/// An enum as its integer value (unknown values are kept: proto3 enums are open) or its name.
fn enumeration(
    r: &mut Reader<'_>,
    path: &Path<'_>,
    type_name: &str,
    from_name: fn(&str) -> Option<i32>,
) -> Result<i32> {
    if r.peek()? != Token::String {
        return int32(r, path);
    }
    let text = r.string()?;
    if let Some(n) = from_name(&text) {
        return Ok(n);
    }
    let n = match parse_integer(&text) {
        Some(n) => n,
        None => return Err(path.error(format!("unknown {type_name} {}", quoted(&text)))),
    };
    i32::try_from(n).map_err(|_| path.error(format!("integer {n} out of range for int32")))
}

/// Trace and span ids: hex in either case; the caller checks their length.
fn hex_id(r: &mut Reader<'_>, path: &Path<'_>) -> Result<Vec<u8>> {
    if r.peek()? != Token::String {
        return Err(unexpected(r, path, "a hex string"));
    }
    let text = r.string()?;
    hex::decode(&*text).map_err(|e| {
        path.error(match e {
            hex::FromHexError::OddLength => format!("invalid hex: odd length {}", text.len()),
            hex::FromHexError::InvalidHexCharacter { c, index } => {
                format!("invalid hex: character {c:?} at offset {index}")
            }
            other => format!("invalid hex: {other}"),
        })
    })
}

const LENIENT_BASE64: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
const BASE64_STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT_BASE64);
const BASE64_URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT_BASE64);

/// `bytes` fields: standard base64, or URL-safe; padding optional (as protobuf's parser).
fn base64_bytes(r: &mut Reader<'_>, path: &Path<'_>) -> Result<Vec<u8>> {
    if r.peek()? != Token::String {
        return Err(unexpected(r, path, "a base64 string"));
    }
    let text: Cow<'_, str> = r.string()?;
    let engine = if text.contains(['-', '_']) {
        &BASE64_URL_SAFE
    } else {
        &BASE64_STANDARD
    };
    engine
        .decode(&*text)
        .map_err(|e| path.error(format!("invalid base64: {e}")))
}

fn string_list(r: &mut Reader<'_>, path: &Path<'_>) -> Result<Vec<String>> {
    list(r, path, string)
}

fn span_kind(r: &mut Reader<'_>, path: &Path<'_>) -> Result<i32> {
    enumeration(r, path, "SpanKind", |s| {
        SpanKind::from_str_name(s).map(|k| k as i32)
    })
}

fn status_code(r: &mut Reader<'_>, path: &Path<'_>) -> Result<i32> {
    enumeration(r, path, "StatusCode", |s| {
        StatusCode::from_str_name(s).map(|k| k as i32)
    })
}

fn severity_number(r: &mut Reader<'_>, path: &Path<'_>) -> Result<i32> {
    enumeration(r, path, "SeverityNumber", |s| {
        SeverityNumber::from_str_name(s).map(|k| k as i32)
    })
}

fn temporality(r: &mut Reader<'_>, path: &Path<'_>) -> Result<i32> {
    enumeration(r, path, "AggregationTemporality", |s| {
        AggregationTemporality::from_str_name(s).map(|k| k as i32)
    })
}

// ---------------------------------------------------------------------------------------------
// common.v1 and resource.v1

fn any_value(r: &mut Reader<'_>, path: &Path<'_>) -> Result<AnyValue> {
    use any_value::Value as V;
    let mut value = None;
    fields(r, path, |r, key, p| {
        let (name, decoded) = match key {
            "stringValue" | "string_value" => ("stringValue", V::StringValue(string(r, p)?)),
            "boolValue" | "bool_value" => ("boolValue", V::BoolValue(boolean(r, p)?)),
            "intValue" | "int_value" => ("intValue", V::IntValue(int64(r, p)?)),
            "doubleValue" | "double_value" => ("doubleValue", V::DoubleValue(double(r, p)?)),
            "arrayValue" | "array_value" => ("arrayValue", V::ArrayValue(array_value(r, p)?)),
            "kvlistValue" | "kvlist_value" => ("kvlistValue", V::KvlistValue(kvlist_value(r, p)?)),
            "bytesValue" | "bytes_value" => ("bytesValue", V::BytesValue(base64_bytes(r, p)?)),
            "stringValueStrindex" | "string_value_strindex" => {
                ("stringValueStrindex", V::StringValueStrindex(int32(r, p)?))
            }
            _ => return Ok(r.skip()?),
        };
        set_oneof(&mut value, name, decoded, p)
    })?;
    Ok(AnyValue {
        value: value.map(|(_, v)| v),
    })
}

fn array_value(r: &mut Reader<'_>, path: &Path<'_>) -> Result<ArrayValue> {
    let mut a = ArrayValue::default();
    fields(r, path, |r, key, p| {
        match key {
            "values" => a.values = list(r, p, any_value)?,
            _ => r.skip()?,
        }
        Ok(())
    })?;
    Ok(a)
}

fn kvlist_value(r: &mut Reader<'_>, path: &Path<'_>) -> Result<KeyValueList> {
    let mut l = KeyValueList::default();
    fields(r, path, |r, key, p| {
        match key {
            "values" => l.values = list(r, p, key_value)?,
            _ => r.skip()?,
        }
        Ok(())
    })?;
    Ok(l)
}

fn key_value(r: &mut Reader<'_>, path: &Path<'_>) -> Result<KeyValue> {
    let mut kv = KeyValue::default();
    fields(r, path, |r, key, p| {
        match key {
            "key" => kv.key = string(r, p)?,
            "value" => kv.value = Some(any_value(r, p)?),
            "keyStrindex" | "key_strindex" => kv.key_strindex = int32(r, p)?,
            _ => r.skip()?,
        }
        Ok(())
    })?;
    Ok(kv)
}

fn attributes(r: &mut Reader<'_>, path: &Path<'_>) -> Result<Vec<KeyValue>> {
    list(r, path, key_value)
}

fn scope(r: &mut Reader<'_>, path: &Path<'_>) -> Result<InstrumentationScope> {
    let mut s = InstrumentationScope::default();
    fields(r, path, |r, key, p| {
        match key {
            "name" => s.name = string(r, p)?,
            "version" => s.version = string(r, p)?,
            "attributes" => s.attributes = attributes(r, p)?,
            "droppedAttributesCount" | "dropped_attributes_count" => {
                s.dropped_attributes_count = uint32(r, p)?
            }
            _ => r.skip()?,
        }
        Ok(())
    })?;
    Ok(s)
}

fn entity_ref(r: &mut Reader<'_>, path: &Path<'_>) -> Result<EntityRef> {
    let mut e = EntityRef::default();
    fields(r, path, |r, key, p| {
        match key {
            "schemaUrl" | "schema_url" => e.schema_url = string(r, p)?,
            "type" => e.r#type = string(r, p)?,
            "idKeys" | "id_keys" => e.id_keys = string_list(r, p)?,
            "descriptionKeys" | "description_keys" => e.description_keys = string_list(r, p)?,
            _ => r.skip()?,
        }
        Ok(())
    })?;
    Ok(e)
}

fn resource(r: &mut Reader<'_>, path: &Path<'_>) -> Result<Resource> {
    let mut res = Resource::default();
    fields(r, path, |r, key, p| {
        match key {
            "attributes" => res.attributes = attributes(r, p)?,
            "droppedAttributesCount" | "dropped_attributes_count" => {
                res.dropped_attributes_count = uint32(r, p)?
            }
            "entityRefs" | "entity_refs" => res.entity_refs = list(r, p, entity_ref)?,
            _ => r.skip()?,
        }
        Ok(())
    })?;
    Ok(res)
}

// ---------------------------------------------------------------------------------------------
// trace.v1

fn resource_spans(r: &mut Reader<'_>, path: &Path<'_>) -> Result<ResourceSpans> {
    let mut rs = ResourceSpans::default();
    fields(r, path, |r, key, p| {
        match key {
            "resource" => rs.resource = Some(resource(r, p)?),
            "scopeSpans" | "scope_spans" => rs.scope_spans = list(r, p, scope_spans)?,
            "schemaUrl" | "schema_url" => rs.schema_url = string(r, p)?,
            _ => r.skip()?,
        }
        Ok(())
    })?;
    Ok(rs)
}

fn scope_spans(r: &mut Reader<'_>, path: &Path<'_>) -> Result<ScopeSpans> {
    let mut ss = ScopeSpans::default();
    fields(r, path, |r, key, p| {
        match key {
            "scope" => ss.scope = Some(scope(r, p)?),
            "spans" => ss.spans = list(r, p, span)?,
            "schemaUrl" | "schema_url" => ss.schema_url = string(r, p)?,
            _ => r.skip()?,
        }
        Ok(())
    })?;
    Ok(ss)
}

fn span(r: &mut Reader<'_>, path: &Path<'_>) -> Result<Span> {
    let mut s = Span::default();
    fields(r, path, |r, key, p| {
        match key {
            "traceId" | "trace_id" => s.trace_id = hex_id(r, p)?,
            "spanId" | "span_id" => s.span_id = hex_id(r, p)?,
            "traceState" | "trace_state" => s.trace_state = string(r, p)?,
            "parentSpanId" | "parent_span_id" => s.parent_span_id = hex_id(r, p)?,
            "flags" => s.flags = uint32(r, p)?,
            "name" => s.name = string(r, p)?,
            "kind" => s.kind = span_kind(r, p)?,
            "startTimeUnixNano" | "start_time_unix_nano" => s.start_time_unix_nano = uint64(r, p)?,
            "endTimeUnixNano" | "end_time_unix_nano" => s.end_time_unix_nano = uint64(r, p)?,
            "attributes" => s.attributes = attributes(r, p)?,
            "droppedAttributesCount" | "dropped_attributes_count" => {
                s.dropped_attributes_count = uint32(r, p)?
            }
            "events" => s.events = list(r, p, event)?,
            "droppedEventsCount" | "dropped_events_count" => s.dropped_events_count = uint32(r, p)?,
            "links" => s.links = list(r, p, link)?,
            "droppedLinksCount" | "dropped_links_count" => s.dropped_links_count = uint32(r, p)?,
            "status" => s.status = Some(status(r, p)?),
            _ => r.skip()?,
        }
        Ok(())
    })?;
    Ok(s)
}

fn event(r: &mut Reader<'_>, path: &Path<'_>) -> Result<Event> {
    let mut e = Event::default();
    fields(r, path, |r, key, p| {
        match key {
            "timeUnixNano" | "time_unix_nano" => e.time_unix_nano = uint64(r, p)?,
            "name" => e.name = string(r, p)?,
            "attributes" => e.attributes = attributes(r, p)?,
            "droppedAttributesCount" | "dropped_attributes_count" => {
                e.dropped_attributes_count = uint32(r, p)?
            }
            _ => r.skip()?,
        }
        Ok(())
    })?;
    Ok(e)
}

fn link(r: &mut Reader<'_>, path: &Path<'_>) -> Result<Link> {
    let mut l = Link::default();
    fields(r, path, |r, key, p| {
        match key {
            "traceId" | "trace_id" => l.trace_id = hex_id(r, p)?,
            "spanId" | "span_id" => l.span_id = hex_id(r, p)?,
            "traceState" | "trace_state" => l.trace_state = string(r, p)?,
            "attributes" => l.attributes = attributes(r, p)?,
            "droppedAttributesCount" | "dropped_attributes_count" => {
                l.dropped_attributes_count = uint32(r, p)?
            }
            "flags" => l.flags = uint32(r, p)?,
            _ => r.skip()?,
        }
        Ok(())
    })?;
    Ok(l)
}

fn status(r: &mut Reader<'_>, path: &Path<'_>) -> Result<Status> {
    let mut s = Status::default();
    fields(r, path, |r, key, p| {
        match key {
            "message" => s.message = string(r, p)?,
            "code" => s.code = status_code(r, p)?,
            _ => r.skip()?,
        }
        Ok(())
    })?;
    Ok(s)
}

// ---------------------------------------------------------------------------------------------
// metrics.v1

fn resource_metrics(r: &mut Reader<'_>, path: &Path<'_>) -> Result<ResourceMetrics> {
    let mut rm = ResourceMetrics::default();
    fields(r, path, |r, key, p| {
        match key {
            "resource" => rm.resource = Some(resource(r, p)?),
            "scopeMetrics" | "scope_metrics" => rm.scope_metrics = list(r, p, scope_metrics)?,
            "schemaUrl" | "schema_url" => rm.schema_url = string(r, p)?,
            _ => r.skip()?,
        }
        Ok(())
    })?;
    Ok(rm)
}

fn scope_metrics(r: &mut Reader<'_>, path: &Path<'_>) -> Result<ScopeMetrics> {
    let mut sm = ScopeMetrics::default();
    fields(r, path, |r, key, p| {
        match key {
            "scope" => sm.scope = Some(scope(r, p)?),
            "metrics" => sm.metrics = list(r, p, metric)?,
            "schemaUrl" | "schema_url" => sm.schema_url = string(r, p)?,
            _ => r.skip()?,
        }
        Ok(())
    })?;
    Ok(sm)
}

fn metric(r: &mut Reader<'_>, path: &Path<'_>) -> Result<Metric> {
    use metric::Data;
    let mut m = Metric::default();
    let mut data = None;
    fields(r, path, |r, key, p| {
        match key {
            "name" => m.name = string(r, p)?,
            "description" => m.description = string(r, p)?,
            "unit" => m.unit = string(r, p)?,
            "metadata" => m.metadata = attributes(r, p)?,
            "gauge" => set_oneof(&mut data, "gauge", Data::Gauge(gauge(r, p)?), p)?,
            "sum" => set_oneof(&mut data, "sum", Data::Sum(sum(r, p)?), p)?,
            "histogram" => set_oneof(&mut data, "histogram", Data::Histogram(histogram(r, p)?), p)?,
            "exponentialHistogram" | "exponential_histogram" => {
                let h = exponential_histogram(r, p)?;
                set_oneof(
                    &mut data,
                    "exponentialHistogram",
                    Data::ExponentialHistogram(h),
                    p,
                )?
            }
            "summary" => set_oneof(&mut data, "summary", Data::Summary(summary(r, p)?), p)?,
            _ => r.skip()?,
        }
        Ok(())
    })?;
    m.data = data.map(|(_, d)| d);
    Ok(m)
}

fn gauge(r: &mut Reader<'_>, path: &Path<'_>) -> Result<Gauge> {
    let mut g = Gauge::default();
    fields(r, path, |r, key, p| {
        match key {
            "dataPoints" | "data_points" => g.data_points = list(r, p, number_data_point)?,
            _ => r.skip()?,
        }
        Ok(())
    })?;
    Ok(g)
}

fn sum(r: &mut Reader<'_>, path: &Path<'_>) -> Result<Sum> {
    let mut s = Sum::default();
    fields(r, path, |r, key, p| {
        match key {
            "dataPoints" | "data_points" => s.data_points = list(r, p, number_data_point)?,
            "aggregationTemporality" | "aggregation_temporality" => {
                s.aggregation_temporality = temporality(r, p)?
            }
            "isMonotonic" | "is_monotonic" => s.is_monotonic = boolean(r, p)?,
            _ => r.skip()?,
        }
        Ok(())
    })?;
    Ok(s)
}

fn histogram(r: &mut Reader<'_>, path: &Path<'_>) -> Result<Histogram> {
    let mut h = Histogram::default();
    fields(r, path, |r, key, p| {
        match key {
            "dataPoints" | "data_points" => h.data_points = list(r, p, histogram_data_point)?,
            "aggregationTemporality" | "aggregation_temporality" => {
                h.aggregation_temporality = temporality(r, p)?
            }
            _ => r.skip()?,
        }
        Ok(())
    })?;
    Ok(h)
}

fn exponential_histogram(r: &mut Reader<'_>, path: &Path<'_>) -> Result<ExponentialHistogram> {
    let mut h = ExponentialHistogram::default();
    fields(r, path, |r, key, p| {
        match key {
            "dataPoints" | "data_points" => {
                h.data_points = list(r, p, exponential_histogram_data_point)?
            }
            "aggregationTemporality" | "aggregation_temporality" => {
                h.aggregation_temporality = temporality(r, p)?
            }
            _ => r.skip()?,
        }
        Ok(())
    })?;
    Ok(h)
}

fn summary(r: &mut Reader<'_>, path: &Path<'_>) -> Result<Summary> {
    let mut s = Summary::default();
    fields(r, path, |r, key, p| {
        match key {
            "dataPoints" | "data_points" => s.data_points = list(r, p, summary_data_point)?,
            _ => r.skip()?,
        }
        Ok(())
    })?;
    Ok(s)
}

fn number_data_point(r: &mut Reader<'_>, path: &Path<'_>) -> Result<NumberDataPoint> {
    use number_data_point::Value as V;
    let mut d = NumberDataPoint::default();
    let mut value = None;
    fields(r, path, |r, key, p| {
        match key {
            "attributes" => d.attributes = attributes(r, p)?,
            "startTimeUnixNano" | "start_time_unix_nano" => d.start_time_unix_nano = uint64(r, p)?,
            "timeUnixNano" | "time_unix_nano" => d.time_unix_nano = uint64(r, p)?,
            "exemplars" => d.exemplars = list(r, p, exemplar)?,
            "flags" => d.flags = uint32(r, p)?,
            "asDouble" | "as_double" => {
                set_oneof(&mut value, "asDouble", V::AsDouble(double(r, p)?), p)?
            }
            "asInt" | "as_int" => set_oneof(&mut value, "asInt", V::AsInt(int64(r, p)?), p)?,
            _ => r.skip()?,
        }
        Ok(())
    })?;
    d.value = value.map(|(_, v)| v);
    Ok(d)
}

fn histogram_data_point(r: &mut Reader<'_>, path: &Path<'_>) -> Result<HistogramDataPoint> {
    let mut d = HistogramDataPoint::default();
    fields(r, path, |r, key, p| {
        match key {
            "attributes" => d.attributes = attributes(r, p)?,
            "startTimeUnixNano" | "start_time_unix_nano" => d.start_time_unix_nano = uint64(r, p)?,
            "timeUnixNano" | "time_unix_nano" => d.time_unix_nano = uint64(r, p)?,
            "count" => d.count = uint64(r, p)?,
            "sum" => d.sum = Some(double(r, p)?),
            "bucketCounts" | "bucket_counts" => d.bucket_counts = list(r, p, uint64)?,
            "explicitBounds" | "explicit_bounds" => d.explicit_bounds = list(r, p, double)?,
            "exemplars" => d.exemplars = list(r, p, exemplar)?,
            "flags" => d.flags = uint32(r, p)?,
            "min" => d.min = Some(double(r, p)?),
            "max" => d.max = Some(double(r, p)?),
            _ => r.skip()?,
        }
        Ok(())
    })?;
    Ok(d)
}

fn exponential_histogram_data_point(
    r: &mut Reader<'_>,
    path: &Path<'_>,
) -> Result<ExponentialHistogramDataPoint> {
    let mut d = ExponentialHistogramDataPoint::default();
    fields(r, path, |r, key, p| {
        match key {
            "attributes" => d.attributes = attributes(r, p)?,
            "startTimeUnixNano" | "start_time_unix_nano" => d.start_time_unix_nano = uint64(r, p)?,
            "timeUnixNano" | "time_unix_nano" => d.time_unix_nano = uint64(r, p)?,
            "count" => d.count = uint64(r, p)?,
            "sum" => d.sum = Some(double(r, p)?),
            "scale" => d.scale = int32(r, p)?,
            "zeroCount" | "zero_count" => d.zero_count = uint64(r, p)?,
            "positive" => d.positive = Some(buckets(r, p)?),
            "negative" => d.negative = Some(buckets(r, p)?),
            "flags" => d.flags = uint32(r, p)?,
            "exemplars" => d.exemplars = list(r, p, exemplar)?,
            "min" => d.min = Some(double(r, p)?),
            "max" => d.max = Some(double(r, p)?),
            "zeroThreshold" | "zero_threshold" => d.zero_threshold = double(r, p)?,
            _ => r.skip()?,
        }
        Ok(())
    })?;
    Ok(d)
}

fn buckets(r: &mut Reader<'_>, path: &Path<'_>) -> Result<Buckets> {
    let mut b = Buckets::default();
    fields(r, path, |r, key, p| {
        match key {
            "offset" => b.offset = int32(r, p)?,
            "bucketCounts" | "bucket_counts" => b.bucket_counts = list(r, p, uint64)?,
            _ => r.skip()?,
        }
        Ok(())
    })?;
    Ok(b)
}

fn summary_data_point(r: &mut Reader<'_>, path: &Path<'_>) -> Result<SummaryDataPoint> {
    let mut d = SummaryDataPoint::default();
    fields(r, path, |r, key, p| {
        match key {
            "attributes" => d.attributes = attributes(r, p)?,
            "startTimeUnixNano" | "start_time_unix_nano" => d.start_time_unix_nano = uint64(r, p)?,
            "timeUnixNano" | "time_unix_nano" => d.time_unix_nano = uint64(r, p)?,
            "count" => d.count = uint64(r, p)?,
            "sum" => d.sum = double(r, p)?,
            "quantileValues" | "quantile_values" => {
                d.quantile_values = list(r, p, value_at_quantile)?
            }
            "flags" => d.flags = uint32(r, p)?,
            _ => r.skip()?,
        }
        Ok(())
    })?;
    Ok(d)
}

fn value_at_quantile(r: &mut Reader<'_>, path: &Path<'_>) -> Result<ValueAtQuantile> {
    let mut q = ValueAtQuantile::default();
    fields(r, path, |r, key, p| {
        match key {
            "quantile" => q.quantile = double(r, p)?,
            "value" => q.value = double(r, p)?,
            _ => r.skip()?,
        }
        Ok(())
    })?;
    Ok(q)
}

fn exemplar(r: &mut Reader<'_>, path: &Path<'_>) -> Result<Exemplar> {
    use exemplar::Value as V;
    let mut e = Exemplar::default();
    let mut value = None;
    fields(r, path, |r, key, p| {
        match key {
            "filteredAttributes" | "filtered_attributes" => {
                e.filtered_attributes = attributes(r, p)?
            }
            "timeUnixNano" | "time_unix_nano" => e.time_unix_nano = uint64(r, p)?,
            "spanId" | "span_id" => e.span_id = hex_id(r, p)?,
            "traceId" | "trace_id" => e.trace_id = hex_id(r, p)?,
            "asDouble" | "as_double" => {
                set_oneof(&mut value, "asDouble", V::AsDouble(double(r, p)?), p)?
            }
            "asInt" | "as_int" => set_oneof(&mut value, "asInt", V::AsInt(int64(r, p)?), p)?,
            _ => r.skip()?,
        }
        Ok(())
    })?;
    e.value = value.map(|(_, v)| v);
    Ok(e)
}

// ---------------------------------------------------------------------------------------------
// logs.v1

fn resource_logs(r: &mut Reader<'_>, path: &Path<'_>) -> Result<ResourceLogs> {
    let mut rl = ResourceLogs::default();
    fields(r, path, |r, key, p| {
        match key {
            "resource" => rl.resource = Some(resource(r, p)?),
            "scopeLogs" | "scope_logs" => rl.scope_logs = list(r, p, scope_logs)?,
            "schemaUrl" | "schema_url" => rl.schema_url = string(r, p)?,
            _ => r.skip()?,
        }
        Ok(())
    })?;
    Ok(rl)
}

fn scope_logs(r: &mut Reader<'_>, path: &Path<'_>) -> Result<ScopeLogs> {
    let mut sl = ScopeLogs::default();
    fields(r, path, |r, key, p| {
        match key {
            "scope" => sl.scope = Some(scope(r, p)?),
            "logRecords" | "log_records" => sl.log_records = list(r, p, log_record)?,
            "schemaUrl" | "schema_url" => sl.schema_url = string(r, p)?,
            _ => r.skip()?,
        }
        Ok(())
    })?;
    Ok(sl)
}

fn log_record(r: &mut Reader<'_>, path: &Path<'_>) -> Result<LogRecord> {
    let mut rec = LogRecord::default();
    fields(r, path, |r, key, p| {
        match key {
            "timeUnixNano" | "time_unix_nano" => rec.time_unix_nano = uint64(r, p)?,
            "observedTimeUnixNano" | "observed_time_unix_nano" => {
                rec.observed_time_unix_nano = uint64(r, p)?
            }
            "severityNumber" | "severity_number" => rec.severity_number = severity_number(r, p)?,
            "severityText" | "severity_text" => rec.severity_text = string(r, p)?,
            "body" => rec.body = Some(any_value(r, p)?),
            "attributes" => rec.attributes = attributes(r, p)?,
            "droppedAttributesCount" | "dropped_attributes_count" => {
                rec.dropped_attributes_count = uint32(r, p)?
            }
            "flags" => rec.flags = uint32(r, p)?,
            "traceId" | "trace_id" => rec.trace_id = hex_id(r, p)?,
            "spanId" | "span_id" => rec.span_id = hex_id(r, p)?,
            "eventName" | "event_name" => rec.event_name = string(r, p)?,
            _ => r.skip()?,
        }
        Ok(())
    })?;
    Ok(rec)
}
