//! Per-service rate limits: a token bucket per `service.name`, shared by all threads.
//!
//! Each bucket is one atomic (the GCRA form of a token bucket: it stores the "theoretical
//! arrival time" of the next span instead of a token count), so taking a token is a load and
//! a compare-exchange, with no lock. Services named in the policy get their bucket when the
//! policy is compiled and are looked up in an immutable map. Other services, when the policy
//! sets a limit for them, get a bucket on first sight in a table behind a read-write lock (the
//! read lock on every later span; the write lock, and one allocation, only for a new service).
//! Service names are client input, so that table is bounded three ways:
//! - a name longer than [`MAX_SERVICE_NAME_BYTES`] gets no bucket (and no copy) of its own;
//! - buckets are keyed by (tenant, service) when the request has a tenant, and one tenant
//!   holds at most `max_services_per_tenant` of the `max_services`: past either, a tenant's
//!   new services share that tenant's overflow bucket, and services of requests without a
//!   tenant share one overflow bucket;
//! - a bucket left full (unused) for `bucket_idle_timeout` is freed: forgetting a full bucket
//!   changes nothing, a new one starts full. The table is swept when it is touched, at most
//!   once per [`SWEEP_INTERVAL_NANOS`], [`SWEEP_BATCH`] buckets per sweep, so memory comes
//!   back after a flood of one-off names without a timer thread or a per-span cost.

use indexmap::{Equivalent, IndexMap};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

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

    /// Whether the bucket has been full (no token taken) for `idle` nanoseconds at `now`.
    fn is_idle(&self, now: u64, idle: u64) -> bool {
        self.tat.load(Ordering::Relaxed).saturating_add(idle) <= now
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
    /// The longest name in `named`: longer names are not looked up (nor hashed) there.
    longest_named: usize,
    /// Services the policy does not name; `None` leaves them unlimited.
    unnamed: Option<Unnamed>,
    /// Whether error spans pass without taking a token.
    pub(crate) exempt_errors: bool,
}

/// How services the policy does not name are limited, and how many buckets they may hold.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UnnamedLimits {
    /// The limit of each such service.
    pub limit: Limit,
    /// How many of them get a bucket of their own, all tenants together.
    pub max_services: usize,
    /// How many of those one tenant's services may hold.
    pub max_services_per_tenant: usize,
    /// How long a bucket stays full before it is freed, in nanoseconds.
    pub idle_timeout_nanos: u64,
}

/// Service names longer than this (bytes) get no bucket of their own: a name is kept as long
/// as its bucket, and a real `service.name` is far shorter.
pub(crate) const MAX_SERVICE_NAME_BYTES: usize = 256;

/// The least time between two sweeps of the table for idle buckets, in nanoseconds.
const SWEEP_INTERVAL_NANOS: u64 = 1_000_000_000;

/// The most buckets one sweep looks at, so that the write lock is held briefly whatever
/// `max_services` is; a larger table is swept over several intervals.
const SWEEP_BATCH: usize = 4096;

/// The buckets of services the policy does not name, and their bounds.
#[derive(Debug)]
struct Unnamed {
    limits: UnnamedLimits,
    /// Shared by the services of requests without a tenant past `max_services`, and by
    /// their names longer than [`MAX_SERVICE_NAME_BYTES`].
    overflow: Bucket,
    table: RwLock<Table>,
    /// Buckets in `table` (services and tenants' overflows), for a gauge without the lock.
    held: AtomicUsize,
    /// When the table is next swept, on the callers' clock.
    next_sweep: AtomicU64,
}

/// The buckets created as services appear.
#[derive(Debug, Default)]
struct Table {
    /// One bucket per (tenant, service); indexed so that a sweep can resume where it stopped.
    services: IndexMap<ServiceKey, Bucket>,
    /// Per tenant seen: how many buckets of `services` it holds, and its overflow bucket.
    tenants: IndexMap<Box<str>, TenantBuckets>,
    /// Where in `services` the next sweep starts.
    cursor: usize,
}

/// A tenant's share of the table.
#[derive(Debug)]
struct TenantBuckets {
    /// Its buckets in [`Table::services`].
    services: usize,
    /// Shared by its services past its share, and by its over-long names.
    overflow: Bucket,
}

/// The key of a service's bucket: its request's tenant, if any, and its name.
#[derive(Debug, PartialEq, Eq)]
struct ServiceKey {
    tenant: Option<Box<str>>,
    service: Box<str>,
}

/// [`ServiceKey`] borrowed from a span, to look a bucket up without allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ServiceKeyRef<'a> {
    tenant: Option<&'a str>,
    service: &'a str,
}

impl ServiceKey {
    fn borrowed(&self) -> ServiceKeyRef<'_> {
        ServiceKeyRef {
            tenant: self.tenant.as_deref(),
            service: &self.service,
        }
    }
}

// Hashed as its borrowed form, so that a `ServiceKeyRef` finds it.
impl Hash for ServiceKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.borrowed().hash(state);
    }
}

impl Equivalent<ServiceKey> for ServiceKeyRef<'_> {
    fn equivalent(&self, key: &ServiceKey) -> bool {
        *self == key.borrowed()
    }
}

impl ServiceKeyRef<'_> {
    fn to_owned_key(self) -> ServiceKey {
        ServiceKey {
            tenant: self.tenant.map(Into::into),
            service: self.service.into(),
        }
    }
}

impl RateLimiter {
    pub(crate) fn new<'a>(
        named: impl IntoIterator<Item = (&'a str, Limit)>,
        unnamed: Option<UnnamedLimits>,
        exempt_errors: bool,
    ) -> Self {
        let named: HashMap<Box<str>, Bucket> = named
            .into_iter()
            .map(|(name, limit)| (name.into(), Bucket::new(limit)))
            .collect();
        Self {
            longest_named: named.keys().map(|n| n.len()).max().unwrap_or(0),
            named,
            unnamed: unnamed.map(|limits| Unnamed {
                limits,
                overflow: Bucket::new(limits.limit),
                table: RwLock::default(),
                held: AtomicUsize::new(0),
                next_sweep: AtomicU64::new(0),
            }),
            exempt_errors,
        }
    }

    /// Takes a token for a span of `service`, in a request of `tenant` if it has one, at `now`
    /// (nanoseconds on any monotonic clock the caller keeps using); false when the service is
    /// over its limit.
    pub(crate) fn allow(&self, service: &str, tenant: Option<&str>, now: u64) -> bool {
        if service.len() <= self.longest_named
            && let Some(bucket) = self.named.get(service)
        {
            return bucket.try_take(now);
        }
        self.unnamed
            .as_ref()
            .is_none_or(|u| u.allow(ServiceKeyRef { tenant, service }, now))
    }

    /// How many buckets the services the policy does not name hold now (one per (tenant,
    /// service), plus one overflow bucket per tenant seen).
    pub(crate) fn buckets_held(&self) -> usize {
        self.unnamed
            .as_ref()
            .map_or(0, |u| u.held.load(Ordering::Relaxed))
    }

    /// Continues the buckets of `previous` (the policy this one replaces) whose limits did not
    /// change, so that a reload does not refill every bucket. Buckets idle at `now` (on the
    /// clock of [`RateLimiter::allow`]) are not carried: they would be freed anyway.
    pub(crate) fn carry_over(&self, previous: &RateLimiter, now: u64) {
        for (name, bucket) in &self.named {
            if let Some(old) = previous.named.get(name)
                && bucket.same_limit(old)
            {
                bucket.copy_state(old);
            }
        }
        if let (Some(new), Some(old)) = (&self.unnamed, &previous.unnamed)
            && new.limits.limit == old.limits.limit
        {
            new.carry_over(old, &self.named, now);
        }
    }
}

impl Unnamed {
    fn allow(&self, key: ServiceKeyRef<'_>, now: u64) -> bool {
        if now >= self.next_sweep.load(Ordering::Relaxed) {
            self.sweep_if_due(now);
        }
        if key.service.len() > MAX_SERVICE_NAME_BYTES {
            return self.take_overflow(key.tenant, now);
        }
        {
            let table = self.read();
            if let Some(bucket) = table.services.get(&key) {
                return bucket.try_take(now);
            }
            // A full table sends the span to an overflow bucket without the write lock.
            match key.tenant {
                None if table.services.len() >= self.limits.max_services => {
                    return self.overflow.try_take(now);
                }
                Some(tenant) => {
                    if let Some(t) = table.tenants.get(tenant)
                        && self.tenant_is_full(&table, t)
                    {
                        return t.overflow.try_take(now);
                    }
                }
                None => {}
            }
        }
        let mut guard = self.write();
        let table = &mut *guard;
        if let Some(bucket) = table.services.get(&key) {
            return bucket.try_take(now);
        }
        let total_is_full = table.services.len() >= self.limits.max_services;
        match key.tenant {
            None if total_is_full => return self.overflow.try_take(now),
            None => {}
            Some(tenant) => {
                let t = table.tenant(tenant, self.limits.limit);
                if total_is_full || t.services >= self.limits.max_services_per_tenant {
                    let allowed = t.overflow.try_take(now);
                    self.count(table);
                    return allowed;
                }
                t.services += 1;
            }
        }
        let bucket = Bucket::new(self.limits.limit);
        let allowed = bucket.try_take(now);
        table.services.insert(key.to_owned_key(), bucket);
        self.count(table);
        allowed
    }

    fn tenant_is_full(&self, table: &Table, tenant: &TenantBuckets) -> bool {
        tenant.services >= self.limits.max_services_per_tenant
            || table.services.len() >= self.limits.max_services
    }

    /// Takes a token from the overflow bucket of `tenant`, or the shared one without a tenant.
    fn take_overflow(&self, tenant: Option<&str>, now: u64) -> bool {
        let Some(tenant) = tenant else {
            return self.overflow.try_take(now);
        };
        if let Some(t) = self.read().tenants.get(tenant) {
            return t.overflow.try_take(now);
        }
        let mut table = self.write();
        let allowed = table
            .tenant(tenant, self.limits.limit)
            .overflow
            .try_take(now);
        self.count(&table);
        allowed
    }

    /// Frees idle buckets, unless another caller swept less than an interval ago.
    fn sweep_if_due(&self, now: u64) {
        let due = self.next_sweep.load(Ordering::Relaxed);
        let claimed = now >= due
            && self
                .next_sweep
                .compare_exchange(
                    due,
                    now.saturating_add(SWEEP_INTERVAL_NANOS),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok();
        if claimed {
            let mut table = self.write();
            table.sweep(now, self.limits.idle_timeout_nanos);
            self.count(&table);
        }
    }

    /// Copies the live buckets of `previous` into this (new, unused) table, within this
    /// table's bounds; services now `named` keep the policy's bucket instead.
    fn carry_over(&self, previous: &Unnamed, named: &HashMap<Box<str>, Bucket>, now: u64) {
        let idle = self.limits.idle_timeout_nanos;
        let old = previous.read();
        let mut guard = self.write();
        let table = &mut *guard;
        for (key, old_bucket) in &old.services {
            if table.services.len() >= self.limits.max_services {
                break;
            }
            if old_bucket.is_idle(now, idle) || named.contains_key(&key.service) {
                continue;
            }
            if let Some(tenant) = &key.tenant {
                let t = table.tenant(tenant, self.limits.limit);
                if t.services >= self.limits.max_services_per_tenant {
                    continue;
                }
                t.services += 1;
            }
            let bucket = Bucket::new(self.limits.limit);
            bucket.copy_state(old_bucket);
            table.services.insert(key.borrowed().to_owned_key(), bucket);
        }
        for (tenant, old_tenant) in &old.tenants {
            if !old_tenant.overflow.is_idle(now, idle) {
                table
                    .tenant(tenant, self.limits.limit)
                    .overflow
                    .copy_state(&old_tenant.overflow);
            }
        }
        self.overflow.copy_state(&previous.overflow);
        self.count(table);
    }

    fn count(&self, table: &Table) {
        self.held.store(
            table.services.len() + table.tenants.len(),
            Ordering::Relaxed,
        );
    }

    fn read(&self) -> RwLockReadGuard<'_, Table> {
        // Every update leaves the table consistent: a panic elsewhere cannot break it.
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl Table {
    /// The share of `tenant`, made on first sight (tenants are authenticated names from the
    /// gateway's configuration, so they are few).
    fn tenant(&mut self, tenant: &str, limit: Limit) -> &mut TenantBuckets {
        let at = match self.tenants.get_index_of(tenant) {
            Some(at) => at,
            None => {
                let share = TenantBuckets {
                    services: 0,
                    overflow: Bucket::new(limit),
                };
                self.tenants.insert_full(tenant.into(), share).0
            }
        };
        &mut self.tenants[at]
    }

    /// Looks at up to [`SWEEP_BATCH`] buckets, resuming where the last sweep stopped, and
    /// frees those idle at `now`; then the tenants left with no bucket and an idle overflow.
    fn sweep(&mut self, now: u64, idle: u64) {
        // Downwards, so that the bucket a removal moves into place (the last one) comes from
        // above, not from the part still to look at: no bucket is looked at twice per sweep.
        let budget = SWEEP_BATCH.min(self.services.len());
        let mut at = self.cursor.min(self.services.len());
        for _ in 0..budget {
            if at == 0 {
                at = self.services.len();
                if at == 0 {
                    break;
                }
            }
            at -= 1;
            let is_idle = self
                .services
                .get_index(at)
                .is_some_and(|(_, b)| b.is_idle(now, idle));
            if is_idle
                && let Some((key, _)) = self.services.swap_remove_index(at)
                && let Some(tenant) = key.tenant
                && let Some(t) = self.tenants.get_mut(&tenant)
            {
                t.services = t.services.saturating_sub(1);
            }
        }
        self.cursor = at;
        self.tenants
            .retain(|_, t| t.services > 0 || !t.overflow.is_idle(now, idle));
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

    /// Limits of unnamed services: `limit`, `max` buckets, a quarter per tenant, 10 s idle.
    fn unnamed(limit: Limit, max: usize) -> Option<UnnamedLimits> {
        Some(UnnamedLimits {
            limit,
            max_services: max,
            max_services_per_tenant: max.div_ceil(4),
            idle_timeout_nanos: 10 * SEC,
        })
    }

    fn table(rl: &RateLimiter) -> RwLockReadGuard<'_, Table> {
        rl.unnamed.as_ref().unwrap().read()
    }

    #[test]
    fn named_services_have_their_own_buckets() {
        let rl = RateLimiter::new([("a", limit(1.0, 2))], None, false);
        assert!(rl.allow("a", None, SEC) && rl.allow("a", None, SEC));
        assert!(!rl.allow("a", None, SEC));
        assert!(
            (0..100).all(|_| rl.allow("b", None, SEC)),
            "no limit for other services"
        );
        assert_eq!(rl.buckets_held(), 0);
    }

    #[test]
    fn other_services_get_buckets_up_to_the_bound() {
        let rl = RateLimiter::new([], unnamed(limit(1.0, 1), 2), false);
        assert!(rl.allow("a", None, SEC) && !rl.allow("a", None, SEC));
        assert!(rl.allow("b", None, SEC) && !rl.allow("b", None, SEC));
        // Past max_services, c and d share the overflow bucket.
        assert!(rl.allow("c", None, SEC));
        assert!(!rl.allow("d", None, SEC));
        assert_eq!(table(&rl).services.len(), 2);
        assert_eq!(rl.buckets_held(), 2);
    }

    #[test]
    fn long_names_share_the_overflow_bucket_and_are_not_kept() {
        let rl = RateLimiter::new([], unnamed(limit(1.0, 1), 100), false);
        let long = |i: usize| format!("{i}{}", "n".repeat(MAX_SERVICE_NAME_BYTES));
        assert!(rl.allow(&long(0), None, SEC), "the overflow bucket's token");
        assert!(
            (1..50).all(|i| !rl.allow(&long(i), None, SEC)),
            "every other long name shares that bucket"
        );
        let at_the_bound = "n".repeat(MAX_SERVICE_NAME_BYTES);
        assert!(
            rl.allow(&at_the_bound, None, SEC),
            "a name at the bound has its own"
        );
        assert_eq!(rl.buckets_held(), 1);
        assert_eq!(table(&rl).services.len(), 1);

        // With a tenant, long names share that tenant's overflow, not the others'.
        assert!(rl.allow(&long(0), Some("t1"), SEC));
        assert!(!rl.allow(&long(1), Some("t1"), SEC));
        assert!(rl.allow(&long(2), Some("t2"), SEC));
        assert_eq!(table(&rl).services.len(), 1, "still no bucket of their own");
        assert_eq!(rl.buckets_held(), 3, "plus one overflow bucket per tenant");
    }

    #[test]
    fn long_names_are_not_looked_up_among_named_services() {
        let rl = RateLimiter::new([("a", limit(1.0, 1))], unnamed(limit(1.0, 1), 10), false);
        assert_eq!(rl.longest_named, 1);
        assert!(rl.allow("a", None, SEC) && !rl.allow("a", None, SEC));
        assert!(
            rl.allow("ab", None, SEC),
            "longer than any named: an unnamed bucket"
        );
    }

    #[test]
    fn idle_buckets_are_freed_when_the_table_is_next_touched() {
        let rl = RateLimiter::new([], unnamed(limit(1000.0, 1), 100), false);
        let t0 = 100 * SEC;
        for i in 0..50 {
            assert!(rl.allow(&format!("svc-{i}"), None, t0));
        }
        assert_eq!(rl.buckets_held(), 50);
        // Busy one service; the others stay full.
        for s in 1..=9 {
            assert!(rl.allow("svc-0", None, t0 + s * SEC));
        }
        assert_eq!(
            rl.buckets_held(),
            50,
            "not idle for 10 s yet at the last sweep"
        );
        assert!(rl.allow("late", None, t0 + 9 * SEC + SEC / 2));
        assert_eq!(rl.buckets_held(), 51, "at most one sweep per second");
        assert!(rl.allow("late", None, t0 + 11 * SEC));
        assert_eq!(
            rl.buckets_held(),
            2,
            "only svc-0 and late were used in the last 10 s"
        );
        assert!(table(&rl).services.contains_key(&ServiceKeyRef {
            tenant: None,
            service: "svc-0"
        }));
    }

    #[test]
    fn a_limited_bucket_is_not_idle() {
        // 1 span per 100 s, burst 1: an empty bucket refills long after the idle timeout.
        let rl = RateLimiter::new([], unnamed(limit(0.01, 1), 100), false);
        assert!(rl.allow("slow", None, SEC));
        assert!(!rl.allow("slow", None, 20 * SEC));
        assert!(rl.allow("other", None, 50 * SEC));
        assert_eq!(rl.buckets_held(), 2, "freeing `slow` would refill it");
        assert!(!rl.allow("slow", None, 50 * SEC));
    }

    #[test]
    fn a_sweep_looks_at_a_bounded_number_of_buckets() {
        let rl = RateLimiter::new([], unnamed(limit(1e6, 1), 2 * SWEEP_BATCH), false);
        let n = SWEEP_BATCH + SWEEP_BATCH / 2;
        for i in 0..n {
            rl.allow(&i.to_string(), None, SEC);
        }
        assert_eq!(rl.buckets_held(), n);
        rl.allow("x", None, 20 * SEC);
        assert_eq!(rl.buckets_held(), n - SWEEP_BATCH + 1, "one batch, then x");
        rl.allow("x", None, 21 * SEC);
        assert_eq!(rl.buckets_held(), 1, "the rest one interval later");
    }

    #[test]
    fn one_tenant_cannot_fill_the_table() {
        // 8 buckets in all, 2 per tenant.
        let rl = RateLimiter::new([], unnamed(limit(1.0, 1), 8), false);
        let flood = Some("flood");
        assert!(rl.allow("a", flood, SEC) && rl.allow("b", flood, SEC));
        assert!(rl.allow("c", flood, SEC), "the tenant's overflow bucket");
        assert!(
            (0..100).all(|i| !rl.allow(&format!("x{i}"), flood, SEC)),
            "its new services share that bucket"
        );
        assert!(!rl.allow("a", flood, SEC), "a keeps its own (empty) bucket");
        // Another tenant, and requests without one, still get buckets of their own, and the
        // same name is a different bucket per tenant.
        assert!(rl.allow("a", Some("quiet"), SEC) && rl.allow("x1", Some("quiet"), SEC));
        assert!(rl.allow("a", None, SEC) && rl.allow("x1", None, SEC));
        assert_eq!(table(&rl).services.len(), 6);
        assert_eq!(rl.buckets_held(), 8, "6 services and 2 tenants' overflow");
        assert_eq!(table(&rl).tenants["flood"].services, 2);
    }

    #[test]
    fn the_total_bound_holds_across_tenants() {
        let rl = RateLimiter::new(
            [],
            Some(UnnamedLimits {
                limit: limit(1.0, 1),
                max_services: 3,
                max_services_per_tenant: 3,
                idle_timeout_nanos: 10 * SEC,
            }),
            false,
        );
        assert!(rl.allow("a", Some("t1"), SEC) && rl.allow("b", Some("t2"), SEC));
        assert!(rl.allow("c", None, SEC));
        assert!(rl.allow("d", Some("t1"), SEC), "t1's overflow");
        assert!(!rl.allow("e", Some("t1"), SEC));
        assert!(rl.allow("d", None, SEC), "the shared overflow");
        assert!(!rl.allow("e", None, SEC));
        assert_eq!(table(&rl).services.len(), 3);
    }

    #[test]
    fn idle_tenants_are_freed_with_their_buckets() {
        let rl = RateLimiter::new([], unnamed(limit(1.0, 1), 8), false);
        assert!(rl.allow("a", Some("t"), SEC) && rl.allow("b", Some("t"), SEC));
        assert!(rl.allow("c", Some("t"), SEC), "its overflow");
        assert_eq!(rl.buckets_held(), 3);
        rl.allow("x", None, 30 * SEC);
        assert_eq!(rl.buckets_held(), 1, "only x is left");
        assert!(table(&rl).tenants.is_empty());
    }

    #[test]
    fn reload_carries_state_over_when_the_limit_is_unchanged() {
        let old = RateLimiter::new([("a", limit(1.0, 1))], unnamed(limit(1.0, 1), 10), false);
        assert!(old.allow("a", None, SEC) && old.allow("x", None, SEC));
        let same = RateLimiter::new([("a", limit(1.0, 1))], unnamed(limit(1.0, 1), 10), false);
        same.carry_over(&old, SEC);
        assert!(!same.allow("a", None, SEC) && !same.allow("x", None, SEC));
        let changed = RateLimiter::new([("a", limit(2.0, 1))], unnamed(limit(2.0, 1), 10), false);
        changed.carry_over(&old, SEC);
        assert!(changed.allow("a", None, SEC) && changed.allow("x", None, SEC));
    }

    #[test]
    fn reload_keeps_live_buckets_but_not_stale_ones() {
        // 2 buckets per tenant; idle after 10 s.
        let old = RateLimiter::new([], unnamed(limit(1.0, 1), 8), false);
        for s in ["stale", "live"] {
            assert!(old.allow(s, Some("t"), SEC));
        }
        for s in ["stale-2", "live-2"] {
            assert!(old.allow(s, None, SEC));
        }
        assert!(old.allow("live", Some("t"), 5 * SEC));
        assert!(old.allow("live-2", None, 5 * SEC));
        assert!(old.allow("overflowed", Some("t"), 5 * SEC), "t's overflow");
        assert_eq!(old.buckets_held(), 5);

        // At 12 s the buckets last used at 1 s have been full for 10 s.
        let now = 12 * SEC;
        let new = RateLimiter::new([], unnamed(limit(1.0, 1), 8), false);
        new.carry_over(&old, now);
        assert_eq!(new.buckets_held(), 3, "live, live-2 and t's overflow");
        let table = table(&new);
        let tat = |tenant, service| {
            let key = ServiceKeyRef { tenant, service };
            table.services[&key].tat.load(Ordering::Relaxed)
        };
        assert_eq!(tat(Some("t"), "live"), 6 * SEC, "its state came along");
        assert_eq!(tat(None, "live-2"), 6 * SEC);
        assert_eq!(
            table.tenants["t"].overflow.tat.load(Ordering::Relaxed),
            6 * SEC
        );
        assert_eq!(table.tenants["t"].services, 1);
    }

    #[test]
    fn reload_respects_the_new_bounds() {
        let old = RateLimiter::new([], unnamed(limit(1.0, 1), 100), false);
        for i in 0..20 {
            assert!(old.allow(&format!("s{i}"), Some("t"), SEC));
            assert!(old.allow(&format!("s{i}"), None, SEC));
        }
        let new = RateLimiter::new([("s0", limit(1.0, 1))], unnamed(limit(1.0, 1), 8), false);
        new.carry_over(&old, SEC);
        let table = table(&new);
        assert_eq!(table.services.len(), 8);
        assert_eq!(table.tenants["t"].services, 2, "a quarter of 8");
        assert!(
            !table.services.keys().any(|k| &*k.service == "s0"),
            "s0 is named now"
        );
    }
}
