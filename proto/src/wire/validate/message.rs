//! Checks one message against the table of its known fields, as `prost` decoding would
//! (wire types, UTF-8 strings, nesting depth), naming the field at fault; unknown fields are
//! skipped.

use crate::wire::reader::{Field, Reader, Result, WireError, WireType};

/// The nesting limit, the same as `prost`'s.
const MAX_DEPTH: u32 = 100;

/// What a known field must be.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Varint,
    Fixed64,
    Fixed32,
    Bytes,
    Str,
    /// A singular message field, checked by the function.
    Msg(fn(&[u8], u32) -> Result<()>),
    /// A repeated message field: errors name the entry's index.
    Repeated(fn(&[u8], u32) -> Result<()>),
}

impl Kind {
    fn wire(self) -> WireType {
        match self {
            Kind::Varint => WireType::Varint,
            Kind::Fixed64 => WireType::I64,
            Kind::Fixed32 => WireType::I32,
            Kind::Bytes | Kind::Str | Kind::Msg(_) | Kind::Repeated(_) => WireType::Len,
        }
    }
}

/// Checks one known field's wire type and content; errors carry the path below the field.
#[inline(always)]
pub(super) fn check_field(f: &Field<'_>, kind: Kind, depth: u32) -> Result<()> {
    if f.wire != kind.wire() {
        return Err(WireError::new(format!(
            "wire type {:?}, expected {:?}",
            f.wire,
            kind.wire()
        )));
    }
    match kind {
        // Most attribute keys and values are ASCII, which `is_ascii` checks a word at a time.
        Kind::Str if f.bytes.is_ascii() || std::str::from_utf8(f.bytes).is_ok() => Ok(()),
        Kind::Str => Err(WireError::new("string is not valid UTF-8")),
        Kind::Msg(check) | Kind::Repeated(check) => check(f.bytes, depth + 1),
        _ => Ok(()),
    }
}

/// The path segment of a field: `name`, or `name[i]` for the i-th entry of a repeated one.
fn segment(name: &str, kind: Kind, index: u32) -> String {
    match kind {
        Kind::Repeated(_) => format!("{name}[{index}]"),
        _ => name.to_string(),
    }
}

/// Validates a message against a table of its known fields; unknown fields are skipped.
/// Calls `seen` with each known field as read (number, payload or value, and where the whole
/// field is: a tag or length may be an overlong varint), so callers can pick values out in the
/// same pass.
pub(super) fn walk<'a>(
    buf: &'a [u8],
    depth: u32,
    fields: &[(u32, &str, Kind)],
    mut seen: impl FnMut(&Field<'a>),
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(WireError::new(format!(
            "messages nested deeper than {MAX_DEPTH} levels"
        )));
    }
    // Entries seen so far of each field, to name repeated ones by index.
    let mut counts = [0u32; 16];
    let mut r = Reader::new(buf);
    while let Some(f) = r.next()? {
        // Tables list fields by number, mostly 1, 2, 3...: try the direct index first.
        let direct = (f.number as usize)
            .checked_sub(1)
            .filter(|&i| fields.get(i).is_some_and(|e| e.0 == f.number));
        let Some(pos) = direct.or_else(|| fields.iter().position(|(n, _, _)| *n == f.number))
        else {
            continue;
        };
        let (_, name, kind) = fields[pos];
        let index = counts.get(pos).copied().unwrap_or(0);
        if let Some(c) = counts.get_mut(pos) {
            *c += 1;
        }
        check_field(&f, kind, depth).map_err(|e| e.within(&segment(name, kind, index)))?;
        seen(&f);
    }
    Ok(())
}

/// Validates a message against a table of its known fields.
pub(super) fn check_message(buf: &[u8], depth: u32, fields: &[(u32, &str, Kind)]) -> Result<()> {
    walk(buf, depth, fields, |_| {})
}
