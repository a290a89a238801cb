//! The shared state of a control-plane process: storage, the configured tokens and change
//! notification. The REST API and the watch stream both work through [`ControlPlane`].
//!
//! What a gateway should run is computed from a [`Release`] (the rollouts that decide it, and
//! their documents), cached per value of the change counter: a change wakes every watch
//! stream at once, and they then share one read of the database instead of one each.

use crate::auth::{Caller, Tokens};
use crate::store::{
    Actor, AuditEntry, GatewayRecord, Millis, Nacked, PolicyMeta, PolicyRecord, Release, Rollout,
    RolloutOp, RolloutState, Store,
};
use crate::targeting::Target;
use metrics_exporter_prometheus::PrometheusHandle;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;
use weir_config::control_plane::{Backend, Role};
use weir_policy::Policy;

/// The largest policy document accepted, in bytes (a document with thousands of rules fits).
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// Documents validated (parsed and compiled, regular expressions included) at once, each on a
/// blocking thread; more wait for a slot, so API clients cannot take every core.
pub const VALIDATIONS_AT_ONCE: usize = 2;
/// How long a validation or a diff may take, waiting for a slot included, before the request
/// is answered 503 (the work itself finishes in the background, holding its slot).
pub const CPU_WORK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a diff may search for the smallest edit before it settles for a larger one.
const DIFF_DEADLINE: Duration = Duration::from_secs(1);
/// The most bytes two documents may hold together to be diffed.
pub const MAX_DIFF_BYTES: usize = 2 * MAX_DOCUMENT_BYTES;
/// How long `/healthz` reuses the result of its last storage check.
pub const HEALTH_CACHE: Duration = Duration::from_secs(1);

/// Shared state of a control-plane process: storage plus change notification.
pub struct ControlPlane {
    store: Store,
    tokens: Tokens,
    changes: watch::Sender<u64>,
    release: Mutex<Option<(u64, Arc<Release>)>>,
    /// Slots for CPU-heavy work from API requests (validation, diffs).
    cpu_slots: Arc<tokio::sync::Semaphore>,
    /// When storage last answered `/healthz`'s check, and with what.
    health: Mutex<Option<(tokio::time::Instant, Result<(), String>)>>,
    /// The Prometheus recorder `/metrics` renders, once installed.
    prometheus: std::sync::OnceLock<PrometheusHandle>,
    /// The span metrics windows the graph routes read, once a reader fills them.
    span_metrics: std::sync::OnceLock<Arc<crate::graph::windows::Windows>>,
}

/// What a gateway said when it connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayHello {
    /// Stable per gateway.
    pub instance_id: String,
    /// The gateway's labels, matched by rollout selectors.
    pub labels: BTreeMap<String, String>,
    /// The version it runs (0 = the built-in keep-everything policy).
    pub current_version: u64,
    /// The weir-gateway version.
    pub build: String,
}

/// A policy version to push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyVersion {
    /// The document's `version:`.
    pub version: u64,
    /// The document as submitted (YAML or JSON text).
    pub document: String,
}

/// Why a control-plane operation failed; each variant maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The storage backend failed (500).
    #[error("storage: {0}")]
    Storage(String),
    /// The request is malformed or the document invalid (400).
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with the stored state (409).
    #[error("{0}")]
    Conflict(String),
    /// Too large to handle (413).
    #[error("{0}")]
    TooLarge(String),
    /// Too busy to do it now; retry later (503).
    #[error("{0}")]
    Busy(String),
    /// What the request names does not exist (404).
    #[error("{0}")]
    NotFound(String),
}

/// A policy document that passed the gateway's validator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validated {
    /// Its `version:`.
    pub version: u64,
    /// `yaml` or `json`.
    pub format: &'static str,
}

/// Runs the gateway's own validator on a document, on the calling thread (see
/// [`ControlPlane::validate`] for the bounded, offloaded form the API uses).
pub fn validate_document(document: &str) -> Result<Validated, Error> {
    if document.len() > MAX_DOCUMENT_BYTES {
        return Err(Error::TooLarge(format!(
            "the document is {} bytes long: at most {MAX_DOCUMENT_BYTES}",
            document.len()
        )));
    }
    let policy = Policy::parse(document).map_err(|e| Error::Invalid(e.to_string()))?;
    let format = if document.trim_start().starts_with('{') {
        "json"
    } else {
        "yaml"
    };
    Ok(Validated {
        version: policy.version(),
        format,
    })
}

impl ControlPlane {
    /// Connects to storage (running migrations) and sets up change notification.
    pub async fn open(backend: &Backend, tokens: Tokens) -> Result<Arc<Self>, Error> {
        let store = Store::connect(backend).await?;
        if store.kind() == crate::store::Kind::Sqlite {
            // One process owns a SQLite file: streams counted open before a restart are gone.
            store.reset_connections().await?;
        }
        let counter = store.counter().await?;
        let (changes, _) = watch::channel(counter);
        Ok(Arc::new(Self {
            store,
            tokens,
            changes,
            release: Mutex::new(None),
            cpu_slots: Arc::new(tokio::sync::Semaphore::new(VALIDATIONS_AT_ONCE)),
            health: Mutex::new(None),
            prometheus: std::sync::OnceLock::new(),
            span_metrics: std::sync::OnceLock::new(),
        }))
    }

    /// The storage.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The configured tokens.
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// Runs `work` on a blocking thread once one of the CPU slots is free, so that
    /// validations and diffs neither stall the async workers nor pile up without bound;
    /// Busy when it is not done within [`CPU_WORK_TIMEOUT`].
    async fn offload<T: Send + 'static>(
        &self,
        what: &str,
        work: impl FnOnce() -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let slots = Arc::clone(&self.cpu_slots);
        let run = async move {
            let slot = slots
                .acquire_owned()
                .await
                .map_err(|_| Error::Busy("shutting down".into()))?;
            tokio::task::spawn_blocking(move || {
                let _slot = slot;
                work()
            })
            .await
            .map_err(|e| Error::Storage(format!("a blocking task failed: {e}")))?
        };
        tokio::time::timeout(CPU_WORK_TIMEOUT, run)
            .await
            .map_err(|_| {
                Error::Busy(format!(
                    "{what} did not finish within {CPU_WORK_TIMEOUT:?}: the control plane is busy \
                     with other validations or diffs; retry later"
                ))
            })?
    }

    /// Validates a document with the gateway's validator on a blocking thread (bounded in
    /// size, concurrency and time).
    pub async fn validate(&self, document: &str) -> Result<Validated, Error> {
        if document.len() > MAX_DOCUMENT_BYTES {
            return validate_document(document);
        }
        let document = document.to_string();
        self.offload("validating the document", move || {
            validate_document(&document)
        })
        .await
    }

    /// Whether storage answers, checked at most once per [`HEALTH_CACHE`]: probes and load
    /// balancers hitting `/healthz` share one query instead of one each.
    pub async fn health(&self) -> Result<(), Error> {
        let mut last = self.health.lock().await;
        if let Some((at, result)) = last.as_ref()
            && at.elapsed() < HEALTH_CACHE
        {
            return result.clone().map_err(Error::Storage);
        }
        let result = self
            .store
            .counter()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        *last = Some((tokio::time::Instant::now(), result.clone()));
        result.map_err(Error::Storage)
    }

    /// Serves `handle`'s metrics on `/metrics` (the process installs one recorder; tests do
    /// not).
    pub fn set_prometheus(&self, handle: PrometheusHandle) {
        // A second recorder cannot exist in one process, so a second call has nothing to set.
        let _ = self.prometheus.set(handle);
    }

    /// Serves the span metrics `windows` (filled by `graph::reader`) on the graph routes.
    pub fn set_span_metrics(&self, windows: Arc<crate::graph::windows::Windows>) {
        // Set once at start-up; a second call has nothing to replace.
        let _ = self.span_metrics.set(windows);
    }

    /// The span metrics windows, when the control plane reads span metrics.
    pub fn span_metrics(&self) -> Option<&crate::graph::windows::Windows> {
        self.span_metrics.get().map(|w| &**w)
    }

    /// The Prometheus text exposition, when a recorder is installed.
    pub fn render_metrics(&self) -> Option<String> {
        self.prometheus.get().map(PrometheusHandle::render)
    }

    /// Sets `weir_cp_rollouts{state}` from storage.
    async fn count_rollouts(&self) -> Result<(), Error> {
        let counts = self.store.rollout_states().await?;
        for state in [
            RolloutState::Active,
            RolloutState::Paused,
            RolloutState::Completed,
            RolloutState::RolledBack,
        ] {
            let n = counts
                .iter()
                .find(|(s, _)| s == state.as_str())
                .map_or(0, |(_, n)| *n);
            metrics::gauge!("weir_cp_rollouts", "state" => state.as_str()).set(n as f64);
        }
        Ok(())
    }

    /// Publishes a change counter value read from or written to the database.
    fn publish(&self, counter: u64) {
        self.changes.send_if_modified(|v| {
            if counter > *v {
                *v = counter;
                true
            } else {
                false
            }
        });
    }

    /// Polls the database's change counter every `interval` until `shutdown`, so that changes
    /// made by other replicas sharing the database reach this replica's watch streams.
    pub fn spawn_change_poller(self: &Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let cp = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The rollout gauges follow the change counter (any replica's changes included).
            let mut counted = None;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match cp.store.counter().await {
                    Ok(c) => cp.publish(c),
                    Err(e) => tracing::warn!(error = %e, "cannot read the change counter"),
                }
                let now = *cp.changes.borrow();
                if counted != Some(now) {
                    match cp.count_rollouts().await {
                        Ok(()) => counted = Some(now),
                        Err(e) => tracing::warn!(error = %e, "cannot count rollouts"),
                    }
                }
            }
        });
    }

    /// The current release, read again only when the change counter moved.
    pub async fn release(&self) -> Result<Arc<Release>, Error> {
        let counter = *self.changes.borrow();
        let mut cached = self.release.lock().await;
        if let Some((at, release)) = cached.as_ref()
            && *at == counter
        {
            return Ok(Arc::clone(release));
        }
        let release = Arc::new(self.store.release().await?);
        *cached = Some((counter, Arc::clone(&release)));
        Ok(release)
    }

    /// Records the instance (labels, version, last seen = now, connected = true).
    pub async fn gateway_connected(&self, hello: &GatewayHello) -> Result<(), Error> {
        self.store
            .gateway_connected(
                &hello.instance_id,
                &hello.labels,
                &hello.build,
                hello.current_version,
            )
            .await
    }

    /// Marks the instance disconnected (last seen = now).
    pub async fn gateway_disconnected(&self, instance_id: &str) -> Result<(), Error> {
        self.store.gateway_disconnected(instance_id).await
    }

    /// The version this instance should run now (rollout targets: labels, stable-hash percent,
    /// explicit list, stages), or None when no policy was ever released to it.
    pub async fn desired_policy(
        &self,
        instance_id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Option<PolicyVersion>, Error> {
        let release = self.release().await?;
        let Some(version) = release.desired(instance_id, labels) else {
            return Ok(None);
        };
        let document = release.documents.get(&version).cloned().ok_or_else(|| {
            Error::Storage(format!("the document of version {version} is missing"))
        })?;
        Ok(Some(PolicyVersion { version, document }))
    }

    /// ACK: the instance runs `version`.
    pub async fn record_ack(&self, instance_id: &str, version: u64) -> Result<(), Error> {
        metrics::counter!("weir_cp_reports_total", "result" => "ack").increment(1);
        self.store.record_ack(instance_id, version).await
    }

    /// NACK: the instance refused `version` with `error`; pauses every active rollout of that
    /// version that reaches the instance. A rollout whose released stages do not target it is
    /// left alone (logged and counted): a gateway outside a canary cannot stop it.
    pub async fn record_nack(
        &self,
        instance_id: &str,
        labels: &BTreeMap<String, String>,
        version: u64,
        error: &str,
    ) -> Result<Nacked, Error> {
        let nacked = self
            .store
            .record_nack(instance_id, labels, version, error)
            .await?;
        for id in &nacked.paused {
            tracing::warn!(
                rollout = id,
                version,
                instance_id,
                error,
                "NACK: rollout paused"
            );
        }
        let result = if nacked.paused.is_empty() && !nacked.ignored.is_empty() {
            "nack_ignored"
        } else {
            "nack"
        };
        metrics::counter!("weir_cp_reports_total", "result" => result).increment(1);
        for id in &nacked.ignored {
            tracing::warn!(
                rollout = id,
                version,
                instance_id,
                "NACK ignored for a rollout whose released stages do not target this gateway"
            );
        }
        self.publish(nacked.counter);
        Ok(nacked)
    }

    /// A receiver that changes whenever any instance's desired version may have changed
    /// (policy released, rollout started/promoted/paused/resumed/rolled back). With several
    /// replicas on one database, the poller also publishes other replicas' changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The holder of a gateway token (constant-time compare against the configured ones), or
    /// None when the token is missing, unknown or not a gateway's.
    pub fn gateway_caller(&self, presented: Option<&str>) -> Option<Caller> {
        // Accept both the bare token and an `authorization` header value.
        let presented = presented?;
        let caller = self
            .tokens
            .identify_header(Some(presented))
            .or_else(|| self.tokens.identify(presented.trim()))?;
        (caller.role == Role::Gateway).then_some(caller)
    }

    /// Deletes gateways with no open stream not seen for `ttl`; returns how many.
    pub async fn prune_gateways(&self, ttl: Duration) -> Result<u64, Error> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let before = Millis(crate::store::now().0.saturating_sub(ttl_ms));
        self.store.prune_gateways(before).await
    }

    /// Prunes gateways not seen for `ttl` every `ttl / 4` (between 100ms and a minute) until
    /// `shutdown`; a zero `ttl` keeps them forever.
    pub fn spawn_gateway_pruner(self: &Arc<Self>, ttl: Duration, shutdown: CancellationToken) {
        if ttl.is_zero() {
            return;
        }
        let every = (ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
        let cp = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match cp.prune_gateways(ttl).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(pruned = n, ?ttl, "removed gateways not seen for the TTL")
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot prune gateways"),
                }
            }
        });
    }

    /// Deletes a gateway's record (an admin's cleanup); refused while it is connected.
    pub async fn delete_gateway(&self, instance_id: &str, by: &Caller) -> Result<(), Error> {
        self.store.delete_gateway(instance_id, &actor(by)).await?;
        tracing::info!(instance_id, by = by.name, "gateway deleted");
        Ok(())
    }

    // The REST API's operations.

    /// Validates and stores a new policy version.
    pub async fn submit_policy(&self, document: &str, by: &Caller) -> Result<PolicyMeta, Error> {
        let v = self.validate(document).await?;
        let sha = hex::encode(Sha256::digest(document.as_bytes()));
        let (meta, counter) = self
            .store
            .insert_policy(v.version, document, v.format, &sha, &actor(by))
            .await?;
        self.publish(counter);
        Ok(meta)
    }

    /// Every stored version.
    pub async fn policies(&self) -> Result<Vec<PolicyMeta>, Error> {
        self.store.policies().await
    }

    /// One stored version.
    pub async fn policy(&self, version: u64) -> Result<PolicyRecord, Error> {
        self.store
            .policy(version)
            .await?
            .ok_or_else(|| Error::NotFound(format!("policy version {version} does not exist")))
    }

    /// A unified diff from version `from` to version `to`.
    pub async fn diff(&self, from: u64, to: u64) -> Result<String, Error> {
        let a = self.policy(from).await?.document;
        let b = self.policy(to).await?.document;
        let size = a.len() + b.len();
        if size > MAX_DIFF_BYTES {
            return Err(Error::TooLarge(format!(
                "versions {from} and {to} hold {size} bytes together: diffs are computed for at \
                 most {MAX_DIFF_BYTES}; get both versions and compare them locally"
            )));
        }
        self.offload("the diff", move || {
            let diff = similar::TextDiff::configure()
                .timeout(DIFF_DEADLINE)
                .diff_lines(&a, &b);
            Ok(diff
                .unified_diff()
                .context_radius(3)
                .header(&format!("version {from}"), &format!("version {to}"))
                .to_string())
        })
        .await
    }

    /// Starts a rollout.
    pub async fn start_rollout(
        &self,
        version: u64,
        target: Target,
        by: &Caller,
    ) -> Result<Rollout, Error> {
        let stages = target.into_stages().map_err(Error::Invalid)?;
        let (rollout, counter) = self
            .store
            .start_rollout(version, stages, &actor(by))
            .await?;
        tracing::info!(
            rollout = rollout.id,
            version,
            by = by.name,
            "rollout started"
        );
        self.publish(counter);
        Ok(rollout)
    }

    /// Promotes, pauses, resumes or rolls back a rollout.
    pub async fn change_rollout(
        &self,
        id: i64,
        op: RolloutOp,
        by: &Caller,
    ) -> Result<Rollout, Error> {
        let (rollout, counter) = self.store.change_rollout(id, op, &actor(by)).await?;
        tracing::info!(
            rollout = id,
            op = op.as_str(),
            state = rollout.state.as_str(),
            by = by.name,
            "rollout changed"
        );
        self.publish(counter);
        Ok(rollout)
    }

    /// Every rollout, newest first.
    pub async fn rollouts(&self) -> Result<Vec<Rollout>, Error> {
        self.store.rollouts().await
    }

    /// One rollout.
    pub async fn rollout(&self, id: i64) -> Result<Rollout, Error> {
        self.store
            .rollout_by_id(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("rollout {id} does not exist")))
    }

    /// Every gateway seen, with the version it should run now.
    pub async fn gateways(&self) -> Result<Vec<(GatewayRecord, Option<u64>)>, Error> {
        let release = self.release().await?;
        let list = self.store.gateways().await?;
        Ok(list
            .into_iter()
            .map(|g| {
                let desired = release.desired(&g.instance_id, &g.labels);
                (g, desired)
            })
            .collect())
    }

    /// The newest audit entries.
    pub async fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>, Error> {
        self.store.audit_log(limit).await
    }
}

fn actor(c: &Caller) -> Actor {
    Actor {
        name: c.name.clone(),
        role: c.role.as_str().to_string(),
    }
}
