//! The decision record: what a gateway publishes to `weir.tail.decisions` about
//! one time window, and what the tail router merges. A fixed binary header (big-endian),
//! the gateway id, then filter bits to OR into the window's filter. The layout is documented
//! byte by byte in `proto/weir/tail/v1/decision_record.md`.
//!
//! The bits travel in one of two encodings. A *dense* payload (format version 1) is a byte
//! range of the bit array; a filter larger than a Kafka record is published as several such
//! segments. A *sparse* payload (format version 2) lists set bit positions as LEB128 gaps;
//! gateways use it for the bits set since their last acknowledged record of the window when
//! that is smaller. Either way a reader ORs the bits in, so it must read every record of a
//! window. Decoders refuse a format version they do not know rather than guess.

use super::filter::FilterParams;
use thiserror::Error;

/// The first four bytes of every decision record.
pub const MAGIC: [u8; 4] = *b"WTDR";

/// The newest format version this module writes and reads (2: sparse payloads).
pub const FORMAT_VERSION: u16 = 2;

/// The format version of records with a dense payload, which version-1 readers also read.
pub const FORMAT_VERSION_DENSE: u16 = 1;

/// Hash scheme 1: SipHash-1-3 of the trace id (behind a 64-bit little-endian length prefix
/// 16), keyed with the two halves of the seed, then double hashing `h0 + i × h1` modulo
/// `2^64 − 59`, each hash modulo the filter's bits; bit `i` is bit `i % 8` (LSB first) of
/// byte `i / 8`. Defined in `proto/weir/tail/v1/decision_record.md`, computed by
/// [`filter::positions_of`](super::filter::positions_of).
pub const HASH_SCHEME_SIPHASH13: u8 = 1;

/// The size of the fixed part of the header, before the gateway id.
pub const FIXED_HEADER_LEN: usize = 116;

/// The longest gateway id a record carries.
pub const MAX_GATEWAY_ID_LEN: usize = 255;

/// Header flag: the window is closed and this is the gateway's final record of it.
const FLAG_SEALED: u8 = 1;

/// Header flag (version 2): the payload is sparse.
const FLAG_SPARSE: u8 = 2;

/// The longest LEB128 gap a sparse payload may hold (nine bytes: 63 bits).
const MAX_GAP_BYTES: usize = 9;

/// The largest filter a decision record may describe, in bytes (256 MiB, the policy's bound).
pub const MAX_FILTER_BYTES: u64 = 256 << 20;

/// What a reader accepts of a record's filter, checked from the header alone before any of
/// the payload is read ([`decode_within`]): a record from anyone who can produce to the
/// decisions topic must not make the reader allocate or hash without bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecisionLimits {
    /// The longest window, in milliseconds.
    pub max_window_millis: u64,
    /// The largest filter, in bytes.
    pub max_filter_bytes: u64,
    /// The most hash functions (each is a memory read per lookup).
    pub max_hashes: u32,
    /// The most marked traces a filter may be sized for.
    pub max_expected_items: u64,
}

impl Default for DecisionLimits {
    /// The bounds of the format: what a valid policy can give (windows up to 24 hours, filters
    /// up to 256 MiB, false-positive rates down to 1e-9, i.e. 30 hashes, up to 2^40 traces).
    fn default() -> Self {
        Self {
            max_window_millis: 24 * 3600 * 1000,
            max_filter_bytes: MAX_FILTER_BYTES,
            max_hashes: 32,
            max_expected_items: 1 << 40,
        }
    }
}

/// The filter bits a decision record carries, to be ORed into the window's filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    /// Bytes `[segment_offset, segment_offset + len)` of the bit array.
    Dense(&'a [u8]),
    /// Set bit positions from bit `8 × segment_offset` on, as LEB128 gaps ([`SparseWriter`]).
    Sparse(&'a [u8]),
}

impl<'a> Payload<'a> {
    /// The payload's bytes as they travel.
    pub fn bytes(&self) -> &'a [u8] {
        match self {
            Payload::Dense(b) | Payload::Sparse(b) => b,
        }
    }
}

/// Writes strictly increasing bit positions as a sparse payload: each position `p` is the
/// LEB128 varint `p − next`, where `next` starts at the segment's first bit and becomes
/// `p + 1` after every position.
pub struct SparseWriter {
    next: u64,
}

impl SparseWriter {
    /// A writer for positions from bit `first_bit` on.
    pub fn new(first_bit: u64) -> Self {
        Self { next: first_bit }
    }

    /// The bytes `position` takes when it comes next.
    pub fn len_of(&self, position: u64) -> usize {
        varint_len(position - self.next)
    }

    /// Appends `position` (greater than every position before it) to `out`.
    pub fn push(&mut self, position: u64, out: &mut Vec<u8>) {
        debug_assert!(position >= self.next, "positions must increase");
        let mut gap = position - self.next;
        while gap >= 0x80 {
            out.push((gap as u8) | 0x80);
            gap >>= 7;
        }
        out.push(gap as u8);
        self.next = position + 1;
    }
}

/// The bytes of `v` as a LEB128 varint.
pub fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// The bit positions of a sparse payload whose segment starts at byte `segment_offset`;
/// stops at the first malformed gap ([`decode`] refuses records that have one).
pub fn sparse_positions(segment_offset: u64, payload: &[u8]) -> SparsePositions<'_> {
    SparsePositions {
        bytes: payload,
        next: segment_offset.saturating_mul(8),
    }
}

/// Iterator over a sparse payload's bit positions.
pub struct SparsePositions<'a> {
    bytes: &'a [u8],
    next: u64,
}

impl SparsePositions<'_> {
    fn step(&mut self) -> Result<Option<u64>, &'static str> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        let mut gap = 0u64;
        for (i, b) in self.bytes.iter().take(MAX_GAP_BYTES).enumerate() {
            gap |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.bytes = &self.bytes[i + 1..];
                let position = self.next.checked_add(gap).ok_or("a position overflows")?;
                self.next = position.checked_add(1).ok_or("a position overflows")?;
                return Ok(Some(position));
            }
        }
        Err(if self.bytes.len() < MAX_GAP_BYTES {
            "the last gap is cut short"
        } else {
            "a gap is longer than nine bytes"
        })
    }
}

impl Iterator for SparsePositions<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        self.step().ok().flatten()
    }
}

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
    /// The hash scheme ([`HASH_SCHEME_SIPHASH13`]).
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
    /// The header of a record of window `start` with a filter of `params`, from
    /// `gateway_id`; the fields of one record (item estimate, baseline, sealed, sequence,
    /// segment) are left zero for the caller to set.
    pub fn for_window(params: &FilterParams, start: u64, gateway_id: &str) -> DecisionHeader {
        DecisionHeader {
            window_start_millis: start,
            window_millis: params.window_millis,
            bitmap_bytes: params.bitmap_bytes,
            hashes: params.hashes,
            seed: params.seed,
            hash_scheme: HASH_SCHEME_SIPHASH13,
            expected_items: params.expected_traces,
            item_estimate: 0,
            baseline_rejection: None,
            sealed: false,
            sequence: 0,
            segment_offset: 0,
            gateway_id: gateway_id.into(),
        }
    }

    /// The parameters of the filter the record's bits belong to.
    pub fn filter_params(&self) -> FilterParams {
        FilterParams {
            window_millis: self.window_millis,
            expected_traces: self.expected_items,
            bitmap_bytes: self.bitmap_bytes,
            hashes: self.hashes,
            seed: self.seed,
        }
    }

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
        "decision record format version {0} is not supported (this reader knows versions 1 to {FORMAT_VERSION}); upgrade the tail router"
    )]
    UnsupportedVersion(u16),
    /// A hash scheme this reader does not know.
    #[error("decision record hash scheme {0} is not supported")]
    UnsupportedHashScheme(u8),
    /// A field has an impossible value.
    #[error("invalid decision record: {0}")]
    Invalid(String),
    /// A field is past what this reader accepts ([`DecisionLimits`]).
    #[error("decision record out of bounds: {0}")]
    OutOfBounds(String),
}

/// Appends the record of `header` carrying `payload` (its segment starts at
/// `header.segment_offset`) to `out`: format version 1 for a dense payload, 2 for a sparse
/// one. Gateway ids longer than [`MAX_GATEWAY_ID_LEN`] bytes are cut at a character boundary.
pub fn encode(header: &DecisionHeader, payload: Payload<'_>, out: &mut Vec<u8>) {
    let (version, sparse) = match payload {
        Payload::Dense(_) => (FORMAT_VERSION_DENSE, 0),
        Payload::Sparse(_) => (FORMAT_VERSION, FLAG_SPARSE),
    };
    let bits = payload.bytes();
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
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&(header_len as u16).to_be_bytes());
    out.push(if header.sealed { FLAG_SEALED } else { 0 } | sparse);
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

/// Reads a decision record within the format's own bounds ([`DecisionLimits::default`]).
pub fn decode(record: &[u8]) -> Result<(DecisionHeader, Payload<'_>), DecisionError> {
    decode_within(record, &DecisionLimits::default())
}

/// Reads a decision record: its header and the filter bits it carries. The header is held to
/// `limits` before the payload is looked at; a sparse payload is then checked whole: every
/// position lies in the filter.
pub fn decode_within<'a>(
    record: &'a [u8],
    limits: &DecisionLimits,
) -> Result<(DecisionHeader, Payload<'a>), DecisionError> {
    if record.len() < 8 {
        return Err(DecisionError::Truncated(
            "shorter than magic, version and length",
        ));
    }
    if record[..4] != MAGIC {
        return Err(DecisionError::BadMagic);
    }
    let version = u16::from_be_bytes([record[4], record[5]]);
    if version != FORMAT_VERSION && version != FORMAT_VERSION_DENSE {
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
    if hash_scheme != HASH_SCHEME_SIPHASH13 {
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
    for (what, value, limit) in [
        (
            "window length (ms)",
            header.window_millis,
            limits.max_window_millis,
        ),
        (
            "filter size (bytes)",
            header.bitmap_bytes,
            limits.max_filter_bytes,
        ),
        (
            "hash count",
            u64::from(header.hashes),
            u64::from(limits.max_hashes),
        ),
        (
            "expected items",
            header.expected_items,
            limits.max_expected_items,
        ),
    ] {
        if value > limit {
            return Err(DecisionError::OutOfBounds(format!(
                "{what} {value} is over the limit of {limit}"
            )));
        }
    }
    if version == FORMAT_VERSION_DENSE && flags & FLAG_SPARSE != 0 {
        return Err(DecisionError::Invalid(
            "a version-1 record cannot be sparse".into(),
        ));
    }
    if flags & FLAG_SPARSE == 0 {
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
        return Ok((header, Payload::Dense(bits)));
    }
    if header.segment_offset >= header.bitmap_bytes {
        return Err(DecisionError::Invalid(format!(
            "sparse segment at byte {} starts past the filter's {} bytes",
            header.segment_offset, header.bitmap_bytes
        )));
    }
    let bit_count = header.bitmap_bytes.saturating_mul(8);
    let mut positions = sparse_positions(header.segment_offset, bits);
    while let Some(p) = positions
        .step()
        .map_err(|why| DecisionError::Invalid(format!("sparse payload: {why}")))?
    {
        if p >= bit_count {
            return Err(DecisionError::Invalid(format!(
                "sparse payload: bit {p} is past the filter's {bit_count} bits"
            )));
        }
    }
    Ok((header, Payload::Sparse(bits)))
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
            hash_scheme: HASH_SCHEME_SIPHASH13,
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
        encode(&header(), Payload::Dense(&bits), &mut out);
        assert_eq!(&out[..4], b"WTDR");
        assert_eq!(out.len(), FIXED_HEADER_LEN + "gw-é1".len() + 32);
        let (h, b) = decode(&out).unwrap();
        assert_eq!(h, header());
        assert_eq!(b, Payload::Dense(&bits[..]));

        let mut open = header();
        open.sealed = false;
        open.baseline_rejection = None;
        open.segment_offset = 0;
        out.clear();
        encode(&open, Payload::Dense(&[]), &mut out);
        assert_eq!(decode(&out).unwrap(), (open, Payload::Dense(&[][..])));
    }

    #[test]
    fn the_layout_is_as_documented() {
        let mut out = Vec::new();
        encode(&header(), Payload::Dense(&[0xaa; 32]), &mut out);
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
        encode(&header(), Payload::Dense(&[1; 32]), &mut out);
        let mut v3 = out.clone();
        v3[5] = 3;
        assert_eq!(decode(&v3), Err(DecisionError::UnsupportedVersion(3)));
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
        encode(&past_end, Payload::Dense(&[1; 32]), &mut bad);
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
        encode(&header(), Payload::Dense(&[5; 32]), &mut out);
        let id_end = FIXED_HEADER_LEN + 6;
        out.splice(id_end..id_end, [0xee; 4]);
        let len = (id_end + 4) as u16;
        out[6..8].copy_from_slice(&len.to_be_bytes());
        let (h, bits) = decode(&out).unwrap();
        assert_eq!(h, header());
        assert_eq!(bits, Payload::Dense(&[5; 32]));
    }

    #[test]
    fn long_gateway_ids_are_cut() {
        let mut h = header();
        h.gateway_id = "é".repeat(200);
        let mut out = Vec::new();
        encode(&h, Payload::Dense(&[]), &mut out);
        let (back, _) = decode(&out).unwrap();
        assert!(back.gateway_id.len() <= MAX_GATEWAY_ID_LEN);
        assert!(h.gateway_id.starts_with(&back.gateway_id));
    }

    /// Sparse payloads of `positions` from byte `offset` on.
    fn sparse(offset: u64, positions: &[u64]) -> Vec<u8> {
        let mut payload = Vec::new();
        let mut w = SparseWriter::new(offset * 8);
        for &p in positions {
            let before = payload.len();
            let expected = w.len_of(p);
            w.push(p, &mut payload);
            assert_eq!(payload.len() - before, expected, "len_of({p})");
        }
        payload
    }

    #[test]
    fn sparse_records_round_trip() {
        let mut h = header();
        h.bitmap_bytes = 1 << 20;
        h.segment_offset = 16;
        // Gaps of every varint length, the first bit of the segment and the filter's last.
        let positions = [128, 129, 300, 300 + 128, 70_000, 2_000_000, (1 << 23) - 1];
        let payload = sparse(16, &positions);
        let mut out = Vec::new();
        encode(&h, Payload::Sparse(&payload), &mut out);
        assert_eq!(&out[4..6], &[0, 2], "sparse records are version 2");
        assert_eq!(out[8], 1 | 2, "sealed and sparse flags");
        let (back, got) = decode(&out).unwrap();
        assert_eq!(back, h);
        assert_eq!(got, Payload::Sparse(&payload[..]));
        assert_eq!(
            sparse_positions(16, got.bytes()).collect::<Vec<_>>(),
            positions
        );
        // Dense records are still version 1, which older readers read.
        out.clear();
        encode(&h, Payload::Dense(&[1; 8]), &mut out);
        assert_eq!(&out[4..6], &[0, 1]);
        // An empty sparse payload: a record that only says the window is sealed.
        out.clear();
        encode(&h, Payload::Sparse(&[]), &mut out);
        assert_eq!(decode(&out).unwrap().1, Payload::Sparse(&[][..]));
    }

    #[test]
    fn hostile_headers_are_refused_before_the_payload_is_read() {
        let limits = DecisionLimits::default();
        for (field, value) in [
            ("window", 25 * 3600 * 1000),
            ("bytes", MAX_FILTER_BYTES + 1),
            ("hashes", 33),
            ("items", (1 << 40) + 1),
        ] {
            let mut h = header();
            h.window_start_millis = 0;
            match field {
                "window" => h.window_millis = value,
                "bytes" => h.bitmap_bytes = value,
                "hashes" => h.hashes = value as u32,
                _ => h.expected_items = value,
            }
            h.segment_offset = 0;
            let mut out = Vec::new();
            // A payload that would be slow to walk if it were read: the bound comes first.
            encode(&h, Payload::Sparse(&[0; 200_000]), &mut out);
            assert!(
                matches!(
                    decode_within(&out, &limits),
                    Err(DecisionError::OutOfBounds(_))
                ),
                "{field}"
            );
        }
        let tight = DecisionLimits {
            max_filter_bytes: 32,
            ..limits
        };
        let mut out = Vec::new();
        encode(&header(), Payload::Dense(&[1; 32]), &mut out);
        assert!(decode(&out).is_ok());
        assert!(matches!(
            decode_within(&out, &tight),
            Err(DecisionError::OutOfBounds(m)) if m.contains("filter size")
        ));
    }

    #[test]
    fn a_position_at_the_end_of_the_range_does_not_overflow() {
        // Gaps that reach u64::MAX (two: one holds 63 bits at most): the position after it
        // cannot be counted, so the payload is refused rather than wrapped (or a panic).
        let mut payload = Vec::new();
        for mut gap in [(1u64 << 63) - 1, (1u64 << 63) - 129] {
            while gap >= 0x80 {
                payload.push((gap as u8) | 0x80);
                gap >>= 7;
            }
            payload.push(gap as u8);
        }
        let mut positions = sparse_positions(16, &payload);
        assert_eq!(positions.step(), Ok(Some(1 << 63 | 127)));
        assert!(positions.step().is_err());
    }

    #[test]
    fn varint_lengths() {
        for (v, len) in [
            (0, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (u64::MAX, 10),
        ] {
            assert_eq!(varint_len(v), len, "{v}");
        }
    }

    #[test]
    fn damaged_sparse_payloads_are_refused() {
        let mut h = header();
        h.bitmap_bytes = 64; // 512 bits
        h.segment_offset = 0;
        let record = |payload: &[u8]| {
            let mut out = Vec::new();
            encode(&h, Payload::Sparse(payload), &mut out);
            out
        };
        assert!(decode(&record(&sparse(0, &[0, 511]))).is_ok());
        let past_end = record(&sparse(0, &[3, 512]));
        assert!(
            matches!(decode(&past_end), Err(DecisionError::Invalid(m)) if m.contains("bit 512")),
            "a bit past the filter"
        );
        let cut = record(&[0x85]);
        assert!(matches!(decode(&cut), Err(DecisionError::Invalid(m)) if m.contains("cut short")));
        let long = record(&[0xff; 12]);
        assert!(
            matches!(decode(&long), Err(DecisionError::Invalid(m)) if m.contains("nine bytes"))
        );
        let mut start = h.clone();
        start.segment_offset = 64;
        let mut out = Vec::new();
        encode(&start, Payload::Sparse(&[]), &mut out);
        assert!(matches!(decode(&out), Err(DecisionError::Invalid(_))));
        // A version-1 record with the sparse flag is not a record any writer makes.
        let mut v1 = record(&sparse(0, &[1]));
        v1[5] = 1;
        assert!(matches!(decode(&v1), Err(DecisionError::Invalid(_))));
    }
}
