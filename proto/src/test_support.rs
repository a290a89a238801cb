//! Builders of OTLP messages for the tests, benches, examples and fuzz targets of every Weir
//! crate, so that a fixture is written once. Compiled for this crate's own tests and, in other
//! crates, behind the `test-support` feature their dev-dependencies turn on.

use crate::otlp::collector::logs::v1::ExportLogsServiceRequest;
use crate::otlp::collector::trace::v1::ExportTraceServiceRequest;
use crate::otlp::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value};
use crate::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use crate::otlp::metrics::v1::{Metric, ResourceMetrics, ScopeMetrics};
use crate::otlp::resource::v1::Resource;
use crate::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::Link, status};
use prost::Message;

/// An attribute `key` = `value`, of any value type.
pub fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// A string attribute `key` = `value`.
pub fn string_kv(key: &str, value: &str) -> KeyValue {
    kv(key, Value::StringValue(value.into()))
}

/// A resource with one attribute, `service.name` = `name`.
pub fn service(name: &str) -> Resource {
    Resource {
        attributes: vec![string_kv("service.name", name)],
        ..Default::default()
    }
}

/// An instrumentation scope named `name`.
pub fn scope(name: &str) -> InstrumentationScope {
    InstrumentationScope {
        name: name.into(),
        ..Default::default()
    }
}

/// A span of trace `[trace; 16]` with id `[span; 8]`, named `name`; other fields are default.
pub fn named_span(trace: u8, span: u8, name: &str) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![span; 8],
        name: name.into(),
        ..Default::default()
    }
}

/// The status of a span that failed (`STATUS_CODE_ERROR`).
pub fn error_status() -> Status {
    Status {
        code: status::StatusCode::Error as i32,
        ..Default::default()
    }
}

/// A span of trace `[t; 16]`, span `[s; 8]`, named `s{s}`, with two attributes (a string and
/// an int) and a link: each part of a span the wire reader indexes.
pub fn sample_span(t: u8, s: u8) -> Span {
    Span {
        attributes: vec![
            kv("a", Value::StringValue("b".into())),
            kv("n", Value::IntValue(-5)),
        ],
        links: vec![Link {
            trace_id: vec![9; 16],
            span_id: vec![9; 8],
            ..Default::default()
        }],
        ..named_span(t, s, &format!("s{s}"))
    }
}

/// A request of one resource (`service.name` = `svc`, schema `r`) and one scope (`lib`,
/// schema `s`) holding `spans`: every level of a request set, for the wire reader.
pub fn sample_request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    let mut resource = resource_spans(Some(service("svc")), Some(scope("lib")), spans);
    resource.schema_url = "r".into();
    resource.scope_spans[0].schema_url = "s".into();
    ExportTraceServiceRequest {
        resource_spans: vec![resource],
    }
}

/// One resource and one scope holding `spans`, without schema URLs.
pub fn resource_spans(
    resource: Option<Resource>,
    scope: Option<InstrumentationScope>,
    spans: Vec<Span>,
) -> ResourceSpans {
    ResourceSpans {
        resource,
        scope_spans: vec![ScopeSpans {
            scope,
            spans,
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    }
}

/// A trace request of one resource and one scope, both unset, holding `spans`.
pub fn traces_request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![resource_spans(None, None, spans)],
    }
}

/// `request` encoded with the headers (tag and length) of each span attribute field, and of
/// its key and value, written as varints of `header_len` bytes (or the shortest, when longer):
/// overlong encodings, valid protobuf that decodes as `request`. Attributes go after a span's
/// other fields, and scopes and spans after their message's other fields, whatever
/// `header_len`.
pub fn with_overlong_attribute_headers(
    request: &ExportTraceServiceRequest,
    header_len: usize,
) -> Vec<u8> {
    let header = |out: &mut Vec<u8>, v: u64| {
        let len = header_len.max(crate::wire::varint_len(v));
        for i in 0..len {
            let low = ((v >> (7 * i)) & 0x7f) as u8;
            out.push(if i + 1 < len { low | 0x80 } else { low });
        }
    };
    let field = |out: &mut Vec<u8>, number: u64, bytes: &[u8]| {
        header(out, (number << 3) | 2);
        header(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    };
    // Only attribute headers are overlong: the enclosing messages' are the usual ones.
    let nested = |out: &mut Vec<u8>, number: u8, bytes: &[u8]| {
        out.push((number << 3) | 2);
        crate::wire::put_varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    };
    let mut body = Vec::new();
    for rs in &request.resource_spans {
        let mut resource = ResourceSpans {
            scope_spans: Vec::new(),
            ..rs.clone()
        }
        .encode_to_vec();
        for ss in &rs.scope_spans {
            let mut scope = ScopeSpans {
                spans: Vec::new(),
                ..ss.clone()
            }
            .encode_to_vec();
            for sp in &ss.spans {
                let mut span = Span {
                    attributes: Vec::new(),
                    ..sp.clone()
                }
                .encode_to_vec();
                for a in &sp.attributes {
                    let mut kv = Vec::new();
                    field(&mut kv, 1, a.key.as_bytes());
                    if let Some(v) = &a.value {
                        field(&mut kv, 2, &v.encode_to_vec());
                    }
                    // Any other field of the key-value, as prost writes it.
                    kv.extend(
                        KeyValue {
                            key: String::new(),
                            value: None,
                            ..a.clone()
                        }
                        .encode_to_vec(),
                    );
                    field(&mut span, 9, &kv);
                }
                nested(&mut scope, 2, &span);
            }
            nested(&mut resource, 2, &scope);
        }
        nested(&mut body, 1, &resource);
    }
    body
}

/// One resource and one scope holding `records`, without schema URLs.
pub fn resource_logs(
    resource: Option<Resource>,
    scope: Option<InstrumentationScope>,
    records: Vec<LogRecord>,
) -> ResourceLogs {
    ResourceLogs {
        resource,
        scope_logs: vec![ScopeLogs {
            scope,
            log_records: records,
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    }
}

/// A logs request of one resource and one scope, both unset, holding `records`.
pub fn logs_request(records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![resource_logs(None, None, records)],
    }
}

/// One resource and one scope holding `metrics`, without schema URLs.
pub fn resource_metrics(
    resource: Option<Resource>,
    scope: Option<InstrumentationScope>,
    metrics: Vec<Metric>,
) -> ResourceMetrics {
    ResourceMetrics {
        resource,
        scope_metrics: vec![ScopeMetrics {
            scope,
            metrics,
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    }
}
