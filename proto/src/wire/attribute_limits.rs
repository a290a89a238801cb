//! Holding a span's attributes to caps: how far a span goes past them, and the span rewritten
//! within them, read and written at the wire level. The caps are a parameter: what they are
//! and what happens to a span over them is the gateway's attribute-limit policy
//! (`gateway/src/attribute_limits.rs`).

use super::reader::WireType;
use super::rewrite::{put_varint, varint_len};
use super::unchecked::{fields, str_of, varint_at};

/// Caps on a span's attributes, as the caller decides them.
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
    use crate::otlp::common::v1::{AnyValue, ArrayValue, KeyValue, any_value::Value};
    use crate::otlp::trace::v1::Span;
    use crate::test_support::{kv, named_span};
    use prost::Message;

    fn span(attributes: Vec<KeyValue>, dropped: u32) -> Vec<u8> {
        Span {
            attributes,
            dropped_attributes_count: dropped,
            ..named_span(1, 2, "op")
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
