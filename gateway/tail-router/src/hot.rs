//! The delayed hot consumer: hot records are held until their timestamp is `delay` old,
//! then decided against the merged decision windows; kept ones are produced to the cold
//! topic, and a batch's offsets are committed only after every cold record of it was
//! acknowledged (a restart re-reads from the last commit: duplicates, never a loss).
//!
//! Holding: a partition whose oldest held record is not due yet is paused, so the consumer
//! fetches nothing more from it; the loop sleeps until the earliest due time (or a new
//! record) and resumes the partition once its held records are decided. Records keep their
//! partition order.

use super::RouterContext;
use super::cold::ColdWriter;
use super::decisions::{DecisionStore, Freshness, Stale};
use super::per_trace;
use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use weir_exporters::kafka::{Record, RecordHeaders, trace_key};
use weir_proto::decision::unix_millis;
use weir_runtime::admin::Readiness;

/// The longest the loop sleeps without looking at the clock again.
const MAX_SLEEP: Duration = Duration::from_millis(500);
/// How often the loop looks again while due records wait for the decisions to be current.
const FRESHNESS_POLL: Duration = Duration::from_millis(100);

/// How long the decisions may not have been current before the hot loop reports itself
/// paused: a tenth of D, within 2 s (past a few freshness checks, so a slow check does not
/// flap readiness) and 10 s. Records wait for current decisions whatever this is.
pub fn stale_after(delay: Duration) -> Duration {
    (delay / 10).clamp(Duration::from_secs(2), Duration::from_secs(10))
}

/// A hot record waiting for its due time.
#[derive(Debug)]
pub struct Held {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its timestamp, ms since the epoch.
    pub ts_millis: u64,
    /// The record key (the trace id in hex).
    pub key: Option<Vec<u8>>,
    /// The record value, copied as it is.
    pub value: Option<Vec<u8>>,
    /// The record headers, copied as they are.
    pub headers: Option<RecordHeaders>,
}

/// Hot records held per partition, in offset order, until they are due.
#[derive(Default)]
pub struct DelayQueue {
    parts: BTreeMap<i32, VecDeque<Held>>,
    delay_millis: u64,
    len: usize,
}

impl DelayQueue {
    /// A queue that holds records `delay_millis` past their timestamp.
    pub fn new(delay_millis: u64) -> Self {
        Self {
            delay_millis,
            ..Default::default()
        }
    }

    /// When a record with timestamp `ts_millis` becomes due.
    pub fn due_at(&self, ts_millis: u64) -> u64 {
        ts_millis.saturating_add(self.delay_millis)
    }

    /// Holds `h` behind the records of its partition.
    pub fn push(&mut self, h: Held) {
        self.parts.entry(h.partition).or_default().push_back(h);
        self.len += 1;
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes up to `max` due records (at `now_millis`), each partition's in order.
    pub fn take_due(&mut self, now_millis: u64, max: usize) -> Vec<Held> {
        let mut out = Vec::new();
        let delay = self.delay_millis;
        for q in self.parts.values_mut() {
            while out.len() < max
                && q.front()
                    .is_some_and(|h| h.ts_millis.saturating_add(delay) <= now_millis)
            {
                out.extend(q.pop_front());
            }
        }
        self.len -= out.len();
        self.parts.retain(|_, q| !q.is_empty());
        out
    }

    /// The earliest due time of a held record.
    pub fn next_due(&self) -> Option<u64> {
        self.parts
            .values()
            .filter_map(|q| q.front())
            .map(|h| self.due_at(h.ts_millis))
            .min()
    }

    /// Partitions that must not be fetched from: their oldest record is not due, or they
    /// hold `cap` records already.
    pub fn to_pause(&self, now_millis: u64, cap: usize) -> BTreeSet<i32> {
        self.parts
            .iter()
            .filter(|(_, q)| {
                q.len() >= cap
                    || q.front()
                        .is_some_and(|h| self.due_at(h.ts_millis) > now_millis)
            })
            .map(|(p, _)| *p)
            .collect()
    }

    /// Forgets the records of partitions this consumer no longer owns.
    pub fn revoke(&mut self, partitions: &[i32]) {
        for p in partitions {
            if let Some(q) = self.parts.remove(p) {
                self.len -= q.len();
            }
        }
    }
}

/// The hot loop's parts.
pub struct HotLoop {
    /// The group consumer on the hot topic.
    pub consumer: Arc<StreamConsumer<RouterContext>>,
    /// Writes kept records to the cold topic (and dead letters).
    pub cold: ColdWriter,
    /// The merged decision windows.
    pub store: Arc<DecisionStore>,
    /// The hot topic.
    pub hot_topic: String,
    /// D, in milliseconds.
    pub delay_millis: u64,
    /// Record timestamps later than now plus this are taken as now plus this.
    pub max_timestamp_lead_millis: u64,
    /// Records decided per batch.
    pub batch_size: usize,
    /// How current the merged windows are: a record is decided only once they are current
    /// to its due time.
    pub freshness: Arc<Freshness>,
    /// `/readyz`: not ready while the loop is paused for a stale decision feed.
    pub readiness: Arc<Readiness>,
    /// The feed is reported stale (paused) past this ([`stale_after`]).
    pub stale_after_millis: u64,
}

impl HotLoop {
    /// Runs until `stop`. Records held when it stops are not committed: the next owner of
    /// their partition reads them again.
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        let mut queue = DelayQueue::new(self.delay_millis);
        let mut paused: BTreeSet<i32> = BTreeSet::new();
        let mut stale: Option<Stale> = None;
        for reason in [Stale::Unreachable, Stale::Behind] {
            metrics::gauge!("weir_tail_router_paused", "reason" => reason.as_str()).set(0.0);
        }
        let cap = self.batch_size.max(1);
        loop {
            let revoked = self.consumer.context().take_revoked();
            if !revoked.is_empty() {
                queue.revoke(&revoked);
                for p in &revoked {
                    paused.remove(p);
                }
            }
            let now = unix_millis();
            self.report_feed(now, &mut stale);
            // A record at t is decided once every decision record acknowledged before its
            // due time t + D is merged: the marks of its trace are published by then.
            let decidable_to = now.min(self.freshness.current_to());
            let batch = queue.take_due(decidable_to, self.batch_size);
            if !batch.is_empty() {
                if !self.decide(batch, &stop).await {
                    return Ok(());
                }
                continue;
            }
            // Partitions whose due records wait for the decisions are paused too: nothing
            // more is read into memory while the feed is stale.
            self.sync_pauses(&queue.to_pause(decidable_to, cap), &mut paused);
            metrics::gauge!("weir_tail_router_held_records").set(queue.len() as f64);
            if let Some(due) = queue.next_due() {
                metrics::gauge!("weir_tail_router_delay_held_seconds")
                    .set(due.saturating_sub(now) as f64 / 1000.0);
            }
            let sleep = match queue.next_due() {
                Some(due) if due <= now => FRESHNESS_POLL,
                Some(due) => Duration::from_millis(due - now),
                None => MAX_SLEEP,
            }
            .min(MAX_SLEEP);
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                m = self.consumer.recv() => {
                    self.hold(m, &mut queue);
                    // Take what is already fetched without waiting, so a backlog is decided
                    // in full batches.
                    while queue.len() < 4 * cap {
                        match self.consumer.recv().now_or_never() {
                            Some(m) => self.hold(m, &mut queue),
                            None => break,
                        }
                    }
                }
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Reports a change of the decision feed's state: the pause gauge and counter, the log,
    /// and `/readyz`.
    fn report_feed(&self, now_millis: u64, was: &mut Option<Stale>) {
        let current_to = self.freshness.current_to();
        metrics::gauge!("weir_tail_router_decisions_staleness_seconds")
            .set(now_millis.saturating_sub(current_to) as f64 / 1000.0);
        let is = self.freshness.stale(now_millis, self.stale_after_millis);
        if is == *was {
            return;
        }
        for reason in [Stale::Unreachable, Stale::Behind] {
            metrics::gauge!("weir_tail_router_paused", "reason" => reason.as_str())
                .set(if is == Some(reason) { 1.0 } else { 0.0 });
        }
        match is {
            Some(reason) => {
                metrics::counter!("weir_tail_router_pauses_total", "reason" => reason.as_str())
                    .increment(1);
                tracing::warn!(
                    reason = reason.as_str(),
                    behind_ms = now_millis.saturating_sub(current_to),
                    "the decision records are not current: no hot record is decided or committed until they are"
                );
                self.readiness
                    .set_preparing(Some(reason.readiness_reason()));
            }
            None => {
                tracing::info!("the decision records are current again: deciding hot records");
                self.readiness.set_preparing(None);
            }
        }
        *was = is;
    }

    fn hold(
        &self,
        m: Result<BorrowedMessage<'_>, rdkafka::error::KafkaError>,
        queue: &mut DelayQueue,
    ) {
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "reading the hot topic");
                return;
            }
        };
        // A record without a timestamp is held from when it is read.
        let ts = record_time(
            m.timestamp().to_millis(),
            unix_millis(),
            self.max_timestamp_lead_millis,
        );
        let headers = m.headers().map(|hs| {
            hs.iter()
                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                .collect::<Vec<_>>()
                .into()
        });
        queue.push(Held {
            partition: m.partition(),
            offset: m.offset(),
            ts_millis: ts,
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
        });
    }

    fn sync_pauses(&self, want: &BTreeSet<i32>, paused: &mut BTreeSet<i32>) {
        let tpl = |parts: &mut dyn Iterator<Item = &i32>| {
            let mut t = TopicPartitionList::new();
            for p in parts {
                t.add_partition(&self.hot_topic, *p);
            }
            t
        };
        let pause: Vec<i32> = want.difference(paused).copied().collect();
        let resume: Vec<i32> = paused.difference(want).copied().collect();
        if !pause.is_empty() {
            match self.consumer.pause(&tpl(&mut pause.iter())) {
                Ok(()) => paused.extend(pause),
                Err(e) => tracing::warn!(error = %e, "pausing hot partitions"),
            }
        }
        if !resume.is_empty() {
            match self.consumer.resume(&tpl(&mut resume.iter())) {
                Ok(()) => {
                    for p in resume {
                        paused.remove(&p);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "resuming hot partitions"),
            }
        }
    }

    /// Decides a batch, produces its kept records until they are acknowledged, then commits
    /// its offsets. False when `stop` came first (nothing committed).
    async fn decide(&self, batch: Vec<Held>, stop: &CancellationToken) -> bool {
        let now = unix_millis();
        let mut records = Vec::new();
        let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        let mut oldest = u64::MAX;
        let mut split_traces: BTreeMap<&'static str, u64> = BTreeMap::new();
        for h in batch {
            let n = next.entry(h.partition).or_insert(h.offset + 1);
            *n = (*n).max(h.offset + 1);
            oldest = oldest.min(h.ts_millis);
            // A record keyed by a trace id holds that trace's spans only: copied as it is.
            if let Some(id) = h.key.as_deref().and_then(trace_id_of_key) {
                let verdict = self.store.verdict(&id, h.ts_millis);
                *counts.entry(verdict.as_str()).or_default() += 1;
                if verdict.keep() {
                    records.push(Record {
                        topic: self.cold.cold_topic.clone(),
                        key: h.key.unwrap_or_default(),
                        value: h.value.unwrap_or_default(),
                        items: 1,
                        headers: h.headers,
                    });
                }
                continue;
            }
            // Any other record (no key, or another key) is decided span by span.
            match per_trace::decide(h.value.as_deref().unwrap_or_default(), |id| {
                self.store.verdict(id, h.ts_millis)
            }) {
                Ok(decided) => {
                    *counts.entry("split").or_default() += 1;
                    for v in decided.verdicts {
                        *split_traces.entry(v.as_str()).or_default() += 1;
                    }
                    if decided.spans_without_trace_id > 0 {
                        *split_traces.entry("bad_trace_id").or_default() +=
                            decided.spans_without_trace_id;
                    }
                    for (id, value, spans) in decided.kept {
                        records.push(Record {
                            topic: self.cold.cold_topic.clone(),
                            key: trace_key(&id),
                            value,
                            items: spans,
                            headers: h.headers.clone(),
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, partition = h.partition, offset = h.offset, "a hot record without a trace-id key cannot be decided; it stays hot only");
                    *counts.entry("undecodable").or_default() += 1;
                }
            }
        }
        if !self.cold.deliver(records, stop).await {
            return false;
        }
        for (label, n) in counts {
            metrics::counter!("weir_tail_router_records_total", "outcome" => label).increment(n);
        }
        for (label, n) in split_traces {
            metrics::counter!("weir_tail_router_split_traces_total", "outcome" => label)
                .increment(n);
        }
        if oldest != u64::MAX {
            metrics::gauge!("weir_tail_router_record_age_seconds")
                .set(now.saturating_sub(oldest) as f64 / 1000.0);
        }
        let mut tpl = TopicPartitionList::new();
        for (p, offset) in next {
            if let Err(e) = tpl.add_partition_offset(&self.hot_topic, p, Offset::Offset(offset)) {
                tracing::warn!(error = %e, "building the commit");
            }
        }
        // Asynchronous: a commit lost to a crash only means the batch is read again.
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::warn!(error = %e, "committing hot offsets");
        }
        true
    }
}

/// The time a hot record is held and decided by: its timestamp (`CreateTime`, the gateway's
/// clock), but no later than `now_millis + max_lead_millis`, so that a gateway whose clock runs
/// ahead does not block its partition (records behind it keep their order) for the length of
/// the skew; a record without one is held from `now_millis`.
pub fn record_time(timestamp_millis: Option<i64>, now_millis: u64, max_lead_millis: u64) -> u64 {
    timestamp_millis
        .and_then(|t| u64::try_from(t).ok())
        .map_or(now_millis, |t| {
            t.min(now_millis.saturating_add(max_lead_millis))
        })
}

/// The trace id a hot record's key names: 32 hex characters.
pub fn trace_id_of_key(key: &[u8]) -> Option<[u8; 16]> {
    let mut id = [0u8; 16];
    hex::decode_to_slice(key, &mut id).ok()?;
    Some(id)
}

/// Sums `high watermark - position` over the assigned hot partitions, every few seconds.
pub async fn report_lag(consumer: Arc<StreamConsumer<RouterContext>>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let c = consumer.clone();
        let lag = tokio::task::spawn_blocking(move || -> Option<i64> {
            let positions = c.position().ok()?;
            let mut lag = 0i64;
            for e in positions.elements() {
                let Offset::Offset(pos) = e.offset() else {
                    continue;
                };
                if let Ok((_, high)) =
                    c.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(2))
                {
                    lag += (high - pos).max(0);
                }
            }
            Some(lag)
        })
        .await
        .ok()
        .flatten();
        if let Some(lag) = lag {
            metrics::gauge!("weir_tail_router_consumer_lag_records").set(lag as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(partition: i32, offset: i64, ts: u64) -> Held {
        Held {
            partition,
            offset,
            ts_millis: ts,
            key: None,
            value: None,
            headers: None,
        }
    }

    #[test]
    fn records_are_due_after_the_delay_in_partition_order() {
        let mut q = DelayQueue::new(3000);
        q.push(held(0, 10, 1000));
        q.push(held(0, 11, 900)); // older timestamp behind a newer one: waits its turn
        q.push(held(1, 5, 2000));
        assert_eq!(q.next_due(), Some(4000));
        assert!(q.take_due(3999, 100).is_empty());
        assert_eq!(q.to_pause(3999, 100), BTreeSet::from([0, 1]));
        let due = q.take_due(4000, 100);
        assert_eq!(
            due.iter()
                .map(|h| (h.partition, h.offset))
                .collect::<Vec<_>>(),
            vec![(0, 10), (0, 11)]
        );
        assert_eq!(q.len(), 1);
        assert_eq!(q.to_pause(4000, 100), BTreeSet::from([1]));
        assert_eq!(q.next_due(), Some(5000));
        let due = q.take_due(6000, 100);
        assert_eq!(due.len(), 1);
        assert!(q.is_empty());
        assert_eq!(q.next_due(), None);
        assert!(q.to_pause(6000, 100).is_empty());
    }

    #[test]
    fn batches_are_bounded_and_full_partitions_pause() {
        let mut q = DelayQueue::new(0);
        for i in 0..10 {
            q.push(held(2, i, 0));
        }
        assert_eq!(q.to_pause(1, 5), BTreeSet::from([2]), "over the cap");
        assert_eq!(q.take_due(1, 4).len(), 4);
        assert_eq!(q.len(), 6);
        q.revoke(&[2]);
        assert!(q.is_empty());
    }

    #[test]
    fn timestamps_ahead_of_the_clock_are_clamped() {
        let now = 1_700_000_000_000;
        assert_eq!(record_time(Some(now as i64 - 5), now, 10_000), now - 5);
        // A gateway an hour ahead: held as if produced 10 s from now, not for an hour more.
        assert_eq!(
            record_time(Some(now as i64 + 3_600_000), now, 10_000),
            now + 10_000
        );
        assert_eq!(record_time(None, now, 10_000), now);
        assert_eq!(record_time(Some(-1), now, 10_000), now);
    }

    #[test]
    fn keys_are_trace_ids_in_hex() {
        let key = b"0102030405060708090a0b0c0d0e0f10";
        assert_eq!(
            trace_id_of_key(key),
            Some([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16])
        );
        assert_eq!(trace_id_of_key(b"0102"), None);
        assert_eq!(trace_id_of_key(b"zz02030405060708090a0b0c0d0e0f10"), None);
    }
}
