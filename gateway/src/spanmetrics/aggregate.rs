//! The in-memory aggregation: every span of a request counted into sharded maps, read from the
//! wire index (no span is decoded), and taken out whole at each flush.
//!
//! A series is keyed by its attribute values joined with 0xFF, a byte UTF-8 never holds, so a
//! lookup builds the key in a buffer reused for the whole request and allocates only for a
//! series seen for the first time in the interval. The key picks one of `SHARDS` mutexes:
//! requests on different workers rarely meet on one.

pub use super::edge::ConnectionType;
use super::edge::{self, Found};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use weir_policy::{Buckets, SpanMetricsPolicy};
use weir_proto::wire::{self, TraceRequestView, WireValue};

/// Mutexes the maps are split over.
const SHARDS: usize = 16;
/// Joins the parts of a key.
const SEPARATOR: u8 = 0xFF;
/// The key of the overflow series and the overflow edge (no real key is empty).
const OVERFLOW: &[u8] = &[];
/// The service of spans whose resource has no `service.name` string, as SDKs name them.
const UNKNOWN_SERVICE: &str = "unknown_service";
/// OTLP `STATUS_CODE_ERROR`.
const STATUS_ERROR: i32 = 2;

type Map<V> = HashMap<Box<[u8]>, V, foldhash::fast::FixedState>;

/// A histogram being filled: count, sum and per-bucket counts, with the bounds it was created
/// with (a policy change applies from the next series, never within one).
#[derive(Debug, Clone)]
pub struct Histogram {
    /// Values counted (calls).
    pub count: u64,
    /// Their sum, in nanoseconds.
    pub sum_nanos: u128,
    /// Per bucket: `bounds.nanos.len() + 1` counts.
    pub buckets: Box<[u64]>,
    /// The bounds of `buckets`.
    pub bounds: Arc<Buckets>,
}

impl Histogram {
    fn new(bounds: &Arc<Buckets>) -> Self {
        Self {
            count: 0,
            sum_nanos: 0,
            buckets: vec![0; bounds.nanos.len() + 1].into(),
            bounds: bounds.clone(),
        }
    }

    /// Adds `other` in, when it has the same bounds; gives it back otherwise.
    fn merge(&mut self, other: Histogram) -> Option<Histogram> {
        if !Arc::ptr_eq(&self.bounds, &other.bounds) && self.bounds != other.bounds {
            return Some(other);
        }
        self.count += other.count;
        self.sum_nanos += other.sum_nanos;
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        None
    }

    #[inline]
    fn record(&mut self, nanos: u64) {
        self.count += 1;
        self.sum_nanos += u128::from(nanos);
        let i = self.bounds.index(nanos);
        if let Some(b) = self.buckets.get_mut(i) {
            *b += 1;
        }
    }
}

/// An edge's calls: latency histogram (its count is the calls) and failed calls.
#[derive(Debug, Clone)]
pub struct EdgeCalls {
    /// Latency of every call.
    pub latency: Histogram,
    /// Calls whose span has status ERROR.
    pub failed: u64,
}

/// One shard's maps.
#[derive(Default)]
struct Shard {
    series: Map<Histogram>,
    edges: Map<EdgeCalls>,
    over_sla: Map<u64>,
}

/// Everything aggregated over one interval, taken out by [`SpanMetrics::take`].
#[derive(Default, Debug)]
pub struct Interval {
    /// (service, span name, kind, status code) -> durations; `None` key parts: the overflow
    /// series.
    pub series: Vec<(Option<SeriesKey>, Histogram)>,
    /// (client, server, connection type) -> calls; `None`: the overflow edge.
    pub edges: Vec<(Option<EdgeKey>, EdgeCalls)>,
    /// (service, span name) -> root spans over their SLA; `None`: the overflow series.
    pub over_sla: Vec<(Option<(String, String)>, u64)>,
}

impl Interval {
    /// True when nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty() && self.edges.is_empty() && self.over_sla.is_empty()
    }
}

/// A span series' attributes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SeriesKey {
    /// `service.name`.
    pub service: String,
    /// `span.name`.
    pub name: String,
    /// OTLP span kind.
    pub kind: i32,
    /// OTLP status code.
    pub status: i32,
}

/// An edge's attributes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EdgeKey {
    /// The caller's `service.name`.
    pub client: String,
    /// The callee, by the edge rules.
    pub server: String,
    /// The kind of call.
    pub connection: u8,
}

impl EdgeKey {
    /// The connection type.
    pub fn connection_type(&self) -> ConnectionType {
        ConnectionType::from_byte(self.connection)
    }
}

/// The aggregation every request's spans are counted in before sampling.
pub struct SpanMetrics {
    shards: Box<[Mutex<Shard>]>,
    hasher: foldhash::fast::FixedState,
    /// Distinct series and edges this interval, for the caps.
    series_held: AtomicUsize,
    edges_held: AtomicUsize,
    sla_held: AtomicUsize,
}

impl Default for SpanMetrics {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: foldhash::fast::FixedState::with_seed(0x5eed),
            series_held: AtomicUsize::new(0),
            edges_held: AtomicUsize::new(0),
            sla_held: AtomicUsize::new(0),
        }
    }
}

/// A poisoned shard holds counts only: a panic elsewhere leaves them usable.
fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts into `map` under `key`, creating the entry (`new`) unless `held` reached `cap`, in
/// which case the overflow entry takes it. Returns whether the span went to the overflow.
#[inline]
fn count<V>(
    map: &mut Map<V>,
    key: &[u8],
    held: &AtomicUsize,
    cap: usize,
    new: impl FnOnce() -> V,
    add: impl FnOnce(&mut V),
) -> bool {
    if let Some(v) = map.get_mut(key) {
        add(v);
        return false;
    }
    let overflow = held.fetch_add(1, Ordering::Relaxed) >= cap;
    let key = if overflow {
        held.fetch_sub(1, Ordering::Relaxed);
        OVERFLOW
    } else {
        key
    };
    add(map.entry(key.into()).or_insert_with(new));
    overflow
}

impl SpanMetrics {
    fn shard(&self, key: &[u8]) -> &Mutex<Shard> {
        let h = self.hasher.hash_one(key) as usize;
        &self.shards[h % self.shards.len()]
    }

    /// Counts every span of a validated request `body` (indexed as `view`) under `policy`.
    pub fn observe(&self, policy: &SpanMetricsPolicy, body: &[u8], view: &TraceRequestView) {
        let services: Vec<&str> = view
            .resources
            .iter()
            .map(|r| {
                wire::resource_attributes(&r.head)
                    .filter_map(|(k, v)| match (k, v) {
                        ("service.name", WireValue::Str(s)) => Some(s),
                        _ => None,
                    })
                    .last()
                    .unwrap_or(UNKNOWN_SERVICE)
            })
            .collect();
        let mut key = Vec::with_capacity(128);
        let mut overflowed = 0u64;
        for entry in &view.spans {
            let Some(span) = body.get(entry.range()) else {
                continue;
            };
            let service = view
                .scopes
                .get(entry.scope as usize)
                .and_then(|s| services.get(s.resource as usize))
                .copied()
                .unwrap_or(UNKNOWN_SERVICE);
            let name = entry.name(span);
            let nanos = entry
                .end_time_unix_nano
                .saturating_sub(entry.start_time_unix_nano);

            key.clear();
            key.extend_from_slice(service.as_bytes());
            key.push(SEPARATOR);
            key.extend_from_slice(name);
            key.push(SEPARATOR);
            key.push(entry.kind.clamp(0, 255) as u8);
            key.push(entry.status_code.clamp(0, 255) as u8);
            overflowed += u64::from(count(
                &mut lock(self.shard(&key)).series,
                &key,
                &self.series_held,
                policy.max_series,
                || Histogram::new(&policy.duration_buckets),
                |h| h.record(nanos),
            ));

            if edge::is_call(entry.kind) {
                let mut found = Found::default();
                entry.scan_attributes(span, edge::wanted, |k, v| found.visit(k, v));
                if let Some((server, connection)) = found.callee(entry.kind) {
                    key.clear();
                    key.extend_from_slice(service.as_bytes());
                    key.push(SEPARATOR);
                    key.extend_from_slice(server);
                    key.push(SEPARATOR);
                    key.push(connection as u8);
                    let failed = u64::from(entry.status_code == STATUS_ERROR);
                    overflowed += u64::from(count(
                        &mut lock(self.shard(&key)).edges,
                        &key,
                        &self.edges_held,
                        policy.max_edges,
                        || EdgeCalls {
                            latency: Histogram::new(&policy.edge_latency_buckets),
                            failed: 0,
                        },
                        |e| {
                            e.latency.record(nanos);
                            e.failed += failed;
                        },
                    ));
                }
            }

            if entry.is_root
                && policy.has_root_sla()
                && let Ok(operation) = std::str::from_utf8(name)
                && let Some(sla) = policy.root_sla(service, operation)
                && nanos > sla
            {
                key.clear();
                key.extend_from_slice(service.as_bytes());
                key.push(SEPARATOR);
                key.extend_from_slice(name);
                // Held to the series cap: an operation over its SLA is also a series.
                overflowed += u64::from(count(
                    &mut lock(self.shard(&key)).over_sla,
                    &key,
                    &self.sla_held,
                    policy.max_series,
                    || 0,
                    |n| *n += 1,
                ));
            }
        }
        if overflowed > 0 {
            metrics::counter!("weir_span_metrics_overflow_spans_total").increment(overflowed);
        }
    }

    /// Takes everything aggregated since the last call, leaving the maps empty.
    pub fn take(&self) -> Interval {
        let mut out = Interval::default();
        for shard in &*self.shards {
            let taken = std::mem::take(&mut *lock(shard));
            out.series
                .extend(taken.series.into_iter().map(|(k, v)| (series_key(&k), v)));
            out.edges
                .extend(taken.edges.into_iter().map(|(k, v)| (edge_key(&k), v)));
            out.over_sla
                .extend(taken.over_sla.into_iter().map(|(k, v)| (sla_key(&k), v)));
        }
        // Spans counted between a shard's take and here count against the next interval's
        // cap too: it errs towards the overflow series, never past the cap.
        self.series_held.store(0, Ordering::Relaxed);
        self.edges_held.store(0, Ordering::Relaxed);
        self.sla_held.store(0, Ordering::Relaxed);
        out.series.sort_by(|a, b| a.0.cmp(&b.0));
        out.edges.sort_by(|a, b| a.0.cmp(&b.0));
        out.over_sla.sort_by(|a, b| a.0.cmp(&b.0));
        // Each shard has its own overflow entry: one series each, once merged.
        merge_overflow(&mut out.series, |a, b| a.merge(b));
        merge_overflow(&mut out.edges, |a, b| {
            let failed = b.failed;
            match a.latency.merge(b.latency) {
                None => {
                    a.failed += failed;
                    None
                }
                Some(latency) => Some(EdgeCalls { latency, failed }),
            }
        });
        merge_overflow(&mut out.over_sla, |a, b| {
            *a += b;
            None
        });
        out
    }
}

/// Merges the overflow entries (`None` keys, sorted first) of `entries` into the first one;
/// `merge` gives back what it could not take (a histogram of other bounds, after a policy
/// change), which stays a separate entry.
fn merge_overflow<K, V>(entries: &mut Vec<(Option<K>, V)>, merge: impl Fn(&mut V, V) -> Option<V>) {
    let overflows = entries.iter().take_while(|(k, _)| k.is_none()).count();
    if overflows < 2 {
        return;
    }
    let mut rest = entries
        .drain(1..overflows)
        .map(|(_, v)| v)
        .collect::<Vec<_>>();
    let mut kept = Vec::new();
    for v in rest.drain(..) {
        if let Some(v) = merge(&mut entries[0].1, v) {
            kept.push((None, v));
        }
    }
    entries.splice(1..1, kept);
}

/// The text parts of a key and its trailing bytes.
fn split_key(key: &[u8]) -> (String, String, &[u8]) {
    let mut parts = key.splitn(3, |b| *b == SEPARATOR);
    let a = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let b = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    (a, b, parts.next().unwrap_or_default())
}

fn series_key(key: &[u8]) -> Option<SeriesKey> {
    if key == OVERFLOW {
        return None;
    }
    let (service, name, tail) = split_key(key);
    Some(SeriesKey {
        service,
        name,
        kind: tail.first().copied().map_or(0, i32::from),
        status: tail.get(1).copied().map_or(0, i32::from),
    })
}

fn edge_key(key: &[u8]) -> Option<EdgeKey> {
    if key == OVERFLOW {
        return None;
    }
    let (client, server, tail) = split_key(key);
    Some(EdgeKey {
        client,
        server,
        connection: tail.first().copied().unwrap_or(0),
    })
}

fn sla_key(key: &[u8]) -> Option<(String, String)> {
    if key == OVERFLOW {
        return None;
    }
    let mut parts = key.splitn(2, |b| *b == SEPARATOR);
    let service = String::from_utf8_lossy(parts.next()?).into_owned();
    let name = String::from_utf8_lossy(parts.next()?).into_owned();
    Some((service, name))
}
