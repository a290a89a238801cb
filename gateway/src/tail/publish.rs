//! Publishing decision windows: every `publish_interval` of the policy's `tail` section, a
//! snapshot of the open window (when it changed since the last one, and once when it opens)
//! and each sealed window once, as decision records on `tail.decisions_topic`.
//!
//! Record key: the window start in milliseconds as decimal ASCII, so all gateways' records of
//! one window land in one partition, in order. A filter larger than a record is split into
//! segments (byte ranges), each a record of its own.

use super::{DecisionWindows, Window, unix_millis};
use crate::policy::PolicyStore;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use weir_config::policy::FilterParams;
use weir_exporters::kafka::{KafkaExporter, Record};
use weir_proto::decision::{self, DecisionHeader, HASH_SCHEME_BLOOMFILTER3};

/// How often the publisher looks again when the policy has no `tail` section.
const IDLE_INTERVAL: Duration = Duration::from_secs(1);

/// Room kept in a record for the decision header and Kafka's framing.
const HEADER_ROOM: usize = 1024;

/// Record value buffers kept between ticks, at most.
const SPARE_VALUES: usize = 8;

/// Publishes the gateway's decision windows.
pub struct Publisher {
    exporter: Arc<KafkaExporter>,
    policies: Arc<PolicyStore>,
    topic: Arc<str>,
    gateway_id: String,
    max_segment: usize,
    sequence: u64,
    /// Buffers of the last tick (the open window's copy, the records' values), reused so that
    /// a megabyte-sized filter does not cost fresh pages every interval.
    spare_snapshot: Vec<u8>,
    spare_values: Vec<Vec<u8>>,
}

/// A window to publish, taken (sealed) or copied (open) under the lock, encoded outside it.
struct Pending {
    /// A sealed window, taken out of the list (put back if publishing fails).
    window: Option<Window>,
    /// A copy of the open window's bits.
    snapshot: Vec<u8>,
    start: u64,
    generation: u64,
    items: u64,
    sealed: bool,
    params: FilterParams,
    hashes: u32,
    baseline: Option<u64>,
}

impl Publisher {
    /// A publisher producing through `exporter` to `topic`, each record at most
    /// `max_message_size` bytes.
    pub fn new(
        exporter: Arc<KafkaExporter>,
        policies: Arc<PolicyStore>,
        topic: &str,
        gateway_id: String,
        max_message_size: usize,
    ) -> Self {
        Self {
            exporter,
            policies,
            topic: topic.into(),
            gateway_id,
            max_segment: max_message_size.saturating_sub(HEADER_ROOM).max(1024),
            sequence: 0,
            spare_snapshot: Vec::new(),
            spare_values: Vec::new(),
        }
    }

    /// The default gateway id: the host name and the process id.
    pub fn default_gateway_id() -> String {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "weir-gateway".into());
        format!("{host}-{}", std::process::id())
    }

    /// Publishes until `stop`; then seals the open window and publishes it, so the marks of
    /// a gateway that shuts down mid-window reach the tail router.
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            let interval = self
                .policies
                .load()
                .policy
                .tail()
                .map_or(IDLE_INTERVAL, |t| t.publish_interval());
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
            self.tick(true).await;
        }
        DecisionWindows::global().seal_open();
        self.tick(false).await;
    }

    /// Rotates the windows (unless `rotate` is false: at shutdown, after the last seal) and
    /// publishes what changed.
    pub async fn tick(&mut self, rotate: bool) {
        let windows = DecisionWindows::global();
        let active = self.policies.load();
        match active.policy.tail() {
            Some(tail) if rotate => windows.rotate(tail, unix_millis()),
            Some(_) => {}
            None => windows.seal_open(),
        }
        let mut spare = std::mem::take(&mut self.spare_snapshot);
        let pending: Vec<Pending> = windows.with(|open, sealed| {
            let mut out: Vec<Pending> = sealed
                .drain(..)
                .map(|w| Pending {
                    start: w.start,
                    generation: w.generation,
                    items: w.items,
                    sealed: true,
                    snapshot: Vec::new(),
                    params: *w.filter.params(),
                    hashes: w.filter.hashes(),
                    baseline: w.baseline,
                    window: Some(w),
                })
                .collect();
            if let Some(w) = open
                && w.published != Some(w.generation)
            {
                out.push(Pending {
                    start: w.start,
                    generation: w.generation,
                    items: w.items,
                    sealed: false,
                    snapshot: {
                        spare.clear();
                        spare.extend_from_slice(w.filter.bits());
                        std::mem::take(&mut spare)
                    },
                    params: *w.filter.params(),
                    hashes: w.filter.hashes(),
                    baseline: w.baseline,
                    window: None,
                });
            }
            out
        });
        // Still here when the open window needed no copy.
        if spare.capacity() > 0 {
            self.spare_snapshot = spare;
        }
        for p in pending {
            self.publish(p).await;
        }
    }

    async fn publish(&mut self, mut p: Pending) {
        let bits = match &p.window {
            Some(w) => w.filter.bits(),
            None => &p.snapshot[..],
        };
        let (hashes, params) = (p.hashes, p.params);
        let fill = fill_ratio(bits);
        if !p.sealed {
            metrics::gauge!("weir_tail_window_fill_ratio").set(fill);
            metrics::gauge!("weir_tail_window_estimated_false_positive_rate")
                .set(fill.powi(hashes as i32));
        }
        let mut records = Vec::with_capacity(bits.len() / self.max_segment + 1);
        for (i, segment) in bits.chunks(self.max_segment).enumerate() {
            self.sequence += 1;
            let header = DecisionHeader {
                window_start_millis: p.start,
                window_millis: params.window_millis,
                bitmap_bytes: params.bitmap_bytes,
                hashes,
                seed: params.seed,
                hash_scheme: HASH_SCHEME_BLOOMFILTER3,
                expected_items: params.expected_traces,
                item_estimate: p.items,
                baseline_rejection: p.baseline,
                sealed: p.sealed,
                sequence: self.sequence,
                segment_offset: (i * self.max_segment) as u64,
                gateway_id: self.gateway_id.clone(),
            };
            let mut value = self.spare_values.pop().unwrap_or_default();
            value.clear();
            value.reserve(segment.len() + 300);
            decision::encode(&header, segment, &mut value);
            records.push(Record {
                topic: self.topic.clone(),
                key: p.start.to_string().into_bytes(),
                value,
                items: 0,
                headers: None,
            });
        }
        let kind = if p.sealed { "sealed" } else { "snapshot" };
        let sent = self.exporter.send(&records).await;
        let published = records.len();
        self.spare_values
            .extend(records.into_iter().map(|r| r.value).take(SPARE_VALUES));
        self.spare_values.truncate(SPARE_VALUES);
        if !p.snapshot.is_empty() {
            self.spare_snapshot = std::mem::take(&mut p.snapshot);
        }
        match sent {
            Ok(()) => {
                metrics::counter!("weir_tail_decision_records_published_total", "kind" => kind)
                    .increment(published as u64);
                if !p.sealed {
                    DecisionWindows::global().with(|open, _| {
                        if let Some(w) = open
                            && w.start == p.start
                        {
                            w.published = Some(p.generation.max(w.published.unwrap_or(0)));
                        }
                    });
                }
                tracing::debug!(
                    window = p.start,
                    kind,
                    records = published,
                    fill,
                    "decision window published"
                );
            }
            Err(e) => {
                metrics::counter!("weir_tail_decision_records_failed_total", "kind" => kind)
                    .increment(published as u64);
                tracing::warn!(error = %e, window = p.start, kind, "publishing a decision window failed; retrying at the next interval");
                if let Some(w) = p.window {
                    // Back in line: published at the next tick.
                    DecisionWindows::global().with(|_, sealed| sealed.insert(0, w));
                }
            }
        }
    }
}

/// The share of bits set in `bits`.
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
