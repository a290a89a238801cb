//! A decision window's Bloom filter over trace ids, built from [`FilterParams`] (which the
//! policy's `tail` section gives, and every decision record repeats) and merged with a bitwise
//! OR from published bits.
//!
//! The bit positions of a trace id are hash scheme 1 of the decision record, defined byte by
//! byte in `proto/weir/tail/v1/decision_record.md` and computed here from that definition:
//! SipHash-1-3 ([`siphash13_trace_id`]) keyed by the two halves of the seed, then double
//! hashing. Nothing depends on how a library or the compiler hashes an array, so gateways and
//! routers built apart agree on every bit; `the_test_vectors_hold` pins the positions, and the
//! black-box tests compute them again in Python.
//!
//! The gateway marks in batches ([`WindowFilter::insert_batch`]): positions found without an
//! integer division per bit, and set after all of a batch's positions are known so that the
//! cache misses of a megabyte-sized bit array overlap. The tail router ORs the records' bits
//! in and asks the filter ([`WindowFilter::contains`]).

/// The parameters of every window's Bloom filter. Equal parameters make OR-compatible
/// filters: the same bits, the same hash keys, the same hash count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FilterParams {
    /// The window length in milliseconds; windows start at multiples of it since the epoch.
    pub window_millis: u64,
    /// Marked traces a window is sized for (the filter's item count).
    pub expected_traces: u64,
    /// The size of the filter's bit array in bytes.
    pub bitmap_bytes: u64,
    /// The number of hash functions ([`hash_count`] of the size and the item count).
    pub hashes: u32,
    /// The filter's 32-byte seed: two SipHash-1-3 keys, expanded from the document's `seed`.
    pub seed: [u8; 32],
}

impl FilterParams {
    /// The start (ms since the epoch) of the window that holds `unix_millis`.
    pub fn window_start(&self, unix_millis: u64) -> u64 {
        unix_millis - unix_millis % self.window_millis
    }
}

/// The bit array size, in bytes, for `n` items at false-positive rate `p`: the optimum
/// `m = -n ln p / (ln 2)^2` bits, rounded up to whole bytes.
pub fn bitmap_bytes(n: u64, p: f64) -> u64 {
    let ln2 = std::f64::consts::LN_2;
    ((n as f64) * p.ln() / (-8.0 * ln2 * ln2)).ceil().max(1.0) as u64
}

/// The optimal number of hash functions, `round(m/n ln 2)`, at least 1.
pub fn hash_count(bits: u64, n: u64) -> u32 {
    ((bits as f64 / n as f64) * std::f64::consts::LN_2)
        .round()
        .max(1.0) as u32
}

/// The 32-byte filter seed for the document's `seed`: four SplitMix64 outputs, big-endian.
/// A fixed expansion, so that every gateway derives the same hash keys.
pub fn expand_seed(seed: u64) -> [u8; 32] {
    let mut state = seed;
    let mut out = [0u8; 32];
    for chunk in out.chunks_exact_mut(8) {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_be_bytes());
    }
    out
}

/// The modulus of the derived hashes `h0 + i × h1` (the largest prime below 2^64).
const DERIVED_HASH_PRIME: u64 = 0xFFFF_FFFF_FFFF_FFC5;

/// The most items [`WindowFilter::insert_batch`] takes at once.
pub const MAX_BATCH: usize = 64;

/// One SipHash round (the ARX network of Aumasson and Bernstein's paper).
#[inline(always)]
fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

/// SipHash-1-3 with key `(k0, k1)` of the 24-byte message of hash scheme 1: the 16 as a
/// 64-bit little-endian length prefix, then the 16 trace id bytes. One compression round per
/// 8-byte word, three finalization rounds.
#[inline]
pub fn siphash13_trace_id(k0: u64, k1: u64, trace_id: &[u8; 16]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let (first, second) = trace_id.split_at(8);
    let word = |b: &[u8]| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    // The last block: the message length (24) in the top byte, no bytes left over.
    for m in [16, word(first), word(second), 24 << 56] {
        v[3] ^= m;
        sip_round(&mut v);
        v[0] ^= m;
    }
    v[2] ^= 0xff;
    sip_round(&mut v);
    sip_round(&mut v);
    sip_round(&mut v);
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// The bit positions of hash scheme 1 for a filter's seed, hash count and size, with
/// `% bits` done by multiplication (Lemire's fastmod).
struct Hashing {
    /// The two SipHash keys: seed bytes 0-15 and 16-31, each as two little-endian words.
    keys: [(u64, u64); 2],
    hashes: u64,
    bits: u64,
    /// `ceil(2^128 / bits)`.
    magic: u128,
}

impl Hashing {
    fn new(seed: &[u8; 32], hashes: u32, bits: u64) -> Self {
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&seed[at..at + 8]);
            u64::from_le_bytes(w)
        };
        Hashing {
            keys: [(word(0), word(8)), (word(16), word(24))],
            hashes: u64::from(hashes),
            bits,
            // A filter has at least 8 bits, so the division cannot overflow.
            magic: (u128::MAX / u128::from(bits.max(2))).wrapping_add(1),
        }
    }

    /// `x % bits`, exactly, for every `x`.
    #[inline]
    fn reduce(&self, x: u64) -> u64 {
        let low = self.magic.wrapping_mul(u128::from(x));
        let d = u128::from(self.bits);
        let bottom = ((low as u64 as u128) * d) >> 64;
        let top = (low >> 64) * d;
        ((bottom + top) >> 64) as u64
    }

    /// Appends the bit positions of `item` to `out`: hash `i` is `h0` for `i = 0`, `h1` for
    /// `i = 1`, `(h0 + i × h1) mod (2^64 − 59)` after; the position is the hash mod the bits.
    #[inline]
    fn positions(&self, item: &[u8; 16], out: &mut Vec<u64>) {
        let [(a0, a1), (b0, b1)] = self.keys;
        let (h0, h1) = (
            siphash13_trace_id(a0, a1, item),
            siphash13_trace_id(b0, b1, item),
        );
        out.push(self.reduce(h0));
        if self.hashes > 1 {
            out.push(self.reduce(h1));
        }
        for i in 2..self.hashes {
            out.push(self.reduce(h0.wrapping_add(i.wrapping_mul(h1)) % DERIVED_HASH_PRIME));
        }
    }
}

/// The bit positions of `trace_id` in a filter of `params`, in hash order (hash scheme 1).
pub fn positions_of(params: &FilterParams, trace_id: &[u8; 16]) -> Vec<u64> {
    let hashing = Hashing::new(
        &params.seed,
        params.hashes,
        params.bitmap_bytes.saturating_mul(8),
    );
    let mut out = Vec::with_capacity(params.hashes.min(64) as usize);
    hashing.positions(trace_id, &mut out);
    out
}

/// A window's filter.
pub struct WindowFilter {
    /// The bit array: bit `i` is bit `i % 8` of byte `i / 8`.
    bits: Vec<u8>,
    params: FilterParams,
    hashing: Hashing,
    /// Bit positions of a batch (scratch space).
    positions: Vec<u64>,
}

impl WindowFilter {
    /// An empty filter with `params`; `None` when they describe no filter (no bytes or no
    /// hash function) or its bytes cannot be allocated.
    pub fn new(params: &FilterParams) -> Option<WindowFilter> {
        let bytes = usize::try_from(params.bitmap_bytes).ok()?;
        let bit_count = params.bitmap_bytes.checked_mul(8)?;
        if bytes == 0 || params.hashes == 0 {
            return None;
        }
        let mut bits = Vec::new();
        // A refusal instead of an abort when the size is more than the process can have.
        bits.try_reserve_exact(bytes).ok()?;
        bits.resize(bytes, 0);
        Some(WindowFilter {
            bits,
            params: *params,
            hashing: Hashing::new(&params.seed, params.hashes, bit_count),
            positions: Vec::new(),
        })
    }

    /// The parameters it was built with.
    pub fn params(&self) -> &FilterParams {
        &self.params
    }

    /// The number of hash functions (`params().hashes`).
    pub fn hashes(&self) -> u32 {
        self.params.hashes
    }

    /// Marks `trace_id`; true when it was not in the filter before.
    pub fn insert(&mut self, trace_id: &[u8; 16]) -> bool {
        self.insert_batch(std::slice::from_ref(trace_id)) != 0
    }

    /// Marks every id of `ids` (at most [`MAX_BATCH`]) in order, as [`insert`](Self::insert)
    /// one after the other would; bit `i` of the result is set when `ids[i]` was not in the
    /// filter before.
    pub fn insert_batch(&mut self, ids: &[[u8; 16]]) -> u64 {
        assert!(ids.len() <= MAX_BATCH, "at most {MAX_BATCH} ids a batch");
        let k = self.hashing.hashes as usize;
        let mut positions = std::mem::take(&mut self.positions);
        positions.clear();
        for id in ids {
            self.hashing.positions(id, &mut positions);
        }
        let bits = &mut self.bits[..];
        // Every line of the batch is asked for before the first is read, so that the
        // misses of a bit array larger than the cache are waited for together.
        for &p in &positions {
            prefetch(&bits[(p / 8) as usize]);
        }
        let mut new = 0u64;
        for (i, item) in positions.chunks_exact(k).enumerate() {
            let mut all_set = 1u8;
            for &p in item {
                let (byte, mask) = ((p / 8) as usize, 1u8 << (p % 8));
                all_set &= u8::from(bits[byte] & mask != 0);
                bits[byte] |= mask;
            }
            new |= u64::from(all_set ^ 1) << i;
        }
        self.positions = positions;
        new
    }

    /// True when `trace_id` may have been marked (false positives at the configured rate).
    #[inline]
    pub fn contains(&self, trace_id: &[u8; 16]) -> bool {
        let [(a0, a1), (b0, b1)] = self.hashing.keys;
        let h0 = siphash13_trace_id(a0, a1, trace_id);
        let set = |p: u64| self.bits[(p / 8) as usize] & (1 << (p % 8)) != 0;
        if !set(self.hashing.reduce(h0)) {
            return false;
        }
        if self.hashing.hashes == 1 {
            return true;
        }
        let h1 = siphash13_trace_id(b0, b1, trace_id);
        set(self.hashing.reduce(h1))
            && (2..self.hashing.hashes).all(|i| {
                set(self
                    .hashing
                    .reduce(h0.wrapping_add(i.wrapping_mul(h1)) % DERIVED_HASH_PRIME))
            })
    }

    /// The filter's bit array (`params().bitmap_bytes` bytes).
    pub fn bits(&self) -> &[u8] {
        &self.bits
    }

    /// ORs `segment` into the bit array at byte `offset`. False (nothing changed) when the
    /// segment does not fit.
    pub fn merge(&mut self, offset: u64, segment: &[u8]) -> bool {
        let Some(target) = usize::try_from(offset)
            .ok()
            .and_then(|at| self.bits.get_mut(at..)?.get_mut(..segment.len()))
        else {
            return false;
        };
        for (b, s) in target.iter_mut().zip(segment) {
            *b |= *s;
        }
        true
    }

    /// Sets the bits at `positions`. False when one is past the filter's end (the bits
    /// before it are set).
    pub fn set_positions(&mut self, positions: impl Iterator<Item = u64>) -> bool {
        for p in positions {
            let Some(byte) = usize::try_from(p / 8)
                .ok()
                .and_then(|at| self.bits.get_mut(at))
            else {
                return false;
            };
            *byte |= 1 << (p % 8);
        }
        true
    }

    /// The share of bits set, 0 to 1.
    pub fn fill_ratio(&self) -> f64 {
        fill_ratio(self.bits())
    }

    /// The false-positive rate the filter has now: `fill^k`.
    pub fn estimated_false_positive_rate(&self) -> f64 {
        self.fill_ratio().powi(self.hashes() as i32)
    }
}

/// Asks for the cache line of `byte` to be loaded, where the processor has such a hint.
#[inline(always)]
fn prefetch(byte: &u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of every x86_64 target, and a prefetch of a valid reference's
    // address reads and writes nothing.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (byte as *const u8).cast(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = byte;
}

/// The share of bits set in `bits`, 0 to 1.
pub fn fill_ratio(bits: &[u8]) -> f64 {
    if bits.is_empty() {
        return 0.0;
    }
    // Eight bytes at a time: one population count per word.
    let words = bits.chunks_exact(8);
    let tail: u64 = words
        .remainder()
        .iter()
        .map(|b| u64::from(b.count_ones()))
        .sum();
    let ones: u64 = words
        .map(|w| u64::from(u64::from_ne_bytes(w.try_into().expect("8 bytes")).count_ones()))
        .sum::<u64>()
        + tail;
    ones as f64 / (bits.len() as f64 * 8.0)
}

/// Calls `f` with the position of every bit set in `bits` and not in `base` (every set bit
/// without a base; a base shorter than `bits` counts as zeros past its end), in increasing
/// order, until `f` returns false; returns false when it did. Bit `i` is bit `i % 8` of byte
/// `i / 8`.
pub fn for_each_new_position(
    bits: &[u8],
    base: Option<&[u8]>,
    mut f: impl FnMut(u64) -> bool,
) -> bool {
    /// The little-endian word of `b` at byte `at`, zeros past its end.
    fn word(b: &[u8], at: usize) -> u64 {
        match b.get(at..at + 8) {
            Some(w) => u64::from_le_bytes(w.try_into().expect("8 bytes")),
            None => {
                let mut w = [0u8; 8];
                let tail = b.get(at..).unwrap_or_default();
                w[..tail.len()].copy_from_slice(tail);
                u64::from_le_bytes(w)
            }
        }
    }
    for at in (0..bits.len()).step_by(8) {
        let mut new = word(bits, at) & !base.map_or(0, |b| word(b, at));
        while new != 0 {
            let position = at as u64 * 8 + u64::from(new.trailing_zeros());
            new &= new - 1;
            if !f(position) {
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(n: u64, p: f64, seed: u64) -> FilterParams {
        let bytes = bitmap_bytes(n, p);
        FilterParams {
            window_millis: 10_000,
            expected_traces: n,
            bitmap_bytes: bytes,
            hashes: hash_count(bytes * 8, n),
            seed: expand_seed(seed),
        }
    }

    fn ids(from: u64, count: u64) -> impl Iterator<Item = [u8; 16]> {
        (from..from + count).map(|i| {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
            id[8..].copy_from_slice(
                &(i ^ 0x5555)
                    .wrapping_mul(0xbf58_476d_1ce4_e5b9)
                    .to_be_bytes(),
            );
            id
        })
    }

    #[test]
    fn filters_have_the_sizes_of_their_parameters() {
        for (n, p) in [(1_000_000, 0.001), (1000, 0.01), (10, 0.5), (123_457, 1e-6)] {
            let params = params(n, p, 1);
            let f = WindowFilter::new(&params).unwrap();
            assert_eq!(f.hashes(), params.hashes, "n={n} p={p}");
            assert_eq!(f.bits().len() as u64, params.bitmap_bytes);
        }
        let mut none = params(10, 0.5, 1);
        none.hashes = 0;
        assert!(WindowFilter::new(&none).is_none(), "no hash function");
        none.hashes = 1;
        none.bitmap_bytes = 0;
        assert!(WindowFilter::new(&none).is_none(), "no bytes");
        none.bitmap_bytes = u64::MAX;
        assert!(
            WindowFilter::new(&none).is_none(),
            "more bits than a u64 counts"
        );
    }

    #[test]
    fn the_test_vectors_hold() {
        // Hash scheme 1 as `decision_record.md` defines it. These positions are the ones the
        // `bloomfilter` 3.0 crate set before Weir computed them itself (checked bit for bit
        // over 15,000 ids when the crate was replaced), so records of older gateways merge
        // with newer ones. `integration-tests/decision_hash.py` computes the same.
        let counting: [u8; 16] = std::array::from_fn(|i| i as u8);
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let message: [u8; 16] = std::array::from_fn(|i| i as u8 + 8);
        let k0 = u64::from_le_bytes(key[..8].try_into().unwrap());
        let k1 = u64::from_le_bytes(key[8..].try_into().unwrap());
        assert_eq!(siphash13_trace_id(k0, k1, &message), 0x6a79_0224_700e_c633);
        for (seed, n, p, seed_hex, id, positions) in [
            (
                11,
                10_000,
                0.01,
                "50f5647d2380309d432a5cd27a6b13a1a356be306e9b126d812e6299272e6df0",
                [0u8; 16],
                &[5464, 82994, 9724, 92718, 13984, 1122, 18244][..],
            ),
            (
                11,
                10_000,
                0.01,
                "50f5647d2380309d432a5cd27a6b13a1a356be306e9b126d812e6299272e6df0",
                counting,
                &[18852, 71245, 29598, 4987, 10360, 15733, 21106],
            ),
            (
                42,
                100,
                0.01,
                "bdd732262feb6e9528efe333b266f10347526757130f9f52581ce1ff0e4ae394",
                [0xab; 16],
                &[83, 911, 433, 128, 79, 734, 429],
            ),
            (
                7,
                1_000_000,
                0.001,
                "63cbe1e459320dd7044c3cd7f43c661ce6984080bab12a02953aeb70673e29cb",
                counting,
                &[
                    6135607, 8011347, 697749, 8709096, 13178963, 3271238, 7741105, 12210972,
                    2303247, 6773114,
                ],
            ),
        ] {
            let params = params(n, p, seed);
            let hex: String = params.seed.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, seed_hex, "expand_seed({seed})");
            assert_eq!(
                positions_of(&params, &id),
                positions,
                "seed {seed}, id {id:02x?}"
            );
            let mut f = WindowFilter::new(&params).unwrap();
            assert!(f.insert(&id));
            let mut set = Vec::new();
            for_each_new_position(f.bits(), None, |p| {
                set.push(p);
                true
            });
            let mut sorted = positions.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(set, sorted);
        }
    }

    #[test]
    fn hashing_is_fixed_by_the_seed() {
        // Golden bits: a change in the hashing would make old and new processes disagree.
        let mut f = WindowFilter::new(&params(100, 0.01, 42)).unwrap();
        f.insert(&[0xab; 16]);
        let set: Vec<usize> = f
            .bits()
            .iter()
            .enumerate()
            .flat_map(|(i, b)| {
                (0..8)
                    .filter(move |j| b & (1 << j) != 0)
                    .map(move |j| i * 8 + j)
            })
            .collect();
        let mut g = WindowFilter::new(&params(100, 0.01, 42)).unwrap();
        g.insert(&[0xab; 16]);
        assert_eq!(f.bits(), g.bits());
        assert_eq!(set, GOLDEN_BITS, "the filter's hashing changed");
        let mut other_seed = WindowFilter::new(&params(100, 0.01, 43)).unwrap();
        other_seed.insert(&[0xab; 16]);
        assert_ne!(f.bits(), other_seed.bits());
    }

    const GOLDEN_BITS: [usize; 7] = [79, 83, 128, 429, 433, 734, 911];

    #[test]
    fn filters_of_two_processes_merge_with_or() {
        let params = params(10_000, 0.001, 9);
        let mut a = WindowFilter::new(&params).unwrap();
        let mut b = WindowFilter::new(&params).unwrap();
        for id in ids(0, 3000) {
            a.insert(&id);
        }
        for id in ids(3000, 3000) {
            b.insert(&id);
        }
        let mut merged = WindowFilter::new(&params).unwrap();
        // In two segments, as a large filter is published.
        let half = a.bits().len() / 2;
        assert!(merged.merge(0, &a.bits()[..half]));
        assert!(merged.merge(half as u64, &a.bits()[half..]));
        assert!(merged.merge(0, b.bits()));
        assert!(!merged.merge(1, b.bits()), "past the end");
        assert!(ids(0, 6000).all(|id| merged.contains(&id)));
        let false_positives = ids(1_000_000, 100_000)
            .filter(|id| merged.contains(id))
            .count();
        // 6000 of 10000 expected: well under the 0.1% of a full filter.
        assert!(false_positives < 100, "{false_positives}");
        assert!(merged.fill_ratio() > 0.2 && merged.fill_ratio() < 0.5);
        assert!(merged.estimated_false_positive_rate() < 0.001);
    }

    #[test]
    fn a_full_filter_has_about_the_configured_rate() {
        let params = params(20_000, 0.01, 5);
        let mut f = WindowFilter::new(&params).unwrap();
        let mut new = 0;
        for id in ids(0, 20_000) {
            new += u32::from(f.insert(&id));
        }
        assert!(new > 19_700, "{new} of 20000 counted as new");
        let fp = ids(5_000_000, 100_000).filter(|id| f.contains(id)).count();
        assert!((700..1300).contains(&fp), "{fp} false positives in 100000");
        let est = f.estimated_false_positive_rate();
        assert!((0.007..0.013).contains(&est), "{est}");
    }

    #[test]
    fn new_positions_are_the_bits_set_since_the_base() {
        let mut bits = vec![0u8; 21];
        let mut base = vec![0u8; 21];
        for p in [0u64, 7, 8, 63, 64, 100, 167] {
            bits[(p / 8) as usize] |= 1 << (p % 8);
        }
        for p in [7u64, 64] {
            base[(p / 8) as usize] |= 1 << (p % 8);
        }
        let positions = |bits: &[u8], base: Option<&[u8]>| {
            let mut out = Vec::new();
            assert!(for_each_new_position(bits, base, |p| {
                out.push(p);
                true
            }));
            out
        };
        assert_eq!(positions(&bits, None), [0, 7, 8, 63, 64, 100, 167]);
        assert_eq!(positions(&bits, Some(&base)), [0, 8, 63, 100, 167]);
        assert!(positions(&bits, Some(&bits)).is_empty());
        assert_eq!(positions(&bits, Some(&base[..8])), [0, 8, 63, 64, 100, 167]);
        let mut first_two = Vec::new();
        assert!(!for_each_new_position(&bits, None, |p| {
            first_two.push(p);
            first_two.len() < 2
        }));
        assert_eq!(first_two, [0, 7]);
        let mut set = WindowFilter::new(&params(100, 0.01, 1)).unwrap();
        assert!(set.set_positions([3u64, 77].into_iter()));
        assert_eq!(positions(set.bits(), None), [3, 77]);
        let past = set.bits().len() as u64 * 8;
        assert!(!set.set_positions([past].into_iter()));
        assert!((fill_ratio(set.bits()) - set.fill_ratio()).abs() < 1e-12);
    }

    #[test]
    fn batches_set_the_bits_of_the_positions() {
        // Sizes with and without hash collisions, one hash function and many; the reference
        // sets `positions_of` one id after the other, with plain divisions.
        for (n, p, seed) in [
            (1_000_000, 0.001, 1),
            (1000, 0.01, 2),
            (50, 0.5, 3),
            (300, 1e-9, 4),
        ] {
            let params = params(n, p, seed);
            let mut reference = vec![0u8; params.bitmap_bytes as usize];
            let mut batched = WindowFilter::new(&params).unwrap();
            let all: Vec<[u8; 16]> = ids(0, 3000).chain(ids(0, 200)).collect();
            for batch in all.chunks(37) {
                let mut expected = 0u64;
                for (i, id) in batch.iter().enumerate() {
                    let mut all_set = true;
                    for p in positions_of(&params, id) {
                        all_set &= reference[(p / 8) as usize] & (1 << (p % 8)) != 0;
                        reference[(p / 8) as usize] |= 1 << (p % 8);
                    }
                    expected |= u64::from(!all_set) << i;
                }
                assert_eq!(batched.insert_batch(batch), expected, "n={n} p={p}");
                assert!(batch.iter().all(|id| batched.contains(id)));
            }
            assert_eq!(reference, batched.bits(), "n={n} p={p}");
        }
        let mut f = WindowFilter::new(&params(100, 0.01, 42)).unwrap();
        assert_eq!(
            f.insert_batch(&[[0xab; 16], [0xab; 16]]),
            0b01,
            "a repeat is not new"
        );
        assert_eq!(f.insert_batch(&[]), 0);
    }

    #[test]
    fn fast_reduction_is_the_remainder() {
        let xs = [
            0,
            1,
            7,
            8,
            u64::MAX,
            u64::MAX - 1,
            1 << 63,
            0x1234_5678_9abc_def0,
        ];
        for bits in [8, 9, 1000, 14_377_592, (1 << 31) - 8, 1 << 31, u64::MAX / 3] {
            let h = Hashing::new(&[0; 32], 1, bits);
            for x in xs
                .into_iter()
                .chain((0..1000).map(|i: u64| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
            {
                assert_eq!(h.reduce(x), x % bits, "{x} % {bits}");
            }
        }
    }
}
