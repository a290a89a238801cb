//! The spool's entry format: one frame per appended batch (one request's records), so that a
//! request is spooled, recovered and replayed as a whole. Layout in `docs/spool.md`.
//!
//! ```text
//! frame:  body length N (u32 LE) | CRC-32 (u32 LE) | version (u8) | body (N bytes)
//! body:   appended at, Unix ms (u64) | record count (u32) | records
//! record: topic (u16 length + UTF-8) | key (u32 length + bytes) | value (u32 length + bytes)
//!         | items (u64) | headers flag (u8: 0 none, 1 present)
//!         [| header count (u16) | per header: name (u16 length + UTF-8), value (u32 length + bytes)]
//! ```
//!
//! The CRC (IEEE, `crc32fast`) covers the length, the version and the body: a torn write or a
//! flipped bit anywhere in the frame, its length included, fails the check.

use std::sync::Arc;
use weir_exporters::kafka::{Record, RecordHeaders};

/// Bytes before the body: length, CRC, version.
pub(super) const HEADER_LEN: usize = 9;
/// The frame version this build writes and reads.
pub(super) const VERSION: u8 = 1;
/// The body's fixed prefix: appended-at and record count.
pub(super) const BODY_PREFIX_LEN: usize = 12;

/// Why a batch cannot be framed.
#[derive(Debug, thiserror::Error)]
pub(super) enum EncodeError {
    /// A field or the whole body is larger than its length prefix can say.
    #[error("{what} is {len} bytes, more than a spool frame can hold ({max})")]
    TooLarge {
        /// The field.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The most its prefix allows.
        max: u64,
    },
}

/// Frames `records` appended at `appended_at_ms` (Unix ms) into one buffer, ready to write.
pub(super) fn encode(records: &[Record], appended_at_ms: u64) -> Result<Vec<u8>, EncodeError> {
    let mut body_len = BODY_PREFIX_LEN;
    for r in records {
        body_len += 2 + r.topic.len() + 4 + r.key.len() + 4 + r.value.len() + 8 + 1;
        if let Some(h) = &r.headers {
            body_len += 2 + h
                .iter()
                .map(|(n, v)| 2 + n.len() + 4 + v.len())
                .sum::<usize>();
        }
    }
    let body_len32 = fits::<u32>("the batch", body_len)?;
    let mut out = Vec::with_capacity(HEADER_LEN + body_len);
    out.extend_from_slice(&body_len32.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // the CRC, filled in below
    out.push(VERSION);
    out.extend_from_slice(&appended_at_ms.to_le_bytes());
    out.extend_from_slice(&fits::<u32>("the record count", records.len())?.to_le_bytes());
    for r in records {
        put_u16_bytes(&mut out, "a topic", r.topic.as_bytes())?;
        put_u32_bytes(&mut out, "a key", &r.key)?;
        put_u32_bytes(&mut out, "a value", &r.value)?;
        out.extend_from_slice(&r.items.to_le_bytes());
        match &r.headers {
            None => out.push(0),
            Some(headers) => {
                out.push(1);
                let count = fits::<u16>("the header count", headers.len())?;
                out.extend_from_slice(&count.to_le_bytes());
                for (name, value) in headers.iter() {
                    put_u16_bytes(&mut out, "a header name", name.as_bytes())?;
                    put_u32_bytes(&mut out, "a header value", value)?;
                }
            }
        }
    }
    let crc = frame_crc(&out[0..4], VERSION, &out[HEADER_LEN..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

fn fits<T: TryFrom<usize>>(what: &'static str, len: usize) -> Result<T, EncodeError> {
    T::try_from(len).map_err(|_| EncodeError::TooLarge {
        what,
        len,
        max: if size_of::<T>() == 2 {
            u16::MAX.into()
        } else {
            u32::MAX.into()
        },
    })
}

fn put_u16_bytes(out: &mut Vec<u8>, what: &'static str, b: &[u8]) -> Result<(), EncodeError> {
    out.extend_from_slice(&fits::<u16>(what, b.len())?.to_le_bytes());
    out.extend_from_slice(b);
    Ok(())
}

fn put_u32_bytes(out: &mut Vec<u8>, what: &'static str, b: &[u8]) -> Result<(), EncodeError> {
    out.extend_from_slice(&fits::<u32>(what, b.len())?.to_le_bytes());
    out.extend_from_slice(b);
    Ok(())
}

/// The CRC of a frame: over its length bytes, its version and its body.
pub(super) fn frame_crc(len_bytes: &[u8], version: u8, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len_bytes);
    h.update(&[version]);
    h.update(body);
    h.finalize()
}

/// A frame's header, read before its body.
#[derive(Clone, Copy, Debug)]
pub(super) struct FrameHeader {
    /// The body's length.
    pub body_len: u32,
    /// The stored CRC.
    pub crc: u32,
    /// The format version.
    pub version: u8,
}

impl FrameHeader {
    /// Reads the 9 header bytes.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Self {
        Self {
            body_len: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            crc: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            version: b[8],
        }
    }

    /// The whole frame's length on disk.
    pub fn frame_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.body_len)
    }

    /// True when `body` is the body this header was written with.
    pub fn matches(&self, body: &[u8]) -> bool {
        frame_crc(&self.body_len.to_le_bytes(), self.version, body) == self.crc
    }
}

/// The fixed prefix of a body: when it was appended and how many records it holds.
pub(super) fn body_prefix(body: &[u8]) -> Option<(u64, u32)> {
    let mut c = Cursor { b: body };
    Some((c.u64()?, c.u32()?))
}

/// A body that passed its CRC but does not decode: written by a faulty build.
#[derive(Debug, thiserror::Error)]
#[error("the frame body does not decode: {0}")]
pub(super) struct DecodeError(&'static str);

/// Decodes a version-1 body into its records. Consecutive records with the same topic or
/// headers share one allocation, as the records of a request did when they were appended.
pub(super) fn decode(body: &[u8]) -> Result<Vec<Record>, DecodeError> {
    let mut c = Cursor { b: body };
    let (_appended_at, count) = body_prefix(body).ok_or(DecodeError("the body is cut"))?;
    c.take(BODY_PREFIX_LEN);
    // Each record takes at least 19 bytes, so a count the body cannot hold is refused here
    // rather than allocated.
    if count as usize > c.b.len() / 19 {
        return Err(DecodeError("the record count is larger than the body"));
    }
    let mut records = Vec::with_capacity(count as usize);
    let mut last_topic: Option<Arc<str>> = None;
    let mut last_headers: Option<RecordHeaders> = None;
    for _ in 0..count {
        let topic = c.u16_bytes().ok_or(DecodeError("a topic is cut"))?;
        let topic = std::str::from_utf8(topic).map_err(|_| DecodeError("a topic is not UTF-8"))?;
        let topic = match &last_topic {
            Some(t) if &**t == topic => t.clone(),
            _ => Arc::<str>::from(topic),
        };
        last_topic = Some(topic.clone());
        let key = c.u32_bytes().ok_or(DecodeError("a key is cut"))?.to_vec();
        let value = c.u32_bytes().ok_or(DecodeError("a value is cut"))?.to_vec();
        let items = c.u64().ok_or(DecodeError("an item count is cut"))?;
        let headers = match c.u8().ok_or(DecodeError("a header flag is cut"))? {
            0 => None,
            1 => {
                let n = c.u16().ok_or(DecodeError("a header count is cut"))?;
                let mut list = Vec::with_capacity(usize::from(n).min(c.b.len() / 6));
                for _ in 0..n {
                    let name = c.u16_bytes().ok_or(DecodeError("a header name is cut"))?;
                    let name = std::str::from_utf8(name)
                        .map_err(|_| DecodeError("a header name is not UTF-8"))?;
                    let value = c.u32_bytes().ok_or(DecodeError("a header value is cut"))?;
                    list.push((name.to_string(), value.to_vec()));
                }
                let headers = match &last_headers {
                    Some(h) if h[..] == list[..] => h.clone(),
                    _ => RecordHeaders::from(list),
                };
                last_headers = Some(headers.clone());
                Some(headers)
            }
            _ => return Err(DecodeError("a header flag is neither 0 nor 1")),
        };
        records.push(Record {
            topic,
            key,
            value,
            items,
            headers,
        });
    }
    if !c.b.is_empty() {
        return Err(DecodeError("bytes follow the last record"));
    }
    Ok(records)
}

/// Reads little-endian fields off the front of a slice; `None` when it is too short.
struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }

    fn u16_bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    fn u32_bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()?;
        self.take(usize::try_from(n).ok()?)
    }
}
