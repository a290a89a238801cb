//! The rolling windows: the gateways' span metrics folded into 5-second slots per operation
//! and per edge, kept for 15 minutes, and summed over the last 1, 5 or 15 minutes on request.
//! Every gateway flushes deltas, so a slot is the sum of what all gateways counted in it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// The width of a slot, in seconds: finer than any flush interval worth using.
const SLOT_SECS: u64 = 5;
/// The longest window served, in seconds; older slots are freed.
pub const RETENTION_SECS: u64 = 15 * 60;

/// A window the API serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// The last minute.
    OneMinute,
    /// The last 5 minutes.
    FiveMinutes,
    /// The last 15 minutes.
    FifteenMinutes,
}

impl Window {
    /// Every window, shortest first.
    pub const ALL: [Window; 3] = [
        Window::OneMinute,
        Window::FiveMinutes,
        Window::FifteenMinutes,
    ];

    /// `1m`, `5m` or `15m`.
    pub fn label(self) -> &'static str {
        match self {
            Self::OneMinute => "1m",
            Self::FiveMinutes => "5m",
            Self::FifteenMinutes => "15m",
        }
    }

    /// The window written as `label` gives it.
    pub fn parse(text: &str) -> Option<Window> {
        Self::ALL.into_iter().find(|w| w.label() == text)
    }

    /// Its length in seconds.
    pub fn seconds(self) -> u64 {
        match self {
            Self::OneMinute => 60,
            Self::FiveMinutes => 300,
            Self::FifteenMinutes => RETENTION_SECS,
        }
    }
}

/// An explicit-bucket histogram as the gateways send it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Buckets {
    /// Upper bounds, in the metric's unit.
    pub bounds: Vec<f64>,
    /// `bounds.len() + 1` counts.
    pub counts: Vec<u64>,
    /// The sum of the values.
    pub sum: f64,
}

impl Buckets {
    /// Adds `other` in. Counts of other bounds (a policy changed the buckets) are not mixed
    /// in: the sum still is, and the histogram keeps the bounds it has.
    pub fn add(&mut self, other: &Buckets) {
        self.sum += other.sum;
        if self.counts.is_empty() {
            self.bounds = other.bounds.clone();
            self.counts = other.counts.clone();
        } else if self.bounds == other.bounds && self.counts.len() == other.counts.len() {
            for (a, b) in self.counts.iter_mut().zip(&other.counts) {
                *a += b;
            }
        }
    }

    /// The `q` quantile (0 to 1), interpolated linearly within its bucket (as Prometheus'
    /// `histogram_quantile`); the last, unbounded bucket answers its lower bound. `None`
    /// when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c > 0 && (seen + c) as f64 >= rank {
                let lower = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                let Some(&upper) = self.bounds.get(i) else {
                    return Some(lower);
                };
                let within = (rank - seen as f64) / c as f64;
                return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
            }
            seen += c;
        }
        self.bounds.last().copied()
    }
}

/// An operation: a span name of a service, of one span kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OperationKey {
    /// `service.name`.
    pub service: String,
    /// `span.name`.
    pub name: String,
    /// `span.kind`, as written (`SPAN_KIND_SERVER`...).
    pub kind: String,
}

/// An edge: a caller, a callee and how it calls.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EdgeKey {
    /// The calling service.
    pub client: String,
    /// The called one.
    pub server: String,
    /// `""`, `database` or `messaging_system`.
    pub connection_type: String,
}

/// An operation's counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OperationStats {
    /// Spans.
    pub calls: u64,
    /// Spans with status ERROR.
    pub errors: u64,
    /// Durations, milliseconds.
    pub duration: Buckets,
    /// Root spans over their SLA.
    pub sla_exceeded: u64,
}

/// An edge's counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EdgeStats {
    /// Calls.
    pub calls: u64,
    /// Failed calls.
    pub failed: u64,
    /// Latency seen by the caller, seconds.
    pub latency: Buckets,
}

/// One slot's worth of everything.
#[derive(Default)]
struct Slot {
    operations: HashMap<OperationKey, OperationStats>,
    edges: HashMap<EdgeKey, EdgeStats>,
    /// Spans counted in gateways' overflow series.
    overflow_calls: u64,
}

/// What one data point adds, as the reader decodes it.
pub enum Fold<'a> {
    /// Calls of a span series.
    Calls {
        /// The operation.
        key: OperationKey,
        /// Whether the series' status is ERROR.
        error: bool,
        /// The count.
        calls: u64,
    },
    /// Durations of a span series.
    Duration(OperationKey, &'a Buckets),
    /// Root spans over their SLA.
    SlaExceeded(OperationKey, u64),
    /// Calls of an edge.
    EdgeCalls(EdgeKey, u64),
    /// Failed calls of an edge.
    EdgeFailed(EdgeKey, u64),
    /// Latency of an edge.
    EdgeLatency(EdgeKey, &'a Buckets),
    /// Spans of an overflow series.
    Overflow(u64),
}

/// Everything summed over one window.
#[derive(Default, Debug)]
pub struct Totals {
    /// Per operation.
    pub operations: BTreeMap<OperationKey, OperationStats>,
    /// Per edge.
    pub edges: BTreeMap<EdgeKey, EdgeStats>,
    /// Spans in overflow series.
    pub overflow_calls: u64,
}

/// The slots, shared by the reader (writes) and the API (reads).
#[derive(Default)]
pub struct Windows {
    slots: Mutex<BTreeMap<u64, Slot>>,
}

impl Windows {
    /// Adds a data point of time `unix_secs` (its end); points older than the retention
    /// (relative to `now_secs`) or from the future are left out.
    pub fn fold(&self, unix_secs: u64, now_secs: u64, fold: Fold<'_>) -> bool {
        if unix_secs + RETENTION_SECS < now_secs || unix_secs > now_secs + 60 {
            return false;
        }
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = slots.entry(unix_secs - unix_secs % SLOT_SECS).or_default();
        match fold {
            Fold::Calls { key, error, calls } => {
                let op = slot.operations.entry(key).or_default();
                op.calls += calls;
                if error {
                    op.errors += calls;
                }
            }
            Fold::Duration(key, b) => slot.operations.entry(key).or_default().duration.add(b),
            Fold::SlaExceeded(key, n) => slot.operations.entry(key).or_default().sla_exceeded += n,
            Fold::EdgeCalls(key, n) => slot.edges.entry(key).or_default().calls += n,
            Fold::EdgeFailed(key, n) => slot.edges.entry(key).or_default().failed += n,
            Fold::EdgeLatency(key, b) => slot.edges.entry(key).or_default().latency.add(b),
            Fold::Overflow(n) => slot.overflow_calls += n,
        }
        true
    }

    /// Frees the slots older than the retention.
    pub fn expire(&self, now_secs: u64) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let keep_from = now_secs.saturating_sub(RETENTION_SECS + SLOT_SECS);
        *slots = slots.split_off(&keep_from);
    }

    /// The sums over `window` ending at `now_secs`, of the operations and edges `filter`
    /// keeps (by the services they name).
    pub fn totals(&self, window: Window, now_secs: u64, filter: impl Fn(&str) -> bool) -> Totals {
        let from = now_secs.saturating_sub(window.seconds());
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Totals::default();
        for slot in slots.range(from - from % SLOT_SECS..).map(|(_, s)| s) {
            out.overflow_calls += slot.overflow_calls;
            for (k, s) in &slot.operations {
                if !filter(&k.service) {
                    continue;
                }
                let o = out.operations.entry(k.clone()).or_default();
                o.calls += s.calls;
                o.errors += s.errors;
                o.sla_exceeded += s.sla_exceeded;
                o.duration.add(&s.duration);
            }
            for (k, s) in &slot.edges {
                if !(filter(&k.client) || filter(&k.server)) {
                    continue;
                }
                let e = out.edges.entry(k.clone()).or_default();
                e.calls += s.calls;
                e.failed += s.failed;
                e.latency.add(&s.latency);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(service: &str, name: &str) -> OperationKey {
        OperationKey {
            service: service.into(),
            name: name.into(),
            kind: "SPAN_KIND_SERVER".into(),
        }
    }

    fn buckets(counts: &[u64]) -> Buckets {
        Buckets {
            bounds: vec![10.0, 100.0],
            counts: counts.to_vec(),
            sum: 1.0,
        }
    }

    #[test]
    fn windows_sum_the_slots_they_cover() {
        let w = Windows::default();
        let now = 10_000;
        for (age, calls) in [(10, 1), (200, 10), (700, 100), (2000, 1000)] {
            let key = op("a", "x");
            let counted = w.fold(
                now - age,
                now,
                Fold::Calls {
                    key,
                    error: age == 10,
                    calls,
                },
            );
            assert_eq!(counted, age < RETENTION_SECS);
            w.fold(
                now - age,
                now,
                Fold::Duration(op("a", "x"), &buckets(&[calls, 0, 1])),
            );
        }
        let calls = |win| w.totals(win, now, |_| true).operations[&op("a", "x")].calls;
        assert_eq!(calls(Window::OneMinute), 1);
        assert_eq!(calls(Window::FiveMinutes), 11);
        assert_eq!(calls(Window::FifteenMinutes), 111);
        let t = w.totals(Window::FifteenMinutes, now, |_| true);
        let stats = &t.operations[&op("a", "x")];
        assert_eq!(stats.errors, 1);
        assert_eq!(stats.duration.counts, vec![111, 0, 3]);
        assert!(
            w.totals(Window::OneMinute, now, |s| s == "b")
                .operations
                .is_empty()
        );
        w.expire(now + RETENTION_SECS);
        assert!(
            w.totals(Window::FifteenMinutes, now, |_| true)
                .operations
                .is_empty()
        );
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let b = Buckets {
            bounds: vec![10.0, 20.0],
            counts: vec![50, 50, 0],
            sum: 0.0,
        };
        assert_eq!(b.quantile(0.5), Some(10.0));
        assert_eq!(b.quantile(0.75), Some(15.0));
        assert_eq!(b.quantile(0.25), Some(5.0));
        let tail = Buckets {
            bounds: vec![10.0],
            counts: vec![0, 4],
            sum: 0.0,
        };
        assert_eq!(tail.quantile(0.99), Some(10.0));
        assert_eq!(Buckets::default().quantile(0.5), None);
    }

    #[test]
    fn histograms_of_other_bounds_keep_their_counts_apart() {
        let mut a = buckets(&[1, 2, 3]);
        a.add(&Buckets {
            bounds: vec![5.0],
            counts: vec![7, 7],
            sum: 2.0,
        });
        assert_eq!((a.counts, a.sum), (vec![1, 2, 3], 3.0));
    }
}
