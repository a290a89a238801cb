//! Publishing decision windows: every `publish_interval` of the policy's `tail` section, a
//! snapshot of the open window (when it changed since the last one, and once when it opens)
//! and each sealed window once, as decision records on `tail.decisions_topic`.
//!
//! Record key: the window start in milliseconds as decimal ASCII, so all gateways' records of
//! one window land in one partition, in order.
//!
//! A record carries the bits set since the window's last acknowledged record (all of them
//! the first time), as a sparse list of positions when that is smaller than the bit array,
//! or else the whole bit array (dense). Either is split into records of at most
//! `kafka.max_message_size`. A publish that fails is retried at the next interval with
//! everything set since the last one that did not.

use super::{DecisionWindows, Window};
use crate::policy::PolicyStore;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use weir_exporters::kafka::{KafkaExporter, Record};
use weir_proto::decision::filter::{FilterParams, fill_ratio, for_each_new_position};
use weir_proto::decision::{self, DecisionHeader, Payload, SparseWriter, unix_millis};

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
    /// The windows the pipeline's markers fill.
    windows: Arc<DecisionWindows>,
    topic: Arc<str>,
    gateway_id: String,
    /// When set, every record carries its HMAC-SHA256 under this key in a header.
    signing_key: Option<Vec<u8>>,
    max_segment: usize,
    sequence: u64,
    /// Buffers of the last tick (the open window's copy, the records' values), reused so that
    /// a megabyte-sized filter does not cost fresh pages every interval.
    spare_snapshot: Vec<u8>,
    spare_values: Vec<Vec<u8>>,
    /// The open window's bits as of its last acknowledged record.
    acked: Option<Acked>,
    /// Sparse payload scratch space.
    payload: Vec<u8>,
}

/// What Kafka acknowledged of a window: later records carry only the bits set since.
struct Acked {
    start: u64,
    params: FilterParams,
    bits: Vec<u8>,
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
    /// A publisher of `windows` producing through `exporter` to `topic`, each record at most
    /// `max_message_size` bytes, signed with `signing_key` when there is one.
    pub fn new(
        exporter: Arc<KafkaExporter>,
        policies: Arc<PolicyStore>,
        windows: Arc<DecisionWindows>,
        topic: &str,
        gateway_id: String,
        max_message_size: usize,
        signing_key: Option<Vec<u8>>,
    ) -> Self {
        Self {
            exporter,
            policies,
            windows,
            topic: topic.into(),
            gateway_id,
            signing_key,
            max_segment: max_message_size.saturating_sub(HEADER_ROOM).max(1024),
            sequence: 0,
            spare_snapshot: Vec::new(),
            spare_values: Vec::new(),
            acked: None,
            payload: Vec::new(),
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
        self.windows.seal_open();
        self.tick(false).await;
    }

    /// Rotates the windows (unless `rotate` is false: at shutdown, after the last seal) and
    /// publishes what changed.
    pub async fn tick(&mut self, rotate: bool) {
        let windows = &self.windows;
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
        let base = self
            .acked
            .as_ref()
            .filter(|a| a.start == p.start && a.params == params)
            .map(|a| &a.bits[..]);
        let window = DecisionHeader {
            hashes,
            item_estimate: p.items,
            baseline_rejection: p.baseline,
            sealed: p.sealed,
            ..DecisionHeader::for_window(&params, p.start, &self.gateway_id)
        };
        let sequence = &mut self.sequence;
        let values = encode_records(
            bits,
            base,
            self.max_segment,
            |segment_offset| {
                *sequence += 1;
                DecisionHeader {
                    sequence: *sequence,
                    segment_offset,
                    ..window.clone()
                }
            },
            &mut self.payload,
            &mut self.spare_values,
        );
        let records: Vec<Record> = values
            .into_iter()
            .map(|value| Record {
                topic: self.topic.clone(),
                key: p.start.to_string().into_bytes(),
                headers: self.signing_key.as_deref().map(|key| {
                    vec![(
                        decision::signature::SIGNATURE_HEADER.to_string(),
                        decision::signature::sign(key, &value).to_vec(),
                    )]
                    .into()
                }),
                value,
                items: 0,
            })
            .collect();
        let bytes: usize = records.iter().map(|r| r.value.len()).sum();
        let kind = if p.sealed { "sealed" } else { "snapshot" };
        let sent = self.exporter.send(&records).await;
        let published = records.len();
        self.spare_values
            .extend(records.into_iter().map(|r| r.value).take(SPARE_VALUES));
        self.spare_values.truncate(SPARE_VALUES);
        match sent {
            Ok(()) => {
                metrics::counter!("weir_tail_decision_records_published_total", "kind" => kind)
                    .increment(published as u64);
                metrics::counter!("weir_tail_decision_bytes_published_total", "kind" => kind)
                    .increment(bytes as u64);
                // What the next record of this window is measured against.
                let old = if p.sealed {
                    self.acked.take_if(|a| a.start == p.start)
                } else {
                    self.acked.replace(Acked {
                        start: p.start,
                        params,
                        bits: std::mem::take(&mut p.snapshot),
                    })
                };
                if let Some(old) = old {
                    self.spare_snapshot = old.bits;
                }
                if !p.sealed {
                    self.windows.with(|open, _| {
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
                    bytes,
                    fill,
                    "decision window published"
                );
            }
            Err(e) => {
                if !p.snapshot.is_empty() {
                    self.spare_snapshot = std::mem::take(&mut p.snapshot);
                }
                metrics::counter!("weir_tail_decision_records_failed_total", "kind" => kind)
                    .increment(published as u64);
                tracing::warn!(error = %e, window = p.start, kind, "publishing a decision window failed; retrying at the next interval");
                if let Some(w) = p.window {
                    // Back in line: published at the next tick.
                    self.windows.with(|_, sealed| sealed.insert(0, w));
                }
            }
        }
    }
}

/// The record values that publish `bits` to a reader that has `base` (nothing: `None`):
/// the new bits' positions when that is smaller than `bits`, else all of `bits`; each value at
/// most `max_segment` bytes of payload. `header` gives a record's header from its segment
/// offset; `payload` is scratch space, `spare` buffers to reuse.
fn encode_records(
    bits: &[u8],
    base: Option<&[u8]>,
    max_segment: usize,
    mut header: impl FnMut(u64) -> DecisionHeader,
    payload: &mut Vec<u8>,
    spare: &mut Vec<Vec<u8>>,
) -> Vec<Vec<u8>> {
    let mut values = Vec::new();
    // Sparse, in one pass: a record is cut when the next position would not fit, and the
    // whole is given up for the dense form once it is as large.
    let mut total = 0;
    let mut segment: Option<(u64, SparseWriter)> = None;
    payload.clear();
    let sparse = for_each_new_position(bits, base, |p| {
        let (offset, writer) = segment.get_or_insert_with(|| (p / 8, SparseWriter::new(p / 8 * 8)));
        let mut len = writer.len_of(p);
        if payload.len() + len > max_segment {
            let mut v = spare_value(spare, payload.len());
            decision::encode(&header(*offset), Payload::Sparse(payload), &mut v);
            values.push(v);
            payload.clear();
            (*offset, *writer) = (p / 8, SparseWriter::new(p / 8 * 8));
            len = writer.len_of(p);
        }
        total += len;
        writer.push(p, payload);
        total < bits.len()
    });
    if sparse {
        // The last (or only) record; empty when nothing is new (a sealed window says so).
        let offset = segment.map_or(0, |(offset, _)| offset);
        let mut v = spare_value(spare, payload.len());
        decision::encode(&header(offset), Payload::Sparse(payload), &mut v);
        values.push(v);
        return values;
    }
    spare.append(&mut values);
    for (i, chunk) in bits.chunks(max_segment).enumerate() {
        let mut v = spare_value(spare, chunk.len());
        decision::encode(
            &header((i * max_segment) as u64),
            Payload::Dense(chunk),
            &mut v,
        );
        values.push(v);
    }
    values
}

/// A record value buffer from `spare` (or a new one), empty, with room for `len` bytes of
/// payload and the header.
fn spare_value(spare: &mut Vec<Vec<u8>>, len: usize) -> Vec<u8> {
    let mut v = spare.pop().unwrap_or_default();
    v.clear();
    v.reserve(len + 300);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::decision::filter::{WindowFilter, bitmap_bytes, expand_seed, hash_count};

    fn params(n: u64) -> FilterParams {
        let bytes = bitmap_bytes(n, 0.001);
        FilterParams {
            window_millis: 10_000,
            expected_traces: n,
            bitmap_bytes: bytes,
            hashes: hash_count(bytes * 8, n),
            seed: expand_seed(7),
        }
    }

    fn id(i: u64) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
        id[8..].copy_from_slice(&i.wrapping_mul(0xbf58_476d_1ce4_e5b9).to_be_bytes());
        id
    }

    /// Encodes `bits` for a reader holding `base`, applies every record to a copy of
    /// `base`, and returns the copy, the records' sizes and whether they were sparse.
    fn publish(
        p: &FilterParams,
        bits: &[u8],
        base: Option<&[u8]>,
        max_segment: usize,
    ) -> (WindowFilter, Vec<usize>, bool) {
        let mut reader = WindowFilter::new(p).unwrap();
        if let Some(b) = base {
            assert!(reader.merge(0, b));
        }
        let header = |segment_offset| DecisionHeader {
            segment_offset,
            ..DecisionHeader::for_window(p, 0, "gw")
        };
        let values = encode_records(
            bits,
            base,
            max_segment,
            header,
            &mut Vec::new(),
            &mut Vec::new(),
        );
        let mut sparse = false;
        let mut sizes = Vec::new();
        for v in &values {
            let (h, payload) = decision::decode(v).unwrap();
            sizes.push(payload.bytes().len());
            match payload {
                Payload::Dense(b) => assert!(reader.merge(h.segment_offset, b)),
                Payload::Sparse(b) => {
                    sparse = true;
                    assert!(reader.set_positions(decision::sparse_positions(h.segment_offset, b)));
                }
            }
        }
        (reader, sizes, sparse)
    }

    #[test]
    fn records_carry_the_new_bits_sparsely_and_a_full_filter_densely() {
        let p = params(100_000);
        let mut f = WindowFilter::new(&p).unwrap();
        for i in 0..2_000 {
            f.insert(&id(i));
        }
        // First record of the window: every set bit, as positions, in several records.
        let (reader, sizes, sparse) = publish(&p, f.bits(), None, 4096);
        assert!(sparse);
        assert_eq!(reader.bits(), f.bits());
        assert!(
            sizes.len() > 1 && sizes.iter().all(|&s| s <= 4096),
            "{sizes:?}"
        );
        let first: usize = sizes.iter().sum();
        assert!(first < f.bits().len() / 4, "{first} bytes for 2000 marks");

        // The next: only the bits set since.
        let base = f.bits().to_vec();
        for i in 2_000..2_100 {
            f.insert(&id(i));
        }
        let (reader, sizes, sparse) = publish(&p, f.bits(), Some(&base), 4096);
        assert!(sparse);
        assert_eq!(reader.bits(), f.bits());
        let delta: usize = sizes.iter().sum();
        assert!(delta < first / 10, "{delta} bytes for 100 new marks");

        // Nothing new (a sealed window after its last snapshot): one empty record.
        let (_, sizes, sparse) = publish(&p, f.bits(), Some(f.bits()), 4096);
        assert!(sparse);
        assert_eq!(sizes, [0]);

        // Near capacity the positions would be larger than the bits: the whole filter.
        for i in 2_100..100_000 {
            f.insert(&id(i));
        }
        let (reader, sizes, sparse) = publish(&p, f.bits(), None, 64 * 1024);
        assert!(!sparse);
        assert_eq!(reader.bits(), f.bits());
        assert_eq!(sizes.iter().sum::<usize>(), f.bits().len());
    }
}
