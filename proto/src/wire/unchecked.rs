//! Unchecked reading of bytes that validation accepted: attribute values, resource
//! attributes, scope names. These readers report no errors (validation already said what was
//! wrong) and stop at anything malformed; they are the hot path's readers.

use super::reader::{Field, Reader, WireType};

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
#[inline]
pub(super) fn fields(buf: &[u8]) -> impl Iterator<Item = Field<'_>> {
    let mut r = Reader::new(buf);
    std::iter::from_fn(move || r.next().ok().flatten())
}

/// A field of bytes that validation accepted, read by [`Validated`].
#[derive(Clone, Copy)]
pub(super) struct Raw<'a> {
    pub(super) number: u32,
    pub(super) wire: u8,
    /// A LEN field's payload, or a fixed field's little-endian bytes.
    bytes: &'a [u8],
    /// A varint field's value.
    pub(super) value: u64,
}

/// Reads the fields of validated bytes with no error reporting (the hot path's reader:
/// validation already said what was wrong); stops at anything malformed.
pub(super) struct Validated<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// The wire type of a varint field.
pub(super) const VARINT: u8 = 0;
/// The wire type of a fixed64 field.
const I64: u8 = 1;
/// The wire type of a length-delimited field.
const LEN: u8 = 2;

impl<'a> Validated<'a> {
    /// A reader of the fields of `buf`.
    #[inline]
    pub(super) fn new(buf: &'a [u8]) -> Self {
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
pub(super) fn varint_at(buf: &[u8], f: &Field<'_>) -> u64 {
    let mut r = Reader::new(&buf[f.span.clone()]);
    let _ = r.varint();
    r.varint().unwrap_or(0)
}

/// A validated string field (non-UTF-8 cannot occur after validation; it reads as empty).
pub(super) fn str_of<'a>(f: &Field<'a>) -> &'a str {
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
#[inline]
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
pub(super) fn key_and_text(kv: &[u8]) -> (&[u8], Option<&[u8]>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::common::v1::any_value::Value;
    use crate::test_support::{kv, sample_request, sample_span};
    use crate::wire::TraceRequestView;
    use prost::Message;

    #[test]
    fn reads_span_fields_and_attributes() {
        use crate::otlp::trace::v1::Status;
        let mut sp = sample_span(1, 1);
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
        let req = sample_request(vec![sp.clone()]);
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
}
