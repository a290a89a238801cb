//! The tail sampling decision record: what a gateway publishes to `weir.tail.decisions` about
//! one time window, and what the tail router merges. A fixed binary header (big-endian),
//! the gateway id, then a segment of the window's Bloom filter bits. The layout is documented
//! byte by byte in `proto/weir/tail/v1/decision_record.md`.
//!
//! A filter larger than a Kafka record is published as several segments (byte ranges of the
//! bit array); a reader ORs each segment into its copy of the window's filter at the
//! segment's offset. Decoders refuse a format version they do not know rather than guess.

use thiserror::Error;

/// The first four bytes of every decision record.
pub const MAGIC: [u8; 4] = *b"WTDR";

/// The format version this module writes and reads.
pub const FORMAT_VERSION: u16 = 1;

/// Hash scheme 1: the `bloomfilter` 3.x crate's double hashing (SipHash-1-3 keyed with the
/// two halves of the seed) over the 16 trace id bytes as Rust's `Hash` feeds a `[u8; 16]`
/// (a 64-bit little-endian length prefix, then the bytes); bit `i` is bit `i % 8` (LSB first)
/// of byte `i / 8`.
pub const HASH_SCHEME_BLOOMFILTER3: u8 = 1;

/// The size of the fixed part of the header, before the gateway id.
pub const FIXED_HEADER_LEN: usize = 116;

/// The longest gateway id a record carries.
pub const MAX_GATEWAY_ID_LEN: usize = 255;

/// Header flag: the window is closed and this is the gateway's final state of it.
const FLAG_SEALED: u8 = 1;

/// The header of a decision record: which window, which filter, which gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecisionHeader {
    /// The window's start, milliseconds since the Unix epoch (a multiple of its length).
    pub window_start_millis: u64,
    /// The window's length in milliseconds.
    pub window_millis: u64,
    /// The size of the whole filter bit array in bytes (bits = 8 times this).
    pub bitmap_bytes: u64,
    /// The number of hash functions.
    pub hashes: u32,
    /// The filter's seed (the two SipHash keys).
    pub seed: [u8; 32],
    /// The hash scheme ([`HASH_SCHEME_BLOOMFILTER3`]).
    pub hash_scheme: u8,
    /// Marked traces the filter is sized for.
    pub expected_items: u64,
    /// Distinct traces this gateway marked in the window so far (an estimate: a trace whose
    /// bits were all set already is not counted).
    pub item_estimate: u64,
    /// The baseline's 56-bit rejection threshold (keep traces whose randomness is at least
    /// this); `None`: no baseline.
    pub baseline_rejection: Option<u64>,
    /// True for the final record of a closed window; false for a snapshot of an open one.
    pub sealed: bool,
    /// Increases with every record a gateway publishes (per process start).
    pub sequence: u64,
    /// Where the carried bits start in the bit array, in bytes.
    pub segment_offset: u64,
    /// The publishing gateway.
    pub gateway_id: String,
}

impl DecisionHeader {
    /// True when filters described by `self` and `other` merge with a bitwise OR: same
    /// window, same size, hash count, seed and scheme.
    pub fn same_filter(&self, other: &DecisionHeader) -> bool {
        self.window_start_millis == other.window_start_millis
            && self.window_millis == other.window_millis
            && self.bitmap_bytes == other.bitmap_bytes
            && self.hashes == other.hashes
            && self.seed == other.seed
            && self.hash_scheme == other.hash_scheme
    }
}

/// Why a decision record could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecisionError {
    /// Fewer bytes than the header needs.
    #[error("decision record truncated: {0}")]
    Truncated(&'static str),
    /// The record does not start with `WTDR`.
    #[error("not a decision record (bad magic)")]
    BadMagic,
    /// A format version this reader does not know.
    #[error(
        "decision record format version {0} is not supported (this reader knows version {FORMAT_VERSION}); upgrade the tail router"
    )]
    UnsupportedVersion(u16),
    /// A hash scheme this reader does not know.
    #[error("decision record hash scheme {0} is not supported")]
    UnsupportedHashScheme(u8),
    /// A field has an impossible value.
    #[error("invalid decision record: {0}")]
    Invalid(String),
}

/// Appends the record of `header` carrying `bits` (the segment at `header.segment_offset`)
/// to `out`. Gateway ids longer than [`MAX_GATEWAY_ID_LEN`] bytes are cut at a character
/// boundary.
pub fn encode(header: &DecisionHeader, bits: &[u8], out: &mut Vec<u8>) {
    let mut id = header.gateway_id.as_str();
    while id.len() > MAX_GATEWAY_ID_LEN {
        let mut end = MAX_GATEWAY_ID_LEN;
        while !id.is_char_boundary(end) {
            end -= 1;
        }
        id = &id[..end];
    }
    let header_len = FIXED_HEADER_LEN + id.len();
    out.reserve(header_len + bits.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&(header_len as u16).to_be_bytes());
    out.push(if header.sealed { FLAG_SEALED } else { 0 });
    out.push(header.hash_scheme);
    out.extend_from_slice(&(id.len() as u16).to_be_bytes());
    out.extend_from_slice(&header.hashes.to_be_bytes());
    for v in [
        header.window_start_millis,
        header.window_millis,
        header.bitmap_bytes,
        header.expected_items,
        header.item_estimate,
        header.baseline_rejection.unwrap_or(u64::MAX),
        header.sequence,
        header.segment_offset,
    ] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&(bits.len() as u32).to_be_bytes());
    out.extend_from_slice(&header.seed);
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(bits);
}

/// Reads a decision record: its header and the filter bits it carries.
pub fn decode(record: &[u8]) -> Result<(DecisionHeader, &[u8]), DecisionError> {
    if record.len() < 8 {
        return Err(DecisionError::Truncated(
            "shorter than magic, version and length",
        ));
    }
    if record[..4] != MAGIC {
        return Err(DecisionError::BadMagic);
    }
    let version = u16::from_be_bytes([record[4], record[5]]);
    if version != FORMAT_VERSION {
        return Err(DecisionError::UnsupportedVersion(version));
    }
    let header_len = usize::from(u16::from_be_bytes([record[6], record[7]]));
    if record.len() < FIXED_HEADER_LEN || header_len < FIXED_HEADER_LEN {
        return Err(DecisionError::Truncated("shorter than the fixed header"));
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&record[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let flags = record[8];
    let hash_scheme = record[9];
    if hash_scheme != HASH_SCHEME_BLOOMFILTER3 {
        return Err(DecisionError::UnsupportedHashScheme(hash_scheme));
    }
    let id_len = usize::from(u16::from_be_bytes([record[10], record[11]]));
    let hashes = u32::from_be_bytes([record[12], record[13], record[14], record[15]]);
    let segment_len = u32::from_be_bytes([record[80], record[81], record[82], record[83]]) as usize;
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&record[84..116]);
    if header_len < FIXED_HEADER_LEN + id_len || record.len() < header_len {
        return Err(DecisionError::Truncated(
            "the gateway id runs past the header",
        ));
    }
    let gateway_id = std::str::from_utf8(&record[FIXED_HEADER_LEN..FIXED_HEADER_LEN + id_len])
        .map_err(|_| DecisionError::Invalid("the gateway id is not UTF-8".into()))?
        .to_string();
    // Bytes between the id and `header_len` belong to later minor additions: skipped.
    let bits = &record[header_len..];
    if bits.len() != segment_len {
        return Err(DecisionError::Invalid(format!(
            "the header announces {segment_len} bytes of filter, the record carries {}",
            bits.len()
        )));
    }
    let baseline = u64_at(56);
    let header = DecisionHeader {
        window_start_millis: u64_at(16),
        window_millis: u64_at(24),
        bitmap_bytes: u64_at(32),
        hashes,
        seed,
        hash_scheme,
        expected_items: u64_at(40),
        item_estimate: u64_at(48),
        baseline_rejection: (baseline < 1 << 56).then_some(baseline),
        sealed: flags & FLAG_SEALED != 0,
        sequence: u64_at(64),
        segment_offset: u64_at(72),
        gateway_id,
    };
    if header.window_millis == 0
        || !header
            .window_start_millis
            .is_multiple_of(header.window_millis)
    {
        return Err(DecisionError::Invalid(format!(
            "window start {} is not a multiple of the window length {}",
            header.window_start_millis, header.window_millis
        )));
    }
    if header.hashes == 0 || header.bitmap_bytes == 0 {
        return Err(DecisionError::Invalid(
            "a filter needs at least one hash function and one byte".into(),
        ));
    }
    if header
        .segment_offset
        .checked_add(bits.len() as u64)
        .is_none_or(|end| end > header.bitmap_bytes)
    {
        return Err(DecisionError::Invalid(format!(
            "segment {}+{} runs past the filter's {} bytes",
            header.segment_offset,
            bits.len(),
            header.bitmap_bytes
        )));
    }
    Ok((header, bits))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> DecisionHeader {
        DecisionHeader {
            window_start_millis: 1_700_000_040_000,
            window_millis: 10_000,
            bitmap_bytes: 64,
            hashes: 7,
            seed: [9; 32],
            hash_scheme: HASH_SCHEME_BLOOMFILTER3,
            expected_items: 100,
            item_estimate: 3,
            baseline_rejection: Some(0xff_ffff_ffff_ff00),
            sealed: true,
            sequence: 42,
            segment_offset: 16,
            gateway_id: "gw-é1".into(),
        }
    }

    #[test]
    fn records_round_trip() {
        let bits: Vec<u8> = (0..32).collect();
        let mut out = Vec::new();
        encode(&header(), &bits, &mut out);
        assert_eq!(&out[..4], b"WTDR");
        assert_eq!(out.len(), FIXED_HEADER_LEN + "gw-é1".len() + 32);
        let (h, b) = decode(&out).unwrap();
        assert_eq!(h, header());
        assert_eq!(b, &bits[..]);

        let mut open = header();
        open.sealed = false;
        open.baseline_rejection = None;
        open.segment_offset = 0;
        out.clear();
        encode(&open, &[], &mut out);
        assert_eq!(decode(&out).unwrap(), (open, &[][..]));
    }

    #[test]
    fn the_layout_is_as_documented() {
        let mut out = Vec::new();
        encode(&header(), &[0xaa; 32], &mut out);
        assert_eq!(&out[4..6], &[0, 1], "version");
        assert_eq!(
            u16::from_be_bytes([out[6], out[7]]) as usize,
            FIXED_HEADER_LEN + 6
        );
        assert_eq!(out[8], 1, "sealed flag");
        assert_eq!(out[9], 1, "hash scheme");
        assert_eq!(&out[12..16], &7u32.to_be_bytes());
        assert_eq!(&out[16..24], &1_700_000_040_000u64.to_be_bytes());
        assert_eq!(&out[64..72], &42u64.to_be_bytes());
        assert_eq!(&out[80..84], &32u32.to_be_bytes());
        assert_eq!(&out[84..116], &[9; 32]);
        assert_eq!(&out[116..122], "gw-é1".as_bytes());
    }

    #[test]
    fn unknown_versions_and_damage_are_refused() {
        let mut out = Vec::new();
        encode(&header(), &[1; 32], &mut out);
        let mut v2 = out.clone();
        v2[5] = 2;
        assert_eq!(decode(&v2), Err(DecisionError::UnsupportedVersion(2)));
        let mut magic = out.clone();
        magic[0] = b'X';
        assert_eq!(decode(&magic), Err(DecisionError::BadMagic));
        assert!(matches!(
            decode(&out[..50]),
            Err(DecisionError::Truncated(_))
        ));
        assert!(matches!(
            decode(&out[..out.len() - 1]),
            Err(DecisionError::Invalid(_))
        ));
        let mut past_end = header();
        past_end.segment_offset = 40;
        let mut bad = Vec::new();
        encode(&past_end, &[1; 32], &mut bad);
        assert!(matches!(decode(&bad), Err(DecisionError::Invalid(_))));
        let mut scheme = out.clone();
        scheme[9] = 7;
        assert_eq!(
            decode(&scheme),
            Err(DecisionError::UnsupportedHashScheme(7))
        );
    }

    #[test]
    fn later_header_additions_are_skipped() {
        // A version-1 writer that appends a field after the gateway id: readers skip it.
        let mut out = Vec::new();
        encode(&header(), &[5; 32], &mut out);
        let id_end = FIXED_HEADER_LEN + 6;
        out.splice(id_end..id_end, [0xee; 4]);
        let len = (id_end + 4) as u16;
        out[6..8].copy_from_slice(&len.to_be_bytes());
        let (h, bits) = decode(&out).unwrap();
        assert_eq!(h, header());
        assert_eq!(bits, &[5; 32]);
    }

    #[test]
    fn long_gateway_ids_are_cut() {
        let mut h = header();
        h.gateway_id = "é".repeat(200);
        let mut out = Vec::new();
        encode(&h, &[], &mut out);
        let (back, _) = decode(&out).unwrap();
        assert!(back.gateway_id.len() <= MAX_GATEWAY_ID_LEN);
        assert!(h.gateway_id.starts_with(&back.gateway_id));
    }
}
