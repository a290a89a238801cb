//! The messages every signal shares, as tables of their known fields: `AnyValue`,
//! `KeyValue`, `Resource` and `InstrumentationScope`.

use super::message::{Kind, check_message};
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
