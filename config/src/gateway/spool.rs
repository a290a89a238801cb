//! The gateway's `spool:` section: the local write-ahead log that holds a request's records,
//! fsynced, when Kafka does not acknowledge them in time, and drains them to Kafka later.

use crate::error::ConfigError;
use crate::units::{ByteSize, duration};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Where and how the gateway spools records that Kafka did not acknowledge in time.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Whether requests may be spooled; off: a request Kafka does not acknowledge within
    /// `limits.export_timeout` gets 503, as without a spool.
    pub enabled: bool,
    /// The directory of the segment files (created at start-up; one gateway per directory).
    pub directory: PathBuf,
    /// The most bytes the spool holds on disk; past it requests are refused (503 + Retry-After),
    /// nothing is overwritten.
    pub max_bytes: ByteSize,
    /// A segment file is closed once it reaches this size; replay deletes whole segments.
    pub segment_bytes: ByteSize,
    /// When appended records are made durable.
    pub fsync: FsyncPolicy,
    /// With `fsync: interval`, the longest time written records stay unsynced.
    #[serde(deserialize_with = "duration")]
    pub fsync_interval: Duration,
    /// How long a request waits for Kafka's acknowledgement before its records are spooled.
    #[serde(deserialize_with = "duration")]
    pub ack_deadline: Duration,
    /// The most record bytes per second replay sends to Kafka, so live traffic keeps priority.
    pub replay_bytes_per_second: ByteSize,
    /// At shutdown, once the receivers stopped, how long replay may drain the spool to a
    /// reachable Kafka without its rate bound; what is left stays for the next start. 0: none.
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
}

/// When the spool's appended records are flushed to stable storage.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// Every append is fsynced before it is acknowledged (group commit: one fsync covers all
    /// the appends that arrived while the previous one ran). A 200 survives a power loss.
    #[default]
    Always,
    /// Appends are acknowledged once written to the page cache and fsynced every
    /// `fsync_interval`: a 200 survives a gateway crash, but a power loss or kernel crash can
    /// lose up to `fsync_interval` of acknowledged records.
    Interval,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            directory: PathBuf::from("/var/lib/weir-gateway/spool"),
            max_bytes: ByteSize(1 << 30),
            segment_bytes: ByteSize(64 << 20),
            fsync: FsyncPolicy::Always,
            fsync_interval: Duration::from_millis(100),
            // A healthy broker acknowledges acks=all within tens of milliseconds; the first
            // produce to a topic (metadata, leader lookup) on a loaded machine can take past
            // 500 ms. A request spooled while its records still reach Kafka is not written
            // twice (replay skips a frame its original send delivered), so the deadline can
            // be short: an SDK exporting from one thread into a 2048-span queue keeps ~1,000
            // spans/s of margin at 1,000 spans/s while one export waits it.
            ack_deadline: Duration::from_secs(1),
            // Drains a full default spool (1 GiB) in about a minute without taking more than
            // a fraction of one broker's produce bandwidth from live traffic.
            replay_bytes_per_second: ByteSize(16 << 20),
            // Unpaced replay sends tens of MB/s: enough to empty what a short outage spooled,
            // and short enough for a Kubernetes grace period (see the Helm chart).
            drain_timeout: Duration::from_secs(20),
        }
    }
}

impl SpoolConfig {
    /// Checks values that parse but cannot work, naming the key; `export_timeout` is
    /// `limits.export_timeout`, which the ack deadline must stay under.
    pub fn validate(&self, export_timeout: Duration) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        if self.directory.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "spool.directory",
                "must not be empty; set a directory, or spool.enabled: false",
            ));
        }
        if self.segment_bytes.0 < 1 << 20 || self.segment_bytes.0 > 1 << 30 {
            return Err(ConfigError::invalid(
                "spool.segment_bytes",
                format!("{} is out of range: use 1MiB to 1GiB", self.segment_bytes),
            ));
        }
        if self.max_bytes < self.segment_bytes {
            return Err(ConfigError::invalid(
                "spool.max_bytes",
                format!(
                    "{} is below spool.segment_bytes ({}): the spool must hold a whole segment",
                    self.max_bytes, self.segment_bytes
                ),
            ));
        }
        if self.fsync == FsyncPolicy::Interval
            && !(Duration::from_millis(1)..=Duration::from_secs(10)).contains(&self.fsync_interval)
        {
            return Err(ConfigError::invalid(
                "spool.fsync_interval",
                "must be 1ms to 10s",
            ));
        }
        if self.ack_deadline.is_zero() || self.ack_deadline >= export_timeout {
            return Err(ConfigError::invalid(
                "spool.ack_deadline",
                format!(
                    "must be greater than zero and below limits.export_timeout ({})",
                    humantime::format_duration(export_timeout)
                ),
            ));
        }
        if self.replay_bytes_per_second.0 < 64 << 10 {
            return Err(ConfigError::invalid(
                "spool.replay_bytes_per_second",
                format!(
                    "{} is too slow to drain a spool: use at least 64KiB",
                    self.replay_bytes_per_second
                ),
            ));
        }
        if self.drain_timeout > MAX_DRAIN_TIMEOUT {
            return Err(ConfigError::invalid(
                "spool.drain_timeout",
                "must be at most 10m: a longer drain outlives any orchestrator's grace period",
            ));
        }
        Ok(())
    }
}

/// The longest `drain_timeout` accepted.
const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(600);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConfigFile;
    use crate::GatewayConfig;

    fn key_of(yaml: &str) -> String {
        let e = GatewayConfig::from_yaml(yaml).expect_err("config should be refused");
        e.key().unwrap_or_default().to_string()
    }

    #[test]
    fn defaults_and_overrides() {
        let cfg = GatewayConfig::from_yaml("").unwrap();
        assert_eq!(cfg.spool, SpoolConfig::default());
        assert!(cfg.spool.enabled);
        let cfg = GatewayConfig::from_yaml(
            "spool:\n  directory: /tmp/s\n  max_bytes: 2GiB\n  segment_bytes: 16MiB\n  fsync: interval\n  fsync_interval: 50ms\n  ack_deadline: 3s\n  replay_bytes_per_second: 1MiB\n  drain_timeout: 5s\n",
        )
        .unwrap();
        assert_eq!(cfg.spool.directory, PathBuf::from("/tmp/s"));
        assert_eq!(cfg.spool.max_bytes, ByteSize(2 << 30));
        assert_eq!(cfg.spool.fsync, FsyncPolicy::Interval);
        assert_eq!(cfg.spool.ack_deadline, Duration::from_secs(3));
        assert_eq!(cfg.spool.drain_timeout, Duration::from_secs(5));
    }

    #[test]
    fn bad_values_name_their_key() {
        assert_eq!(key_of("spool:\n  sync: always\n"), "spool.sync");
        assert_eq!(key_of("spool:\n  fsync: never\n"), "spool.fsync");
        assert_eq!(
            key_of("spool:\n  segment_bytes: 4KiB\n"),
            "spool.segment_bytes"
        );
        assert_eq!(
            key_of("spool:\n  max_bytes: 32MiB\n  segment_bytes: 64MiB\n"),
            "spool.max_bytes"
        );
        assert_eq!(
            key_of("spool:\n  ack_deadline: 10s\n"),
            "spool.ack_deadline"
        );
        assert_eq!(key_of("spool:\n  ack_deadline: 0s\n"), "spool.ack_deadline");
        assert_eq!(
            key_of("spool:\n  fsync: interval\n  fsync_interval: 1m\n"),
            "spool.fsync_interval"
        );
        assert_eq!(
            key_of("spool:\n  replay_bytes_per_second: 1KiB\n"),
            "spool.replay_bytes_per_second"
        );
        assert_eq!(key_of("spool:\n  directory: ''\n"), "spool.directory");
        assert_eq!(
            key_of("spool:\n  drain_timeout: 1h\n"),
            "spool.drain_timeout"
        );
    }

    #[test]
    fn a_disabled_spool_is_not_checked() {
        GatewayConfig::from_yaml("spool:\n  enabled: false\n  segment_bytes: 1\n").unwrap();
    }
}
