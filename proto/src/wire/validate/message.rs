//! Checks one message against the table of its known fields, as `prost` decoding would
//! (wire types, UTF-8 strings, nesting depth), naming the field at fault; unknown fields are
//! skipped.

use crate::wire::reader::{Field, Reader, Result, WireError, WireType};

/// The nesting limit, the same as `prost`'s.
pub(super) const MAX_DEPTH: u32 = 100;

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
        Kind::Str if is_utf8(f.bytes) => Ok(()),
        Kind::Str => Err(WireError::new("string is not valid UTF-8")),
        Kind::Msg(check) | Kind::Repeated(check) => check(f.bytes, depth + 1),
        _ => Ok(()),
    }
}

/// Checks one known field as [`check_field`] does, naming it in the error: `name`, or
/// `name[index]` for the `index`-th entry of a repeated one.
#[inline(always)]
pub(super) fn check_named(
    f: &Field<'_>,
    kind: Kind,
    depth: u32,
    name: &str,
    index: u32,
) -> Result<()> {
    check_field(f, kind, depth).map_err(|e| e.within(&segment(name, kind, index)))
}

/// True when `bytes` are valid UTF-8, as a `string` field must be.
#[inline(always)]
pub(super) fn is_utf8(bytes: &[u8]) -> bool {
    is_short_ascii(bytes) || bytes.is_ascii() || std::str::from_utf8(bytes).is_ok()
}

/// True for ASCII of 4 to 16 bytes, read as two overlapping words: most keys and values are
/// such, and this settles them inline where `is_ascii` is a call (measured 13% of validation).
#[inline(always)]
fn is_short_ascii(bytes: &[u8]) -> bool {
    const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
    let n = bytes.len();
    if let (Some(head), Some(tail)) = (bytes.first_chunk::<8>(), bytes.last_chunk::<8>())
        && n <= 16
    {
        return (u64::from_le_bytes(*head) | u64::from_le_bytes(*tail)) & HIGH_BITS == 0;
    }
    if let (Some(head), Some(tail)) = (bytes.first_chunk::<4>(), bytes.last_chunk::<4>())
        && n < 8
    {
        return (u32::from_le_bytes(*head) | u32::from_le_bytes(*tail)) & HIGH_BITS as u32 == 0;
    }
    false
}

/// The path segment of a field: `name`, or `name[i]` for the i-th entry of a repeated one.
fn segment(name: &str, kind: Kind, index: u32) -> String {
    match kind {
        Kind::Repeated(_) => format!("{name}[{index}]"),
        _ => name.to_string(),
    }
}

/// Refuses a message nested deeper than `prost` reads.
#[inline(always)]
pub(super) fn check_depth(depth: u32) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(WireError::new(format!(
            "messages nested deeper than {MAX_DEPTH} levels"
        )));
    }
    Ok(())
}

/// Validates a message against a table of its known fields; unknown fields are skipped.
/// Calls `seen` with each known field as read (number, payload or value, and where the whole
/// field is: a tag or length may be an overlong varint), so callers can pick values out in the
/// same pass.
#[inline(always)]
pub(super) fn walk<'a>(
    buf: &'a [u8],
    depth: u32,
    fields: &[(u32, &str, Kind)],
    mut seen: impl FnMut(&Field<'a>),
) -> Result<()> {
    check_depth(depth)?;
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
        check_named(&f, kind, depth, name, index)?;
        seen(&f);
    }
    Ok(())
}

/// Validates a message against a table of its known fields.
#[inline(always)]
pub(super) fn check_message(buf: &[u8], depth: u32, fields: &[(u32, &str, Kind)]) -> Result<()> {
    walk(buf, depth, fields, |_| {})
}
