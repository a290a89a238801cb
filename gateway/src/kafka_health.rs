//! What recent produce outcomes say about Kafka: whether it is known down (the pipeline then
//! spools a request at once instead of waiting `spool.ack_deadline` for it) and whether it
//! acknowledges records at all (`/readyz`; a broker can answer metadata requests while every
//! produce fails).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long after a request's failed send Kafka counts as down, unless a send is acknowledged
/// first. Long: while Kafka is down, the replayer's sends find out when it is back (their
/// acknowledgement ends this at once), and each request that waits for Kafka instead costs
/// its client `spool.ack_deadline`, which an SDK with a bounded queue pays in dropped spans.
/// Bounded, so that requests try Kafka again if replay has nothing to send.
const DOWN_FOR: Duration = Duration::from_secs(30);
/// How long after a failure, with no acknowledged send since, Kafka counts as not
/// acknowledging. Bounded, so that a gateway that gets no traffic (not ready: a load
/// balancer sends it nothing) becomes ready again once the broker answers its probe.
const FAILING_FOR: Duration = Duration::from_secs(5);

/// The outcomes of recent sends to Kafka (live requests and spool replay), shared by the
/// pipeline, the replayer and the readiness task.
pub struct KafkaHealth {
    /// Failed or timed-out sends since the last acknowledged one.
    failures: AtomicU32,
    /// When the last send failed: milliseconds since `epoch`, plus one (0: never).
    last_failure_ms: AtomicU64,
    /// The same, for requests' sends only (not replay's).
    last_request_failure_ms: AtomicU64,
    epoch: Instant,
}

impl Default for KafkaHealth {
    fn default() -> Self {
        Self {
            failures: AtomicU32::new(0),
            last_failure_ms: AtomicU64::new(0),
            last_request_failure_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl KafkaHealth {
    /// Records a send Kafka acknowledged.
    pub fn acknowledged(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }

    /// Records a request's send that failed or was not acknowledged in time.
    pub fn failed(&self) {
        let now = self.now_ms().saturating_add(1);
        self.last_request_failure_ms.store(now, Ordering::Relaxed);
        self.last_failure_ms.store(now, Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Records that the broker did not answer a metadata request: as a request's failed send,
    /// it keeps requests from waiting for a Kafka that is not there, and unlike one it costs
    /// no client a wait. A broker that answers says nothing about produce: only an
    /// acknowledgement ends "known down".
    pub fn broker_unreachable(&self) {
        self.failed();
    }

    /// Records a replay send that failed. It counts against `acknowledging`, not towards
    /// `known_down`: a frame that keeps failing must not keep requests from trying Kafka.
    pub fn replay_failed(&self) {
        self.last_failure_ms
            .store(self.now_ms().saturating_add(1), Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// True when a send failed less than `DOWN_FOR` ago and none was acknowledged since: a
    /// request is spooled without waiting for Kafka.
    pub fn known_down(&self) -> bool {
        self.failures.load(Ordering::Relaxed) > 0
            && self.within(&self.last_request_failure_ms, DOWN_FOR)
    }

    /// False when a send failed less than `FAILING_FOR` ago and none was acknowledged since.
    pub fn acknowledging(&self) -> bool {
        self.failures.load(Ordering::Relaxed) == 0 || !self.failed_within(FAILING_FOR)
    }

    fn failed_within(&self, window: Duration) -> bool {
        self.within(&self.last_failure_ms, window)
    }

    /// True when the time stored in `at` is less than `window` ago.
    fn within(&self, at: &AtomicU64, window: Duration) -> bool {
        let last = at.load(Ordering::Relaxed);
        last != 0
            && self.now_ms().saturating_add(1).saturating_sub(last) < window.as_millis() as u64
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_after_repeated_failures_and_up_after_an_acknowledgement() {
        let h = KafkaHealth::default();
        assert!(h.acknowledging() && !h.known_down());
        h.failed();
        assert!(!h.acknowledging(), "a recent failure: not acknowledging");
        assert!(
            h.known_down(),
            "a failed request: the next ones are spooled at once"
        );
        h.acknowledged();
        assert!(h.acknowledging() && !h.known_down());
    }

    #[test]
    fn replay_failures_count_against_acknowledging_only() {
        let h = KafkaHealth::default();
        h.replay_failed();
        assert!(!h.acknowledging(), "replay cannot get records acknowledged");
        assert!(!h.known_down(), "requests still try Kafka");
        h.failed();
        h.replay_failed();
        assert!(h.known_down());
        // Replay's acknowledgement says Kafka is back.
        h.acknowledged();
        assert!(h.acknowledging() && !h.known_down());
    }

    #[test]
    fn failures_age_out() {
        let h = KafkaHealth {
            epoch: Instant::now() - Duration::from_secs(60),
            ..KafkaHealth::default()
        };
        h.failed();
        // Pretend the last failure was long ago.
        h.last_failure_ms.store(1, Ordering::Relaxed);
        h.last_request_failure_ms.store(1, Ordering::Relaxed);
        assert!(!h.known_down());
        assert!(h.acknowledging());
    }
}
