//! Validation of OTLP trace requests, in one pass that also indexes them:
//! `TraceRequestView::parse` walks an `ExportTraceServiceRequest` (or `TracesData`, the same
//! bytes) once, checks every nested message as `prost` decoding would (wire types, lengths,
//! UTF-8 strings, nesting depth) and the trace and span id lengths, and records where each
//! span's bytes are and the fields a policy reads (see `index.rs`).

use super::common::{key_value, resource, scope};
use super::message::{Kind, check_depth, check_field, check_message, check_named, walk};
use super::{SPAN_ID_LEN, TRACE_ID_LEN, check_id};
use crate::wire::index::{ResourceEntry, ScopeEntry, SpanEntry, TraceRequestView};
use crate::wire::reader::{Reader, Result, WireError, WireType};
use crate::wire::unchecked::{VARINT, Validated};

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
        |f| match f.number {
            1 => trace_id = f.bytes,
            2 => span_id = f.bytes,
            _ => {}
        },
    )?;
    check_id(trace_id, TRACE_ID_LEN, true, || "trace_id".into())?;
    check_id(span_id, SPAN_ID_LEN, true, || "span_id".into())
}

/// Validates a span and records what later readers need, so that they never walk its bytes
/// again: its trace id, its scalar fields, and where its name, trace state and attributes are.
/// The span's fields are a `match` rather than a table (as the other messages have): each
/// check is then compiled for its field's kind, in the loop validation spends most time in.
fn span(buf: &[u8], depth: u32, entry: &mut SpanEntry) -> Result<()> {
    check_depth(depth)?;
    let (mut trace_id, mut span_id, mut parent) = (&[][..], &[][..], &[][..]);
    let mut attributes = (u32::MAX, 0);
    // Entries seen so far of the repeated fields, to name them by index.
    let (mut attribute_count, mut event_count, mut link_count) = (0u32, 0u32, 0u32);
    // Payloads are subslices of `buf`: their offsets are pointer differences.
    let offset = |b: &[u8]| (b.as_ptr() as usize - buf.as_ptr() as usize) as u32;
    let range = |b: &[u8]| (offset(b), offset(b) + b.len() as u32);
    let mut r = Reader::new(buf);
    while let Some(f) = r.next()? {
        let check = |kind, name| check_named(&f, kind, depth, name, 0);
        match f.number {
            1 => {
                check(Kind::Bytes, "trace_id")?;
                trace_id = f.bytes;
            }
            2 => {
                check(Kind::Bytes, "span_id")?;
                span_id = f.bytes;
            }
            3 => {
                check(Kind::Str, "trace_state")?;
                entry.trace_state = range(f.bytes);
            }
            4 => {
                check(Kind::Bytes, "parent_span_id")?;
                parent = f.bytes;
            }
            5 => {
                check(Kind::Str, "name")?;
                entry.name = range(f.bytes);
            }
            6 => {
                check(Kind::Varint, "kind")?;
                // An enum is an int32: a negative value is sign-extended to 64 bits on the
                // wire.
                entry.kind = f.value as i32;
            }
            7 => {
                check(Kind::Fixed64, "start_time_unix_nano")?;
                entry.start_time_unix_nano = f.value;
            }
            8 => {
                check(Kind::Fixed64, "end_time_unix_nano")?;
                entry.end_time_unix_nano = f.value;
            }
            9 => {
                let kind = Kind::Repeated(key_value);
                check_named(&f, kind, depth, "attributes", attribute_count)?;
                attribute_count += 1;
                // From the field's own start: its tag and length may be overlong varints,
                // which a start worked out back from the payload would miss (and readers
                // would then start mid-field).
                attributes = (attributes.0.min(f.span.start as u32), f.span.end as u32);
            }
            10 => check(Kind::Varint, "dropped_attributes_count")?,
            11 => {
                check_named(&f, Kind::Repeated(event), depth, "events", event_count)?;
                event_count += 1;
            }
            12 => check(Kind::Varint, "dropped_events_count")?,
            13 => {
                check_named(&f, Kind::Repeated(link), depth, "links", link_count)?;
                link_count += 1;
            }
            14 => check(Kind::Varint, "dropped_links_count")?,
            15 => {
                check(Kind::Msg(status), "status")?;
                // A repeated message field merges: a later `status` without a code keeps the
                // earlier code, as prost and every consumer read it (found by fuzzing).
                if let Some(code) = Validated::new(f.bytes)
                    .filter(|s| s.number == 3 && s.wire == VARINT)
                    .last()
                {
                    entry.status_code = code.value as i32;
                }
            }
            16 => check(Kind::Fixed32, "flags")?,
            _ => {}
        }
    }
    check_id(trace_id, TRACE_ID_LEN, true, || "trace_id".into())?;
    check_id(span_id, SPAN_ID_LEN, true, || "span_id".into())?;
    check_id(parent, SPAN_ID_LEN, false, || "parent_span_id".into())?;
    entry.trace_id = trace_id.try_into().expect("length checked above");
    entry.is_root = parent.is_empty();
    entry.attributes = (attributes.0.min(attributes.1), attributes.1);
    Ok(())
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
        // Room for the spans up front, rather than growing the index as they come: a span of
        // the usual shape (ids, name, times, a few attributes) is over 128 bytes, and the
        // estimate stays below the body's size in memory for the smallest spans (28 bytes).
        self.spans.reserve(buf.len() / 128);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::collector::trace::v1::ExportTraceServiceRequest;
    use crate::otlp::common::v1::{AnyValue, ArrayValue, KeyValue, any_value::Value};
    use crate::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use crate::test_support::{sample_request, sample_span};
    use crate::wire::put_varint;
    use prost::Message;

    #[test]
    fn indexes_spans_and_heads() {
        let req = sample_request(vec![
            sample_span(1, 1),
            sample_span(2, 2),
            sample_span(1, 3),
        ]);
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
        let mut bad = sample_span(1, 1);
        bad.trace_id.pop();
        let body = sample_request(vec![sample_span(1, 1), bad]).encode_to_vec();
        let e = TraceRequestView::parse(&body).unwrap_err();
        assert!(e.is_invalid_id());
        assert_eq!(
            e.to_string(),
            "resource_spans[0].scope_spans[0].spans[1].trace_id: must be 16 bytes, got 15 bytes"
        );
        let mut bad = sample_span(1, 1);
        bad.links[0].span_id = vec![1; 7];
        let e = TraceRequestView::parse(&sample_request(vec![bad]).encode_to_vec()).unwrap_err();
        assert_eq!(
            e.path(),
            "resource_spans[0].scope_spans[0].spans[0].links[0].span_id"
        );
        let mut bad = sample_span(1, 1);
        bad.parent_span_id = vec![1; 3];
        let e = TraceRequestView::parse(&sample_request(vec![bad]).encode_to_vec()).unwrap_err();
        assert!(e.reason().contains("or empty"), "{e}");
    }

    #[test]
    fn agrees_with_prost_on_malformed_bodies() {
        let good = sample_request(vec![sample_span(1, 1), sample_span(2, 2)]).encode_to_vec();
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
        let mut sp = sample_span(1, 1);
        sp.kind = 3;
        sp.start_time_unix_nano = 10;
        sp.end_time_unix_nano = u64::MAX;
        sp.trace_state = "ot=th:8".into();
        sp.parent_span_id = vec![7; 8];
        sp.status = Some(Status {
            code: 2,
            message: "boom".into(),
        });
        let mut negative = sample_span(2, 2);
        negative.kind = -3;
        let body = sample_request(vec![sp, negative]).encode_to_vec();
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
    fn invalid_utf8_and_deep_nesting_are_refused() {
        let mut s = sample_span(1, 1);
        s.name = "\u{e9}".into();
        let mut body = sample_request(vec![s]).encode_to_vec();
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
        let mut s = sample_span(1, 1);
        s.attributes = vec![KeyValue {
            key: "deep".into(),
            value: Some(v),
            ..Default::default()
        }];
        let e = TraceRequestView::parse(&sample_request(vec![s]).encode_to_vec()).unwrap_err();
        assert!(e.reason().contains("nested deeper"), "{e}");
    }

    /// A request of one resource and one scope holding one span of the bytes `span`.
    fn request_with_span(span: &[u8]) -> Vec<u8> {
        let nest = |number: u64, inner: &[u8]| {
            let mut out = Vec::new();
            put_varint(&mut out, number << 3 | 2);
            put_varint(&mut out, inner.len() as u64);
            out.extend_from_slice(inner);
            out
        };
        nest(1, &nest(2, &nest(2, span)))
    }

    /// The two ids a span needs, as the first fields of its bytes.
    fn span_ids() -> Vec<u8> {
        let mut out = vec![0x0a, 16];
        out.extend_from_slice(&[1; 16]);
        out.extend_from_slice(&[0x12, 8]);
        out.extend_from_slice(&[2; 8]);
        out
    }

    /// A field of each wire type, as a wrong one for a span field of another.
    fn field_of_wire_type(number: u64, wire: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, number << 3 | wire);
        match wire {
            0 => out.push(1),
            1 => out.extend_from_slice(&[0; 8]),
            2 => out.push(0),
            _ => out.extend_from_slice(&[0; 4]),
        }
        out
    }

    /// Every span field in the wrong wire type is refused, named as before the span's fields
    /// moved from a table to a match; entries of repeated fields are named by index.
    #[test]
    fn span_fields_of_the_wrong_wire_type_are_named() {
        let fields = [
            (1, "trace_id", "Len"),
            (2, "span_id", "Len"),
            (3, "trace_state", "Len"),
            (4, "parent_span_id", "Len"),
            (5, "name", "Len"),
            (6, "kind", "Varint"),
            (7, "start_time_unix_nano", "I64"),
            (8, "end_time_unix_nano", "I64"),
            (9, "attributes[1]", "Len"),
            (10, "dropped_attributes_count", "Varint"),
            (11, "events[1]", "Len"),
            (12, "dropped_events_count", "Varint"),
            (13, "links[1]", "Len"),
            (14, "dropped_links_count", "Varint"),
            (15, "status", "Len"),
            (16, "flags", "I32"),
        ];
        let link = sample_span(1, 1).links[0].encode_to_vec();
        for (number, name, expected) in fields {
            let (wrong, got) = if expected == "Varint" {
                (2, "Len")
            } else {
                (0, "Varint")
            };
            let mut span = span_ids();
            if matches!(number, 9 | 11 | 13) {
                // One good entry first: the bad one is the second.
                match number {
                    9 => span.extend_from_slice(&[0x4a, 3, 0x0a, 1, b'a']),
                    11 => span.extend_from_slice(&[0x5a, 0]),
                    _ => {
                        span.extend_from_slice(&[0x6a, link.len() as u8]);
                        span.extend_from_slice(&link);
                    }
                }
            }
            span.extend_from_slice(&field_of_wire_type(number, wrong));
            let e = TraceRequestView::parse(&request_with_span(&span)).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "resource_spans[0].scope_spans[0].spans[0].{name}: \
                     wire type {got}, expected {expected}"
                ),
            );
        }
        // Unknown fields of any wire type are skipped.
        let mut span = span_ids();
        for wire in [0, 1, 2, 5] {
            span.extend_from_slice(&field_of_wire_type(17, wire));
        }
        assert_eq!(
            TraceRequestView::parse(&request_with_span(&span))
                .unwrap()
                .spans
                .len(),
            1
        );
    }

    /// Varints in a span: overlong tags and lengths read as the usual ones, a varint of more
    /// than 10 bytes or over 64 bits is refused, and a length past the end is refused.
    #[test]
    fn overlong_truncated_and_oversized_varints_in_a_span() {
        // Name, written with a 2-byte tag and a 3-byte length.
        let mut span = span_ids();
        span.extend_from_slice(&[0xaa, 0x00, 0x82, 0x80, 0x00, b'h', b'i']);
        // An attribute, with a 2-byte tag.
        span.extend_from_slice(&[0xca, 0x00, 3, 0x0a, 1, b'a']);
        let body = request_with_span(&span);
        let view = TraceRequestView::parse(&body).unwrap();
        let (e, bytes) = (&view.spans[0], &body[view.spans[0].range()]);
        assert_eq!(e.name(bytes), b"hi");
        assert_eq!(
            e.raw_attributes(bytes).collect::<Vec<_>>(),
            [(&b"a"[..], None)]
        );
        assert_eq!(
            e.attributes.0 as usize,
            span.len() - 6,
            "from the overlong tag"
        );

        let error = |tail: &[u8]| {
            let mut span = span_ids();
            span.extend_from_slice(tail);
            TraceRequestView::parse(&request_with_span(&span))
                .unwrap_err()
                .to_string()
        };
        let at = "resource_spans[0].scope_spans[0].spans[0]";
        let eleven = [
            0x30, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00,
        ];
        assert_eq!(error(&eleven), format!("{at}: varint longer than 10 bytes"));
        let over = [
            0x30, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
        ];
        assert_eq!(error(&over), format!("{at}: varint overflows 64 bits"));
        assert_eq!(error(&[0x30, 0x80]), format!("{at}: truncated varint"));
        assert_eq!(
            error(&[0x2a, 5, b'h', b'i']),
            format!("{at}: field of 5 bytes runs past the end of its message")
        );
        assert_eq!(
            error(&[0x4a, 0x80, 0x01, 0x0a]),
            format!("{at}: field of 128 bytes runs past the end of its message")
        );
    }

    /// Ids of the wrong length, or missing, on a span are refused and named.
    #[test]
    fn span_ids_of_the_wrong_length_are_named() {
        let at = "resource_spans[0].scope_spans[0].spans[0]";
        /// How a case spoils a good span.
        type Spoil = fn(&mut Span);
        let cases: [(Spoil, &str); 4] = [
            (
                |s| s.trace_id.clear(),
                "trace_id: must be 16 bytes, got 0 bytes",
            ),
            (
                |s| s.trace_id.push(0),
                "trace_id: must be 16 bytes, got 17 bytes",
            ),
            (
                |s| s.span_id.truncate(4),
                "span_id: must be 8 bytes, got 4 bytes",
            ),
            (
                |s| s.parent_span_id = vec![1; 9],
                "parent_span_id: must be 8 bytes or empty, got 9 bytes",
            ),
        ];
        for (spoil, expected) in cases {
            let mut span = sample_span(1, 1);
            spoil(&mut span);
            let e = TraceRequestView::parse(&request_with_span(&span.encode_to_vec())).unwrap_err();
            assert!(e.is_invalid_id());
            assert_eq!(e.to_string(), format!("{at}.{expected}"));
        }
    }
}
