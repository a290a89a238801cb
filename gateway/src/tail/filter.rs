//! A decision window's Bloom filter over trace ids: the `bloomfilter` crate's `Bloom`, built
//! from the policy's [`FilterParams`] so that every process builds the same hash functions
//! (SipHash-1-3 keyed by the seed; no per-process randomness), and merged with a bitwise OR
//! from published bits.

use bloomfilter::Bloom;
use weir_config::policy::FilterParams;

/// A window's filter.
pub struct WindowFilter {
    /// Always `Some` between calls; taken while the bits are being rewritten.
    bloom: Option<Bloom<[u8; 16]>>,
    params: FilterParams,
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
        Some(WindowFilter {
            bloom: Some(bloom),
            params: *params,
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

    /// Marks `trace_id`; true when it was not in the filter before.
    pub fn insert(&mut self, trace_id: &[u8; 16]) -> bool {
        match self.bloom.as_mut() {
            Some(b) => !b.check_and_set(trace_id),
            None => false,
        }
    }

    /// True when `trace_id` may have been marked (false positives at the configured rate).
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
        let len = self.params.bitmap_bytes as usize;
        if offset
            .checked_add(segment.len())
            .is_none_or(|end| end > len)
        {
            return false;
        }
        let Some(bloom) = self.bloom.take() else {
            return false;
        };
        let mut bytes = bloom.into_bytes();
        let head = bytes.len() - len;
        for (b, s) in bytes[head + offset..].iter_mut().zip(segment) {
            *b |= *s;
        }
        match Bloom::from_bytes(bytes) {
            Ok(b) => {
                self.bloom = Some(b);
                true
            }
            Err(e) => {
                // Cannot happen: the header is the one `into_bytes` gave. Start empty rather
                // than panic.
                tracing::error!(error = e, "rebuilding a merged filter failed");
                self.bloom = WindowFilter::new(&self.params).and_then(|f| f.bloom);
                false
            }
        }
    }

    /// The share of bits set, 0 to 1.
    pub fn fill_ratio(&self) -> f64 {
        let bits = self.bits();
        let ones: u64 = bits.iter().map(|b| u64::from(b.count_ones())).sum();
        ones as f64 / (bits.len() as f64 * 8.0)
    }

    /// The false-positive rate the filter has now: `fill^k`.
    pub fn estimated_false_positive_rate(&self) -> f64 {
        self.fill_ratio().powi(self.hashes() as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_config::policy::{bitmap_bytes, expand_seed, hash_count};

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
}
