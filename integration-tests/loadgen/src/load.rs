//! The two load shapes: a closed loop of senders that each wait for their reply, and an open
//! loop that sends on a fixed schedule whatever the replies do (latency counted from the
//! scheduled time, so a slow server cannot hide its stalls by slowing the generator down).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::client::{ExportClient, Outcome};
use crate::generator::{FreshIds, RequestPool};
use crate::report::Stats;

/// Failure code of an open-loop send that found no free in-flight slot at its scheduled time.
pub const MISSED_SCHEDULE: &str = "MISSED_SCHEDULE";

/// Where acknowledged span ids are written, one `traceid spanid` line per span.
#[derive(Debug)]
pub struct IdsSink {
    writer: Mutex<BufWriter<File>>,
    failed: AtomicBool,
}

impl IdsSink {
    /// Creates (or truncates) the file.
    pub fn create(path: &std::path::Path) -> anyhow::Result<Self> {
        let file = File::create(path)
            .with_context(|| format!("cannot create --ids-out file {}", path.display()))?;
        Ok(Self {
            writer: Mutex::new(BufWriter::with_capacity(1 << 20, file)),
            failed: AtomicBool::new(false),
        })
    }

    fn write(&self, lines: &[u8]) {
        let ok = match self.writer.lock() {
            Ok(mut writer) => writer.write_all(lines).is_ok(),
            Err(_) => false,
        };
        if !ok {
            self.failed.store(true, Ordering::Relaxed);
        }
    }

    /// Flushes the file; fails if any write failed, since a partial list would mislead.
    pub fn finish(&self) -> anyhow::Result<()> {
        let flushed = match self.writer.lock() {
            Ok(mut writer) => writer.flush().is_ok(),
            Err(_) => false,
        };
        if !flushed || self.failed.load(Ordering::Relaxed) {
            anyhow::bail!(
                "writing the --ids-out file failed: the list of acknowledged ids is incomplete"
            );
        }
        Ok(())
    }
}

/// One run's shared state.
pub struct Load {
    /// The pre-encoded requests.
    pub pool: RequestPool,
    /// The connected exporter.
    pub client: ExportClient,
    /// Longest wait for one reply.
    pub timeout: Duration,
    /// No request is started after this long.
    pub duration: Duration,
    /// No more than this many requests are started.
    pub max_requests: u64,
    /// Closed loop: pause of a sender after a failed request, so a dead server is not spun on.
    pub failure_pause: Duration,
    /// Acknowledged ids go here, when asked for.
    pub ids_out: Option<IdsSink>,
    /// The counters.
    pub stats: Mutex<Stats>,
    /// Set by SIGINT/SIGTERM: start nothing new, finish what is in flight.
    pub stop: AtomicBool,
}

impl Load {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sends request number `n` with fresh ids; latency counts from `scheduled` when given,
    /// else from the moment the body is ready.
    async fn send(
        &self,
        n: u64,
        rng: &mut SmallRng,
        ids: &mut FreshIds,
        scheduled: Option<Instant>,
    ) -> Outcome {
        let template = self.pool.get(n);
        let spans = template.spans() as u64;
        let body = template.instantiate(rng, ids);
        let records = if self.client.is_kafka() {
            template.instantiate_records(ids)
        } else {
            Vec::new()
        };
        let sent = Instant::now();
        let outcome = self
            .client
            .export(body, &records, &ids.trace_ids, self.timeout)
            .await;
        let latency = scheduled.unwrap_or(sent).elapsed();
        let lateness = scheduled.map(|scheduled| sent.saturating_duration_since(scheduled));
        // Only a full success says which spans landed: a partial one does not name them.
        if let (Outcome::Accepted { rejected: 0 }, Some(sink)) = (&outcome, &self.ids_out) {
            let mut lines = Vec::with_capacity(ids.span_ids.len() * 50);
            ids.write_lines(&mut lines);
            sink.write(&lines);
        }
        if let Ok(mut stats) = self.stats.lock() {
            stats.record(spans, &outcome, latency);
            if let Some(lateness) = lateness {
                stats.record_send_lateness(lateness);
            }
        }
        outcome
    }

    fn record_missed(&self, n: u64) {
        let spans = self.pool.get(n).spans() as u64;
        if let Ok(mut stats) = self.stats.lock() {
            stats.record_failure(spans, MISSED_SCHEDULE);
        }
    }
}

/// Runs `senders` senders that each send, wait for the reply, and send again, until the
/// duration or the request count runs out. Returns the elapsed time up to the last reply.
pub async fn closed_loop(load: Arc<Load>, senders: usize) -> Duration {
    let start = Instant::now();
    let deadline = start + load.duration;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(senders);
    for _ in 0..senders {
        let load = load.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::from_rng(&mut rand::rng());
            let mut ids = FreshIds::default();
            while !load.stopped() && Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= load.max_requests {
                    break;
                }
                if let Outcome::Failed(_) = load.send(n, &mut rng, &mut ids, None).await {
                    tokio::time::sleep(load.failure_pause).await;
                }
            }
        }));
    }
    for task in tasks {
        // A panicking sender has already printed its panic; the others' counts still stand.
        let _ = task.await;
    }
    start.elapsed()
}

/// Sends one request every `spans_per_request / rate` seconds on a fixed schedule, with at
/// most `max_in_flight` outstanding; a send that finds no free slot is counted as a
/// `MISSED_SCHEDULE` failure. Returns the elapsed time up to the last reply.
///
/// The schedule is kept by a thread of its own sleeping in the OS (`nanosleep`, tens of
/// microseconds late), not by tokio's timer: that one fires on millisecond ticks, so each send
/// would start up to a millisecond after its scheduled time, and that lateness would be
/// counted as the server's latency.
pub async fn open_loop(load: Arc<Load>, rate: f64, max_in_flight: usize) -> Duration {
    let spans_per_request = load.pool.get(0).spans() as f64;
    let interval = spans_per_request / rate;
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let runtime = tokio::runtime::Handle::current();
    let pacer = {
        let (load, slots) = (load.clone(), slots.clone());
        tokio::task::spawn_blocking(move || {
            let mut seeds = SmallRng::from_rng(&mut rand::rng());
            let start = Instant::now();
            let mut n: u64 = 0;
            while n < load.max_requests && !load.stopped() {
                // From the start, not from the previous send, so that lateness does not
                // accumulate.
                let offset = Duration::from_secs_f64(n as f64 * interval);
                if offset >= load.duration {
                    break;
                }
                let scheduled = start + offset;
                if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let load = load.clone();
                        let mut rng = SmallRng::from_rng(&mut seeds);
                        runtime.spawn(async move {
                            let mut ids = FreshIds::default();
                            load.send(n, &mut rng, &mut ids, Some(scheduled)).await;
                            drop(permit);
                        });
                    }
                    Err(_) => load.record_missed(n),
                }
                n += 1;
            }
            start
        })
    };
    let start = match pacer.await {
        Ok(start) => start,
        // The pacer panicked (and printed why); what was sent still finishes below.
        Err(_) => Instant::now(),
    };
    // Every in-flight request ends within the reply timeout; wait for all of them.
    let _all = slots.acquire_many(max_in_flight as u32).await;
    start.elapsed()
}
