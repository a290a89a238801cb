//! The spool: a local write-ahead log of Kafka records for requests Kafka did not acknowledge
//! in time. `append` returns once a request's records are durable on disk (group commit);
//! `replay` drains them to Kafka, oldest first, and deletes a segment once every record in it
//! was acknowledged. The format and the guarantees are in `docs/spool.md`.
//!
//! - `frame`: one request's records as one CRC-checked frame;
//! - `segment`: segment files, the recovery scan, reading a frame back;
//! - `writer`: the thread that writes and fsyncs (group commit);
//! - `replay`: the replayer, its sink and its checkpoint;
//! - `kafka_sink`: the sink the gateway replays into (its Kafka producer).

mod frame;
mod kafka_sink;
mod replay;
mod segment;
mod writer;

#[cfg(test)]
mod tests;

pub use kafka_sink::KafkaReplaySink;
pub use replay::ReplaySink;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use weir_config::gateway::spool::{FsyncPolicy, SpoolConfig};
use weir_exporters::kafka::Record;

/// Why the spool refused or failed an operation.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The batch does not fit under `max_bytes`; nothing was written. The caller answers
    /// 503 / UNAVAILABLE with Retry-After, as without a spool.
    #[error(
        "the spool is full: {needed} bytes do not fit ({used} of {max} bytes used); the request is refused until replay frees space"
    )]
    Full {
        /// The batch's framed size.
        needed: u64,
        /// Bytes in use.
        used: u64,
        /// `max_bytes`.
        max: u64,
    },
    /// A record or the batch is larger than a frame can hold.
    #[error("the batch cannot be spooled: {0}")]
    TooLarge(String),
    /// An I/O operation on the spool directory failed.
    #[error("spool I/O on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A write or fsync failed earlier: the spool refuses appends until the gateway restarts
    /// and recovery has checked the files again.
    #[error(
        "the spool stopped after a failed write or fsync (see the log); restart the gateway once the disk is fixed"
    )]
    Failed,
    /// Another process holds the spool directory.
    #[error("{path} is locked by another process: each gateway needs a spool directory of its own")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A segment holds a frame of a format this build does not know (written by a newer one).
    #[error(
        "{path} at offset {offset} holds a frame of version {version}, which this build cannot read; run the version that wrote it until the spool is drained"
    )]
    UnknownVersion {
        /// The segment.
        path: PathBuf,
        /// The frame's offset.
        offset: u64,
        /// Its version byte.
        version: u8,
    },
    /// `replay` was called while another replay of this spool runs.
    #[error("the spool is already being replayed")]
    AlreadyReplaying,
}

impl SpoolError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// How often `Spool::drain` looks whether the spool is empty.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Where an appended batch was written: its segment and offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpoolTicket {
    /// The segment's sequence number.
    pub segment: u64,
    /// The frame's offset in it.
    pub offset: u64,
}

/// How a spool is opened: the `spool:` config section, minus what the pipeline uses.
#[derive(Clone, Debug)]
pub struct SpoolOptions {
    /// The directory of the segments, the checkpoint and the lock.
    pub directory: PathBuf,
    /// The most bytes the segments may take.
    pub max_bytes: u64,
    /// A segment is closed once it reaches this size.
    pub segment_bytes: u64,
    /// When appends are made durable.
    pub fsync: FsyncPolicy,
    /// With `FsyncPolicy::Interval`, how often.
    pub fsync_interval: Duration,
}

impl From<&SpoolConfig> for SpoolOptions {
    fn from(c: &SpoolConfig) -> Self {
        Self {
            directory: c.directory.clone(),
            max_bytes: c.max_bytes.0,
            segment_bytes: c.segment_bytes.0,
            fsync: c.fsync,
            fsync_interval: c.fsync_interval,
        }
    }
}

/// What recovery found and repaired when the spool was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segments found.
    pub segments: u64,
    /// Records waiting for replay.
    pub records: u64,
    /// Bytes on disk after repairs.
    pub bytes: u64,
    /// Segments whose tail was torn or corrupt and cut off.
    pub truncations: u64,
    /// Bytes cut off.
    pub truncated_bytes: u64,
}

/// Counters of a running spool, for tests, benches and logs (the same as its metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Batches appended (acknowledged to their appenders).
    pub appends: u64,
    /// fsyncs of segment files.
    pub fsyncs: u64,
    /// Records waiting for replay.
    pub records: u64,
    /// Bytes on disk, and reserved by appends in progress.
    pub bytes: u64,
    /// Records replay got acknowledged.
    pub replayed_records: u64,
    /// Replayed records the previous process may have sent already (it stopped mid-batch).
    pub duplicate_records: u64,
    /// Failed sink sends (each retried).
    pub replay_failures: u64,
    /// Appends refused because the spool was full.
    pub refused: u64,
    /// Records replay skipped: the request that spooled them got them into Kafka after all.
    pub skipped_records: u64,
}

/// The segment the writer is on, published to the replayer after every commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tail {
    /// The segment being written (`open`), or the next one the writer will create.
    seq: u64,
    /// Bytes of it committed (readable by the replayer).
    len: u64,
    /// True while segment `seq` exists and is being written.
    open: bool,
}

/// State shared by appenders, the writer thread and the replayer.
struct Shared {
    dir: PathBuf,
    max_bytes: u64,
    /// Bytes of the segment files, plus bytes reserved by appends not yet written.
    used: AtomicU64,
    records: AtomicU64,
    /// When the oldest record waiting for replay was appended (Unix ms; 0: none).
    oldest_ms: AtomicU64,
    appends: AtomicU64,
    fsyncs: AtomicU64,
    replayed: AtomicU64,
    duplicates: AtomicU64,
    replay_failures: AtomicU64,
    refused: AtomicU64,
    failed: AtomicBool,
    /// Cancelled when replay's rate bound is lifted for good (the shutdown drain).
    unpaced: CancellationToken,
    /// Frames whose records were also handed to Kafka by the request that spooled them (it
    /// stopped waiting at `ack_deadline`), by where they start, with what became of that send.
    /// Replay waits for it to settle and skips a frame it delivered.
    originals: Mutex<HashMap<SpoolTicket, Original>>,
    /// Woken when an original send settles.
    original_settled: tokio::sync::Notify,
    /// Records replay skipped because their original send delivered them.
    skipped: AtomicU64,
}

/// What became of a spooled frame's original send to Kafka.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Original {
    /// Still waiting for Kafka (at most `limits.export_timeout`).
    Pending,
    /// Kafka acknowledged every record: replaying them would write them twice.
    Delivered,
    /// Failed or timed out: replay sends the frame.
    Failed,
}

impl Shared {
    /// Records what became of the original send of the frame at `ticket`.
    fn settle_original(&self, ticket: SpoolTicket, delivered: bool) {
        let state = if delivered {
            Original::Delivered
        } else {
            Original::Failed
        };
        if let Ok(mut originals) = self.originals.lock()
            && let Some(s) = originals.get_mut(&ticket)
        {
            *s = state;
        }
        self.original_settled.notify_waiters();
    }

    /// Takes the state of the original send of the frame at `ticket`, leaving `Pending` in
    /// place (`None`: the frame had none, or it was taken).
    fn take_original(&self, ticket: SpoolTicket) -> Option<Original> {
        let mut originals = self.originals.lock().ok()?;
        match originals.get(&ticket).copied() {
            Some(Original::Pending) => Some(Original::Pending),
            Some(_) => originals.remove(&ticket),
            None => None,
        }
    }
}

impl Shared {
    /// Reserves `bytes` under `max_bytes`, or says how full the spool is.
    fn reserve(&self, bytes: u64) -> Result<(), SpoolError> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes)
                    .filter(|total| *total <= self.max_bytes)
            })
            .map(|_| ())
            .map_err(|used| SpoolError::Full {
                needed: bytes,
                used,
                max: self.max_bytes,
            })
    }

    fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    fn publish_gauges(&self) {
        metrics::gauge!("weir_spool_bytes").set(self.used.load(Ordering::Relaxed) as f64);
        metrics::gauge!("weir_spool_records").set(self.records.load(Ordering::Relaxed) as f64);
        let oldest = self.oldest_ms.load(Ordering::Relaxed);
        let age = if oldest == 0 {
            0.0
        } else {
            now_ms().saturating_sub(oldest) as f64 / 1000.0
        };
        metrics::gauge!("weir_spool_oldest_record_age_seconds").set(age);
    }
}

/// The current time in Unix milliseconds (0 before 1970, which no clock we run on says).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A handle on an open spool; clones share it. The last one dropped stops the writer thread
/// (after it fsynced what it holds) and releases the directory lock.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

/// A spooled frame whose records' send to Kafka is still under way; `settle` says what
/// became of it (see `Spool::append_awaiting_original`).
pub struct OriginalSend {
    shared: Arc<Shared>,
    ticket: SpoolTicket,
    settled: bool,
}

impl OriginalSend {
    /// Where the frame was written.
    pub fn ticket(&self) -> SpoolTicket {
        self.ticket
    }

    /// Records the outcome: `delivered` when Kafka acknowledged every record, so replay skips
    /// the frame.
    pub fn settle(mut self, delivered: bool) {
        self.settled = true;
        self.shared.settle_original(self.ticket, delivered);
    }
}

impl Drop for OriginalSend {
    fn drop(&mut self) {
        if !self.settled {
            self.shared.settle_original(self.ticket, false);
        }
    }
}

struct Inner {
    shared: Arc<Shared>,
    commands: Mutex<Option<mpsc::Sender<writer::Command>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    tail: watch::Receiver<Tail>,
    recovery: Recovery,
    replaying: AtomicBool,
    /// Held for the spool's life: the directory lock.
    _lock: File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the writer's loop; joining waits for its last fsync, so a
        // spool opened again on this directory never races the old writer.
        if let Ok(mut c) = self.commands.lock() {
            c.take();
        }
        if let Some(handle) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = handle.join();
        }
    }
}

impl Spool {
    /// Opens (creating it if needed) the spool in `options.directory`: locks it, checks every
    /// frame of every segment, cuts torn or corrupt tails (counted), and starts the writer.
    /// Blocking: it reads every segment, so call it at start-up or from a blocking task.
    pub fn open(options: SpoolOptions) -> Result<Self, SpoolError> {
        let dir = options.directory.clone();
        std::fs::create_dir_all(&dir).map_err(|e| SpoolError::io(&dir, e))?;
        let lock = segment::lock_dir(&dir)?;
        let checkpoint = replay::Checkpoint::load(&dir);
        let start = checkpoint.map_or(replay::Position::default(), |c| c.acked);

        let mut recovery = Recovery::default();
        let mut oldest_ms = 0;
        let mut last_seq = None;
        for seq in segment::list_segments(&dir, 0)? {
            let path = segment::segment_path(&dir, seq);
            if seq < start.segment {
                // Replayed to the end; its deletion did not complete before a stop.
                std::fs::remove_file(&path).map_err(|e| SpoolError::io(&path, e))?;
                continue;
            }
            let count_from = if seq == start.segment {
                start.offset
            } else {
                0
            };
            let scan = segment::recover(&path, count_from)?;
            if scan.truncated_bytes > 0 {
                tracing::warn!(
                    segment = %path.display(),
                    bytes = scan.truncated_bytes,
                    "the spool segment ended in a torn or corrupt frame; cut it off, keeping every frame before it"
                );
                recovery.truncations += 1;
                recovery.truncated_bytes += scan.truncated_bytes;
                metrics::counter!("weir_spool_truncations_total").increment(1);
                metrics::counter!("weir_spool_truncated_bytes_total")
                    .increment(scan.truncated_bytes);
            }
            recovery.segments += 1;
            recovery.records += scan.records;
            recovery.bytes += scan.len;
            if oldest_ms == 0 {
                oldest_ms = scan.first_appended_at_ms.unwrap_or(0);
            }
            last_seq = Some(seq);
        }
        segment::sync_dir(&dir)?;

        let shared = Arc::new(Shared {
            dir: dir.clone(),
            max_bytes: options.max_bytes,
            used: AtomicU64::new(recovery.bytes),
            records: AtomicU64::new(recovery.records),
            oldest_ms: AtomicU64::new(oldest_ms),
            appends: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            replay_failures: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            unpaced: CancellationToken::new(),
            originals: Mutex::new(HashMap::new()),
            original_settled: tokio::sync::Notify::new(),
            skipped: AtomicU64::new(0),
        });
        shared.publish_gauges();
        // Appends go to a new segment: recovered ones are never written again.
        let next_seq = last_seq.map_or(start.segment, |s| s + 1).max(start.segment);
        let (tail_tx, tail_rx) = watch::channel(Tail {
            seq: next_seq,
            len: 0,
            open: false,
        });
        let (tx, rx) = mpsc::channel();
        let writer = writer::Writer::new(
            shared.clone(),
            options.segment_bytes.max(1),
            options.fsync,
            options.fsync_interval,
            next_seq,
            tail_tx,
        );
        let handle = std::thread::Builder::new()
            .name("weir-spool-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| SpoolError::io(&dir, e))?;
        if recovery.segments > 0 {
            tracing::info!(
                directory = %dir.display(),
                segments = recovery.segments,
                records = recovery.records,
                bytes = recovery.bytes,
                "spool opened with records to replay"
            );
        }
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                commands: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(handle)),
                tail: tail_rx,
                recovery,
                replaying: AtomicBool::new(false),
                _lock: lock,
            }),
        })
    }

    /// Appends one request's records as one frame and returns once they are durable (fsynced,
    /// with `fsync: always`). Refuses with `SpoolError::Full` when they do not fit under
    /// `max_bytes`; nothing is ever overwritten.
    pub async fn append(&self, records: &[Record]) -> Result<SpoolTicket, SpoolError> {
        self.append_frame(records, false).await
    }

    /// `append`, for records whose send to Kafka is still under way (the request stopped
    /// waiting for it): replay holds the frame back until the returned handle says what
    /// became of that send, and skips it if Kafka got every record. A handle dropped
    /// unsettled counts as a failed send.
    pub async fn append_awaiting_original(
        &self,
        records: &[Record],
    ) -> Result<OriginalSend, SpoolError> {
        let ticket = self.append_frame(records, true).await?;
        Ok(OriginalSend {
            shared: self.inner.shared.clone(),
            ticket,
            settled: false,
        })
    }

    async fn append_frame(
        &self,
        records: &[Record],
        awaits_original: bool,
    ) -> Result<SpoolTicket, SpoolError> {
        let shared = &self.inner.shared;
        if shared.failed.load(Ordering::Acquire) {
            return Err(self.refuse(SpoolError::Failed, "failed"));
        }
        let frame =
            frame::encode(records, now_ms()).map_err(|e| SpoolError::TooLarge(e.to_string()))?;
        let bytes = frame.len() as u64;
        if let Err(e) = shared.reserve(bytes) {
            return Err(self.refuse(e, "full"));
        }
        let (reply, answer) = oneshot::channel();
        let command = writer::Command::Append {
            frame,
            records: records.len() as u64,
            awaits_original,
            reply,
        };
        let sent = match self.inner.commands.lock() {
            Ok(c) => c.as_ref().is_some_and(|c| c.send(command).is_ok()),
            Err(_) => false,
        };
        if !sent {
            shared.release(bytes);
            return Err(SpoolError::Failed);
        }
        answer.await.unwrap_or(Err(SpoolError::Failed))
    }

    fn refuse(&self, e: SpoolError, reason: &'static str) -> SpoolError {
        self.inner.shared.refused.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("weir_spool_refused_total", "reason" => reason).increment(1);
        e
    }

    /// Asks the writer to close its segment, and waits until it did.
    async fn seal(&self) {
        let (reply, done) = oneshot::channel();
        let sent = match self.inner.commands.lock() {
            Ok(c) => c
                .as_ref()
                .is_some_and(|c| c.send(writer::Command::Seal { reply }).is_ok()),
            Err(_) => false,
        };
        if sent {
            let _ = done.await;
        }
    }

    /// True while appends are accepted and at least a sixteenth of `max_bytes` (at most
    /// 1 MiB) is free: what `/readyz` reports.
    pub fn has_room(&self) -> bool {
        let s = &self.inner.shared;
        let want = (s.max_bytes / 16).min(1 << 20);
        !s.failed.load(Ordering::Acquire)
            && s.max_bytes.saturating_sub(s.used.load(Ordering::Acquire)) >= want
    }

    /// Lifts replay's rate bound and waits until Kafka acknowledged every spooled record, at
    /// most `timeout`; returns how many records are left (0: drained). For shutdown, once no
    /// live traffic needs priority: a running `replay` then sends frame after frame, unpaced.
    pub async fn drain(&self, timeout: Duration) -> u64 {
        let shared = &self.inner.shared;
        shared.unpaced.cancel();
        let left = || shared.records.load(Ordering::Acquire);
        let deadline = tokio::time::Instant::now() + timeout;
        while left() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(DRAIN_POLL.min(timeout)).await;
        }
        left()
    }

    /// Records waiting for replay.
    pub fn records_waiting(&self) -> u64 {
        self.inner.shared.records.load(Ordering::Acquire)
    }

    /// Bytes the spool takes on disk (and has reserved for appends in progress).
    pub fn bytes_used(&self) -> u64 {
        self.inner.shared.used.load(Ordering::Acquire)
    }

    /// `max_bytes`.
    pub fn max_bytes(&self) -> u64 {
        self.inner.shared.max_bytes
    }

    /// What recovery found when the spool was opened.
    pub fn recovery(&self) -> &Recovery {
        &self.inner.recovery
    }

    /// The spool's counters now.
    pub fn stats(&self) -> SpoolStats {
        let s = &self.inner.shared;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SpoolStats {
            appends: load(&s.appends),
            fsyncs: load(&s.fsyncs),
            records: load(&s.records),
            bytes: load(&s.used),
            replayed_records: load(&s.replayed),
            duplicate_records: load(&s.duplicates),
            replay_failures: load(&s.replay_failures),
            refused: load(&s.refused),
            skipped_records: load(&s.skipped),
        }
    }
}
