//! Fixtures for the wire module's tests: attributes, spans and requests built with `prost`.

use crate::otlp::collector::trace::v1::ExportTraceServiceRequest;
use crate::otlp::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value};
use crate::otlp::resource::v1::Resource;
use crate::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span, span::Link};

/// An attribute `k` = `v`.
pub(crate) fn kv(k: &str, v: Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

/// A span of trace `[t; 16]`, span `[s; 8]`, with two attributes and a link.
pub(crate) fn span(t: u8, s: u8) -> Span {
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

/// A request of one resource (`service.name` = `svc`) and one scope (`lib`) holding `spans`.
pub(crate) fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
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
