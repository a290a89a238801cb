//! Per-service rate limits: a token bucket per `service.name`, shared by all threads.
//!
//! Each bucket is one atomic (the GCRA form of a token bucket: it stores the "theoretical
//! arrival time" of the next span instead of a token count), so taking a token is a load and
//! a compare-exchange, with no lock. Services named in the policy get their bucket when the
//! policy is compiled and are looked up in an immutable map. Other services, when the policy
//! sets a limit for them, get a bucket on first sight in a map behind a read-write lock (the
//! read lock on every later span; the write lock, and one allocation, only for a new service);
//! past `max_services` entries, the rest share one overflow bucket, so a flood of distinct
//! names cannot grow memory without bound.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// A rate: spans per second, and how many may pass at once after a quiet period.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limit {
    /// The sustained rate.
    pub spans_per_second: f64,
    /// The bucket's capacity.
    pub burst: u64,
}

/// One token bucket.
#[derive(Debug)]
struct Bucket {
    /// Nanoseconds per token.
    interval: u64,
    /// How far ahead of `now` the arrival time may run: `burst` tokens' worth.
    tolerance: u64,
    /// When the bucket will be full again, in the caller's clock (nanoseconds).
    tat: AtomicU64,
}

impl Bucket {
    fn new(limit: Limit) -> Self {
        let interval = ((1e9 / limit.spans_per_second).round() as u64).max(1);
        Self {
            interval,
            tolerance: interval.saturating_mul(limit.burst.max(1)),
            tat: AtomicU64::new(0),
        }
    }

    /// Takes a token at `now` if one is left.
    fn try_take(&self, now: u64) -> bool {
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now).saturating_add(self.interval);
            if next - now > self.tolerance {
                return false;
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(current) => tat = current,
            }
        }
    }

    fn same_limit(&self, other: &Bucket) -> bool {
        self.interval == other.interval && self.tolerance == other.tolerance
    }

    fn copy_state(&self, from: &Bucket) {
        self.tat
            .store(from.tat.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// The rate limits of a policy, with their state.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    /// Buckets of the services the policy names.
    named: HashMap<Box<str>, Bucket>,
    /// The limit of every other service; `None` leaves them unlimited.
    others: Option<Limit>,
    /// Buckets of other services, created as they appear.
    seen: RwLock<HashMap<Box<str>, Bucket>>,
    /// How many other services get a bucket of their own.
    max_services: usize,
    /// The bucket shared by other services past `max_services`.
    overflow: Option<Bucket>,
    /// Whether error spans pass without taking a token.
    pub(crate) exempt_errors: bool,
}

impl RateLimiter {
    pub(crate) fn new<'a>(
        named: impl IntoIterator<Item = (&'a str, Limit)>,
        others: Option<Limit>,
        max_services: usize,
        exempt_errors: bool,
    ) -> Self {
        Self {
            named: named
                .into_iter()
                .map(|(name, limit)| (name.into(), Bucket::new(limit)))
                .collect(),
            others,
            seen: RwLock::new(HashMap::new()),
            max_services,
            overflow: others.map(Bucket::new),
            exempt_errors,
        }
    }

    /// Takes a token for a span of `service` at `now` (nanoseconds on any monotonic clock
    /// the caller keeps using); false when the service is over its limit.
    pub(crate) fn allow(&self, service: &str, now: u64) -> bool {
        if let Some(bucket) = self.named.get(service) {
            return bucket.try_take(now);
        }
        let Some(limit) = self.others else {
            return true;
        };
        {
            let seen = self.seen.read().unwrap_or_else(|e| e.into_inner());
            if let Some(bucket) = seen.get(service) {
                return bucket.try_take(now);
            }
            if seen.len() >= self.max_services {
                return self.overflow.as_ref().is_none_or(|b| b.try_take(now));
            }
        }
        let mut seen = self.seen.write().unwrap_or_else(|e| e.into_inner());
        if !seen.contains_key(service) && seen.len() >= self.max_services {
            drop(seen);
            return self.overflow.as_ref().is_none_or(|b| b.try_take(now));
        }
        seen.entry(service.into())
            .or_insert_with(|| Bucket::new(limit))
            .try_take(now)
    }

    /// Continues the buckets of `previous` (the policy this one replaces) whose limits did not
    /// change, so that a reload does not refill every bucket.
    pub(crate) fn carry_over(&self, previous: &RateLimiter) {
        for (name, bucket) in &self.named {
            if let Some(old) = previous.named.get(name)
                && bucket.same_limit(old)
            {
                bucket.copy_state(old);
            }
        }
        let (Some(limit), Some(old_limit)) = (self.others, previous.others) else {
            return;
        };
        if limit != old_limit {
            return;
        }
        let old = previous.seen.read().unwrap_or_else(|e| e.into_inner());
        let mut seen = self.seen.write().unwrap_or_else(|e| e.into_inner());
        for (name, old_bucket) in old.iter() {
            if seen.len() >= self.max_services {
                break;
            }
            if self.named.contains_key(name) {
                continue;
            }
            let bucket = Bucket::new(limit);
            bucket.copy_state(old_bucket);
            seen.insert(name.clone(), bucket);
        }
        if let (Some(new), Some(old)) = (&self.overflow, &previous.overflow) {
            new.copy_state(old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn limit(spans_per_second: f64, burst: u64) -> Limit {
        Limit {
            spans_per_second,
            burst,
        }
    }

    #[test]
    fn burst_then_refill() {
        let b = Bucket::new(limit(1.0, 3));
        let t0 = 5 * SEC;
        assert!(
            (0..3).all(|_| b.try_take(t0)),
            "a full bucket passes `burst` spans"
        );
        assert!(!b.try_take(t0), "then refuses");
        assert!(!b.try_take(t0 + SEC / 2), "half a token is not a token");
        assert!(b.try_take(t0 + SEC), "one token per second comes back");
        assert!(!b.try_take(t0 + SEC));
        let later = t0 + 100 * SEC;
        assert_eq!(
            (0..10).filter(|_| b.try_take(later)).count(),
            3,
            "refill stops at burst"
        );
    }

    #[test]
    fn sustained_rate() {
        let b = Bucket::new(limit(100.0, 10));
        // 1000 spans/s offered for 10 s: 100/s pass, plus the initial burst.
        let passed = (0..10_000u64)
            .filter(|i| b.try_take(SEC + i * SEC / 1000))
            .count();
        assert!((1000..=1010).contains(&passed), "{passed}");
    }

    #[test]
    fn concurrent_takers_never_exceed_the_burst() {
        let b = std::sync::Arc::new(Bucket::new(limit(1.0, 1000)));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..1000).filter(|_| b.try_take(SEC)).count())
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 1000);
    }

    #[test]
    fn named_services_have_their_own_buckets() {
        let rl = RateLimiter::new([("a", limit(1.0, 2))], None, 10, false);
        assert!(rl.allow("a", SEC) && rl.allow("a", SEC));
        assert!(!rl.allow("a", SEC));
        assert!(
            (0..100).all(|_| rl.allow("b", SEC)),
            "no limit for other services"
        );
    }

    #[test]
    fn other_services_get_buckets_up_to_the_bound() {
        let rl = RateLimiter::new([], Some(limit(1.0, 1)), 2, false);
        assert!(rl.allow("a", SEC) && !rl.allow("a", SEC));
        assert!(rl.allow("b", SEC) && !rl.allow("b", SEC));
        // Past max_services, c and d share the overflow bucket.
        assert!(rl.allow("c", SEC));
        assert!(!rl.allow("d", SEC));
        assert_eq!(rl.seen.read().unwrap().len(), 2);
    }

    #[test]
    fn reload_carries_state_over_when_the_limit_is_unchanged() {
        let old = RateLimiter::new([("a", limit(1.0, 1))], Some(limit(1.0, 1)), 10, false);
        assert!(old.allow("a", SEC) && old.allow("x", SEC));
        let same = RateLimiter::new([("a", limit(1.0, 1))], Some(limit(1.0, 1)), 10, false);
        same.carry_over(&old);
        assert!(!same.allow("a", SEC) && !same.allow("x", SEC));
        let changed = RateLimiter::new([("a", limit(2.0, 1))], Some(limit(2.0, 1)), 10, false);
        changed.carry_over(&old);
        assert!(changed.allow("a", SEC) && changed.allow("x", SEC));
    }
}
