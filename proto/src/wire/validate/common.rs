//! The messages every signal shares, as tables of their known fields: `AnyValue`,
//! `KeyValue`, `Resource` and `InstrumentationScope`.

use super::message::{Kind, MAX_DEPTH, check_message, is_utf8};
use crate::wire::reader::Result;

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

/// Checks a `KeyValue` (an attribute).
pub(super) fn key_value(buf: &[u8], depth: u32) -> Result<()> {
    if is_usual_key_value(buf, depth) {
        return Ok(());
    }
    check_message(buf, depth, KEY_VALUE_FIELDS)
}

/// The fields of `KeyValue`.
const KEY_VALUE_FIELDS: &[(u32, &str, Kind)] = &[
    (1, "key", Kind::Str),
    (2, "value", Kind::Msg(any_value)),
    (3, "key_strindex", Kind::Varint),
];

/// True for a valid attribute in the layout every SDK writes: the key, then a string, bool,
/// int or double value (or none), each field with a one-byte tag and length. Attributes are
/// most of a request's fields, and this reads one without the general walk; it accepts only
/// what [`key_value`]'s table accepts, and anything else (every error among it) goes to the
/// table, which names the field at fault.
#[inline(always)]
fn is_usual_key_value(buf: &[u8], depth: u32) -> bool {
    // The value is one level below the key-value.
    if depth >= MAX_DEPTH {
        return false;
    }
    let [0x0a, key_len, rest @ ..] = buf else {
        return false;
    };
    let Some((key, rest)) = rest.split_at_checked(usize::from(*key_len)) else {
        return false;
    };
    let [0x12, value_len, value @ ..] = rest else {
        return false;
    };
    // A length byte of 0x80 or more starts a longer varint, which the table reads.
    *key_len < 0x80
        && *value_len < 0x80
        && value.len() == usize::from(*value_len)
        && is_utf8(key)
        && is_usual_any_value(value)
}

/// True for a valid `AnyValue` that is one string (with a one-byte length), bool, int or
/// double field, or empty; see [`is_usual_key_value`].
#[inline(always)]
fn is_usual_any_value(value: &[u8]) -> bool {
    match value {
        [0x0a, len, text @ ..] => *len < 0x80 && text.len() == usize::from(*len) && is_utf8(text),
        // bool_value, int_value: one varint to the end. Up to 9 bytes cannot overflow 64 bits;
        // a 10-byte one is left to the table.
        [0x10 | 0x18, varint @ ..] => {
            matches!(varint.split_last(), Some((last, init)) if *last < 0x80
                && init.len() < 9
                && init.iter().all(|b| *b >= 0x80))
        }
        [0x21, fixed @ ..] => fixed.len() == 8,
        [] => true,
        _ => false,
    }
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

/// Checks a `Resource`.
pub(super) fn resource(buf: &[u8], depth: u32) -> Result<()> {
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

/// Checks an `InstrumentationScope`.
pub(super) fn scope(buf: &[u8], depth: u32) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::common::v1::{AnyValue, ArrayValue, KeyValue, any_value::Value};
    use crate::test_support::kv;
    use prost::Message;

    /// Encoded attributes of every value kind: the first 10 in the usual layout.
    fn attributes() -> Vec<Vec<u8>> {
        let values = [
            Value::StringValue("v".into()),
            Value::StringValue(String::new()),
            Value::StringValue("0123456789abcdef".into()),
            Value::StringValue("caf\u{e9} \u{1f600}".into()),
            Value::BoolValue(true),
            Value::BoolValue(false),
            Value::IntValue(0),
            Value::IntValue(300),
            Value::IntValue(i64::MAX),
            Value::DoubleValue(0.5),
            // Not the usual layout from here on.
            Value::StringValue("x".repeat(200)),
            Value::IntValue(-1),
            Value::BytesValue(vec![0xff; 3]),
            Value::ArrayValue(ArrayValue {
                values: vec![AnyValue {
                    value: Some(Value::IntValue(1)),
                }],
            }),
        ];
        let mut out: Vec<Vec<u8>> = values
            .into_iter()
            .map(|v| kv("attr.key", v).encode_to_vec())
            .collect();
        out.push(KeyValue::default().encode_to_vec());
        out.push(
            KeyValue {
                key: "k".into(),
                value: Some(AnyValue::default()),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        out
    }

    /// The fast path for the usual attribute layout may only take a shortcut: whatever it
    /// accepts, the table accepts. Checked on every truncation, byte flip and extra byte of
    /// attributes of every value kind, at the depths around the limit, and on every body of
    /// up to two bytes.
    #[test]
    fn the_attribute_fast_path_accepts_only_what_the_table_accepts() {
        let mut bodies: Vec<Vec<u8>> = Vec::new();
        for good in attributes() {
            for cut in 0..=good.len() {
                bodies.push(good[..cut].to_vec());
            }
            for i in 0..good.len() {
                for x in [0x80u8, 0xff, 0x01, 0x07, 0x40, 0x10, 0x20] {
                    let mut b = good.clone();
                    b[i] ^= x;
                    bodies.push(b);
                }
            }
            for extra in [0x00u8, 0x08, 0x0a, 0x80, 0xff] {
                let mut b = good.clone();
                b.push(extra);
                bodies.push(b);
            }
        }
        for a in 0..=255u8 {
            bodies.push(vec![a]);
            for b in 0..=255u8 {
                bodies.push(vec![a, b]);
            }
        }
        let mut shortcuts = 0;
        for body in &bodies {
            for depth in [0, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1] {
                let by_table = check_message(body, depth, KEY_VALUE_FIELDS);
                if is_usual_key_value(body, depth) {
                    shortcuts += 1;
                    assert_eq!(by_table, Ok(()), "{body:02x?} at depth {depth}");
                }
                assert_eq!(key_value(body, depth), by_table, "{body:02x?}");
            }
        }
        // Not vacuous: the usual layouts took the shortcut.
        assert!(shortcuts > 1000, "{shortcuts}");
        for good in attributes().iter().take(10) {
            assert!(is_usual_key_value(good, 0), "{good:02x?}");
        }
    }

    /// The value of a key-value is one level deeper: at the limit, the fast path must leave
    /// the key-value to the table, which refuses it.
    #[test]
    fn an_attribute_at_the_depth_limit_is_refused() {
        let body = kv("a", Value::StringValue("b".into())).encode_to_vec();
        assert_eq!(key_value(&body, MAX_DEPTH - 1), Ok(()));
        let e = key_value(&body, MAX_DEPTH).unwrap_err();
        assert_eq!(
            e.to_string(),
            "value: messages nested deeper than 100 levels"
        );
    }

    /// Invalid UTF-8 anywhere in keys and string values of every length is refused (the
    /// inline ASCII check reads short strings as two overlapping words), and valid non-ASCII
    /// text anywhere is accepted.
    #[test]
    fn invalid_utf8_anywhere_in_keys_and_values_is_refused() {
        for len in 1..=40 {
            for at in 0..len {
                let mut text = vec![b'a'; len];
                text[at] = 0xff;
                // `text` as the key, with an int value; as the value, with the key "k".
                let mut key = vec![0x0a, len as u8];
                key.extend_from_slice(&text);
                key.extend_from_slice(&[0x12, 2, 0x18, 1]);
                let mut value = vec![0x0a, 1, b'k', 0x12, len as u8 + 2, 0x0a, len as u8];
                value.extend_from_slice(&text);
                let e = key_value(&key, 0).unwrap_err();
                assert_eq!(
                    e.to_string(),
                    "key: string is not valid UTF-8",
                    "{len} {at}"
                );
                let e = key_value(&value, 0).unwrap_err();
                assert_eq!(
                    e.to_string(),
                    "value.string_value: string is not valid UTF-8",
                    "{len} {at}"
                );
            }
            let mut good = "a".repeat(len);
            good.replace_range(len - 1.., "\u{e9}");
            let body = kv(&good, Value::StringValue(good.clone())).encode_to_vec();
            assert_eq!(key_value(&body, 0), Ok(()), "{len}");
        }
    }
}
