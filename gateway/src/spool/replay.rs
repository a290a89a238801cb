//! The replayer: reads the spool oldest first, one frame (one request's records) at a time,
//! hands it to a sink until Kafka acknowledged it, and deletes each segment once every record
//! in it was acknowledged. Its progress is kept in a small checkpoint file.

use super::frame;
use super::segment::{self, ReadError, list_segments, segment_path, sync_dir};
use super::{Original, Shared, Spool, SpoolError, SpoolTicket, Tail};
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use weir_exporters::kafka::Record;

/// Where replayed records go: the Kafka exporter, in the gateway.
pub trait ReplaySink: Send + Sync {
    /// Why a send failed (it is logged, and the send retried).
    type Error: std::fmt::Display;

    /// Produces `records` (each to its topic, with its key and headers) and returns `Ok` only
    /// once Kafka acknowledged every one of them.
    fn send(&self, records: &[Record]) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// The first delay after a failed send; it doubles up to `MAX_BACKOFF`.
const INITIAL_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long the replayer waits for an append before it refreshes its gauges, and how long the
/// segment being written must stay idle, fully replayed, before it is sealed and deleted.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// How often replay looks again at an original send it waits for (a fallback: settling wakes it).
const ORIGINAL_RECHECK: Duration = Duration::from_millis(100);
/// The longest the checkpoint stays unsynced: a power loss replays at most this much again.
const CHECKPOINT_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// A place in the spool: a segment and a byte offset in it. Ordered as the log is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// Replay's progress: everything before `acked` was acknowledged by Kafka; everything before
/// `sent` may have been handed to it (`sent >= acked`; the gap is what a crash can duplicate).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Checkpoint {
    pub acked: Position,
    pub sent: Position,
}

const CHECKPOINT_FILE: &str = "replay.checkpoint";
const CHECKPOINT_VERSION: u8 = 1;
/// version (u8), 3 zero bytes, acked segment, acked offset, sent segment, sent offset (u64 LE
/// each), CRC-32 of the 36 bytes before it (u32 LE).
const CHECKPOINT_LEN: usize = 40;

impl Checkpoint {
    /// The checkpoint in `dir`; `None` when there is none, or it is damaged (logged: replay
    /// then starts at the oldest segment, which can only duplicate, never lose).
    pub fn load(dir: &Path) -> Option<Self> {
        let path = dir.join(CHECKPOINT_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the spool's replay checkpoint; replaying from the oldest segment");
                return None;
            }
        };
        let parsed = Self::decode(&bytes);
        if parsed.is_none() {
            tracing::warn!(path = %path.display(), "the spool's replay checkpoint is damaged; replaying from the oldest segment");
        }
        parsed
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; CHECKPOINT_LEN] = b.try_into().ok()?;
        let crc = u32::from_le_bytes([b[36], b[37], b[38], b[39]]);
        if b[0] != CHECKPOINT_VERSION || crc32fast::hash(&b[..36]) != crc {
            return None;
        }
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(w)
        };
        Some(Self {
            acked: Position {
                segment: word(4),
                offset: word(12),
            },
            sent: Position {
                segment: word(20),
                offset: word(28),
            },
        })
    }

    fn encode(&self) -> [u8; CHECKPOINT_LEN] {
        let mut b = [0u8; CHECKPOINT_LEN];
        b[0] = CHECKPOINT_VERSION;
        for (at, v) in [
            (4, self.acked.segment),
            (12, self.acked.offset),
            (20, self.sent.segment),
            (28, self.sent.offset),
        ] {
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        let crc = crc32fast::hash(&b[..36]);
        b[36..].copy_from_slice(&crc.to_le_bytes());
        b
    }
}

/// The checkpoint file, rewritten in place (40 bytes, one sector: a crash leaves the old or
/// the new value, and the CRC tells a torn one).
struct CheckpointFile {
    file: Arc<File>,
    path: PathBuf,
    last_sync: Instant,
}

impl CheckpointFile {
    /// Opens (creating) the file and durably writes `initial` to it. Blocking.
    fn create(dir: &Path, initial: &Checkpoint) -> Result<Self, SpoolError> {
        let path = dir.join(CHECKPOINT_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| SpoolError::io(&path, e))?;
        file.write_all_at(&initial.encode(), 0)
            .and_then(|()| file.sync_data())
            .map_err(|e| SpoolError::io(&path, e))?;
        sync_dir(dir)?;
        Ok(Self {
            file: Arc::new(file),
            path,
            last_sync: Instant::now(),
        })
    }

    /// Writes `c` to the page cache (it survives a process crash); fsyncs when the last fsync
    /// is older than `CHECKPOINT_SYNC_INTERVAL`, or when `sync`.
    async fn write(&mut self, c: &Checkpoint, sync: bool) -> Result<(), SpoolError> {
        self.file
            .write_all_at(&c.encode(), 0)
            .map_err(|e| SpoolError::io(&self.path, e))?;
        if sync || self.last_sync.elapsed() >= CHECKPOINT_SYNC_INTERVAL {
            let (file, path) = (self.file.clone(), self.path.clone());
            blocking(&self.path, move || {
                file.sync_data().map_err(|e| SpoolError::io(&path, e))
            })
            .await?;
            self.last_sync = Instant::now();
        }
        Ok(())
    }
}

/// Runs `f` on the blocking pool: file system calls that may wait on the disk stay off the
/// runtime's workers. `dir` names the spool if the task itself fails.
async fn blocking<T: Send + 'static>(
    dir: &Path,
    f: impl FnOnce() -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, SpoolError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(SpoolError::io(dir, std::io::Error::other(e))))
}

/// The segment the replayer reads.
struct Reading {
    seq: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Its length once the writer closed it (it never changes after).
    sealed_len: Option<u64>,
}

/// Resets the spool's "replay running" flag when a replay ends, however it ends.
struct ReplayGuard<'a>(&'a AtomicBool);

impl Drop for ReplayGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

fn sub(counter: &AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
        Some(v.saturating_sub(n))
    });
}

/// What one step of the replay loop did.
enum Step {
    /// Go on at once.
    Continue,
    /// Cancelled: stop.
    Stop,
}

/// The replay loop's state.
struct Replayer<'a, S> {
    spool: &'a Spool,
    shared: &'a Shared,
    sink: &'a S,
    cancel: &'a CancellationToken,
    bytes_per_second: f64,
    tail: watch::Receiver<Tail>,
    checkpoint: CheckpointFile,
    /// The first byte not yet acknowledged.
    pos: Position,
    /// Frames ending at or before this were possibly sent by a previous replay that stopped
    /// before their acknowledgement was checkpointed.
    resend_until: Position,
    reading: Option<Reading>,
    next_send_at: Instant,
}

impl Spool {
    /// Drains the spool into `sink` until `cancel` fires: oldest first, one frame (one
    /// request's records, keys kept) at a time, at most `bytes_per_second` record bytes per
    /// second. A failed send is retried with backoff; a segment is deleted only once every
    /// record in it was acknowledged. Progress is checkpointed, so a replay that stops (or
    /// crashes) resumes where it was, re-sending at most the batch it was sending (counted in
    /// `weir_spool_replay_duplicate_records_total`).
    pub async fn replay<S: ReplaySink>(
        &self,
        sink: &S,
        bytes_per_second: u64,
        cancel: CancellationToken,
    ) -> Result<(), SpoolError> {
        if self.inner.replaying.swap(true, Ordering::AcqRel) {
            return Err(SpoolError::AlreadyReplaying);
        }
        let _guard = ReplayGuard(&self.inner.replaying);
        let shared = &*self.inner.shared;
        let dir = shared.dir.clone();
        let previous = {
            let dir = dir.clone();
            blocking(&shared.dir, move || Ok(Checkpoint::load(&dir))).await?
        }
        .unwrap_or_default();
        let resend_until = previous.sent.max(previous.acked);
        let initial = Checkpoint {
            acked: previous.acked,
            sent: resend_until,
        };
        let checkpoint =
            blocking(&shared.dir, move || CheckpointFile::create(&dir, &initial)).await?;
        let mut replayer = Replayer {
            spool: self,
            shared,
            sink,
            cancel: &cancel,
            bytes_per_second: bytes_per_second.max(1) as f64,
            tail: self.inner.tail.clone(),
            checkpoint,
            pos: previous.acked,
            resend_until,
            reading: None,
            next_send_at: Instant::now(),
        };
        let mut backoff = INITIAL_BACKOFF;
        loop {
            shared.publish_gauges();
            if cancel.is_cancelled() {
                break;
            }
            match replayer.step().await {
                Ok(Step::Continue) => backoff = INITIAL_BACKOFF,
                Ok(Step::Stop) => break,
                Err(e) => {
                    // The disk may recover (a transient error): retry rather than leave the
                    // spool undrained.
                    tracing::warn!(error = %e, retry_in = ?backoff, "spool replay failed");
                    replayer.reading = None;
                    if !sleep_or_cancel(backoff, &cancel).await {
                        break;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        let last = replayer.current_checkpoint();
        replayer.checkpoint.write(&last, true).await
    }
}

/// Sleeps for `d`; false when `cancel` fired first.
async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

impl<S: ReplaySink> Replayer<'_, S> {
    fn current_checkpoint(&self) -> Checkpoint {
        Checkpoint {
            acked: self.pos,
            sent: self.pos.max(self.resend_until),
        }
    }

    /// Opens the oldest segment at or after `pos`; `None` when there is none.
    async fn open_segment(&mut self) -> Result<Option<Reading>, SpoolError> {
        let dir = self.shared.dir.clone();
        let from = self.pos.segment;
        let first = blocking(&self.shared.dir, move || {
            list_segments(&dir, from).map(|s| s.first().copied())
        })
        .await?;
        let Some(seq) = first else {
            return Ok(None);
        };
        if seq != self.pos.segment {
            self.pos = Position {
                segment: seq,
                offset: 0,
            };
        }
        let path = segment_path(&self.shared.dir, seq);
        let file = {
            let path = path.clone();
            blocking(&self.shared.dir, move || {
                File::open(&path).map_err(|e| SpoolError::io(&path, e))
            })
            .await?
        };
        Ok(Some(Reading {
            seq,
            path,
            file: Arc::new(file),
            sealed_len: None,
        }))
    }

    async fn step(&mut self) -> Result<Step, SpoolError> {
        if self.reading.is_none() {
            match self.open_segment().await? {
                Some(r) => self.reading = Some(r),
                None => {
                    self.shared.oldest_ms.store(0, Ordering::Relaxed);
                    self.wait_for_append().await;
                    return Ok(Step::Continue);
                }
            }
        }
        let Some(reading) = self.reading.as_mut() else {
            return Ok(Step::Continue);
        };
        let tail = *self.tail.borrow_and_update();
        let writing = tail.open && tail.seq == reading.seq;
        let limit = if writing {
            tail.len
        } else if let Some(len) = reading.sealed_len {
            len
        } else {
            let (file, path) = (reading.file.clone(), reading.path.clone());
            let len = blocking(&self.shared.dir, move || {
                file.metadata()
                    .map(|m| m.len())
                    .map_err(|e| SpoolError::io(&path, e))
            })
            .await?;
            reading.sealed_len = Some(len);
            len
        };

        if self.pos.offset >= limit {
            if !writing {
                return self.delete_segment(limit).await;
            }
            // Caught up with the writer: wait for an append; a segment left idle is sealed,
            // so that it is deleted and the spool's disk use goes back to zero.
            self.shared.oldest_ms.store(0, Ordering::Relaxed);
            if !self.wait_for_append().await && !self.cancel.is_cancelled() {
                let now = *self.tail.borrow();
                if now.open && now.seq == self.pos.segment && now.len == self.pos.offset {
                    self.spool.seal().await;
                }
            }
            return Ok(Step::Continue);
        }

        let (file, path, offset) = (reading.file.clone(), reading.path.clone(), self.pos.offset);
        let seq = reading.seq;
        let read =
            tokio::task::spawn_blocking(move || segment::read_frame(&file, &path, offset, limit))
                .await
                .map_err(|e| SpoolError::io(&self.shared.dir, std::io::Error::other(e)))?;
        let frame = match read {
            Ok(f) => f,
            Err(ReadError::Io { path, source, .. }) => return Err(SpoolError::Io { path, source }),
            Err(e @ ReadError::Corrupt { .. }) => {
                // Changed on disk after recovery checked it: nothing after it can be framed.
                tracing::error!(error = %e, "skipping the rest of a spool segment that no longer passes its CRC");
                metrics::counter!("weir_spool_truncations_total").increment(1);
                metrics::counter!("weir_spool_truncated_bytes_total").increment(limit - offset);
                self.pos.offset = limit;
                return Ok(Step::Continue);
            }
        };
        let (appended_at, count) = frame::body_prefix(&frame.body).unwrap_or((0, 0));
        let count = u64::from(count);
        self.shared.oldest_ms.store(appended_at, Ordering::Relaxed);
        self.shared.publish_gauges();
        let end = Position {
            segment: self.pos.segment,
            offset: self.pos.offset + frame.len,
        };
        // The request that spooled this frame may have got its records into Kafka after all.
        let ticket = SpoolTicket {
            segment: self.pos.segment,
            offset: self.pos.offset,
        };
        match self.original_of(ticket).await {
            None => return Ok(Step::Stop),
            Some(false) => {}
            Some(true) => {
                self.shared.skipped.fetch_add(count, Ordering::Relaxed);
                metrics::counter!("weir_spool_replay_skipped_records_total").increment(count);
                sub(&self.shared.records, count);
                self.pos = end;
                let done = self.current_checkpoint();
                self.checkpoint.write(&done, false).await?;
                return Ok(Step::Continue);
            }
        }
        let records = match frame::decode(&frame.body) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(segment = seq, offset, error = %e, "skipping a spool frame that does not decode");
                metrics::counter!("weir_spool_truncations_total").increment(1);
                metrics::counter!("weir_spool_truncated_bytes_total").increment(frame.len);
                sub(&self.shared.records, count);
                self.pos = end;
                return Ok(Step::Continue);
            }
        };
        drop(frame);

        // Pace: each frame's bytes buy its share of a second before the next may go.
        if !self.sleep_until(self.next_send_at).await {
            return Ok(Step::Stop);
        }
        let cost =
            Duration::from_secs_f64((end.offset - self.pos.offset) as f64 / self.bytes_per_second);
        self.next_send_at = self.next_send_at.max(Instant::now()) + cost;
        // Marked as maybe sent before it is: a crash from here on re-sends it, counted.
        let maybe_sent = Checkpoint {
            acked: self.pos,
            sent: end.max(self.resend_until),
        };
        self.checkpoint.write(&maybe_sent, false).await?;
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let result = tokio::select! {
                _ = self.cancel.cancelled() => return Ok(Step::Stop),
                r = self.sink.send(&records) => r,
            };
            match result {
                Ok(()) => break,
                Err(e) => {
                    self.shared.replay_failures.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("weir_spool_replay_failures_total").increment(1);
                    // While Kafka is down the oldest record's age is what operators watch.
                    self.shared.publish_gauges();
                    tracing::warn!(error = %e, records = records.len(), retry_in = ?backoff, "replaying spooled records failed; retrying");
                    if !sleep_or_cancel(backoff, self.cancel).await {
                        return Ok(Step::Stop);
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        if end <= self.resend_until {
            self.shared.duplicates.fetch_add(count, Ordering::Relaxed);
            metrics::counter!("weir_spool_replay_duplicate_records_total").increment(count);
        }
        self.pos = end;
        sub(&self.shared.records, count);
        self.shared.replayed.fetch_add(count, Ordering::Relaxed);
        metrics::counter!("weir_spool_replayed_records_total").increment(count);
        let done = self.current_checkpoint();
        self.checkpoint.write(&done, false).await?;
        Ok(Step::Continue)
    }

    /// Deletes the segment being read, every record of which was acknowledged, and moves on.
    async fn delete_segment(&mut self, len: u64) -> Result<Step, SpoolError> {
        let Some(reading) = self.reading.take() else {
            return Ok(Step::Continue);
        };
        let dir = self.shared.dir.clone();
        let path = reading.path.clone();
        drop(reading);
        blocking(&self.shared.dir, move || {
            std::fs::remove_file(&path).map_err(|e| SpoolError::io(&path, e))?;
            sync_dir(&dir)
        })
        .await?;
        self.shared.release(len);
        self.pos = Position {
            segment: self.pos.segment + 1,
            offset: 0,
        };
        let c = self.current_checkpoint();
        self.checkpoint.write(&c, false).await?;
        Ok(Step::Continue)
    }

    /// Whether the frame at `ticket` was delivered by its original send, once that send
    /// settled (at most `limits.export_timeout` after the frame was spooled); `None` when
    /// cancelled while waiting.
    async fn original_of(&self, ticket: SpoolTicket) -> Option<bool> {
        loop {
            // Registered before the look, so that a settlement in between is not missed.
            let settled = self.shared.original_settled.notified();
            match self.shared.take_original(ticket) {
                Some(Original::Pending) => {}
                Some(Original::Delivered) => return Some(true),
                Some(Original::Failed) | None => return Some(false),
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return None,
                _ = settled => {}
                _ = tokio::time::sleep(ORIGINAL_RECHECK) => {}
            }
        }
    }

    /// Waits for the writer to commit more, at most `IDLE_TICK`; true when it did.
    async fn wait_for_append(&mut self) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            r = self.tail.changed() => {
                if r.is_err() {
                    // The writer is gone (the spool is closing): do not spin.
                    sleep_or_cancel(IDLE_TICK, self.cancel).await;
                }
                r.is_ok()
            }
            _ = tokio::time::sleep(IDLE_TICK) => false,
        }
    }

    /// Sleeps until `at`, or less once the rate bound is lifted (`Spool::drain`); false when
    /// cancelled first.
    async fn sleep_until(&self, at: Instant) -> bool {
        // The timer's resolution is a millisecond: a sleep already due would still cost one.
        if at <= Instant::now() || self.shared.unpaced.is_cancelled() {
            return !self.cancel.is_cancelled();
        }
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            _ = self.shared.unpaced.cancelled() => !self.cancel.is_cancelled(),
            _ = tokio::time::sleep_until(at.into()) => true,
        }
    }
}
