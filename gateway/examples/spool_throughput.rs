//! The spool's throughput on this machine's disk: concurrent appenders (each append one
//! request of 100 spans as 10 trace records of about 2.5 KB, fsynced with group commit), then a
//! replay of everything into a sink that acknowledges at once, at no rate bound.
//!
//! ```text
//! cargo run --release -p weir-gateway --example spool_throughput -- [APPENDERS] [SECONDS] [DIR]
//! ```
//!
//! Defaults: 64 appenders, 10 seconds, a temporary directory under the current one (so on
//! the disk the gateway would use, not a tmpfs). Prints spans and bytes per second of both
//! phases, and appends per fsync.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use weir_config::gateway::spool::FsyncPolicy;
use weir_exporters::kafka::{Record, RecordHeaders};
use weir_gateway::spool::{ReplaySink, Spool, SpoolOptions};

const RECORDS_PER_REQUEST: usize = 10;
const SPANS_PER_RECORD: u64 = 10;
const VALUE_BYTES: usize = 2500;

/// A sink that acknowledges at once and counts what it got.
#[derive(Default)]
struct Discard {
    spans: AtomicU64,
}

impl ReplaySink for Discard {
    type Error = std::convert::Infallible;

    async fn send(&self, records: &[Record]) -> Result<(), Self::Error> {
        let spans: u64 = records.iter().map(|r| r.items).sum();
        self.spans.fetch_add(spans, Ordering::Relaxed);
        Ok(())
    }
}

fn request(n: u64) -> Vec<Record> {
    let topic: Arc<str> = Arc::from("otlp_spans");
    let headers: RecordHeaders = Arc::from(vec![("weir.tenant".to_string(), b"bench".to_vec())]);
    (0..RECORDS_PER_REQUEST as u64)
        .map(|i| Record {
            topic: topic.clone(),
            key: format!("{n:016x}{i:016x}").into_bytes(),
            value: vec![(n + i) as u8; VALUE_BYTES],
            items: SPANS_PER_RECORD,
            headers: Some(headers.clone()),
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let appenders: u64 = args.next().map_or(Ok(64), |a| a.parse())?;
    let seconds: u64 = args.next().map_or(Ok(10), |a| a.parse())?;
    let dir = match args.next() {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir_in(std::env::current_dir()?)?,
    };
    let spool = Spool::open(SpoolOptions {
        directory: dir.path().to_path_buf(),
        max_bytes: 64 << 30,
        segment_bytes: 64 << 20,
        fsync: FsyncPolicy::Always,
        fsync_interval: Duration::from_millis(100),
    })?;

    let spans = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for a in 0..appenders {
        let (spool, spans) = (spool.clone(), spans.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = a << 32;
            while Instant::now() < deadline {
                spool.append(&request(n)).await?;
                spans.fetch_add(
                    RECORDS_PER_REQUEST as u64 * SPANS_PER_RECORD,
                    Ordering::Relaxed,
                );
                n += 1;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let append_time = started.elapsed().as_secs_f64();
    let stats = spool.stats();
    let bytes = spool.bytes_used();
    let appended = spans.load(Ordering::Relaxed);
    println!(
        "append: {appenders} appenders, {:.0} spans/s, {:.1} MB/s, {} appends, {:.1} appends per fsync",
        appended as f64 / append_time,
        bytes as f64 / append_time / 1e6,
        stats.appends,
        stats.appends as f64 / stats.fsyncs.max(1) as f64,
    );

    let sink = Arc::new(Discard::default());
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let replay = {
        let (spool, sink, cancel) = (spool.clone(), sink.clone(), cancel.clone());
        tokio::spawn(async move { spool.replay(&*sink, u64::MAX, cancel).await })
    };
    while sink.spans.load(Ordering::Relaxed) < appended {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let replay_time = started.elapsed().as_secs_f64();
    cancel.cancel();
    replay.await??;
    println!(
        "replay: {:.0} spans/s, {:.1} MB/s",
        appended as f64 / replay_time,
        bytes as f64 / replay_time / 1e6,
    );
    Ok(())
}
