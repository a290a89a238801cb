//! The span index of a validated trace request: where each resource, scope and span is in the
//! body, each span's trace id, and the span fields a policy reads, as validation recorded them
//! (see `validate/traces.rs`). Readers use it so they never walk a span's bytes again: grouping
//! spans by trace id copies span bytes as they came instead of decoding and re-encoding them.

use super::unchecked::{RawAttributes, WireValue, attributes, key_and_text, raw_attributes};
use std::ops::Range;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::collector::trace::v1::ExportTraceServiceRequest;
    use crate::otlp::common::v1::any_value::Value;
    use crate::otlp::trace::v1::Span;
    use crate::test_support::{kv, sample_request, sample_span, with_overlong_attribute_headers};
    use crate::wire::{AttributeLimits, attribute_excess, write_span_within_limits};
    use prost::Message;

    #[test]
    fn scanning_attributes_reads_only_wanted_keys_in_any_layout() {
        let long_key = "k".repeat(200);
        let mut sp = sample_span(1, 1);
        sp.attributes = vec![
            kv("a", Value::StringValue("b".into())),
            kv(&long_key, Value::StringValue("long".into())),
            kv("n", Value::IntValue(-5)),
            kv("c", Value::StringValue("x".repeat(300))),
        ];
        let body = sample_request(vec![sp]).encode_to_vec();
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

    /// What every reader of a span's attributes makes of each span of `body`: the attributes,
    /// as bytes, as scanned, and the span under attribute limits (its excess and rewrite).
    #[allow(clippy::type_complexity)]
    fn attribute_readings(
        body: &[u8],
    ) -> Vec<(
        Vec<(String, WireValue<'_>)>,
        Vec<(&[u8], Option<&[u8]>)>,
        Vec<(&[u8], Option<&[u8]>)>,
        crate::wire::AttributeExcess,
        Span,
    )> {
        let limits = AttributeLimits {
            max_count: 3,
            max_value_size: 10,
        };
        let view = TraceRequestView::parse(body).unwrap();
        view.spans
            .iter()
            .map(|e| {
                let bytes = &body[e.range()];
                let mut scanned = Vec::new();
                e.scan_attributes(bytes, |_| true, |k, v| scanned.push((k, v)));
                let mut limited = Vec::new();
                let excess = write_span_within_limits(bytes, &limits, &mut limited);
                assert_eq!(excess, attribute_excess(bytes, &limits));
                (
                    e.attributes(bytes)
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                    e.raw_attributes(bytes).collect(),
                    scanned,
                    excess,
                    Span::decode(&limited[..]).unwrap(),
                )
            })
            .collect()
    }

    /// Issue 16, item 6: an attribute's field headers (the span's tag 9, the key's and the
    /// value's tags, their lengths) written as overlong varints are read as the usual ones.
    #[test]
    fn overlong_attribute_headers_read_as_the_usual_encoding() {
        let mut sp = sample_span(1, 1);
        sp.attributes = vec![
            kv("route.me", Value::StringValue("yes".into())),
            kv("n", Value::IntValue(5)),
            kv("long", Value::StringValue("x".repeat(300))),
            kv("ratio", Value::DoubleValue(0.5)),
        ];
        let mut bare = sample_span(2, 2);
        bare.attributes.clear();
        let req = sample_request(vec![sp, bare, sample_span(3, 3)]);
        let usual = with_overlong_attribute_headers(&req, 1);
        let expected = attribute_readings(&usual);
        assert_eq!(expected[0].0.len(), 4);
        assert_eq!(expected[0].0[0], ("route.me".into(), WireValue::Str("yes")));
        assert_eq!(expected[1].0, Vec::new());
        assert_eq!(expected[0].3.dropped + expected[0].3.truncated, 2);
        for header_len in [2, 5] {
            let body = with_overlong_attribute_headers(&req, header_len);
            assert!(body.len() > usual.len());
            assert_eq!(ExportTraceServiceRequest::decode(&body[..]).unwrap(), req);
            assert_eq!(
                attribute_readings(&body),
                expected,
                "{header_len}-byte headers"
            );
        }
    }
}
