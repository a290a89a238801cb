//! A decision window's Bloom filter over trace ids: the `bloomfilter` crate's `Bloom`, built
//! from [`FilterParams`] (which the policy's `tail` section gives, and every decision record
//! repeats) so that every process builds the same hash functions (SipHash-1-3 keyed by the
//! seed; no per-process randomness), and merged with a bitwise OR from published bits.
//!
//! The gateway marks in batches ([`WindowFilter::insert_batch`]): the same bits the crate's
//! `check_and_set` sets, found with the crate's own SipHash type but without its two integer
//! divisions per bit, and set after all of a batch's positions are known so that the cache
//! misses of a megabyte-sized bit array overlap. A test holds the two paths to the same bits.
//! The tail router rebuilds the filters from the records' bits and asks them
//! ([`WindowFilter::contains`]).

use bloomfilter::Bloom;
use bloomfilter::reexports::siphasher::sip::SipHasher13;
use std::hash::{Hash, Hasher};

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
    /// The number of hash functions (as the `bloomfilter` crate derives it from the size and
    /// the item count).
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
/// `m = -n ln p / (ln 2)^2` bits, as the `bloomfilter` crate's `compute_bitmap_size` rounds it.
pub fn bitmap_bytes(n: u64, p: f64) -> u64 {
    let ln2 = std::f64::consts::LN_2;
    ((n as f64) * p.ln() / (-8.0 * ln2 * ln2)).ceil().max(1.0) as u64
}

/// The optimal number of hash functions, `round(m/n ln 2)`, at least 1, as `bloomfilter`
/// derives it.
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

/// The modulus of the crate's derived hashes (the largest prime below 2^64).
const DERIVED_HASH_PRIME: u64 = 0xFFFF_FFFF_FFFF_FFC5;

/// The most items [`WindowFilter::insert_batch`] takes at once.
pub const MAX_BATCH: usize = 64;

/// A window's filter.
pub struct WindowFilter {
    /// Always `Some` between calls; taken while the bits are being rewritten.
    bloom: Option<Bloom<[u8; 16]>>,
    params: FilterParams,
    /// The crate's hash functions, for batches.
    hashing: Hashing,
    /// Bit positions of a batch (scratch space).
    positions: Vec<u64>,
}

/// The positions the crate's `Bloom<[u8; 16]>` derives for an item (hash scheme 1 of the
/// decision record), with `% bits` done by multiplication (Lemire's fastmod).
struct Hashing {
    sips: [SipHasher13; 2],
    hashes: u64,
    bits: u64,
    /// `ceil(2^128 / bits)`.
    magic: u128,
}

impl Hashing {
    fn new(seed: &[u8; 32], hashes: u32, bits: u64) -> Self {
        let key = |half: &[u8]| {
            let mut k = [0u8; 16];
            k.copy_from_slice(half);
            SipHasher13::new_with_key(&k)
        };
        Hashing {
            sips: [key(&seed[..16]), key(&seed[16..])],
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

    /// Appends the bit positions of `item` to `out`, in the crate's order.
    #[inline]
    fn positions(&self, item: &[u8; 16], out: &mut Vec<u64>) {
        let hash = |i: usize| {
            let mut sip = self.sips[i];
            item.hash(&mut sip);
            sip.finish()
        };
        let (h0, h1) = (hash(0), hash(1));
        out.push(self.reduce(h0));
        if self.hashes > 1 {
            out.push(self.reduce(h1));
        }
        for i in 2..self.hashes {
            out.push(self.reduce(h0.wrapping_add(i.wrapping_mul(h1)) % DERIVED_HASH_PRIME));
        }
    }
}

impl WindowFilter {
    /// An empty filter with `params`; `None` when the sizes cannot be allocated.
    pub fn new(params: &FilterParams) -> Option<WindowFilter> {
        let bloom = Bloom::new_with_seed(
            usize::try_from(params.bitmap_bytes).ok()?,
            usize::try_from(params.expected_traces).ok()?,
            &params.seed,
        )
        .ok()?;
        let hashing = Hashing::new(&params.seed, bloom.number_of_hash_functions(), bloom.len());
        Some(WindowFilter {
            bloom: Some(bloom),
            params: *params,
            hashing,
            positions: Vec::new(),
        })
    }

    fn bloom(&self) -> &Bloom<[u8; 16]> {
        // Only `merge` takes it out, and puts it (or a rebuilt one) back before returning.
        self.bloom.as_ref().expect("the filter is always present")
    }

    /// The parameters it was built with.
    pub fn params(&self) -> &FilterParams {
        &self.params
    }

    /// The number of hash functions the crate derived (equal to `params().hashes`).
    pub fn hashes(&self) -> u32 {
        self.bloom().number_of_hash_functions()
    }

    /// Marks `trace_id` with the crate's own `check_and_set`; true when it was not in the
    /// filter before. The reference [`insert_batch`](Self::insert_batch) is held to.
    pub fn insert(&mut self, trace_id: &[u8; 16]) -> bool {
        match self.bloom.as_mut() {
            Some(b) => !b.check_and_set(trace_id),
            None => false,
        }
    }

    /// Marks every id of `ids` (at most [`MAX_BATCH`]) in order, as the crate's `check_and_set`
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
        let new = self
            .with_bits_mut(|bits| {
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
                new
            })
            .unwrap_or(0);
        self.positions = positions;
        new
    }

    /// True when `trace_id` may have been marked (false positives at the configured rate).
    #[inline]
    pub fn contains(&self, trace_id: &[u8; 16]) -> bool {
        self.bloom().check(trace_id)
    }

    /// The filter's bit array (`params().bitmap_bytes` bytes).
    pub fn bits(&self) -> &[u8] {
        let all = self.bloom().as_slice();
        // `as_slice` is the crate's own header followed by the bits.
        &all[all.len() - self.params.bitmap_bytes as usize..]
    }

    /// ORs `segment` into the bit array at byte `offset`. False (nothing changed) when the
    /// segment does not fit.
    pub fn merge(&mut self, offset: u64, segment: &[u8]) -> bool {
        let Ok(offset) = usize::try_from(offset) else {
            return false;
        };
        if offset
            .checked_add(segment.len())
            .is_none_or(|end| end > self.params.bitmap_bytes as usize)
        {
            return false;
        }
        self.with_bits_mut(|bits| {
            for (b, s) in bits[offset..].iter_mut().zip(segment) {
                *b |= *s;
            }
        });
        true
    }

    /// Sets the bits at `positions`. False when one is past the filter's end (the bits
    /// before it are set).
    pub fn set_positions(&mut self, positions: impl Iterator<Item = u64>) -> bool {
        let count = self.params.bitmap_bytes.saturating_mul(8);
        self.with_bits_mut(|bits| {
            for p in positions {
                if p >= count {
                    return false;
                }
                bits[(p / 8) as usize] |= 1 << (p % 8);
            }
            true
        })
        .unwrap_or(false)
    }

    /// Runs `f` on the bit array, writable. `None` when the filter could not be rebuilt.
    fn with_bits_mut<R>(&mut self, f: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        let bloom = self.bloom.take()?;
        // The crate has no mutable view of its bits: take its bytes (a move, no copy) and
        // build it again from them.
        let mut bytes = bloom.into_bytes();
        let head = bytes.len() - self.params.bitmap_bytes as usize;
        let out = f(&mut bytes[head..]);
        match Bloom::from_bytes(bytes) {
            Ok(b) => {
                self.bloom = Some(b);
                Some(out)
            }
            Err(e) => {
                // Cannot happen: the header is the one `into_bytes` gave. Start empty rather
                // than panic.
                tracing::error!(error = e, "rebuilding a merged filter failed");
                self.bloom = WindowFilter::new(&self.params).and_then(|mut f| f.bloom.take());
                None
            }
        }
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
    fn the_crate_derives_the_documented_hash_count() {
        for (n, p) in [(1_000_000, 0.001), (1000, 0.01), (10, 0.5), (123_457, 1e-6)] {
            let params = params(n, p, 1);
            let f = WindowFilter::new(&params).unwrap();
            assert_eq!(f.hashes(), params.hashes, "n={n} p={p}");
            assert_eq!(f.bits().len() as u64, params.bitmap_bytes);
        }
    }

    #[test]
    fn hashing_is_fixed_by_the_seed() {
        // Golden bits: a change in the crate's hashing (or in how std feeds a [u8; 16] to
        // the hasher) would make old and new processes disagree; this catches it.
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
    fn batches_set_the_bits_the_crate_sets() {
        // Sizes with and without hash collisions, one hash function and many.
        for (n, p, seed) in [
            (1_000_000, 0.001, 1),
            (1000, 0.01, 2),
            (50, 0.5, 3),
            (300, 1e-9, 4),
        ] {
            let params = params(n, p, seed);
            let mut one_by_one = WindowFilter::new(&params).unwrap();
            let mut batched = WindowFilter::new(&params).unwrap();
            let all: Vec<[u8; 16]> = ids(0, 3000).chain(ids(0, 200)).collect();
            for batch in all.chunks(37) {
                let mut expected = 0u64;
                for (i, id) in batch.iter().enumerate() {
                    expected |= u64::from(one_by_one.insert(id)) << i;
                }
                assert_eq!(batched.insert_batch(batch), expected, "n={n} p={p}");
            }
            assert_eq!(one_by_one.bits(), batched.bits(), "n={n} p={p}");
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
