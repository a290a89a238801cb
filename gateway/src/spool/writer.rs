//! The one thread that owns the segment being written: it takes every frame queued since its
//! last fsync, writes them, fsyncs once (group commit), and only then answers their appenders.
//! A thread of its own keeps the fsync off the async runtime's workers.

use super::segment::{segment_path, sync_dir};
use super::{Shared, SpoolError, SpoolTicket, Tail};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use weir_config::gateway::spool::FsyncPolicy;

/// What appenders and the replayer ask of the writer.
pub(super) enum Command {
    /// Write `frame` (holding `records` records) and answer once it is durable.
    Append {
        /// The encoded frame.
        frame: Vec<u8>,
        /// Records in it.
        records: u64,
        /// Whether the records' send to Kafka is still under way (replay waits for it).
        awaits_original: bool,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<SpoolTicket, SpoolError>>,
    },
    /// Close the segment being written (the replayer has caught up with it), so it can be
    /// deleted once replayed; the next append starts a new one.
    Seal {
        /// Answered once sealed.
        reply: oneshot::Sender<()>,
    },
}

/// The segment being written.
struct Active {
    seq: u64,
    file: File,
    /// Bytes written.
    len: u64,
    /// Bytes covered by the last fsync (or, with `fsync: interval`, answered).
    committed: u64,
}

/// The writer's state; it lives on its own thread.
pub(super) struct Writer {
    pub shared: Arc<Shared>,
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
    pub fsync_interval: Duration,
    pub next_seq: u64,
    pub tail: watch::Sender<Tail>,
    active: Option<Active>,
    /// Appends written but not yet answered.
    waiting: Vec<Waiting>,
    /// With `fsync: interval`: bytes answered but not yet fsynced, and since when.
    unsynced_since: Option<Instant>,
}

/// An append written but not yet answered.
struct Waiting {
    reply: oneshot::Sender<Result<SpoolTicket, SpoolError>>,
    ticket: SpoolTicket,
    records: u64,
    awaits_original: bool,
}

impl Writer {
    /// A writer that starts its first segment at `next_seq`.
    pub fn new(
        shared: Arc<Shared>,
        segment_bytes: u64,
        fsync: FsyncPolicy,
        fsync_interval: Duration,
        next_seq: u64,
        tail: watch::Sender<Tail>,
    ) -> Self {
        Self {
            shared,
            segment_bytes,
            fsync,
            fsync_interval,
            next_seq,
            tail,
            active: None,
            waiting: Vec::new(),
            unsynced_since: None,
        }
    }

    /// Serves commands until every sender is gone, then fsyncs what is left.
    pub fn run(mut self, commands: Receiver<Command>) {
        loop {
            let first = match self.unsynced_since {
                // With unsynced bytes, wake up in time to fsync them.
                Some(since) => {
                    let wait = self.fsync_interval.saturating_sub(since.elapsed());
                    match commands.recv_timeout(wait) {
                        Ok(c) => c,
                        Err(RecvTimeoutError::Timeout) => {
                            self.sync_now();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match commands.recv() {
                    Ok(c) => c,
                    Err(_) => break,
                },
            };
            // Group commit: everything queued while the last fsync ran goes into this one.
            self.handle(first);
            while let Ok(c) = commands.try_recv() {
                self.handle(c);
            }
            self.commit();
        }
        self.commit();
        self.sync_now();
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Append {
                frame,
                records,
                awaits_original,
                reply,
            } => self.write(frame, records, awaits_original, reply),
            Command::Seal { reply } => {
                self.commit();
                self.sync_now();
                self.close();
                let _ = reply.send(());
            }
        }
    }

    fn write(
        &mut self,
        frame: Vec<u8>,
        records: u64,
        awaits_original: bool,
        reply: oneshot::Sender<Result<SpoolTicket, SpoolError>>,
    ) {
        let bytes = frame.len() as u64;
        if self.shared.failed.load(Ordering::Acquire) {
            self.shared.release(bytes);
            let _ = reply.send(Err(SpoolError::Failed));
            return;
        }
        if self
            .active
            .as_ref()
            .is_some_and(|a| a.len >= self.segment_bytes)
        {
            // Roll: what was written to the full segment is committed before it is closed.
            self.commit();
            self.sync_now();
            self.close();
        }
        if self.active.is_none()
            && let Err(e) = self.open_next()
        {
            self.fail(&e);
            self.shared.release(bytes);
            let _ = reply.send(Err(e));
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let ticket = SpoolTicket {
            segment: active.seq,
            offset: active.len,
        };
        match active.file.write_all(&frame) {
            Ok(()) => {
                active.len += bytes;
                self.waiting.push(Waiting {
                    reply,
                    ticket,
                    records,
                    awaits_original,
                });
            }
            Err(e) => {
                // A failed write (a full disk) leaves part of a frame: cut the segment back to
                // what was committed, and fail the appends written since, which are cut too.
                let path = segment_path(&self.shared.dir, active.seq);
                let err = SpoolError::io(&path, e);
                tracing::error!(error = %err, "spool write failed; the request is refused");
                let cut = active.committed;
                let cut_back = active.file.set_len(cut).is_ok() && active.file.sync_all().is_ok();
                self.shared.release(active.len - cut + bytes);
                active.len = cut;
                let _ = reply.send(Err(err));
                for w in self.waiting.drain(..) {
                    let _ = w.reply.send(Err(SpoolError::Failed));
                }
                if !cut_back {
                    self.fail(&SpoolError::Failed);
                }
            }
        }
    }

    /// Makes the written appends durable (per the fsync policy) and answers them.
    fn commit(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if self.waiting.is_empty() {
            return;
        }
        if self.fsync == FsyncPolicy::Always {
            if let Err(e) = timed_fsync(&active.file, &self.shared) {
                // After a failed fsync the kernel may have dropped the dirty pages: nothing
                // written since the last good fsync can be trusted, and retrying would lie.
                let err = SpoolError::io(&segment_path(&self.shared.dir, active.seq), e);
                let unsure = active.len - active.committed;
                self.shared.release(unsure);
                for w in self.waiting.drain(..) {
                    let _ = w.reply.send(Err(SpoolError::Failed));
                }
                self.fail(&err);
                return;
            }
        } else {
            self.unsynced_since.get_or_insert_with(Instant::now);
        }
        active.committed = active.len;
        let appends = self.waiting.len() as u64;
        let records: u64 = self.waiting.iter().map(|w| w.records).sum();
        self.shared.appends.fetch_add(appends, Ordering::Relaxed);
        self.shared.records.fetch_add(records, Ordering::Relaxed);
        metrics::counter!("weir_spool_appends_total").increment(appends);
        self.shared.publish_gauges();
        // Before the replayer can see these frames: it must wait for their original sends.
        if let Ok(mut originals) = self.shared.originals.lock() {
            for w in self.waiting.iter().filter(|w| w.awaits_original) {
                originals.insert(w.ticket, super::Original::Pending);
            }
        }
        // The replayer may read up to here from now on.
        self.tail.send_replace(Tail {
            seq: active.seq,
            len: active.len,
            open: true,
        });
        for w in self.waiting.drain(..) {
            let _ = w.reply.send(Ok(w.ticket));
        }
    }

    /// With `fsync: interval`: fsyncs the bytes answered since the last one.
    fn sync_now(&mut self) {
        if self.unsynced_since.take().is_none() {
            return;
        }
        let Some(active) = self.active.as_ref() else {
            return;
        };
        if let Err(e) = timed_fsync(&active.file, &self.shared) {
            self.fail(&SpoolError::io(
                &segment_path(&self.shared.dir, active.seq),
                e,
            ));
        }
    }

    /// Closes the segment being written; every byte in it is committed.
    fn close(&mut self) {
        if let Some(active) = self.active.take() {
            self.next_seq = active.seq + 1;
            self.tail.send_replace(Tail {
                seq: self.next_seq,
                len: 0,
                open: false,
            });
        }
    }

    fn open_next(&mut self) -> Result<(), SpoolError> {
        let seq = self.next_seq;
        // Announced before the file exists: a replayer that lists the file must already know
        // it is being written, or it could take it for a sealed, fully replayed one.
        self.tail.send_replace(Tail {
            seq,
            len: 0,
            open: true,
        });
        let path = segment_path(&self.shared.dir, seq);
        let file = OpenOptions::new()
            .create_new(true) // never overwrite
            .append(true)
            .open(&path)
            .map_err(|e| SpoolError::io(&path, e))?;
        sync_dir(Path::new(&self.shared.dir))?;
        self.active = Some(Active {
            seq,
            file,
            len: 0,
            committed: 0,
        });
        Ok(())
    }

    /// Stops the spool: every later append is refused.
    fn fail(&mut self, err: &SpoolError) {
        tracing::error!(error = %err, "the spool stopped accepting appends");
        self.shared.failed.store(true, Ordering::Release);
    }
}

/// fsyncs `file`'s data, timed and counted.
fn timed_fsync(file: &File, shared: &Shared) -> std::io::Result<()> {
    let started = Instant::now();
    let synced = file.sync_data();
    metrics::histogram!("weir_spool_fsync_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    shared.fsyncs.fetch_add(1, Ordering::Relaxed);
    synced
}
