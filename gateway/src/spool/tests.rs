//! The spool's tests: framing, group commit, recovery from torn and corrupt tails, a full
//! spool, and replay (deletion after acknowledgement, resumption after a crash, retries, rate).

use super::frame;
use super::replay::Checkpoint;
use super::segment::{list_segments, segment_path};
use super::*;
use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use weir_exporters::kafka::RecordHeaders;

fn options(dir: &Path) -> SpoolOptions {
    SpoolOptions {
        directory: dir.to_path_buf(),
        max_bytes: 64 << 20,
        segment_bytes: 1 << 20,
        fsync: FsyncPolicy::Always,
        fsync_interval: Duration::from_millis(10),
    }
}

/// A request's worth of trace records: `n` records with distinct keys, sharing headers.
fn batch(id: u32, n: u32) -> Vec<Record> {
    let topic: Arc<str> = Arc::from("otlp_spans");
    let headers: RecordHeaders = Arc::from(vec![
        ("weir.tenant".to_string(), b"payments".to_vec()),
        ("x-env".to_string(), vec![0, 159, 146, 150]),
    ]);
    (0..n)
        .map(|i| Record {
            topic: topic.clone(),
            key: format!("{id:016x}{i:016x}").into_bytes(),
            value: vec![(id + i) as u8; 100 + i as usize],
            items: u64::from(i + 1),
            headers: (i % 2 == 0).then(|| headers.clone()),
        })
        .collect()
}

/// What identifies a record, for comparing what was appended with what was replayed.
type Seen = (
    String,
    Vec<u8>,
    Vec<u8>,
    u64,
    Option<Vec<(String, Vec<u8>)>>,
);

fn seen(r: &Record) -> Seen {
    (
        r.topic.to_string(),
        r.key.clone(),
        r.value.clone(),
        r.items,
        r.headers.as_ref().map(|h| h.to_vec()),
    )
}

/// A sink that keeps what it was sent; it fails its first `fail_first` sends, and with
/// `hang_after` set, never answers once it has acknowledged that many batches.
#[derive(Default)]
struct Collect {
    batches: Mutex<Vec<Vec<Seen>>>,
    calls: AtomicUsize,
    fail_first: usize,
    hang_after: Option<usize>,
}

impl ReplaySink for Collect {
    type Error = String;

    async fn send(&self, records: &[Record]) -> Result<(), String> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if call < self.fail_first {
            return Err(format!("broker down (call {call})"));
        }
        if self
            .hang_after
            .is_some_and(|n| self.batches.lock().unwrap().len() >= n)
        {
            std::future::pending::<()>().await;
        }
        self.batches
            .lock()
            .unwrap()
            .push(records.iter().map(seen).collect());
        Ok(())
    }
}

impl Collect {
    fn records(&self) -> Vec<Seen> {
        self.batches.lock().unwrap().concat()
    }
}

/// Replays `spool` into `sink` in a task; cancel the token to stop it.
fn start_replay(
    spool: &Spool,
    sink: &Arc<Collect>,
    rate: u64,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), SpoolError>>,
) {
    let cancel = CancellationToken::new();
    let (spool, sink, c) = (spool.clone(), sink.clone(), cancel.clone());
    let task = tokio::spawn(async move { spool.replay(&*sink, rate, c).await });
    (cancel, task)
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn segment_files(dir: &Path) -> Vec<u64> {
    list_segments(dir, 0).unwrap()
}

fn last_segment(dir: &Path) -> PathBuf {
    let seqs = segment_files(dir);
    segment_path(dir, *seqs.last().expect("a segment"))
}

#[test]
fn frames_round_trip_and_share_topics_and_headers() {
    let records = batch(7, 5);
    let encoded = frame::encode(&records, 1234).unwrap();
    let header = frame::FrameHeader::parse(encoded[..frame::HEADER_LEN].try_into().unwrap());
    assert_eq!(header.frame_len(), encoded.len() as u64);
    let body = &encoded[frame::HEADER_LEN..];
    assert!(header.matches(body));
    assert_eq!(frame::body_prefix(body), Some((1234, 5)));
    let decoded = frame::decode(body).unwrap();
    assert_eq!(
        decoded.iter().map(seen).collect::<Vec<_>>(),
        records.iter().map(seen).collect::<Vec<_>>()
    );
    assert!(Arc::ptr_eq(&decoded[0].topic, &decoded[4].topic));
    let (h0, h2) = (decoded[0].headers.as_ref(), decoded[2].headers.as_ref());
    assert!(Arc::ptr_eq(h0.unwrap(), h2.unwrap()));
    // Every single flipped bit is caught.
    for i in [0, 5, 8, 20, encoded.len() - 1] {
        let mut bad = encoded.clone();
        bad[i] ^= 0x10;
        let h = frame::FrameHeader::parse(bad[..frame::HEADER_LEN].try_into().unwrap());
        let ok = h.frame_len() == bad.len() as u64 && h.matches(&bad[frame::HEADER_LEN..]);
        assert!(!ok, "a flip at byte {i} went unnoticed");
    }
    // An empty batch is a valid frame too.
    let empty = frame::encode(&[], 1).unwrap();
    assert!(
        frame::decode(&empty[frame::HEADER_LEN..])
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_replay_in_order_with_everything_kept_then_segments_go() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.segment_bytes = 4096; // several segments
    let spool = Spool::open(opts).unwrap();
    let mut appended = Vec::new();
    let mut last = None;
    for id in 0..20 {
        let b = batch(id, 1 + id % 4);
        let ticket = spool.append(&b).await.unwrap();
        assert!(last < Some(ticket), "tickets grow");
        last = Some(ticket);
        appended.extend(b.iter().map(seen));
    }
    assert!(segment_files(dir.path()).len() > 2);
    assert_eq!(spool.stats().records, appended.len() as u64);

    let sink = Arc::new(Collect::default());
    let (cancel, task) = start_replay(&spool, &sink, 1 << 30);
    until("every record replayed", || {
        sink.records().len() == appended.len()
    })
    .await;
    assert_eq!(sink.records(), appended, "same records, same order");
    // The last segment is sealed and deleted once replay stayed caught up for a while.
    until("the spool emptied", || spool.bytes_used() == 0).await;
    assert!(segment_files(dir.path()).is_empty());
    assert_eq!(spool.stats().records, 0);
    assert_eq!(spool.stats().replayed_records, appended.len() as u64);

    // Appends go on after replay caught up, into a new segment.
    let more = batch(99, 2);
    spool.append(&more).await.unwrap();
    until("the new batch replayed", || {
        sink.records().len() == appended.len() + 2
    })
    .await;
    cancel.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(spool.stats().duplicate_records, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(options(dir.path())).unwrap();
    let mut tasks = Vec::new();
    for t in 0..32 {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                spool.append(&batch(t * 100 + i, 3)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = spool.stats();
    assert_eq!(stats.appends, 320);
    assert!(
        stats.fsyncs < stats.appends,
        "group commit: {} fsyncs for {} appends",
        stats.fsyncs,
        stats.appends
    );
    drop(spool);
    let reopened = Spool::open(options(dir.path())).unwrap();
    assert_eq!(reopened.recovery().records, 320 * 3);
    assert_eq!(reopened.recovery().truncations, 0);
}

/// Appends three batches of 2 records, closes the spool, damages the last segment with
/// `damage`, reopens it, and returns the reopened spool and what replay delivers.
async fn damaged(damage: impl FnOnce(&Path, u64)) -> (Spool, Vec<Seen>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(options(dir.path())).unwrap();
    let mut tickets = Vec::new();
    for id in 0..3 {
        tickets.push(spool.append(&batch(id, 2)).await.unwrap());
    }
    drop(spool);
    damage(&last_segment(dir.path()), tickets[2].offset);
    let spool = Spool::open(options(dir.path())).unwrap();
    let sink = Arc::new(Collect::default());
    let (cancel, task) = start_replay(&spool, &sink, 1 << 30);
    until("replay caught up", || spool.stats().records == 0).await;
    cancel.cancel();
    task.await.unwrap().unwrap();
    let got = sink.records();
    (spool, got, dir)
}

fn expected(ids: std::ops::Range<u32>) -> Vec<Seen> {
    ids.flat_map(|id| batch(id, 2)).map(|r| seen(&r)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_and_the_rest_replays() {
    let (spool, got, _dir) = damaged(|path, last_frame_at| {
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.set_len(last_frame_at + 20).unwrap(); // mid-frame, as a crash mid-write leaves it
    })
    .await;
    let r = spool.recovery();
    assert_eq!((r.truncations, r.truncated_bytes), (1, 20));
    assert_eq!(r.records, 4);
    assert_eq!(got, expected(0..2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_last_frame_is_cut_and_the_rest_replays() {
    let (spool, got, _dir) = damaged(|path, last_frame_at| {
        let mut bytes = std::fs::read(path).unwrap();
        let at = last_frame_at as usize + 40;
        bytes[at] ^= 0xff;
        std::fs::write(path, &bytes).unwrap();
    })
    .await;
    let r = spool.recovery();
    assert_eq!(r.truncations, 1);
    assert!(r.truncated_bytes > 40);
    assert_eq!(got, expected(0..2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_the_last_frame_is_cut_and_every_frame_replays() {
    let (spool, got, _dir) = damaged(|path, _| {
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(&[0xab; 37]).unwrap();
    })
    .await;
    let r = spool.recovery();
    assert_eq!((r.truncations, r.truncated_bytes), (1, 37));
    assert_eq!(got, expected(0..3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_refuses_and_keeps_what_it_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.max_bytes = 8 << 10;
    opts.segment_bytes = 2 << 10;
    let spool = Spool::open(opts.clone()).unwrap();
    let mut accepted = Vec::new();
    let mut refusals = 0;
    for id in 0..100 {
        let b = batch(id, 2);
        match spool.append(&b).await {
            Ok(_) => accepted.extend(b.iter().map(seen)),
            Err(SpoolError::Full { needed, used, max }) => {
                assert!(used + needed > max);
                refusals += 1;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert!(refusals > 0 && !accepted.is_empty());
    assert_eq!(spool.stats().refused, refusals);
    assert!(spool.bytes_used() <= opts.max_bytes);
    assert!(!spool.has_room());
    drop(spool);

    let spool = Spool::open(opts).unwrap();
    assert_eq!(spool.recovery().records, accepted.len() as u64);
    let sink = Arc::new(Collect::default());
    let (cancel, task) = start_replay(&spool, &sink, 1 << 30);
    until("everything accepted replayed", || {
        sink.records().len() == accepted.len()
    })
    .await;
    assert_eq!(sink.records(), accepted);
    until("room again", || spool.has_room()).await;
    cancel.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_stay_until_acknowledged_and_failures_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.segment_bytes = 2048;
    let spool = Spool::open(opts).unwrap();
    let mut appended = Vec::new();
    for id in 0..6 {
        let b = batch(id, 3);
        spool.append(&b).await.unwrap();
        appended.extend(b.iter().map(seen));
    }
    let segments = segment_files(dir.path());
    let bytes = spool.bytes_used();
    let sink = Arc::new(Collect {
        fail_first: 4,
        ..Collect::default()
    });
    let (cancel, task) = start_replay(&spool, &sink, 1 << 30);
    until("four failed sends", || {
        sink.calls.load(Ordering::SeqCst) >= 3
    })
    .await;
    // Nothing acknowledged yet: every segment is still there.
    assert_eq!(segment_files(dir.path()), segments);
    assert_eq!(spool.bytes_used(), bytes);
    until("everything replayed", || {
        sink.records().len() == appended.len()
    })
    .await;
    assert_eq!(sink.records(), appended, "retried, in order, once each");
    assert_eq!(spool.stats().replay_failures, 4);
    until("segments deleted", || segment_files(dir.path()).is_empty()).await;
    cancel.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_killed_mid_batch_resumes_without_loss_and_counts_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.segment_bytes = 2048;
    let spool = Spool::open(opts.clone()).unwrap();
    let mut appended = Vec::new();
    for id in 0..10 {
        let b = batch(id, 2);
        spool.append(&b).await.unwrap();
        appended.extend(b.iter().map(seen));
    }
    // The first replay acknowledges 4 batches, then hangs inside the 5th send: killed there.
    let first = Arc::new(Collect {
        hang_after: Some(4),
        ..Collect::default()
    });
    let (_cancel, task) = start_replay(&spool, &first, 1 << 30);
    until("the fifth send started", || {
        first.calls.load(Ordering::SeqCst) == 5
    })
    .await;
    task.abort();
    let _ = task.await;
    drop(spool);

    let spool = Spool::open(opts).unwrap();
    assert_eq!(
        spool.recovery().records,
        12,
        "the 4 acknowledged batches are not replayed"
    );
    let second = Arc::new(Collect::default());
    let (cancel, task) = start_replay(&spool, &second, 1 << 30);
    until("the rest replayed", || second.records().len() == 12).await;
    cancel.cancel();
    task.await.unwrap().unwrap();
    let mut delivered = first.records();
    delivered.extend(second.records());
    let unique: HashSet<_> = delivered.iter().collect();
    assert_eq!(unique.len(), appended.len(), "nothing lost");
    assert_eq!(second.records(), appended[8..].to_vec());
    // The 5th batch (2 records) may have reached Kafka before the kill: counted.
    assert_eq!(spool.stats().duplicate_records, 2);
    let c = Checkpoint::load(dir.path()).unwrap();
    assert_eq!(c.acked, c.sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_keeps_to_its_rate() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(options(dir.path())).unwrap();
    let mut frame_bytes = 0;
    for id in 0..6 {
        let before = spool.bytes_used();
        spool.append(&batch(id, 4)).await.unwrap();
        frame_bytes = spool.bytes_used() - before;
    }
    // Six frames at two frames' worth of bytes per second: the 6th goes after ~2.5 s.
    let rate = frame_bytes * 2;
    let sink = Arc::new(Collect::default());
    let started = Instant::now();
    let (cancel, task) = start_replay(&spool, &sink, rate);
    until("half replayed", || sink.batches.lock().unwrap().len() >= 3).await;
    let half = started.elapsed();
    until("all replayed", || sink.batches.lock().unwrap().len() == 6).await;
    let all = started.elapsed();
    cancel.cancel();
    task.await.unwrap().unwrap();
    assert!(half >= Duration::from_millis(900), "3 frames took {half:?}");
    assert!(all >= Duration::from_millis(2400), "6 frames took {all:?}");
    assert!(all < Duration::from_secs(6), "6 frames took {all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lifts_the_rate_bound_and_waits_until_everything_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(options(dir.path())).unwrap();
    let mut frame_bytes = 0;
    for id in 0..20 {
        let before = spool.bytes_used();
        spool.append(&batch(id, 2)).await.unwrap();
        frame_bytes = spool.bytes_used() - before;
    }
    // Paced, the 20 frames would take 20 s: a frame's worth of bytes per second.
    let sink = Arc::new(Collect::default());
    let (cancel, task) = start_replay(&spool, &sink, frame_bytes);
    until("the first frame replayed", || {
        !sink.batches.lock().unwrap().is_empty()
    })
    .await;
    let started = Instant::now();
    let left = spool.drain(Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert_eq!(left, 0, "records left after the drain");
    assert!(took < Duration::from_secs(3), "the drain took {took:?}");
    assert_eq!(sink.records(), expected(0..20));
    cancel.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_gives_up_after_its_timeout_and_keeps_what_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(options(dir.path())).unwrap();
    for id in 0..5 {
        spool.append(&batch(id, 2)).await.unwrap();
    }
    // Kafka down: every send fails.
    let sink = Arc::new(Collect {
        fail_first: usize::MAX,
        ..Collect::default()
    });
    let (cancel, task) = start_replay(&spool, &sink, 1 << 30);
    let started = Instant::now();
    let left = spool.drain(Duration::from_millis(500)).await;
    let took = started.elapsed();
    assert_eq!(
        left, 10,
        "records left after a drain that could send nothing"
    );
    assert!(
        (Duration::from_millis(500)..Duration::from_secs(2)).contains(&took),
        "the drain took {took:?}"
    );
    cancel.cancel();
    task.await.unwrap().unwrap();
    drop(spool);
    let reopened = Spool::open(options(dir.path())).unwrap();
    assert_eq!(reopened.recovery().records, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_whose_original_send_delivered_it_is_skipped_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(options(dir.path())).unwrap();
    let original = spool.append_awaiting_original(&batch(0, 2)).await.unwrap();
    spool.append(&batch(1, 2)).await.unwrap();
    let sink = Arc::new(Collect::default());
    let (cancel, task) = start_replay(&spool, &sink, 1 << 30);
    // Held back while the original send is under way, and the frames after it too (order).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        sink.records().is_empty(),
        "replayed before the original send settled"
    );
    original.settle(true);
    until("the spool replayed", || spool.stats().records == 0).await;
    assert_eq!(
        sink.records(),
        expected(1..2),
        "only the frame nobody delivered"
    );
    assert_eq!(spool.stats().skipped_records, 2);
    assert_eq!(spool.stats().replayed_records, 2);
    cancel.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_whose_original_send_failed_or_was_dropped_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(options(dir.path())).unwrap();
    let failed = spool.append_awaiting_original(&batch(0, 2)).await.unwrap();
    let dropped = spool.append_awaiting_original(&batch(1, 2)).await.unwrap();
    spool.append(&batch(2, 2)).await.unwrap();
    let sink = Arc::new(Collect::default());
    let (cancel, task) = start_replay(&spool, &sink, 1 << 30);
    failed.settle(false);
    drop(dropped);
    until("the spool replayed", || spool.stats().records == 0).await;
    assert_eq!(sink.records(), expected(0..3));
    assert_eq!(spool.stats().skipped_records, 0);
    cancel.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_fsync_answers_before_syncing_and_syncs_later() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.fsync = FsyncPolicy::Interval;
    opts.fsync_interval = Duration::from_millis(50);
    let spool = Spool::open(opts).unwrap();
    for id in 0..5 {
        spool.append(&batch(id, 1)).await.unwrap();
    }
    until("the interval fsync", || spool.stats().fsyncs >= 1).await;
    assert!(spool.stats().fsyncs <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_spool_per_directory_and_one_replay_per_spool() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(options(dir.path())).unwrap();
    assert!(matches!(
        Spool::open(options(dir.path())),
        Err(SpoolError::Locked { .. })
    ));
    let sink = Arc::new(Collect::default());
    let (cancel, task) = start_replay(&spool, &sink, 1 << 20);
    until("the first replay started", || {
        dir.path().join("replay.checkpoint").exists()
    })
    .await;
    assert!(matches!(
        spool.replay(&*sink, 1, CancellationToken::new()).await,
        Err(SpoolError::AlreadyReplaying)
    ));
    cancel.cancel();
    task.await.unwrap().unwrap();
    drop(spool);
    Spool::open(options(dir.path())).unwrap();
}
