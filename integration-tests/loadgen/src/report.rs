//! What a run measured: request and span counts, failures by code, and the latency histogram;
//! printed for people or as one JSON object for scripts.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::client::Outcome;

/// Counters of one run, shared by all senders behind a mutex (held for a few instructions).
#[derive(Debug)]
pub struct Stats {
    /// Requests with a successful reply (including partially rejected ones).
    pub requests_ok: u64,
    /// Requests without a successful reply, or never sent because the schedule was missed.
    pub requests_failed: u64,
    /// Successful replies whose `partial_success` rejected some spans.
    pub requests_partial: u64,
    /// Spans the server accepted: those of successful replies minus the rejected ones.
    pub spans_acknowledged: u64,
    /// Spans refused through `partial_success`.
    pub spans_rejected: u64,
    /// Spans of failed requests.
    pub spans_failed: u64,
    /// Failed requests by code.
    pub failures: BTreeMap<String, u64>,
    /// Latency of every sent request, successful or not (a timeout counts as its timeout),
    /// in microseconds.
    pub latency_us: Histogram<u64>,
    /// Open loop: how late the generator itself handed each request to the client, after its
    /// scheduled time (timer, thread wake-up, building the body), in microseconds. Part of
    /// `latency_us`, reported apart so that a late generator is not mistaken for a slow server.
    pub send_lateness_us: Histogram<u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            requests_ok: 0,
            requests_failed: 0,
            requests_partial: 0,
            spans_acknowledged: 0,
            spans_rejected: 0,
            spans_failed: 0,
            failures: BTreeMap::new(),
            // One microsecond to one hour, three significant digits.
            latency_us: microseconds_histogram(),
            send_lateness_us: microseconds_histogram(),
        }
    }
}

/// One microsecond to one hour, three significant digits.
fn microseconds_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

impl Stats {
    /// Counts one request of `spans` spans that was answered after `latency`.
    pub fn record(&mut self, spans: u64, outcome: &Outcome, latency: Duration) {
        self.latency_us
            .saturating_record(latency.as_micros().max(1) as u64);
        match outcome {
            Outcome::Accepted { rejected } => {
                let rejected = (*rejected).min(spans);
                self.requests_ok += 1;
                self.spans_acknowledged += spans - rejected;
                if rejected > 0 {
                    self.requests_partial += 1;
                    self.spans_rejected += rejected;
                }
            }
            Outcome::Failed(code) => self.record_failure(spans, code),
        }
    }

    /// Counts how late an open-loop request was handed to the client after its schedule.
    pub fn record_send_lateness(&mut self, lateness: Duration) {
        self.send_lateness_us
            .saturating_record(lateness.as_micros().max(1) as u64);
    }

    /// Counts one request that failed before any reply (e.g. it missed its schedule).
    pub fn record_failure(&mut self, spans: u64, code: &str) {
        self.requests_failed += 1;
        self.spans_failed += spans;
        *self.failures.entry(code.to_string()).or_default() += 1;
    }
}

/// Everything the final report says besides the counters.
#[derive(Debug)]
pub struct RunInfo {
    /// `grpc`, `http-proto`, `http-json` or `kafka`.
    pub transport: String,
    /// `none`, `gzip` or `zstd`.
    pub compression: String,
    /// The endpoint requests went to.
    pub endpoint: String,
    /// `closed` or `open`.
    pub mode: &'static str,
    /// Closed loop: senders; open loop: the in-flight bound.
    pub concurrency: usize,
    /// Open loop: the offered spans per second.
    pub rate: Option<f64>,
    /// Spans in each request.
    pub spans_per_request: usize,
    /// Mean encoded request size (before compression), in bytes.
    pub mean_request_bytes: f64,
    /// From the first send until the last reply (or timeout).
    pub elapsed: Duration,
    /// CPU the generator itself used, when the platform tells.
    pub loadgen_cpu: Option<Duration>,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The report as one JSON object.
pub fn to_json(stats: &Stats, info: &RunInfo) -> Value {
    let secs = info.elapsed.as_secs_f64().max(f64::EPSILON);
    let h = &stats.latency_us;
    let answered = !h.is_empty();
    json!({
        "transport": info.transport,
        "compression": info.compression,
        "endpoint": info.endpoint,
        "mode": info.mode,
        "concurrency": info.concurrency,
        "rate_offered_spans_per_second": info.rate,
        "spans_per_request": info.spans_per_request,
        "mean_request_bytes": info.mean_request_bytes.round(),
        "bytes_per_span": (info.mean_request_bytes / info.spans_per_request as f64).round(),
        "requests_ok": stats.requests_ok,
        "requests_failed": stats.requests_failed,
        "requests_partial": stats.requests_partial,
        "spans_acknowledged": stats.spans_acknowledged,
        "spans_rejected": stats.spans_rejected,
        "spans_failed": stats.spans_failed,
        "failures": stats.failures,
        "spans_per_second": stats.spans_acknowledged as f64 / secs,
        "latency_ms": {
            "p50": answered.then(|| ms(h.value_at_quantile(0.50))),
            "p90": answered.then(|| ms(h.value_at_quantile(0.90))),
            "p99": answered.then(|| ms(h.value_at_quantile(0.99))),
            "max": answered.then(|| ms(h.max())),
            "mean": answered.then(|| h.mean() / 1000.0),
        },
        "send_lateness_ms": (!stats.send_lateness_us.is_empty()).then(|| {
            let l = &stats.send_lateness_us;
            json!({
                "p50": ms(l.value_at_quantile(0.50)),
                "p99": ms(l.value_at_quantile(0.99)),
                "max": ms(l.max()),
            })
        }),
        "elapsed_seconds": secs,
        "loadgen_cpu_seconds": info.loadgen_cpu.map(|d| d.as_secs_f64()),
    })
}

/// The report for people.
pub fn to_text(stats: &Stats, info: &RunInfo) -> String {
    let secs = info.elapsed.as_secs_f64().max(f64::EPSILON);
    let h = &stats.latency_us;
    let mut out = String::new();
    let load = match info.rate {
        Some(rate) => format!(
            "open loop, {rate:.0} spans/s offered, at most {} in flight",
            info.concurrency
        ),
        None => format!("closed loop, {} senders", info.concurrency),
    };
    out.push_str(&format!(
        "weir-loadgen: {} ({} compression) to {} ({load})\n",
        info.transport, info.compression, info.endpoint
    ));
    out.push_str(&format!(
        "  requests      ok {} (partially rejected {}), failed {}\n",
        stats.requests_ok, stats.requests_partial, stats.requests_failed
    ));
    out.push_str(&format!(
        "  spans         acknowledged {}, rejected {}, in failed requests {}\n",
        stats.spans_acknowledged, stats.spans_rejected, stats.spans_failed
    ));
    for (code, count) in &stats.failures {
        out.push_str(&format!("  failure       {code}: {count}\n"));
    }
    out.push_str(&format!(
        "  throughput    {:.0} acknowledged spans/s over {secs:.2} s ({} spans/request, {:.0} bytes/request)\n",
        stats.spans_acknowledged as f64 / secs,
        info.spans_per_request,
        info.mean_request_bytes
    ));
    if h.is_empty() {
        out.push_str("  latency       no replies\n");
    } else {
        out.push_str(&format!(
            "  latency       p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n",
            ms(h.value_at_quantile(0.50)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max())
        ));
    }
    let lateness = &stats.send_lateness_us;
    if !lateness.is_empty() {
        out.push_str(&format!(
            "  send lateness p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (the generator's own, included above)\n",
            ms(lateness.value_at_quantile(0.50)),
            ms(lateness.value_at_quantile(0.99)),
            ms(lateness.max())
        ));
    }
    if let Some(cpu) = info.loadgen_cpu {
        out.push_str(&format!("  loadgen CPU   {:.2} s\n", cpu.as_secs_f64()));
    }
    out
}

/// CPU time this process has used so far: the sum over its threads of
/// `/proc/self/task/*/schedstat` (Linux; nanoseconds, no clock-tick conversion needed).
pub fn own_cpu_time() -> Option<Duration> {
    let mut nanos: u64 = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue; // the thread ended meanwhile
        };
        nanos += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_partial_and_failed_requests() {
        let mut stats = Stats::default();
        stats.record(
            100,
            &Outcome::Accepted { rejected: 0 },
            Duration::from_millis(2),
        );
        stats.record(
            100,
            &Outcome::Accepted { rejected: 30 },
            Duration::from_millis(4),
        );
        stats.record(
            100,
            &Outcome::Failed("UNAVAILABLE".into()),
            Duration::from_millis(8),
        );
        stats.record_failure(100, "MISSED_SCHEDULE");
        assert_eq!(
            (
                stats.requests_ok,
                stats.requests_partial,
                stats.requests_failed
            ),
            (2, 1, 2)
        );
        assert_eq!(
            (
                stats.spans_acknowledged,
                stats.spans_rejected,
                stats.spans_failed
            ),
            (170, 30, 200)
        );
        assert_eq!(stats.failures["UNAVAILABLE"], 1);
        let info = RunInfo {
            transport: "grpc".into(),
            compression: "none".into(),
            endpoint: "http://127.0.0.1:4317".into(),
            mode: "closed",
            concurrency: 1,
            rate: None,
            spans_per_request: 100,
            mean_request_bytes: 30_000.0,
            elapsed: Duration::from_secs(2),
            loadgen_cpu: None,
        };
        let doc = to_json(&stats, &info);
        assert_eq!(doc["spans_per_second"], 85.0);
        assert_eq!(doc["failures"]["MISSED_SCHEDULE"], 1);
        assert_eq!(doc["bytes_per_span"], 300.0);
        let p50 = doc["latency_ms"]["p50"].as_f64().unwrap();
        assert!((3.9..4.1).contains(&p50), "p50 {p50}");
        assert!(to_text(&stats, &info).contains("UNAVAILABLE: 1"));
    }
}
