//! The gateway side of the control plane's watch stream: connect with the gateway token, say
//! who we are (Hello), apply every pushed policy the way a file-sourced one is applied (parse,
//! validate, compile, swap), check what the schema cannot (every topic it routes to exists on
//! the brokers), keep the applied document on disk, and answer ACK or NACK. A refused document
//! leaves the running policy in force. The stream is re-opened with exponential backoff and
//! jitter for as long as the gateway runs; serving never waits for the control plane.
//!
//! At start-up the policy comes from the last document the control plane pushed (kept in
//! `state_dir`), else from `policy_file`, else the built-in keep-everything policy.

use crate::policy::PolicyStore;
use anyhow::Context;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use weir_config::gateway::GatewayControlPlane;
use weir_config::gateway::control_plane::TokenSource;
use weir_exporters::kafka::KafkaExporter;
use weir_policy::Policy;
use weir_proto::controlplane::v1::policy_service_client::PolicyServiceClient;
use weir_proto::controlplane::v1::{Assignment, GatewayMessage, Hello, Report, gateway_message};

/// The file in `state_dir` that holds the last applied document.
const LAST_APPLIED: &str = "last-applied-policy";
/// How long the brokers have to answer the metadata request that checks a policy's topics.
const TOPIC_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on the stream, so a vanished control plane is noticed and the stream re-opened.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection counts as dead.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest Assignment accepted; matches the control plane's limit.
const MAX_MESSAGE_SIZE: usize = 16 << 20;

/// The last applied policy document, kept on disk so a restart without the control plane runs
/// it.
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Creates the directory if needed.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The file that holds the last applied document.
    pub fn path(&self) -> PathBuf {
        self.dir.join(LAST_APPLIED)
    }

    /// The last applied policy, compiled; `Ok(None)` when there is none yet.
    pub fn read(&self) -> Result<Option<Policy>, String> {
        let path = self.path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        Policy::parse(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Replaces the document atomically: a crash leaves either the old or the new one whole.
    /// Writes a temporary file, syncs it, renames it over the old one, and syncs the directory
    /// so the rename itself survives a power cut.
    pub fn write(&self, document: &str) -> std::io::Result<()> {
        let tmp = self
            .dir
            .join(format!(".{LAST_APPLIED}.tmp-{}", std::process::id()));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(document.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, self.path())?;
            std::fs::File::open(&self.dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// The policy store a gateway with a control plane starts with: the last document the control
/// plane pushed, else `policy_file`, else keep-everything. A last-applied document that no
/// longer loads is logged and passed over rather than keeping the gateway down.
pub fn initial_policy_store(
    cfg: &GatewayControlPlane,
    policy_file: Option<PathBuf>,
) -> anyhow::Result<(PolicyStore, StateDir)> {
    let state = StateDir::open(&cfg.state_dir).with_context(|| {
        format!(
            "control_plane.state_dir: cannot create {}",
            cfg.state_dir.display()
        )
    })?;
    let store = match state.read() {
        Ok(Some(policy)) => PolicyStore::from_control_plane(policy, policy_file),
        Ok(None) => PolicyStore::new(policy_file)?,
        Err(e) => {
            tracing::error!(error = %e, "the last applied policy cannot be used; starting without it");
            PolicyStore::new(policy_file)?
        }
    };
    Ok((store, state))
}

/// Checks what a policy needs from the brokers before it is applied.
pub trait TopicCheck: Send + Sync + 'static {
    /// The topics of `topics` the brokers do not have, or why that could not be found out.
    /// Blocking.
    fn missing_topics(&self, topics: &[String]) -> Result<Vec<String>, String>;
}

impl TopicCheck for KafkaExporter {
    fn missing_topics(&self, topics: &[String]) -> Result<Vec<String>, String> {
        KafkaExporter::missing_topics(self, topics.iter().map(String::as_str), TOPIC_CHECK_TIMEOUT)
            .map_err(|e| format!("cannot read the brokers' topic metadata: {e}"))
    }
}

/// The gateway's client of the control plane's watch stream.
pub struct ControlPlaneClient {
    cfg: GatewayControlPlane,
    instance_id: String,
    token: TokenSource,
    applier: Arc<Applier>,
}

/// Applies Assignments: the part of the client that needs no network, so it is testable alone.
struct Applier {
    state: StateDir,
    policies: Arc<PolicyStore>,
    topics: Arc<dyn TopicCheck>,
}

/// How a session on the stream ended.
enum SessionEnd {
    /// The gateway is stopping.
    Stopped,
    /// The control plane closed the stream (e.g. its own shutdown).
    Closed,
}

/// Why a session could not start or broke.
struct SessionError {
    /// The Hello was accepted before it broke, so the next attempt starts from `initial`.
    was_connected: bool,
    error: anyhow::Error,
}

impl ControlPlaneClient {
    /// A client for `cfg` that applies pushed policies to `policies` (after checking their
    /// topics with `topics`) and keeps them in `state`.
    pub fn new(
        cfg: &GatewayControlPlane,
        state: StateDir,
        policies: Arc<PolicyStore>,
        topics: Arc<dyn TopicCheck>,
    ) -> anyhow::Result<Self> {
        let instance_id = match &cfg.instance_id {
            Some(id) => id.clone(),
            None => hostname().context(
                "control_plane.instance_id is not set and the host name cannot be read; set it",
            )?,
        };
        let token = cfg.token_source()?;
        token.read()?;
        Ok(Self {
            cfg: cfg.clone(),
            instance_id,
            token,
            applier: Arc::new(Applier {
                state,
                policies,
                topics,
            }),
        })
    }

    /// This gateway's instance id, as sent in the Hello.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Keeps a watch stream open until `stop`, reconnecting with exponential backoff and jitter.
    pub async fn run(self, stop: CancellationToken) {
        metrics::gauge!("weir_control_plane_connected").set(0.0);
        let mut delay = self.cfg.reconnect.initial;
        tracing::info!(endpoint = %self.cfg.endpoint, instance = %self.instance_id, "connecting to the control plane");
        loop {
            match self.session(&stop).await {
                Ok(SessionEnd::Stopped) => break,
                Ok(SessionEnd::Closed) => {
                    tracing::info!("the control plane closed the watch stream; reconnecting");
                    delay = self.cfg.reconnect.initial;
                }
                Err(SessionError {
                    was_connected,
                    error,
                }) => {
                    if was_connected {
                        delay = self.cfg.reconnect.initial;
                    }
                    tracing::warn!(error = %format!("{error:#}"), retry_in = ?delay, "control plane unreachable or stream broken; the running policy stays");
                }
            }
            metrics::gauge!("weir_control_plane_connected").set(0.0);
            let wait = jittered(delay);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            delay = (delay * 2).min(self.cfg.reconnect.max);
            metrics::counter!("weir_control_plane_reconnects_total").increment(1);
        }
        metrics::gauge!("weir_control_plane_connected").set(0.0);
    }

    /// The channel to the control plane, TLS files read afresh so rotated ones are used.
    async fn connect(&self) -> anyhow::Result<Channel> {
        let mut endpoint = Endpoint::from_shared(self.cfg.endpoint.clone())
            .with_context(|| format!("control_plane.endpoint `{}`", self.cfg.endpoint))?
            .connect_timeout(self.cfg.connect_timeout)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        if self.cfg.uses_tls() {
            let tls_cfg = self.cfg.tls.clone().unwrap_or_default();
            let read = |p: &Path, what: &str| {
                std::fs::read(p).with_context(|| {
                    format!("control_plane.tls.{what}: cannot read {}", p.display())
                })
            };
            let mut tls = ClientTlsConfig::new();
            tls = match &tls_cfg.ca_file {
                Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca, "ca_file")?)),
                None => tls.with_native_roots(),
            };
            if let (Some(cert), Some(key)) = (&tls_cfg.cert_file, &tls_cfg.key_file) {
                tls = tls.identity(Identity::from_pem(
                    read(cert, "cert_file")?,
                    read(key, "key_file")?,
                ));
            }
            if let Some(name) = &tls_cfg.server_name {
                tls = tls.domain_name(name.clone());
            }
            endpoint = endpoint
                .tls_config(tls)
                .context("control_plane.tls: invalid TLS settings")?;
        }
        endpoint
            .connect()
            .await
            .with_context(|| format!("connecting to {}", self.cfg.endpoint))
    }

    /// One stream: connect, Hello, then apply Assignments and report until it ends.
    async fn session(&self, stop: &CancellationToken) -> Result<SessionEnd, SessionError> {
        let fail = |error: anyhow::Error| SessionError {
            was_connected: false,
            error,
        };
        let token = self.token.read().map_err(|e| fail(e.into()))?;
        let channel = tokio::select! {
            _ = stop.cancelled() => return Ok(SessionEnd::Stopped),
            c = self.connect() => c.map_err(fail)?,
        };
        let mut client = PolicyServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);

        let (tx, mut rx) = mpsc::channel::<GatewayMessage>(8);
        let policies = &self.applier.policies;
        // A policy from policy_file is not the control plane's: its version means nothing there.
        let current_version = match policies.is_pushed() {
            true => policies.load().policy.version(),
            false => 0,
        };
        let hello = Hello {
            instance_id: self.instance_id.clone(),
            labels: self.cfg.labels.clone(),
            current_version,
            build: env!("CARGO_PKG_VERSION").to_string(),
        };
        // The channel has room, so this cannot wait; it fails only if the receiver is gone.
        let _ = tx
            .send(GatewayMessage {
                message: Some(gateway_message::Message::Hello(hello)),
            })
            .await;
        let outbound = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let mut request = tonic::Request::new(outbound);
        let bearer = format!("Bearer {token}").parse().map_err(|_| {
            fail(anyhow::anyhow!(
                "the gateway token is not a valid header value"
            ))
        })?;
        request.metadata_mut().insert("authorization", bearer);

        let response = tokio::select! {
            _ = stop.cancelled() => return Ok(SessionEnd::Stopped),
            r = client.watch(request) => r,
        };
        let mut inbound = match response {
            Ok(r) => r.into_inner(),
            Err(status) if status.code() == tonic::Code::Unauthenticated => {
                return Err(fail(anyhow::anyhow!(
                    "the control plane refused the gateway token: {} (check control_plane.token)",
                    status.message()
                )));
            }
            Err(status) => {
                return Err(fail(anyhow::anyhow!(
                    "the control plane refused the stream: {} ({:?})",
                    status.message(),
                    status.code()
                )));
            }
        };
        metrics::gauge!("weir_control_plane_connected").set(1.0);
        tracing::info!(endpoint = %self.cfg.endpoint, instance = %self.instance_id, current_version, "connected to the control plane");

        let broke = |error: anyhow::Error| SessionError {
            was_connected: true,
            error,
        };
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return Ok(SessionEnd::Stopped),
                m = inbound.message() => m,
            };
            let assignment = match message {
                Ok(Some(a)) => a,
                Ok(None) => return Ok(SessionEnd::Closed),
                Err(status) => {
                    return Err(broke(anyhow::anyhow!(
                        "the watch stream broke: {} ({:?})",
                        status.message(),
                        status.code()
                    )));
                }
            };
            let report = self.applier.clone().handle(assignment).await;
            if tx
                .send(GatewayMessage {
                    message: Some(gateway_message::Message::Report(report)),
                })
                .await
                .is_err()
            {
                return Err(broke(anyhow::anyhow!(
                    "the watch stream closed before the report was sent"
                )));
            }
        }
    }
}

impl Applier {
    /// Applies an Assignment and says how it went, counting the result.
    async fn handle(self: Arc<Self>, assignment: Assignment) -> Report {
        let version = assignment.version;
        let started = Instant::now();
        let this = self.clone();
        let outcome = tokio::task::spawn_blocking(move || this.apply(&assignment))
            .await
            .unwrap_or_else(|e| Err(format!("applying the policy failed unexpectedly: {e}")));
        match outcome {
            Ok(()) => {
                metrics::counter!("weir_control_plane_assignments_total", "result" => "applied")
                    .increment(1);
                tracing::info!(version, took = ?started.elapsed(), "control plane policy applied (ACK)");
                Report {
                    version,
                    applied: true,
                    error: String::new(),
                }
            }
            Err(error) => {
                metrics::counter!("weir_control_plane_assignments_total", "result" => "refused")
                    .increment(1);
                metrics::counter!("weir_policy_documents_refused_total").increment(1);
                let running = self.policies.load().policy.version();
                tracing::error!(version, running_version = running, %error, "control plane policy refused (NACK); the running policy stays");
                Report {
                    version,
                    applied: false,
                    error,
                }
            }
        }
    }

    /// Validates, checks and applies one Assignment, or says why not (the running policy then
    /// stays). Blocking: it asks the brokers for metadata and writes the state file.
    fn apply(&self, a: &Assignment) -> Result<(), String> {
        if a.version == 0 {
            return Err(
                "version 0 is reserved for the built-in keep-everything policy".to_string(),
            );
        }
        if self.policies.is_pushed() && self.policies.load().policy.version() == a.version {
            // Versions are immutable on the control plane: this one already runs.
            return Ok(());
        }
        let policy = Policy::parse(&a.document)
            .map_err(|e| format!("the policy document does not validate: {e}"))?;
        if policy.version() != a.version {
            return Err(format!(
                "the document says version {} but was assigned as version {}",
                policy.version(),
                a.version
            ));
        }
        let missing = self.topics.missing_topics(policy.topics())?;
        if !missing.is_empty() {
            return Err(format!(
                "the policy routes to topics this gateway's Kafka brokers do not have: {}; \
                 create them or change the policy",
                missing.join(", ")
            ));
        }
        // Kept first, applied second: a policy in force is always one a restart would load.
        self.state.write(&a.document).map_err(|e| {
            format!(
                "cannot keep the policy in {}: {e}",
                self.state.path().display()
            )
        })?;
        self.policies.apply_pushed(policy);
        Ok(())
    }
}

/// `d` shortened by a random amount up to half, so gateways that lost the control plane at
/// the same moment do not all come back at the same moment.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.5..=1.0))
}

/// The host name, the default instance id.
fn hostname() -> std::io::Result<String> {
    let mut last = None;
    for path in ["/proc/sys/kernel/hostname", "/etc/hostname"] {
        match std::fs::read_to_string(path) {
            Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
            Ok(_) => {}
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("the host name is empty")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use weir_config::ConfigFile;

    /// Brokers that have exactly the listed topics.
    struct Brokers(Mutex<Result<Vec<String>, String>>);

    impl TopicCheck for Brokers {
        fn missing_topics(&self, topics: &[String]) -> Result<Vec<String>, String> {
            let known = self.0.lock().unwrap().clone()?;
            Ok(topics
                .iter()
                .filter(|t| !known.contains(t))
                .cloned()
                .collect())
        }
    }

    fn doc(version: u64, topic: &str) -> String {
        format!(
            "version: {version}\nrouting:\n  rules:\n    - name: r\n      match: {{ span_name: x }}\n      action: {{ topic: {topic} }}\n"
        )
    }

    fn applier(dir: &Path, topics: &[&str]) -> Arc<Applier> {
        Arc::new(Applier {
            state: StateDir::open(dir).unwrap(),
            policies: Arc::new(PolicyStore::new(None).unwrap()),
            topics: Arc::new(Brokers(Mutex::new(Ok(topics
                .iter()
                .map(|t| t.to_string())
                .collect())))),
        })
    }

    fn assignment(version: u64, document: String) -> Assignment {
        Assignment { version, document }
    }

    #[tokio::test]
    async fn applied_policy_is_in_force_and_kept_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let a = applier(dir.path(), &["t1"]);
        let report = a.clone().handle(assignment(3, doc(3, "t1"))).await;
        assert!(report.applied, "{}", report.error);
        assert_eq!(report.version, 3);
        assert_eq!(a.policies.load().policy.version(), 3);
        assert!(a.policies.is_pushed());
        let kept = StateDir::open(dir.path()).unwrap().read().unwrap().unwrap();
        assert_eq!(kept.version(), 3);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(LAST_APPLIED)]);
    }

    #[tokio::test]
    async fn refused_policies_leave_the_running_one_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = applier(dir.path(), &["t1"]);
        assert!(a.clone().handle(assignment(1, doc(1, "t1"))).await.applied);

        let cases = [
            (assignment(2, doc(2, "missing")), "missing"),
            (
                assignment(
                    2,
                    "version: 2\nsampling: { default_probability: 1.5 }\n".into(),
                ),
                "default_probability",
            ),
            (assignment(5, doc(4, "t1")), "version 4"),
            (assignment(0, doc(1, "t1")), "reserved"),
        ];
        for (assignment, expected) in cases {
            let report = a.clone().handle(assignment).await;
            assert!(!report.applied);
            assert!(
                report.error.contains(expected),
                "{expected}: {}",
                report.error
            );
            assert_eq!(a.policies.load().policy.version(), 1);
            assert_eq!(a.state.read().unwrap().unwrap().version(), 1);
        }
    }

    #[tokio::test]
    async fn unreachable_brokers_refuse_rather_than_guess() {
        let dir = tempfile::tempdir().unwrap();
        let a = Arc::new(Applier {
            state: StateDir::open(dir.path()).unwrap(),
            policies: Arc::new(PolicyStore::new(None).unwrap()),
            topics: Arc::new(Brokers(Mutex::new(Err("metadata timed out".into())))),
        });
        let report = a.clone().handle(assignment(1, doc(1, "t1"))).await;
        assert!(!report.applied);
        assert!(
            report.error.contains("metadata timed out"),
            "{}",
            report.error
        );
        assert_eq!(a.policies.load().policy.version(), 0);
        assert!(a.state.read().unwrap().is_none());
    }

    #[tokio::test]
    async fn the_running_version_is_acknowledged_without_work() {
        let dir = tempfile::tempdir().unwrap();
        let brokers = Arc::new(Brokers(Mutex::new(Ok(vec!["t1".to_string()]))));
        let a = Arc::new(Applier {
            state: StateDir::open(dir.path()).unwrap(),
            policies: Arc::new(PolicyStore::new(None).unwrap()),
            topics: brokers.clone(),
        });
        assert!(a.clone().handle(assignment(2, doc(2, "t1"))).await.applied);
        // Even with the brokers gone, re-assigning the running version is an ACK.
        *brokers.0.lock().unwrap() = Err("down".into());
        assert!(a.clone().handle(assignment(2, doc(2, "t1"))).await.applied);
        assert!(!a.clone().handle(assignment(3, doc(3, "t1"))).await.applied);
    }

    #[test]
    fn start_up_prefers_last_applied_then_file_then_default() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = weir_config::GatewayConfig::from_yaml(&format!(
            "control_plane:\n  endpoint: http://127.0.0.1:1\n  token: t\n  state_dir: {}\n",
            dir.path().join("state").display()
        ))
        .unwrap()
        .control_plane
        .unwrap();
        let file = dir.path().join("policy.yaml");
        std::fs::write(&file, doc(7, "t1")).unwrap();

        let (store, state) = initial_policy_store(&cfg, None).unwrap();
        assert_eq!(store.load().policy.version(), 0);
        assert!(!store.is_pushed());

        let (store, _) = initial_policy_store(&cfg, Some(file.clone())).unwrap();
        assert_eq!(store.load().policy.version(), 7);
        assert!(!store.is_pushed());

        state.write(&doc(9, "t1")).unwrap();
        let (store, _) = initial_policy_store(&cfg, Some(file.clone())).unwrap();
        assert_eq!(store.load().policy.version(), 9);
        assert!(store.is_pushed());

        // A damaged state file is passed over.
        std::fs::write(state.path(), "version: [").unwrap();
        let (store, _) = initial_policy_store(&cfg, Some(file)).unwrap();
        assert_eq!(store.load().policy.version(), 7);
    }

    #[test]
    fn jitter_stays_within_half_to_whole() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(2));
            assert!(
                d >= Duration::from_secs(1) && d <= Duration::from_secs(2),
                "{d:?}"
            );
        }
    }
}
