//! The tail router's view of the decision windows: every gateway's records of a window,
//! merged with a bitwise OR into one filter per window (per parameter set: a policy change
//! mid-window gives a second filter, and a trace is kept when either holds it), and the
//! consumer that reads `weir.tail.decisions` from the beginning of its retention.
//!
//! Which windows decide a hot record: the record's timestamp `t` falls in window `W(t)`; the
//! router asks `W(t)` and its two neighbours (every window that overlaps `t` ± one window
//! length), because the span that marked the trace may have passed a gateway up to a window
//! earlier or later than this span was produced.

use rdkafka::Message;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{Consumer, StreamConsumer};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use weir_config::tail_router::RouterDecisions;
use weir_policy::{Threshold, in_baseline};
use weir_proto::decision::filter::WindowFilter;
use weir_proto::decision::{self, DecisionLimits, Payload, signature, unix_millis};

/// What the windows say about a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A window's filter holds it (a tail rule marked it, or a false positive).
    Marked,
    /// It is in the baseline share.
    Baseline,
    /// Windows exist for its time, and none holds it.
    Unmarked,
    /// No decision record covers its time (too old, or no gateway published yet).
    NoWindow,
}

impl Verdict {
    /// Whether the record goes to the cold topic.
    pub fn keep(self) -> bool {
        matches!(self, Verdict::Marked | Verdict::Baseline)
    }

    /// A metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Marked => "kept_marked",
            Verdict::Baseline => "kept_baseline",
            Verdict::Unmarked => "passed",
            Verdict::NoWindow => "passed_no_window",
        }
    }
}

/// One window's merged filter for one parameter set.
struct MergedWindow {
    filter: WindowFilter,
    baseline: Option<u64>,
    gateways: BTreeSet<String>,
    sealed_by: BTreeSet<String>,
}

/// What the store accepts of a decision record ([`TailRouterConfig::decisions`]).
///
/// [`TailRouterConfig::decisions`]: weir_config::tail_router::TailRouterConfig
#[derive(Clone, Copy, Debug)]
pub struct StoreLimits {
    /// Bounds of one record's filter, checked before its payload is read.
    pub record: DecisionLimits,
    /// How far past now a window may start, in milliseconds.
    pub max_window_lead_millis: u64,
    /// Filters (parameter sets) per window.
    pub max_filters_per_window: usize,
    /// Filter bytes held over all windows.
    pub max_total_bytes: u64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self::from_config(&RouterDecisions::default())
    }
}

impl StoreLimits {
    /// The limits the router's `decisions` section sets.
    pub fn from_config(d: &RouterDecisions) -> Self {
        Self {
            record: DecisionLimits {
                max_window_millis: d.max_window_length.as_millis() as u64,
                max_filter_bytes: d.max_filter_bytes.0,
                max_hashes: d.max_hashes,
                max_expected_items: d.max_expected_items,
            },
            max_window_lead_millis: d.max_window_lead.as_millis() as u64,
            max_filters_per_window: d.max_filters_per_window,
            max_total_bytes: d.max_total_bytes.0,
        }
    }
}

/// The merged decision windows, by start time.
#[derive(Default)]
pub struct DecisionStore {
    windows: RwLock<BTreeMap<u64, Vec<MergedWindow>>>,
    /// The longest window length seen, to bound lookups.
    longest: std::sync::atomic::AtomicU64,
    limits: StoreLimits,
    /// Filter bytes held over all windows.
    total_bytes: std::sync::atomic::AtomicU64,
}

/// Why a decision record was not merged.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// It could not be decoded.
    Malformed(String),
    /// Its window ended before the retention cutoff.
    Expired,
    /// A field is past a configured bound (`decisions.*`).
    OutOfBounds(String),
}

impl Refused {
    /// The metric label of `weir_tail_router_decision_records_total{result}`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Refused::Malformed(_) => "refused",
            Refused::Expired => "expired",
            Refused::OutOfBounds(_) => "out_of_bounds",
        }
    }
}

impl DecisionStore {
    /// A store that merges records within `limits`.
    pub fn new(limits: StoreLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Merges one decision record read at `now_millis`. `cutoff_millis`: windows ending
    /// before it are not kept.
    pub fn apply(&self, record: &[u8], now_millis: u64, cutoff_millis: u64) -> Result<(), Refused> {
        let (h, payload) =
            decision::decode_within(record, &self.limits.record).map_err(|e| match e {
                decision::DecisionError::OutOfBounds(why) => Refused::OutOfBounds(why),
                other => Refused::Malformed(other.to_string()),
            })?;
        if h.window_start_millis.saturating_add(h.window_millis) < cutoff_millis {
            return Err(Refused::Expired);
        }
        // A window from the future would never be freed (its end is never before the cutoff).
        let latest = now_millis.saturating_add(self.limits.max_window_lead_millis);
        if h.window_start_millis > latest {
            return Err(Refused::OutOfBounds(format!(
                "window start {} is more than decisions.max_window_lead ({} ms) past now ({now_millis})",
                h.window_start_millis, self.limits.max_window_lead_millis
            )));
        }
        let params = h.filter_params();
        let mut windows = self.windows.write().unwrap_or_else(|p| p.into_inner());
        let list = windows.entry(h.window_start_millis).or_default();
        let at = match list.iter().position(|w| *w.filter.params() == params) {
            Some(i) => i,
            None => {
                if list.len() >= self.limits.max_filters_per_window {
                    return Err(Refused::OutOfBounds(format!(
                        "window {} has {} filters already (decisions.max_filters_per_window)",
                        h.window_start_millis,
                        list.len()
                    )));
                }
                let total = self.total_bytes.load(std::sync::atomic::Ordering::Relaxed);
                if total.saturating_add(params.bitmap_bytes) > self.limits.max_total_bytes {
                    if list.is_empty() {
                        windows.remove(&h.window_start_millis);
                    }
                    return Err(Refused::OutOfBounds(format!(
                        "a filter of {} bytes over the {total} held would pass decisions.max_total_bytes ({})",
                        params.bitmap_bytes, self.limits.max_total_bytes
                    )));
                }
                let Some(filter) = WindowFilter::new(&params) else {
                    if list.is_empty() {
                        windows.remove(&h.window_start_millis);
                    }
                    return Err(Refused::Malformed(
                        "the filter parameters cannot be built".into(),
                    ));
                };
                self.total_bytes
                    .fetch_add(params.bitmap_bytes, std::sync::atomic::Ordering::Relaxed);
                list.push(MergedWindow {
                    filter,
                    baseline: h.baseline_rejection,
                    gateways: BTreeSet::new(),
                    sealed_by: BTreeSet::new(),
                });
                list.len() - 1
            }
        };
        let w = &mut list[at];
        let merged = match payload {
            Payload::Dense(bits) => w.filter.merge(h.segment_offset, bits),
            Payload::Sparse(bytes) => w
                .filter
                .set_positions(decision::sparse_positions(h.segment_offset, bytes)),
        };
        if !merged {
            return Err(Refused::Malformed(
                "the segment runs past the filter".into(),
            ));
        }
        if w.baseline.is_none() {
            w.baseline = h.baseline_rejection;
        }
        if h.sealed {
            w.sealed_by.insert(h.gateway_id.clone());
        }
        w.gateways.insert(h.gateway_id);
        self.longest
            .fetch_max(h.window_millis, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// What the windows around `ts_millis` say about `trace_id`.
    pub fn verdict(&self, trace_id: &[u8; 16], ts_millis: u64) -> Verdict {
        let longest = self.longest.load(std::sync::atomic::Ordering::Relaxed);
        if longest == 0 {
            return Verdict::NoWindow;
        }
        let windows = self.windows.read().unwrap_or_else(|p| p.into_inner());
        let from = ts_millis.saturating_sub(longest.saturating_mul(2));
        let to = ts_millis.saturating_add(longest);
        let mut any = false;
        let mut baseline = false;
        for (&start, list) in windows.range(from..=to) {
            for w in list {
                let len = w.filter.params().window_millis;
                // W(t) and its neighbours: windows overlapping [t - len, t + len].
                let overlaps = start <= ts_millis.saturating_add(len)
                    && start.saturating_add(len.saturating_mul(2)) > ts_millis;
                if !overlaps {
                    continue;
                }
                any = true;
                if w.filter.contains(trace_id) {
                    return Verdict::Marked;
                }
                baseline |= in_baseline(w.baseline.and_then(Threshold::from_rejection), trace_id);
            }
        }
        match (any, baseline) {
            (_, true) => Verdict::Baseline,
            (true, false) => Verdict::Unmarked,
            (false, false) => Verdict::NoWindow,
        }
    }

    /// Frees the windows that ended before `cutoff_millis` and sets the window gauges;
    /// returns how many are held.
    pub fn free_before(&self, cutoff_millis: u64) -> usize {
        let mut windows = self.windows.write().unwrap_or_else(|p| p.into_inner());
        windows.retain(|&start, list| {
            list.retain(|w| start.saturating_add(w.filter.params().window_millis) >= cutoff_millis);
            !list.is_empty()
        });
        let held: usize = windows.values().map(Vec::len).sum();
        metrics::gauge!("weir_tail_router_windows_held").set(held as f64);
        let bytes: u64 = windows
            .values()
            .flatten()
            .map(|w| w.filter.params().bitmap_bytes)
            .sum();
        self.total_bytes
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
        metrics::gauge!("weir_tail_router_window_bytes").set(bytes as f64);
        if let Some((_, newest)) = windows.last_key_value() {
            let fill = newest
                .iter()
                .map(|w| w.filter.fill_ratio())
                .fold(0.0, f64::max);
            metrics::gauge!("weir_tail_router_window_fill_ratio").set(fill);
        }
        held
    }

    /// The gateways that published the window starting at `start`, and those that sealed it.
    pub fn gateways(&self, start: u64) -> (Vec<String>, Vec<String>) {
        let windows = self.windows.read().unwrap_or_else(|p| p.into_inner());
        let mut all = BTreeSet::new();
        let mut sealed = BTreeSet::new();
        for w in windows.get(&start).into_iter().flatten() {
            all.extend(w.gateways.iter().cloned());
            sealed.extend(w.sealed_by.iter().cloned());
        }
        (all.into_iter().collect(), sealed.into_iter().collect())
    }
}

/// The partitions of the decisions topic still to be read up to, with the high watermark
/// to reach: those that hold records. A partition whose records all expired (low watermark
/// equal to the high one) delivers nothing and counts as read.
pub fn partitions_to_catch_up(watermarks: &[(i32, i64, i64)]) -> BTreeMap<i32, i64> {
    watermarks
        .iter()
        .filter(|(_, low, high)| high > low)
        .map(|&(p, _, high)| (p, high))
        .collect()
}

/// True when every partition that holds records (`watermarks`: partition, low, high) has
/// been read up to its high watermark (`positions`: the next offset to read, by partition).
pub fn read_up_to(watermarks: &[(i32, i64, i64)], positions: &BTreeMap<i32, i64>) -> bool {
    partitions_to_catch_up(watermarks)
        .iter()
        .all(|(p, high)| positions.get(p).is_some_and(|at| at >= high))
}

/// Why the decision feed is stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stale {
    /// The decisions topic's watermarks cannot be read (the broker does not answer the
    /// decisions consumer, or the topic is gone), or reading its records failed.
    Unreachable,
    /// The records are readable but the reader has not read up to the high watermarks.
    Behind,
}

impl Stale {
    /// The `reason` label of `weir_tail_router_paused` and `weir_tail_router_pauses_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stale::Unreachable => "decisions_unreachable",
            Stale::Behind => "decisions_behind",
        }
    }

    /// What `/readyz` says while the hot loop is paused for this reason.
    pub fn readiness_reason(self) -> &'static str {
        match self {
            Stale::Unreachable => {
                "paused: the decisions topic cannot be read, so no hot record is decided until it can"
            }
            Stale::Behind => {
                "paused: the decisions reader is behind the decisions topic, so no hot record is decided until it catches up"
            }
        }
    }
}

/// How current the merged windows are, shared by the decisions reader (which advances it)
/// and the hot loop (which decides only records the windows are current for).
#[derive(Debug, Default)]
pub struct Freshness {
    /// Every decision record acknowledged before this time (ms since the epoch) is merged;
    /// 0 until the reader first caught up.
    current_to_millis: AtomicU64,
    /// The last watermark check or read failed.
    unreachable: AtomicBool,
}

impl Freshness {
    /// The time up to which every decision record is merged (0: not caught up yet).
    pub fn current_to(&self) -> u64 {
        self.current_to_millis.load(Ordering::Acquire)
    }

    /// Notes that every record acknowledged before `as_of_millis` is merged.
    pub fn mark_current(&self, as_of_millis: u64) {
        self.current_to_millis
            .fetch_max(as_of_millis, Ordering::AcqRel);
        self.unreachable.store(false, Ordering::Release);
    }

    /// Notes whether the last check (or read) could reach the decisions topic.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.unreachable.store(unreachable, Ordering::Release);
    }

    /// Why the feed is stale at `now_millis`, when it has not been current for longer than
    /// `stale_after_millis`.
    pub fn stale(&self, now_millis: u64, stale_after_millis: u64) -> Option<Stale> {
        if now_millis.saturating_sub(self.current_to()) <= stale_after_millis {
            return None;
        }
        Some(if self.unreachable.load(Ordering::Acquire) {
            Stale::Unreachable
        } else {
            Stale::Behind
        })
    }
}

/// How often the reader compares its positions with the decisions topic's high watermarks:
/// a hot record waits at most about this long past its due time in normal operation.
const FRESHNESS_CHECK: Duration = Duration::from_millis(500);
/// How long one partition's watermarks may take before the topic counts as unreachable.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(2);

/// The decisions reader's settings.
pub struct DecisionsReader {
    /// The decisions topic.
    pub topic: String,
    /// Where records are merged.
    pub store: std::sync::Arc<DecisionStore>,
    /// Windows that ended longer ago are freed.
    pub retention: Duration,
    /// When set, only records signed with it are merged.
    pub signing_key: Option<Vec<u8>>,
    /// Advanced each time the reader finds itself at the high watermarks.
    pub freshness: std::sync::Arc<Freshness>,
}

/// Whether a record's signature header verifies under `key`: the metric label of the
/// refusal when it does not.
fn signature_refusal(
    key: &[u8],
    m: &rdkafka::message::BorrowedMessage<'_>,
) -> Option<&'static str> {
    use rdkafka::message::Headers;
    let signature = m.headers().and_then(|hs| {
        hs.iter()
            .find(|h| h.key == signature::SIGNATURE_HEADER)
            .and_then(|h| h.value)
    });
    match signature {
        None => Some("unsigned"),
        Some(sig) if signature::verify(key, m.payload().unwrap_or_default(), sig) => None,
        Some(_) => Some("bad_signature"),
    }
}

/// The high watermarks of `partitions` (partition, low, high) and the time taken before
/// them: every record acknowledged before it is below them.
pub type WatermarksAt = (u64, Vec<(i32, i64, i64)>);

/// Reads the high watermarks of `partitions`, then the consumer's positions (the next offset
/// to read, by partition). Blocking.
fn watermarks_and_positions(
    consumer: &StreamConsumer<super::RouterContext>,
    topic: &str,
    partitions: &[i32],
) -> Result<(WatermarksAt, BTreeMap<i32, i64>), rdkafka::error::KafkaError> {
    let as_of = unix_millis();
    let mut watermarks = Vec::with_capacity(partitions.len());
    for &p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, WATERMARK_TIMEOUT)?;
        watermarks.push((p, low, high));
    }
    let positions = consumer
        .position()?
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(at) => Some((e.partition(), at)),
            _ => None,
        })
        .collect();
    Ok(((as_of, watermarks), positions))
}

/// Watermarks read but not yet reached, oldest first. A reader that keeps up reaches each
/// by the next check, although gateways publish between a check and the read of a record;
/// while it is behind, only the newest `MAX_PENDING_CHECKS` are kept (reaching a newer one
/// implies the older ones).
#[derive(Default)]
pub struct PendingChecks(std::collections::VecDeque<WatermarksAt>);

/// How many watermark checks wait to be reached.
const MAX_PENDING_CHECKS: usize = 16;

impl PendingChecks {
    /// Adds the watermarks just read, then takes every check `positions` reached: the
    /// newest one's time, when any was reached.
    pub fn reached(
        &mut self,
        checked: WatermarksAt,
        positions: &BTreeMap<i32, i64>,
    ) -> Option<u64> {
        self.0.push_back(checked);
        if self.0.len() > MAX_PENDING_CHECKS {
            self.0.pop_front();
        }
        let mut reached = None;
        while let Some((as_of, marks)) = self.0.front() {
            if !read_up_to(marks, positions) {
                break;
            }
            reached = Some(*as_of);
            self.0.pop_front();
        }
        reached
    }
}

/// Reads every partition of the decisions topic from its beginning into the store, forever.
/// Every `FRESHNESS_CHECK` it reads the high watermarks, and advances `freshness` to the
/// time of the newest watermarks its positions reached (the first time: caught up).
pub async fn consume(
    consumer: StreamConsumer<super::RouterContext>,
    reader: DecisionsReader,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let DecisionsReader {
        topic,
        store,
        retention,
        signing_key,
        freshness,
    } = reader;
    let consumer = std::sync::Arc::new(consumer);
    // Partitions, read off the async workers.
    let c = consumer.clone();
    let t = topic.clone();
    let partitions: Vec<i32> = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let md = c.fetch_metadata(Some(&t), Duration::from_secs(10))?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .filter(|m| m.name() == t)
            .flat_map(|m| m.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            anyhow::bail!("the decisions topic `{t}` has no partitions (does it exist?)");
        }
        Ok(partitions)
    })
    .await??;
    let partitions = std::sync::Arc::new(partitions);
    let mut tpl = TopicPartitionList::new();
    for p in partitions.iter() {
        tpl.add_partition_offset(&topic, *p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    tracing::info!(
        topic,
        partitions = tpl.count(),
        signed = signing_key.is_some(),
        "reading decision records from the beginning"
    );
    // The check runs in this loop, between records, so that a position it reads is of
    // records already merged.
    let mut check = tokio::time::interval(FRESHNESS_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_freed = unix_millis();
    let mut last_state: Option<Stale> = Some(Stale::Behind);
    let mut pending = PendingChecks::default();
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = check.tick() => {
                let now = unix_millis();
                if now.saturating_sub(last_freed) >= 5000 {
                    last_freed = now;
                    store.free_before(cutoff(retention));
                }
                let (c, t, parts) = (consumer.clone(), topic.clone(), partitions.clone());
                let checked = tokio::task::spawn_blocking(move || watermarks_and_positions(&c, &t, &parts)).await;
                let state = match checked {
                    Ok(Ok((marks, positions))) => match pending.reached(marks, &positions) {
                        Some(as_of) => {
                            if freshness.current_to() == 0 {
                                tracing::info!("decision records caught up");
                            }
                            freshness.mark_current(as_of);
                            None
                        }
                        None => {
                            freshness.set_unreachable(false);
                            Some(Stale::Behind)
                        }
                    },
                    Ok(Err(e)) => {
                        if last_state != Some(Stale::Unreachable) {
                            tracing::warn!(error = %e, topic, "cannot read the decisions topic's watermarks");
                        }
                        freshness.set_unreachable(true);
                        Some(Stale::Unreachable)
                    }
                    Err(e) => return Err(anyhow::anyhow!("the decisions check panicked: {e}")),
                };
                if last_state == Some(Stale::Unreachable) && state != Some(Stale::Unreachable) {
                    tracing::info!(topic, "the decisions topic answers again");
                }
                last_state = state;
                continue;
            }
            m = consumer.recv() => m,
        };
        let now = unix_millis();
        let cutoff = cutoff_at(now, retention);
        match msg {
            Ok(m) => {
                let refusal = signing_key
                    .as_deref()
                    .and_then(|key| signature_refusal(key, &m));
                let label = match refusal {
                    Some(label) => {
                        tracing::warn!(
                            partition = m.partition(),
                            offset = m.offset(),
                            why = label,
                            "decision record skipped: its signature does not verify with decisions.signing_key"
                        );
                        label
                    }
                    None => {
                        let result = match m.payload() {
                            Some(p) => store.apply(p, now, cutoff),
                            None => Err(Refused::Malformed("empty record".into())),
                        };
                        match &result {
                            Ok(()) => "merged",
                            Err(Refused::Expired) => "expired",
                            Err(Refused::Malformed(why) | Refused::OutOfBounds(why)) => {
                                tracing::warn!(
                                    partition = m.partition(),
                                    offset = m.offset(),
                                    why,
                                    "decision record refused"
                                );
                                result.as_ref().err().map_or("refused", Refused::as_str)
                            }
                        }
                    }
                };
                metrics::counter!("weir_tail_router_decision_records_total", "result" => label)
                    .increment(1);
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading decision records");
                freshness.set_unreachable(true);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Windows that ended before this (ms since the epoch) are freed.
pub fn cutoff(retention: Duration) -> u64 {
    cutoff_at(unix_millis(), retention)
}

/// The cutoff at `now_millis`.
fn cutoff_at(now_millis: u64, retention: Duration) -> u64 {
    now_millis.saturating_sub(retention.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::decision::DecisionHeader;
    use weir_proto::decision::filter::{
        FilterParams, bitmap_bytes, expand_seed, for_each_new_position, hash_count,
    };

    const LEN: u64 = 10_000;
    /// The router's clock in the tests: after every window they use.
    const NOW: u64 = 1_000_000;

    fn params(seed: u64) -> FilterParams {
        let n = 1000;
        let bytes = bitmap_bytes(n, 0.001);
        FilterParams {
            window_millis: LEN,
            expected_traces: n,
            bitmap_bytes: bytes,
            hashes: hash_count(bytes * 8, n),
            seed: expand_seed(seed),
        }
    }

    /// A gateway's record of window `start` holding `ids`, in `segments` pieces.
    fn records(
        start: u64,
        gateway: &str,
        ids: &[[u8; 16]],
        seed: u64,
        baseline: Option<u64>,
        segments: usize,
    ) -> Vec<Vec<u8>> {
        let p = params(seed);
        let mut f = WindowFilter::new(&p).unwrap();
        for id in ids {
            f.insert(id);
        }
        let size = f.bits().len().div_ceil(segments);
        f.bits()
            .chunks(size)
            .enumerate()
            .map(|(i, seg)| {
                let h = DecisionHeader {
                    hashes: f.hashes(),
                    item_estimate: ids.len() as u64,
                    baseline_rejection: baseline,
                    sequence: i as u64,
                    segment_offset: (i * size) as u64,
                    ..DecisionHeader::for_window(&p, start, gateway)
                };
                let mut out = Vec::new();
                decision::encode(&h, Payload::Dense(seg), &mut out);
                out
            })
            .collect()
    }

    fn id(n: u8) -> [u8; 16] {
        let mut id = [n; 16];
        id[9..].copy_from_slice(&[0; 7]); // randomness 0: never in a baseline below 1
        id
    }

    #[test]
    fn windows_of_all_gateways_merge() {
        let store = DecisionStore::default();
        for r in records(100_000, "a", &[id(1)], 1, None, 3) {
            store.apply(&r, NOW, 0).unwrap();
        }
        for r in records(100_000, "b", &[id(2)], 1, None, 1) {
            store.apply(&r, NOW, 0).unwrap();
        }
        assert_eq!(store.verdict(&id(1), 105_000), Verdict::Marked);
        assert_eq!(store.verdict(&id(2), 105_000), Verdict::Marked);
        assert_eq!(store.verdict(&id(3), 105_000), Verdict::Unmarked);
        assert_eq!(
            store.gateways(100_000).0,
            vec!["a".to_string(), "b".to_string()]
        );
    }

    #[test]
    fn neighbouring_windows_are_asked() {
        let store = DecisionStore::default();
        for r in records(100_000, "a", &[id(1)], 1, None, 1) {
            store.apply(&r, NOW, 0).unwrap();
        }
        // A span of the window before, and of the window after, find the mark.
        assert_eq!(store.verdict(&id(1), 95_000), Verdict::Marked);
        assert_eq!(store.verdict(&id(1), 119_999), Verdict::Marked);
        // Two windows away: not asked.
        assert_eq!(store.verdict(&id(1), 120_000), Verdict::NoWindow);
        assert_eq!(store.verdict(&id(1), 89_999), Verdict::NoWindow);
    }

    #[test]
    fn a_policy_change_mid_window_keeps_both_filters() {
        let store = DecisionStore::default();
        for r in records(100_000, "a", &[id(1)], 1, None, 1) {
            store.apply(&r, NOW, 0).unwrap();
        }
        for r in records(100_000, "b", &[id(2)], 2, None, 1) {
            store.apply(&r, NOW, 0).unwrap();
        }
        assert_eq!(store.verdict(&id(1), 101_000), Verdict::Marked);
        assert_eq!(store.verdict(&id(2), 101_000), Verdict::Marked);
    }

    #[test]
    fn the_baseline_comes_from_the_records() {
        let store = DecisionStore::default();
        let half = Threshold::from_probability(0.5, 14).unwrap().rejection();
        for r in records(100_000, "a", &[], 1, Some(half), 1) {
            store.apply(&r, NOW, 0).unwrap();
        }
        let mut high = [0u8; 16];
        high[9] = 0xf0;
        assert_eq!(store.verdict(&high, 101_000), Verdict::Baseline);
        assert_eq!(store.verdict(&id(7), 101_000), Verdict::Unmarked);
    }

    #[test]
    fn old_windows_are_freed_and_refused() {
        let store = DecisionStore::default();
        for r in records(100_000, "a", &[id(1)], 1, None, 1) {
            store.apply(&r, NOW, 0).unwrap();
        }
        for r in records(200_000, "a", &[id(1)], 1, None, 1) {
            store.apply(&r, NOW, 0).unwrap();
        }
        assert_eq!(store.free_before(150_000), 1);
        assert_eq!(store.verdict(&id(1), 105_000), Verdict::NoWindow);
        assert_eq!(store.verdict(&id(1), 205_000), Verdict::Marked);
        let old = records(100_000, "a", &[id(1)], 1, None, 1);
        assert_eq!(store.apply(&old[0], NOW, 150_000), Err(Refused::Expired));
        assert!(matches!(
            store.apply(b"junk", NOW, 0),
            Err(Refused::Malformed(_))
        ));
    }

    #[test]
    fn sparse_records_merge_like_dense_ones() {
        let p = params(1);
        let mut f = WindowFilter::new(&p).unwrap();
        f.insert(&id(4));
        f.insert(&id(5));
        let mut payload = Vec::new();
        let mut writer = decision::SparseWriter::new(0);
        for_each_new_position(f.bits(), None, |position| {
            writer.push(position, &mut payload);
            true
        });
        let h = DecisionHeader {
            hashes: f.hashes(),
            item_estimate: 2,
            sealed: true,
            sequence: 1,
            ..DecisionHeader::for_window(&p, 100_000, "sparse")
        };
        let mut record = Vec::new();
        decision::encode(&h, Payload::Sparse(&payload), &mut record);
        assert!(
            record.len() < 200,
            "two marks take a few bytes, not the filter"
        );
        let store = DecisionStore::default();
        store.apply(&record, NOW, 0).unwrap();
        assert_eq!(store.verdict(&id(4), 105_000), Verdict::Marked);
        assert_eq!(store.verdict(&id(5), 105_000), Verdict::Marked);
        assert_eq!(store.verdict(&id(6), 105_000), Verdict::Unmarked);
        assert_eq!(store.gateways(100_000).1, vec!["sparse".to_string()]);
    }

    /// A record of window `start` with `params`, setting the bits of `ids`.
    fn record_with(start: u64, p: &FilterParams, ids: &[[u8; 16]]) -> Vec<u8> {
        let mut f = WindowFilter::new(p).unwrap();
        for id in ids {
            f.insert(id);
        }
        let mut payload = Vec::new();
        let mut writer = decision::SparseWriter::new(0);
        for_each_new_position(f.bits(), None, |position| {
            writer.push(position, &mut payload);
            true
        });
        let mut out = Vec::new();
        decision::encode(
            &DecisionHeader::for_window(p, start, "hostile"),
            Payload::Sparse(&payload),
            &mut out,
        );
        out
    }

    #[test]
    fn hostile_records_are_bounded_and_the_store_still_decides() {
        let limits = StoreLimits {
            max_total_bytes: 10 * params(1).bitmap_bytes,
            ..StoreLimits::default()
        };
        let store = DecisionStore::new(limits);
        for r in records(100_000, "a", &[id(1)], 1, None, 1) {
            store.apply(&r, NOW, 0).unwrap();
        }
        let out_of_bounds = |r: Result<(), Refused>| matches!(r, Err(Refused::OutOfBounds(_)));
        // A small sparse record that asks for a 256 MiB filter, past the total budget.
        let mut huge = params(1);
        huge.bitmap_bytes = 256 << 20;
        assert!(out_of_bounds(store.apply(
            &record_with(100_000, &huge, &[]),
            NOW,
            0
        )));
        // A million hash functions per lookup.
        let mut many = params(1);
        many.hashes = 1_000_000;
        let mut r = record_with(100_000, &params(1), &[]);
        r[12..16].copy_from_slice(&many.hashes.to_be_bytes());
        assert!(out_of_bounds(store.apply(&r, NOW, 0)));
        // A window far in the future (never freed), and one of u64::MAX / 2 ms whose
        // `2 * longest` overflowed.
        let future = NOW + 3_600_000 - (NOW + 3_600_000) % LEN;
        assert!(out_of_bounds(store.apply(
            &record_with(future, &params(1), &[]),
            NOW,
            0
        )));
        let mut endless = params(1);
        endless.window_millis = u64::MAX / 2;
        assert!(out_of_bounds(store.apply(
            &record_with(0, &endless, &[]),
            NOW,
            0
        )));
        // Filters per window: a fifth parameter set of one window is refused.
        for seed in 2..5 {
            store
                .apply(&record_with(100_000, &params(seed), &[]), NOW, 0)
                .unwrap();
        }
        assert!(out_of_bounds(store.apply(
            &record_with(100_000, &params(9), &[]),
            NOW,
            0
        )));
        // The total budget: the seventh window of ten filters' worth is past it.
        let mut refused = 0;
        for w in 0..8u64 {
            let r = record_with(200_000 + w * LEN, &params(1), &[id(2)]);
            refused += u32::from(out_of_bounds(store.apply(&r, NOW, 0)));
        }
        assert_eq!(
            refused, 2,
            "10 filters fit the budget: 4 of window 100000, 6 more"
        );
        // Nothing of it disturbed the verdicts.
        assert_eq!(store.verdict(&id(1), 105_000), Verdict::Marked);
        assert_eq!(store.verdict(&id(3), 105_000), Verdict::Unmarked);
        assert_eq!(store.verdict(&id(2), 205_000), Verdict::Marked);
        // Freed windows give their bytes back.
        store.free_before(u64::MAX);
        store
            .apply(&record_with(900_000, &params(1), &[]), NOW, 0)
            .unwrap();
    }

    #[test]
    fn a_partition_whose_records_all_expired_is_caught_up() {
        // (partition, low, high): 0 holds records, 1 never had any, 2's all expired.
        let remaining = partitions_to_catch_up(&[(0, 3, 10), (1, 0, 0), (2, 7, 7)]);
        assert_eq!(remaining, BTreeMap::from([(0, 10)]));
    }

    #[test]
    fn the_feed_is_current_to_the_newest_watermarks_reached() {
        let mut pending = PendingChecks::default();
        let at = |offsets: &[(i32, i64)]| offsets.iter().copied().collect::<BTreeMap<_, _>>();
        // Partition 1 holds nothing; 0 must be read up to 10.
        let first = (1000, vec![(0, 0, 10), (1, 0, 0)]);
        assert_eq!(pending.reached(first, &at(&[(0, 9)])), None);
        // A gateway published between the check and the read: the first check is reached
        // by the next one, the second not yet.
        assert_eq!(
            pending.reached((1500, vec![(0, 0, 12), (1, 0, 0)]), &at(&[(0, 10)])),
            Some(1000)
        );
        assert_eq!(
            pending.reached((2000, vec![(0, 0, 12), (1, 0, 0)]), &at(&[(0, 12)])),
            Some(2000)
        );
        assert!(
            read_up_to(&[(0, 5, 5)], &BTreeMap::new()),
            "all expired: read"
        );
        assert!(!read_up_to(&[(0, 4, 5)], &BTreeMap::new()), "not started");
    }

    #[test]
    fn a_feed_not_current_for_longer_than_the_bound_is_stale() {
        let f = Freshness::default();
        assert_eq!(
            f.stale(10_000, 2_000),
            Some(Stale::Behind),
            "never caught up"
        );
        f.mark_current(9_000);
        assert_eq!(f.stale(10_000, 2_000), None);
        f.set_unreachable(true);
        assert_eq!(f.stale(11_000, 2_000), None, "within the bound");
        assert_eq!(f.stale(11_001, 2_000), Some(Stale::Unreachable));
        f.mark_current(8_000);
        assert_eq!(f.current_to(), 9_000, "never moves back");
        assert_eq!(f.stale(12_000, 2_000), Some(Stale::Behind));
    }
}
