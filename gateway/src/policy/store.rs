//! The policy in force: [`PolicyStore`] holds the compiled document, with its metric
//! handles ([`ActivePolicy`]), behind an `ArcSwap`, swaps in what the control plane pushes,
//! and reloads the policy file when it changes or on SIGHUP.

use super::metrics::RuleCounters;
use arc_swap::ArcSwap;
use metrics::{Counter, Gauge};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use weir_policy::Policy;

/// How often the policy file is checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// A compiled policy with the metric handles of its rules.
pub struct ActivePolicy {
    /// The compiled document.
    pub policy: Policy,
    pub(super) counters: RuleCounters,
    /// `weir_tail_traces_marked_total` per tail rule, in rule order.
    pub(super) tail_marked: Vec<Counter>,
    /// `weir_policy_rate_limit_buckets`, set after each request the policy evaluates.
    pub(super) rate_limit_buckets: Gauge,
}

impl ActivePolicy {
    /// `policy` with the metric handles of its rules.
    pub(super) fn new(policy: Policy) -> Self {
        let counters = RuleCounters::new(&policy);
        let tail_marked = policy
            .tail()
            .into_iter()
            .flat_map(|t| t.rule_names())
            .map(|rule| metrics::counter!("weir_tail_traces_marked_total", "rule" => rule.to_string()))
            .collect();
        let rate_limit_buckets = metrics::gauge!("weir_policy_rate_limit_buckets");
        rate_limit_buckets.set(policy.rate_limit_buckets() as f64);
        Self {
            policy,
            counters,
            tail_marked,
            rate_limit_buckets,
        }
    }
}

/// Where the gateway's policy comes from, and the one in force.
pub struct PolicyStore {
    current: ArcSwap<ActivePolicy>,
    file: Option<PathBuf>,
    /// Set once the policy in force came from the control plane: `file` no longer overrides it.
    pushed: std::sync::atomic::AtomicBool,
    /// Held while a policy is swapped in, so that a file reload cannot slip in between a push
    /// and its swap, and rate-limit state carries over from the policy actually replaced.
    swap: std::sync::Mutex<()>,
}

/// Reads and compiles a policy file, naming the file in the error.
pub fn read_policy_file(path: &Path) -> anyhow::Result<Policy> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read policy file {}: {e}", path.display()))?;
    Policy::parse(&text).map_err(|e| anyhow::anyhow!("policy file {}: {e}", path.display()))
}

impl PolicyStore {
    /// The policy of `file` (which must be valid), or keep-everything without a file.
    pub fn new(file: Option<PathBuf>) -> anyhow::Result<Self> {
        let policy = match &file {
            Some(path) => read_policy_file(path)?,
            None => Policy::keep_everything(),
        };
        metrics::gauge!("weir_policy_version").set(policy.version() as f64);
        if let Some(path) = &file {
            tracing::info!(file = %path.display(), version = policy.version(), "policy loaded");
        }
        Ok(Self {
            current: ArcSwap::from_pointee(ActivePolicy::new(policy)),
            file,
            pushed: std::sync::atomic::AtomicBool::new(false),
            swap: std::sync::Mutex::new(()),
        })
    }

    /// Starts with a policy the control plane pushed earlier (the last-known-good one kept on
    /// disk); changes of `file` are ignored while it is in force.
    pub fn from_control_plane(policy: Policy, file: Option<PathBuf>) -> Self {
        metrics::gauge!("weir_policy_version").set(policy.version() as f64);
        tracing::info!(
            version = policy.version(),
            "policy loaded from the last one the control plane pushed"
        );
        Self {
            current: ArcSwap::from_pointee(ActivePolicy::new(policy)),
            file,
            pushed: std::sync::atomic::AtomicBool::new(true),
            swap: std::sync::Mutex::new(()),
        }
    }

    /// Swaps in a policy the control plane pushed; from now on it wins over `file`.
    pub fn apply_pushed(&self, policy: Policy) {
        let _swap = self.swap_lock();
        self.pushed
            .store(true, std::sync::atomic::Ordering::Release);
        self.swap_in(policy);
    }

    fn swap_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic elsewhere cannot leave it inconsistent.
        self.swap.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True when the policy in force came from the control plane.
    pub fn is_pushed(&self) -> bool {
        self.pushed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The policy in force; a request holds on to it from start to end.
    pub fn load(&self) -> Arc<ActivePolicy> {
        self.current.load_full()
    }

    /// Swaps in a compiled policy, continuing the rate-limit state of the one it replaces.
    pub fn apply(&self, policy: Policy) {
        let _swap = self.swap_lock();
        self.swap_in(policy);
    }

    fn swap_in(&self, policy: Policy) {
        let old = self.current.load();
        policy.carry_over_rate_limits(&old.policy, super::plan::monotonic_nanos());
        let version = policy.version();
        self.current.store(Arc::new(ActivePolicy::new(policy)));
        metrics::gauge!("weir_policy_version").set(version as f64);
        tracing::info!(version, "policy applied");
    }

    /// Reads the policy file again and applies it; a document that fails validation is
    /// refused, counted and logged, and the running policy stays.
    pub fn reload(&self) {
        let Some(path) = &self.file else { return };
        if self.is_pushed() {
            tracing::warn!(file = %path.display(), "the policy file changed, but the control plane's policy is in force and stays");
            return;
        }
        match read_policy_file(path) {
            Ok(policy) => {
                let _swap = self.swap_lock();
                // Checked again under the lock: a push may have landed while the file was read.
                if self.is_pushed() {
                    tracing::warn!(file = %path.display(), "the policy file changed, but the control plane's policy is in force and stays");
                    return;
                }
                self.swap_in(policy)
            }
            Err(e) => {
                metrics::counter!("weir_policy_documents_refused_total").increment(1);
                tracing::error!(error = %e, running_version = self.load().policy.version(), "policy refused; the running policy stays");
            }
        }
    }

    /// Reloads when the file changes (checked every second) or on SIGHUP, until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let Some(path) = self.file.clone() else {
            return;
        };
        let stamp = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
        };
        let mut last = stamp(&path);
        let mut hangups = weir_runtime::Hangups::listen("the policy file is still watched");
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(WATCH_INTERVAL) => {
                    let now = stamp(&path);
                    if now != last {
                        last = now;
                        self.reload();
                    }
                }
                _ = hangups.recv() => {
                    tracing::info!("SIGHUP: reloading the policy");
                    last = stamp(&path);
                    self.reload();
                }
            }
        }
    }
}
