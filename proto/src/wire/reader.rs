//! The protobuf wire format, read field by field with error reporting: the reader every
//! validator walks with, and the error that names the field at fault.

use std::fmt;
use std::ops::Range;

/// Why a body is not a valid OTLP request; `path` names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    path: String,
    reason: String,
    invalid_id: bool,
}

impl WireError {
    /// A malformed body: `reason` says what is wrong; the path is added on the way out.
    pub(super) fn new(reason: impl Into<String>) -> Self {
        Self {
            path: String::new(),
            reason: reason.into(),
            invalid_id: false,
        }
    }

    /// A body that decodes but has an id of the wrong length at `path`.
    pub(super) fn invalid_id(path: String, reason: String) -> Self {
        Self {
            path,
            reason,
            invalid_id: true,
        }
    }

    /// Prepends a path segment as the error travels out of nested messages.
    pub(super) fn within(mut self, segment: &str) -> Self {
        self.path = if self.path.is_empty() {
            segment.to_string()
        } else {
            format!("{segment}.{}", self.path)
        };
        self
    }

    /// The path of the field at fault, e.g. `resource_spans[0].scope_spans[0].spans[3].trace_id`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong with it.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// True when the bytes decode but an id has the wrong length.
    pub fn is_invalid_id(&self) -> bool {
        self.invalid_id
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

impl std::error::Error for WireError {}

/// What the wire validators return.
pub(super) type Result<T> = std::result::Result<T, WireError>;

/// Protobuf wire types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WireType {
    Varint,
    I64,
    Len,
    I32,
}

/// One field as read from the wire.
pub(super) struct Field<'a> {
    pub(super) number: u32,
    pub(super) wire: WireType,
    /// The payload of a LEN field (empty for the others).
    pub(super) bytes: &'a [u8],
    /// The value of a VARINT field, or the little-endian value of a fixed-width one (0 for LEN).
    pub(super) value: u64,
    /// Where the whole field (tag included) starts and ends in the buffer being read.
    pub(super) span: Range<usize>,
}

/// Reads fields one after another from a message's bytes.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    #[inline(always)]
    pub(super) fn varint(&mut self) -> Result<u64> {
        // Tags and short lengths are one byte, and span and attribute lengths mostly two:
        // the common cases, kept short.
        if let Some(&low) = self.buf.get(self.pos) {
            if low < 0x80 {
                self.pos += 1;
                return Ok(u64::from(low));
            }
            if let Some(&high) = self.buf.get(self.pos + 1)
                && high < 0x80
            {
                self.pos += 2;
                return Ok(u64::from(low & 0x7f) | u64::from(high) << 7);
            }
        }
        self.varint_slow()
    }

    fn varint_slow(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(WireError::new("truncated varint"));
            };
            self.pos += 1;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                if i == 9 && b > 1 {
                    return Err(WireError::new("varint overflows 64 bits"));
                }
                return Ok(value);
            }
        }
        Err(WireError::new("varint longer than 10 bytes"))
    }

    #[inline(always)]
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                WireError::new(format!(
                    "field of {n} bytes runs past the end of its message"
                ))
            })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    #[inline(always)]
    pub(super) fn next(&mut self) -> Result<Option<Field<'a>>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let start = self.pos;
        let tag = self.varint()?;
        // A key is at most 32 bits (field numbers end at 2^29 - 1), as prost checks: a longer
        // one in an unknown field would pass here and break decoding of the records built
        // from these bytes (found by fuzzing).
        let number = u32::try_from(tag)
            .map(|key| key >> 3)
            .map_err(|_| WireError::new("field number out of range"))?;
        if number == 0 {
            return Err(WireError::new("field number 0 is invalid"));
        }
        let (wire, bytes, value) = match tag & 7 {
            0 => (WireType::Varint, &[][..], self.varint()?),
            1 => {
                let b = self.take(8)?;
                let value = u64::from_le_bytes(b.try_into().expect("8 bytes taken"));
                (WireType::I64, &[][..], value)
            }
            2 => {
                let len = self.varint()?;
                let len =
                    usize::try_from(len).map_err(|_| WireError::new("length out of range"))?;
                (WireType::Len, self.take(len)?, 0)
            }
            5 => {
                let b = self.take(4)?;
                let value = u32::from_le_bytes(b.try_into().expect("4 bytes taken"));
                (WireType::I32, &[][..], u64::from(value))
            }
            3 | 4 => {
                return Err(WireError::new(format!(
                    "field {number} uses the deprecated group wire type"
                )));
            }
            w => {
                return Err(WireError::new(format!(
                    "field {number} has invalid wire type {w}"
                )));
            }
        };
        Ok(Some(Field {
            number,
            wire,
            bytes,
            value,
            span: start..self.pos,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::put_varint;

    /// Varints of every length read back, the one- and two-byte fast paths included, as do
    /// overlong ones; truncated and oversized ones are refused.
    #[test]
    fn varints_of_every_length() {
        let mut values = vec![
            0, 1, 127, 128, 129, 300, 16_383, 16_384, 2_097_151, 2_097_152,
        ];
        values.extend((0..64).map(|bit| 1u64 << bit));
        values.extend((1..64).map(|bit| (1u64 << bit) - 1));
        values.push(u64::MAX);
        for v in values {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            let mut r = Reader::new(&buf);
            assert_eq!(r.varint(), Ok(v));
            assert_eq!(r.pos, buf.len(), "{v}");
        }
        let read = |bytes: &[u8]| Reader::new(bytes).varint().map_err(|e| e.to_string());
        assert_eq!(read(&[0x80, 0x00]), Ok(0));
        assert_eq!(read(&[0xff, 0x00]), Ok(127));
        assert_eq!(read(&[0x81, 0x80, 0x00]), Ok(1));
        assert_eq!(read(&[0x81, 0x01, 0xff]), Ok(129));
        assert_eq!(read(&[]), Err("truncated varint".into()));
        assert_eq!(read(&[0x80]), Err("truncated varint".into()));
        assert_eq!(read(&[0x80, 0x80]), Err("truncated varint".into()));
        assert_eq!(read(&[0xff; 10]), Err("varint longer than 10 bytes".into()));
        let mut over = [0xff; 10];
        over[9] = 0x02;
        assert_eq!(read(&over), Err("varint overflows 64 bits".into()));
    }
}
