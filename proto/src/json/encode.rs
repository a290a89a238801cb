//! The OTLP/JSON encoder: canonical proto3 JSON (lowerCamelCase keys, defaults omitted, 64-bit
//! integers as decimal strings, enums as integers) with OTLP's lowercase hex ids, written
//! straight into the caller's buffer.

use std::io::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use prost::Message as _;

use crate::otlp::collector::logs::v1::ExportLogsServiceResponse;
use crate::otlp::collector::metrics::v1::ExportMetricsServiceResponse;
use crate::otlp::collector::trace::v1::ExportTraceServiceResponse;
use crate::otlp::common::v1::{AnyValue, EntityRef, InstrumentationScope, KeyValue, any_value};
use crate::otlp::logs::v1::{LogRecord, LogsData, ResourceLogs, ScopeLogs};
use crate::otlp::metrics::v1::exponential_histogram_data_point::Buckets;
use crate::otlp::metrics::v1::summary_data_point::ValueAtQuantile;
use crate::otlp::metrics::v1::{
    Exemplar, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram,
    HistogramDataPoint, Metric, MetricsData, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    Summary, SummaryDataPoint, exemplar, metric, number_data_point,
};
use crate::otlp::resource::v1::Resource;
use crate::otlp::trace::v1::span::{Event, Link};
use crate::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, TracesData};
use crate::rpc::prost_types_any::Any;
use crate::rpc::{RETRY_INFO_TYPE_URL, RetryInfo};

// ---------------------------------------------------------------------------------------------
// Primitives.

/// An open JSON object; each method writes one member unless it holds its default value.
struct Obj<'o> {
    out: &'o mut Vec<u8>,
    empty: bool,
}

impl<'o> Obj<'o> {
    fn open(out: &'o mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, empty: true }
    }

    fn close(self) {
        self.out.push(b'}');
    }

    /// Writes `"name":` (after a comma when needed) and returns the buffer for the value.
    fn key(&mut self, name: &str) -> &mut Vec<u8> {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    fn string(&mut self, name: &str, v: &str) {
        if !v.is_empty() {
            write_str(self.key(name), v);
        }
    }

    fn hex(&mut self, name: &str, v: &[u8]) {
        if !v.is_empty() {
            write_hex(self.key(name), v);
        }
    }

    /// 64-bit unsigned integers are strings in proto3 JSON.
    fn uint64(&mut self, name: &str, v: u64) {
        if v != 0 {
            write_quoted_u64(self.key(name), v);
        }
    }

    fn uint32(&mut self, name: &str, v: u32) {
        if v != 0 {
            write_u64(self.key(name), v.into());
        }
    }

    fn int32(&mut self, name: &str, v: i32) {
        if v != 0 {
            write_i64(self.key(name), v.into());
        }
    }

    /// A double; negative zero is not the default (its bits differ), so it is written.
    fn double(&mut self, name: &str, v: f64) {
        if v.to_bits() != 0 {
            write_f64(self.key(name), v);
        }
    }

    /// An `optional double`: written whenever present, even when zero.
    fn optional_double(&mut self, name: &str, v: Option<f64>) {
        if let Some(v) = v {
            write_f64(self.key(name), v);
        }
    }

    fn boolean(&mut self, name: &str, v: bool) {
        if v {
            self.key(name).extend_from_slice(b"true");
        }
    }

    fn list<T>(&mut self, name: &str, items: &[T], mut each: impl FnMut(&mut Vec<u8>, &T)) {
        if items.is_empty() {
            return;
        }
        let out = self.key(name);
        out.push(b'[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            each(out, item);
        }
        out.push(b']');
    }

    fn message<T>(&mut self, name: &str, v: Option<&T>, write: impl FnOnce(&mut Vec<u8>, &T)) {
        if let Some(v) = v {
            write(self.key(name), v);
        }
    }
}

/// A JSON string literal: `"`, `\` and control characters escaped, everything else verbatim
/// (a `&str` is valid UTF-8, which JSON allows unescaped).
fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn write_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2 + 2);
    out.push(b'"');
    for &b in bytes {
        out.push(HEX[(b >> 4) as usize]);
        out.push(HEX[(b & 0xf) as usize]);
    }
    out.push(b'"');
}

fn write_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    out.extend_from_slice(BASE64.encode(bytes).as_bytes());
    out.push(b'"');
}

fn write_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn write_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    write_u64(out, v.unsigned_abs());
}

fn write_quoted_u64(out: &mut Vec<u8>, v: u64) {
    out.push(b'"');
    write_u64(out, v);
    out.push(b'"');
}

fn write_quoted_i64(out: &mut Vec<u8>, v: i64) {
    out.push(b'"');
    write_i64(out, v);
    out.push(b'"');
}

/// A double as the shortest JSON number that reads back to the same value (`Debug` switches
/// to exponent form for very large and small magnitudes); non-finite values as strings.
pub(super) fn write_f64(out: &mut Vec<u8>, v: f64) {
    if v.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if v == f64::INFINITY {
        out.extend_from_slice(b"\"Infinity\"");
    } else if v == f64::NEG_INFINITY {
        out.extend_from_slice(b"\"-Infinity\"");
    } else {
        // Writing into a Vec<u8> cannot fail.
        let _ = write!(out, "{v:?}");
    }
}

fn write_bool(out: &mut Vec<u8>, v: bool) {
    out.extend_from_slice(if v { b"true" } else { b"false" });
}

// ---------------------------------------------------------------------------------------------
// Top-level documents.

pub(super) fn traces_data(data: &TracesData, out: &mut Vec<u8>) {
    let mut o = Obj::open(out);
    o.list("resourceSpans", &data.resource_spans, resource_spans);
    o.close();
}

pub(super) fn metrics_data(data: &MetricsData, out: &mut Vec<u8>) {
    let mut o = Obj::open(out);
    o.list("resourceMetrics", &data.resource_metrics, resource_metrics);
    o.close();
}

pub(super) fn logs_data(data: &LogsData, out: &mut Vec<u8>) {
    let mut o = Obj::open(out);
    o.list("resourceLogs", &data.resource_logs, resource_logs);
    o.close();
}

pub(super) fn trace_response(r: &ExportTraceServiceResponse, out: &mut Vec<u8>) {
    let mut o = Obj::open(out);
    o.message("partialSuccess", r.partial_success.as_ref(), |out, p| {
        partial_success(out, "rejectedSpans", p.rejected_spans, &p.error_message)
    });
    o.close();
}

pub(super) fn metrics_response(r: &ExportMetricsServiceResponse, out: &mut Vec<u8>) {
    let mut o = Obj::open(out);
    o.message("partialSuccess", r.partial_success.as_ref(), |out, p| {
        partial_success(
            out,
            "rejectedDataPoints",
            p.rejected_data_points,
            &p.error_message,
        )
    });
    o.close();
}

pub(super) fn logs_response(r: &ExportLogsServiceResponse, out: &mut Vec<u8>) {
    let mut o = Obj::open(out);
    o.message("partialSuccess", r.partial_success.as_ref(), |out, p| {
        partial_success(
            out,
            "rejectedLogRecords",
            p.rejected_log_records,
            &p.error_message,
        )
    });
    o.close();
}

fn partial_success(out: &mut Vec<u8>, rejected_key: &str, rejected: i64, error_message: &str) {
    let mut o = Obj::open(out);
    if rejected != 0 {
        write_quoted_i64(o.key(rejected_key), rejected);
    }
    o.string("errorMessage", error_message);
    o.close();
}

pub(super) fn status(s: &crate::rpc::Status, out: &mut Vec<u8>) {
    let mut o = Obj::open(out);
    o.int32("code", s.code);
    o.string("message", &s.message);
    o.list("details", &s.details, status_detail);
    o.close();
}

/// A detail in the `google.protobuf.Any` JSON form. `RetryInfo` is the one type OTLP clients
/// read, so it gets its real fields; any other type keeps its protobuf bytes in `value`.
fn status_detail(out: &mut Vec<u8>, any: &Any) {
    let mut o = Obj::open(out);
    write_str(o.key("@type"), &any.type_url);
    let retry_info = (any.type_url == RETRY_INFO_TYPE_URL)
        .then(|| RetryInfo::decode(any.value.as_slice()).ok())
        .flatten();
    match retry_info {
        Some(info) => {
            if let Some(d) = info.retry_delay {
                write_duration(o.key("retryDelay"), d.seconds, d.nanos);
            }
        }
        None => {
            if !any.value.is_empty() {
                write_base64(o.key("value"), &any.value);
            }
        }
    }
    o.close();
}

/// A `google.protobuf.Duration` in its JSON form: seconds with 0, 3, 6 or 9 fractional
/// digits and an `s` suffix, e.g. `"1s"`, `"1.500s"`.
fn write_duration(out: &mut Vec<u8>, seconds: i64, nanos: i32) {
    out.push(b'"');
    if seconds < 0 || nanos < 0 {
        out.push(b'-');
    }
    write_u64(out, seconds.unsigned_abs());
    let nanos = nanos.unsigned_abs();
    if nanos != 0 {
        let (value, digits) = if nanos.is_multiple_of(1_000_000) {
            (nanos / 1_000_000, 3)
        } else if nanos.is_multiple_of(1_000) {
            (nanos / 1_000, 6)
        } else {
            (nanos, 9)
        };
        // Writing into a Vec<u8> cannot fail.
        let _ = write!(out, ".{value:0digits$}");
    }
    out.extend_from_slice(b"s\"");
}

// ---------------------------------------------------------------------------------------------
// common.v1 and resource.v1

fn any_value(out: &mut Vec<u8>, v: &AnyValue) {
    use any_value::Value as V;
    let mut o = Obj::open(out);
    // A set oneof member is written even when it holds its type's default value.
    match &v.value {
        None => {}
        Some(V::StringValue(s)) => write_str(o.key("stringValue"), s),
        Some(V::BoolValue(b)) => write_bool(o.key("boolValue"), *b),
        Some(V::IntValue(i)) => write_quoted_i64(o.key("intValue"), *i),
        Some(V::DoubleValue(d)) => write_f64(o.key("doubleValue"), *d),
        Some(V::ArrayValue(a)) => {
            let mut inner = Obj::open(o.key("arrayValue"));
            inner.list("values", &a.values, any_value);
            inner.close();
        }
        Some(V::KvlistValue(l)) => {
            let mut inner = Obj::open(o.key("kvlistValue"));
            inner.list("values", &l.values, key_value);
            inner.close();
        }
        Some(V::BytesValue(b)) => write_base64(o.key("bytesValue"), b),
        Some(V::StringValueStrindex(i)) => write_i64(o.key("stringValueStrindex"), (*i).into()),
    }
    o.close();
}

fn key_value(out: &mut Vec<u8>, kv: &KeyValue) {
    let mut o = Obj::open(out);
    o.string("key", &kv.key);
    o.message("value", kv.value.as_ref(), any_value);
    o.int32("keyStrindex", kv.key_strindex);
    o.close();
}

fn scope(out: &mut Vec<u8>, s: &InstrumentationScope) {
    let mut o = Obj::open(out);
    o.string("name", &s.name);
    o.string("version", &s.version);
    o.list("attributes", &s.attributes, key_value);
    o.uint32("droppedAttributesCount", s.dropped_attributes_count);
    o.close();
}

fn entity_ref(out: &mut Vec<u8>, e: &EntityRef) {
    let mut o = Obj::open(out);
    o.string("schemaUrl", &e.schema_url);
    o.string("type", &e.r#type);
    o.list("idKeys", &e.id_keys, |out, k| write_str(out, k));
    o.list("descriptionKeys", &e.description_keys, |out, k| {
        write_str(out, k)
    });
    o.close();
}

fn resource(out: &mut Vec<u8>, r: &Resource) {
    let mut o = Obj::open(out);
    o.list("attributes", &r.attributes, key_value);
    o.uint32("droppedAttributesCount", r.dropped_attributes_count);
    o.list("entityRefs", &r.entity_refs, entity_ref);
    o.close();
}

// ---------------------------------------------------------------------------------------------
// trace.v1

fn resource_spans(out: &mut Vec<u8>, rs: &ResourceSpans) {
    let mut o = Obj::open(out);
    o.message("resource", rs.resource.as_ref(), resource);
    o.list("scopeSpans", &rs.scope_spans, scope_spans);
    o.string("schemaUrl", &rs.schema_url);
    o.close();
}

fn scope_spans(out: &mut Vec<u8>, ss: &ScopeSpans) {
    let mut o = Obj::open(out);
    o.message("scope", ss.scope.as_ref(), scope);
    o.list("spans", &ss.spans, span);
    o.string("schemaUrl", &ss.schema_url);
    o.close();
}

fn span(out: &mut Vec<u8>, s: &Span) {
    let mut o = Obj::open(out);
    o.hex("traceId", &s.trace_id);
    o.hex("spanId", &s.span_id);
    o.string("traceState", &s.trace_state);
    o.hex("parentSpanId", &s.parent_span_id);
    o.uint32("flags", s.flags);
    o.string("name", &s.name);
    o.int32("kind", s.kind);
    o.uint64("startTimeUnixNano", s.start_time_unix_nano);
    o.uint64("endTimeUnixNano", s.end_time_unix_nano);
    o.list("attributes", &s.attributes, key_value);
    o.uint32("droppedAttributesCount", s.dropped_attributes_count);
    o.list("events", &s.events, event);
    o.uint32("droppedEventsCount", s.dropped_events_count);
    o.list("links", &s.links, link);
    o.uint32("droppedLinksCount", s.dropped_links_count);
    o.message("status", s.status.as_ref(), span_status);
    o.close();
}

fn event(out: &mut Vec<u8>, e: &Event) {
    let mut o = Obj::open(out);
    o.uint64("timeUnixNano", e.time_unix_nano);
    o.string("name", &e.name);
    o.list("attributes", &e.attributes, key_value);
    o.uint32("droppedAttributesCount", e.dropped_attributes_count);
    o.close();
}

fn link(out: &mut Vec<u8>, l: &Link) {
    let mut o = Obj::open(out);
    o.hex("traceId", &l.trace_id);
    o.hex("spanId", &l.span_id);
    o.string("traceState", &l.trace_state);
    o.list("attributes", &l.attributes, key_value);
    o.uint32("droppedAttributesCount", l.dropped_attributes_count);
    o.uint32("flags", l.flags);
    o.close();
}

fn span_status(out: &mut Vec<u8>, s: &Status) {
    let mut o = Obj::open(out);
    o.string("message", &s.message);
    o.int32("code", s.code);
    o.close();
}

// ---------------------------------------------------------------------------------------------
// metrics.v1

fn resource_metrics(out: &mut Vec<u8>, rm: &ResourceMetrics) {
    let mut o = Obj::open(out);
    o.message("resource", rm.resource.as_ref(), resource);
    o.list("scopeMetrics", &rm.scope_metrics, scope_metrics);
    o.string("schemaUrl", &rm.schema_url);
    o.close();
}

fn scope_metrics(out: &mut Vec<u8>, sm: &ScopeMetrics) {
    let mut o = Obj::open(out);
    o.message("scope", sm.scope.as_ref(), scope);
    o.list("metrics", &sm.metrics, metric);
    o.string("schemaUrl", &sm.schema_url);
    o.close();
}

fn metric(out: &mut Vec<u8>, m: &Metric) {
    use metric::Data;
    let mut o = Obj::open(out);
    o.string("name", &m.name);
    o.string("description", &m.description);
    o.string("unit", &m.unit);
    match &m.data {
        None => {}
        Some(Data::Gauge(g)) => gauge(o.key("gauge"), g),
        Some(Data::Sum(s)) => sum(o.key("sum"), s),
        Some(Data::Histogram(h)) => histogram(o.key("histogram"), h),
        Some(Data::ExponentialHistogram(h)) => {
            exponential_histogram(o.key("exponentialHistogram"), h)
        }
        Some(Data::Summary(s)) => summary(o.key("summary"), s),
    }
    o.list("metadata", &m.metadata, key_value);
    o.close();
}

fn gauge(out: &mut Vec<u8>, g: &Gauge) {
    let mut o = Obj::open(out);
    o.list("dataPoints", &g.data_points, number_data_point);
    o.close();
}

fn sum(out: &mut Vec<u8>, s: &Sum) {
    let mut o = Obj::open(out);
    o.list("dataPoints", &s.data_points, number_data_point);
    o.int32("aggregationTemporality", s.aggregation_temporality);
    o.boolean("isMonotonic", s.is_monotonic);
    o.close();
}

fn histogram(out: &mut Vec<u8>, h: &Histogram) {
    let mut o = Obj::open(out);
    o.list("dataPoints", &h.data_points, histogram_data_point);
    o.int32("aggregationTemporality", h.aggregation_temporality);
    o.close();
}

fn exponential_histogram(out: &mut Vec<u8>, h: &ExponentialHistogram) {
    let mut o = Obj::open(out);
    o.list(
        "dataPoints",
        &h.data_points,
        exponential_histogram_data_point,
    );
    o.int32("aggregationTemporality", h.aggregation_temporality);
    o.close();
}

fn summary(out: &mut Vec<u8>, s: &Summary) {
    let mut o = Obj::open(out);
    o.list("dataPoints", &s.data_points, summary_data_point);
    o.close();
}

fn number_data_point(out: &mut Vec<u8>, d: &NumberDataPoint) {
    use number_data_point::Value as V;
    let mut o = Obj::open(out);
    o.list("attributes", &d.attributes, key_value);
    o.uint64("startTimeUnixNano", d.start_time_unix_nano);
    o.uint64("timeUnixNano", d.time_unix_nano);
    match d.value {
        None => {}
        Some(V::AsDouble(v)) => write_f64(o.key("asDouble"), v),
        Some(V::AsInt(v)) => write_quoted_i64(o.key("asInt"), v),
    }
    o.list("exemplars", &d.exemplars, exemplar);
    o.uint32("flags", d.flags);
    o.close();
}

fn histogram_data_point(out: &mut Vec<u8>, d: &HistogramDataPoint) {
    let mut o = Obj::open(out);
    o.list("attributes", &d.attributes, key_value);
    o.uint64("startTimeUnixNano", d.start_time_unix_nano);
    o.uint64("timeUnixNano", d.time_unix_nano);
    o.uint64("count", d.count);
    o.optional_double("sum", d.sum);
    o.list("bucketCounts", &d.bucket_counts, |out, c| {
        write_quoted_u64(out, *c)
    });
    o.list("explicitBounds", &d.explicit_bounds, |out, b| {
        write_f64(out, *b)
    });
    o.list("exemplars", &d.exemplars, exemplar);
    o.uint32("flags", d.flags);
    o.optional_double("min", d.min);
    o.optional_double("max", d.max);
    o.close();
}

fn exponential_histogram_data_point(out: &mut Vec<u8>, d: &ExponentialHistogramDataPoint) {
    let mut o = Obj::open(out);
    o.list("attributes", &d.attributes, key_value);
    o.uint64("startTimeUnixNano", d.start_time_unix_nano);
    o.uint64("timeUnixNano", d.time_unix_nano);
    o.uint64("count", d.count);
    o.optional_double("sum", d.sum);
    o.int32("scale", d.scale);
    o.uint64("zeroCount", d.zero_count);
    o.message("positive", d.positive.as_ref(), buckets);
    o.message("negative", d.negative.as_ref(), buckets);
    o.uint32("flags", d.flags);
    o.list("exemplars", &d.exemplars, exemplar);
    o.optional_double("min", d.min);
    o.optional_double("max", d.max);
    o.double("zeroThreshold", d.zero_threshold);
    o.close();
}

fn buckets(out: &mut Vec<u8>, b: &Buckets) {
    let mut o = Obj::open(out);
    o.int32("offset", b.offset);
    o.list("bucketCounts", &b.bucket_counts, |out, c| {
        write_quoted_u64(out, *c)
    });
    o.close();
}

fn summary_data_point(out: &mut Vec<u8>, d: &SummaryDataPoint) {
    let mut o = Obj::open(out);
    o.list("attributes", &d.attributes, key_value);
    o.uint64("startTimeUnixNano", d.start_time_unix_nano);
    o.uint64("timeUnixNano", d.time_unix_nano);
    o.uint64("count", d.count);
    o.double("sum", d.sum);
    o.list("quantileValues", &d.quantile_values, value_at_quantile);
    o.uint32("flags", d.flags);
    o.close();
}

fn value_at_quantile(out: &mut Vec<u8>, q: &ValueAtQuantile) {
    let mut o = Obj::open(out);
    o.double("quantile", q.quantile);
    o.double("value", q.value);
    o.close();
}

fn exemplar(out: &mut Vec<u8>, e: &Exemplar) {
    use exemplar::Value as V;
    let mut o = Obj::open(out);
    o.list("filteredAttributes", &e.filtered_attributes, key_value);
    o.uint64("timeUnixNano", e.time_unix_nano);
    match e.value {
        None => {}
        Some(V::AsDouble(v)) => write_f64(o.key("asDouble"), v),
        Some(V::AsInt(v)) => write_quoted_i64(o.key("asInt"), v),
    }
    o.hex("spanId", &e.span_id);
    o.hex("traceId", &e.trace_id);
    o.close();
}

// ---------------------------------------------------------------------------------------------
// logs.v1

fn resource_logs(out: &mut Vec<u8>, rl: &ResourceLogs) {
    let mut o = Obj::open(out);
    o.message("resource", rl.resource.as_ref(), resource);
    o.list("scopeLogs", &rl.scope_logs, scope_logs);
    o.string("schemaUrl", &rl.schema_url);
    o.close();
}

fn scope_logs(out: &mut Vec<u8>, sl: &ScopeLogs) {
    let mut o = Obj::open(out);
    o.message("scope", sl.scope.as_ref(), scope);
    o.list("logRecords", &sl.log_records, log_record);
    o.string("schemaUrl", &sl.schema_url);
    o.close();
}

fn log_record(out: &mut Vec<u8>, r: &LogRecord) {
    let mut o = Obj::open(out);
    o.uint64("timeUnixNano", r.time_unix_nano);
    o.uint64("observedTimeUnixNano", r.observed_time_unix_nano);
    o.int32("severityNumber", r.severity_number);
    o.string("severityText", &r.severity_text);
    o.message("body", r.body.as_ref(), any_value);
    o.list("attributes", &r.attributes, key_value);
    o.uint32("droppedAttributesCount", r.dropped_attributes_count);
    o.uint32("flags", r.flags);
    o.hex("traceId", &r.trace_id);
    o.hex("spanId", &r.span_id);
    o.string("eventName", &r.event_name);
    o.close();
}
