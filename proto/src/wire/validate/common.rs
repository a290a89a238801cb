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
