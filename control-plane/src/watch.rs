//! The gRPC watch stream (`weir.controlplane.v1.PolicyService/Watch`) on 8081: gateways connect,
//! receive the policy version they should run, and answer ACK or NACK.
//!
//! One stream per gateway, as in Envoy's xDS: the gateway says who it is and what it runs
//! (Hello), the control plane pushes an Assignment whenever the version that instance should run
//! differs from the last one it pushed (or the gateway reported), and the gateway answers every
//! Assignment with a Report. HTTP/2 keepalive pings notice a gateway that vanished without closing
//! its connection, so it is marked disconnected within about `KEEPALIVE_INTERVAL +
//! KEEPALIVE_TIMEOUT`.

use crate::{ControlPlane, GatewayHello, PolicyVersion};
use futures::Stream;
use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};
use weir_proto::controlplane::v1::gateway_message::Message;
use weir_proto::controlplane::v1::policy_service_server::{PolicyService, PolicyServiceServer};
use weir_proto::controlplane::v1::{Assignment, GatewayMessage, Hello, Report};
use weir_runtime::tls::ReloadingTls;

/// How long a gateway has to send its Hello after opening the stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the server pings an HTTP/2 connection to check the gateway is still there.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection (and its stream) is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest message accepted or sent; a policy document with thousands of rules fits.
const MAX_MESSAGE_SIZE: usize = 16 << 20;
/// Assignments queued for one gateway; more than a couple means it stopped reading, and the
/// newest desired version is all that matters anyway.
const OUTBOUND_QUEUE: usize = 4;

/// How long a TLS handshake on the watch listener may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the gRPC watch stream on `listener` until `shutdown`, over TLS when `tls` is given
/// (each connection gets the certificate in force when it arrives, so files rotated on disk
/// and reloaded by `ReloadingTls::watch` serve new connections without a restart).
pub async fn serve(
    cp: Arc<ControlPlane>,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<ReloadingTls>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let service = WatchService::new(cp, shutdown.clone());
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    let router = builder.add_service(service.into_server());
    let served = match tls {
        None => {
            let incoming = TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(KEEPALIVE_INTERVAL));
            router
                .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                .await
        }
        Some(tls) => {
            let incoming = tls_incoming(listener, tls, shutdown.clone());
            router
                .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                .await
        }
    };
    served.map_err(|e| anyhow::anyhow!("watch server: {e}"))
}

/// TLS connections accepted on `listener` until `shutdown`: each handshake runs on its own
/// task, bounded by [`HANDSHAKE_TIMEOUT`], so a slow client holds up no one else.
fn tls_incoming(
    listener: tokio::net::TcpListener,
    tls: Arc<ReloadingTls>,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "watch listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => {
                        // A closed channel means the server stopped.
                        let _ = tx.send(Ok(tls_stream)).await;
                    }
                    Ok(Err(e)) => {
                        metrics::counter!("weir_receiver_tls_handshake_failures_total", "listener" => "watch")
                            .increment(1);
                        tracing::debug!(%peer, error = %e, "watch listener: TLS handshake failed");
                    }
                    Err(_) => tracing::debug!(%peer, "watch listener: TLS handshake timed out"),
                }
            });
        }
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The `PolicyService` implementation: one session task per connected gateway.
pub struct WatchService {
    cp: Arc<ControlPlane>,
    shutdown: CancellationToken,
}

impl WatchService {
    /// A service over `cp` whose streams end when `shutdown` fires (so a graceful server
    /// shutdown is not held up by streams that never end on their own).
    pub fn new(cp: Arc<ControlPlane>, shutdown: CancellationToken) -> Self {
        Self { cp, shutdown }
    }

    /// The tonic server for this service, with message size limits fit for policy documents.
    pub fn into_server(self) -> PolicyServiceServer<Self> {
        PolicyServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }
}

/// The bearer token of `authorization`, if the header is present and well-formed.
fn bearer_token<T>(request: &Request<T>) -> Option<&str> {
    let value = request.metadata().get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Checks the Hello against the bounds on what a gateway may claim and turns it into the
/// control plane's form.
fn read_hello(hello: Hello) -> Result<GatewayHello, Status> {
    crate::identity::check_claims(&hello.instance_id, &hello.labels, &hello.build)
        .map_err(Status::invalid_argument)?;
    Ok(GatewayHello {
        instance_id: hello.instance_id,
        labels: hello.labels,
        current_version: hello.current_version,
        build: hello.build,
    })
}

/// The response stream handed to tonic: Assignments (or a final error) from the session task.
type AssignmentStream = Pin<Box<dyn Stream<Item = Result<Assignment, Status>> + Send>>;

#[tonic::async_trait]
impl PolicyService for WatchService {
    type WatchStream = AssignmentStream;

    async fn watch(
        &self,
        request: Request<Streaming<GatewayMessage>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let peer = request.remote_addr();
        let Some(caller) = self.cp.gateway_caller(bearer_token(&request)) else {
            tracing::warn!(
                ?peer,
                "watch stream refused: missing or wrong gateway token"
            );
            return Err(Status::unauthenticated(
                "missing or wrong gateway token (send `authorization: Bearer <token>`)",
            ));
        };
        let mut inbound = request.into_inner();
        let first = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "no Hello within {HELLO_TIMEOUT:?} of opening the stream"
                )));
            }
            Ok(Err(status)) => return Err(status),
            Ok(Ok(None)) => {
                return Err(Status::invalid_argument(
                    "the stream ended before its first message (a Hello)",
                ));
            }
            Ok(Ok(Some(m))) => m,
        };
        let hello = match first.message {
            Some(Message::Hello(h)) => read_hello(h)?,
            Some(Message::Report(_)) => {
                return Err(Status::invalid_argument(
                    "the first message must be a Hello, got a Report",
                ));
            }
            None => {
                return Err(Status::invalid_argument(
                    "the first message must be a Hello, got an empty GatewayMessage",
                ));
            }
        };
        if !self
            .cp
            .tokens()
            .may_be_instance(&caller.name, &hello.instance_id)
        {
            tracing::warn!(
                ?peer,
                token = caller.name,
                instance = %hello.instance_id,
                "watch stream refused: the token is not bound to this instance id"
            );
            return Err(Status::permission_denied(format!(
                "token `{}` may not connect as instance `{}` (see auth.tokens[].instances)",
                caller.name, hello.instance_id
            )));
        }
        // Subscribe before reading the desired version, so a change in between is not missed.
        let changes = self.cp.changes();
        self.cp
            .gateway_connected(&hello)
            .await
            .map_err(|e| Status::unavailable(format!("recording the gateway: {e}")))?;
        tracing::info!(instance = %hello.instance_id, current_version = hello.current_version, ?peer, "gateway connected");

        let (tx, mut rx) = mpsc::channel(OUTBOUND_QUEUE);
        let session = Session {
            cp: self.cp.clone(),
            last_pushed: hello.current_version,
            pushed: BTreeSet::new(),
            hello,
            tx,
        };
        tokio::spawn(session.run(inbound, changes, self.shutdown.clone()));
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// One gateway's stream: pushes what it should run, records what it reports.
struct Session {
    cp: Arc<ControlPlane>,
    hello: GatewayHello,
    /// The version the gateway was last told to run (its reported one before any push).
    last_pushed: u64,
    /// Every version pushed on this stream, so a Report for anything else is recognised.
    pushed: BTreeSet<u64>,
    tx: mpsc::Sender<Result<Assignment, Status>>,
}

/// Why a session ended, for the log.
enum End {
    GatewayClosed,
    GatewayGone(Status),
    ResponseDropped,
    Shutdown,
    Failed(Status),
}

impl Session {
    async fn run(
        mut self,
        mut inbound: Streaming<GatewayMessage>,
        mut changes: tokio::sync::watch::Receiver<u64>,
        shutdown: CancellationToken,
    ) {
        changes.borrow_and_update();
        metrics::gauge!("weir_cp_watch_streams").increment(1.0);
        let end = match self.push_desired().await {
            Err(status) => End::Failed(status),
            Ok(()) => loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break End::Shutdown,
                    _ = self.tx.closed() => break End::ResponseDropped,
                    changed = changes.changed() => {
                        if changed.is_err() {
                            break End::Shutdown;
                        }
                        if let Err(status) = self.push_desired().await {
                            break End::Failed(status);
                        }
                    }
                    msg = inbound.message() => match msg {
                        Ok(None) => break End::GatewayClosed,
                        Err(status) => break End::GatewayGone(status),
                        Ok(Some(m)) => if let Err(status) = self.handle(m).await {
                            break End::Failed(status);
                        }
                    },
                }
            },
        };
        let instance = self.hello.instance_id.as_str();
        match &end {
            End::Failed(status) => {
                tracing::warn!(instance, error = %status.message(), "watch stream ended with an error");
                // The gateway sees the reason and reconnects; a send error means it is gone.
                let _ = self.tx.try_send(Err(status.clone()));
            }
            End::GatewayGone(status) => {
                tracing::info!(instance, reason = %status.message(), "gateway stream broke")
            }
            End::GatewayClosed | End::ResponseDropped => {
                tracing::info!(instance, "gateway closed its stream")
            }
            End::Shutdown => tracing::info!(instance, "watch stream closed for shutdown"),
        }
        metrics::gauge!("weir_cp_watch_streams").decrement(1.0);
        // The control plane counts open streams per instance, so a gateway that reconnected
        // before its old stream was noticed dead stays connected when the old one ends.
        if let Err(e) = self.cp.gateway_disconnected(instance).await {
            tracing::warn!(instance, error = %e, "cannot record the gateway's disconnection");
        }
    }

    /// Sends the version this instance should run, when it is not the one last pushed.
    async fn push_desired(&mut self) -> Result<(), Status> {
        let desired = self
            .cp
            .desired_policy(&self.hello.instance_id, &self.hello.labels)
            .await
            .map_err(|e| Status::unavailable(format!("reading the desired policy: {e}")))?;
        let Some(PolicyVersion { version, document }) = desired else {
            return Ok(());
        };
        if version == self.last_pushed {
            return Ok(());
        }
        tracing::info!(instance = %self.hello.instance_id, version, "pushing policy");
        self.last_pushed = version;
        self.pushed.insert(version);
        metrics::counter!("weir_cp_assignments_sent_total").increment(1);
        // A closed channel means the gateway is gone; the loop notices through `closed()`.
        let _ = self.tx.send(Ok(Assignment { version, document })).await;
        Ok(())
    }

    /// Records a Report; anything else after the Hello is a protocol error.
    async fn handle(&mut self, msg: GatewayMessage) -> Result<(), Status> {
        let instance = self.hello.instance_id.as_str();
        let Report {
            version,
            applied,
            error,
        } = match msg.message {
            Some(Message::Report(r)) => r,
            Some(Message::Hello(_)) => {
                return Err(Status::invalid_argument(
                    "a second Hello on one stream: open a new stream to say hello again",
                ));
            }
            None => {
                return Err(Status::invalid_argument(
                    "an empty GatewayMessage: expected a Report",
                ));
            }
        };
        if !self.pushed.contains(&version) {
            // Recording it would claim the instance runs a version nobody sent it.
            metrics::counter!("weir_cp_reports_total", "result" => "unknown_version").increment(1);
            tracing::warn!(
                instance,
                version,
                applied,
                "ignoring a Report for a version this stream did not push"
            );
            return Ok(());
        }
        let recorded = if applied {
            tracing::info!(instance, version, "gateway applied the policy (ACK)");
            self.cp.record_ack(instance, version).await
        } else {
            let error = if error.trim().is_empty() {
                "the gateway refused the policy without saying why"
            } else {
                crate::identity::bounded_error(&error)
            };
            tracing::warn!(
                instance,
                version,
                error,
                "gateway refused the policy (NACK)"
            );
            self.cp
                .record_nack(instance, &self.hello.labels, version, error)
                .await
                .map(|_| ())
        };
        recorded.map_err(|e| Status::unavailable(format!("recording the gateway's report: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_reads_the_scheme_case_insensitively() {
        let mut r = Request::new(());
        assert_eq!(bearer_token(&r), None);
        r.metadata_mut()
            .insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&r), Some("abc"));
        r.metadata_mut()
            .insert("authorization", "bearer  xyz ".parse().unwrap());
        assert_eq!(bearer_token(&r), Some("xyz"));
        r.metadata_mut()
            .insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&r), None);
        r.metadata_mut()
            .insert("authorization", "Bearer".parse().unwrap());
        assert_eq!(bearer_token(&r), None);
    }

    #[test]
    fn hello_without_instance_id_is_refused() {
        let status = read_hello(Hello {
            instance_id: "  ".into(),
            ..Hello::default()
        })
        .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("instance_id"));
    }

    /// A control plane on a temp SQLite file with its watch stream on a free port.
    struct Served {
        cp: Arc<ControlPlane>,
        endpoint: String,
        shutdown: CancellationToken,
        server: tokio::task::JoinHandle<anyhow::Result<()>>,
        _dir: tempfile::TempDir,
    }

    async fn serve_test() -> Served {
        serve_test_with(None).await
    }

    async fn serve_test_with(tls: Option<Arc<ReloadingTls>>) -> Served {
        use weir_config::auth::hash_token;
        use weir_config::control_plane::{Backend, Role};
        let dir = tempfile::tempdir().unwrap();
        let mut tokens = crate::auth::Tokens::new(vec![
            ("ops".into(), Role::Admin, hash_token(b"a")),
            ("gws".into(), Role::Gateway, hash_token(b"g")),
            ("eu-gws".into(), Role::Gateway, hash_token(b"eu")),
        ]);
        tokens.bind_instances("eu-gws", vec!["gw-eu-*".into()]);
        let cp = ControlPlane::open(&Backend::Sqlite(dir.path().join("cp.db")), tokens)
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(cp.clone(), listener, tls, shutdown.clone()));
        Served {
            cp,
            endpoint,
            shutdown,
            server,
            _dir: dir,
        }
    }

    /// One gateway's end of a stream.
    struct Gw {
        tx: mpsc::Sender<GatewayMessage>,
        inbound: Streaming<Assignment>,
    }

    async fn open(endpoint: &str, token: &str, first: Option<Message>) -> Result<Gw, Status> {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
            .unwrap()
            .connect()
            .await
            .unwrap();
        open_on(channel, token, first).await
    }

    async fn open_on(
        channel: tonic::transport::Channel,
        token: &str,
        first: Option<Message>,
    ) -> Result<Gw, Status> {
        use weir_proto::controlplane::v1::policy_service_client::PolicyServiceClient;
        let mut client = PolicyServiceClient::new(channel);
        let (tx, mut rx) = mpsc::channel(8);
        if let Some(m) = first {
            tx.send(GatewayMessage { message: Some(m) }).await.unwrap();
        }
        let mut req = Request::new(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let inbound = client.watch(req).await?.into_inner();
        Ok(Gw { tx, inbound })
    }

    fn hello(id: &str, current_version: u64) -> Option<Message> {
        Some(Message::Hello(Hello {
            instance_id: id.into(),
            labels: [("zone".to_string(), "a".to_string())].into(),
            current_version,
            build: "test".into(),
        }))
    }

    impl Gw {
        /// The next Assignment within `wait`, or None.
        async fn next(&mut self, wait: Duration) -> Option<Assignment> {
            tokio::time::timeout(wait, self.inbound.message())
                .await
                .ok()
                .and_then(|m| m.unwrap())
        }

        async fn report(&self, version: u64, applied: bool, error: &str) {
            let report = Report {
                version,
                applied,
                error: error.into(),
            };
            self.tx
                .send(GatewayMessage {
                    message: Some(Message::Report(report)),
                })
                .await
                .unwrap();
        }
    }

    fn admin() -> crate::auth::Caller {
        crate::auth::Caller {
            name: "ops".into(),
            role: weir_config::control_plane::Role::Admin,
        }
    }

    async fn release(cp: &ControlPlane, version: u64, target: crate::targeting::Target) -> i64 {
        cp.submit_policy(&format!("version: {version}\n"), &admin())
            .await
            .unwrap();
        cp.start_rollout(version, target, &admin())
            .await
            .unwrap()
            .id
    }

    async fn wait_gateway(
        cp: &ControlPlane,
        id: &str,
        check: impl Fn(&crate::store::GatewayRecord) -> bool,
    ) {
        for _ in 0..200 {
            let list = cp.gateways().await.unwrap();
            if list.iter().any(|(g, _)| g.instance_id == id && check(g)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "gateway {id} never reached the expected state: {:?}",
            cp.gateways().await.unwrap()
        );
    }

    const SHORT: Duration = Duration::from_millis(300);
    const LONG: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn refused_streams_say_why() {
        let s = serve_test().await;
        let status = open(&s.endpoint, "wrong", hello("gw-1", 0))
            .await
            .err()
            .unwrap();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        let report = Some(Message::Report(Report::default()));
        let status = open(&s.endpoint, "g", report).await.err().unwrap();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("Hello"), "{}", status.message());
        let status = open(&s.endpoint, "g", hello("", 0)).await.err().unwrap();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        // None of them was recorded.
        assert!(s.cp.gateways().await.unwrap().is_empty());
        s.shutdown.cancel();
        s.server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn streams_run_over_tls_with_the_reloading_certificate() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert_file, leaf.pem()).unwrap();
        std::fs::write(&key_file, leaf_key.serialize_pem()).unwrap();
        let settings: weir_config::ServerTls = serde_yaml_ng::from_str(&format!(
            "cert_file: {}\nkey_file: {}\n",
            cert_file.display(),
            key_file.display()
        ))
        .unwrap();
        let tls = ReloadingTls::new("watch", &settings, weir_runtime::tls::ALPN_H2).unwrap();

        let s = serve_test_with(Some(tls)).await;
        let port = s.endpoint.rsplit(':').next().unwrap().to_string();
        let channel = tonic::transport::Endpoint::from_shared(format!("https://localhost:{port}"))
            .unwrap()
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
                    .domain_name("localhost"),
            )
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut gw = open_on(channel, "g", hello("gw-tls", 0)).await.unwrap();
        release(&s.cp, 1, Default::default()).await;
        assert_eq!(gw.next(LONG).await.map(|a| a.version), Some(1));
        // Plain text on the TLS listener gets nowhere.
        let plain = tonic::transport::Endpoint::from_shared(s.endpoint.clone())
            .unwrap()
            .connect()
            .await;
        if let Ok(channel) = plain {
            assert!(open_on(channel, "g", hello("gw-plain", 0)).await.is_err());
        }
        s.shutdown.cancel();
        s.server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_bound_token_connects_only_as_its_instances() {
        let s = serve_test().await;
        let status = open(&s.endpoint, "eu", hello("gw-us-1", 0))
            .await
            .err()
            .unwrap();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains("gw-us-1"), "{}", status.message());
        let _gw = open(&s.endpoint, "eu", hello("gw-eu-1", 0)).await.unwrap();
        wait_gateway(&s.cp, "gw-eu-1", |g| g.connected).await;
        let ids: Vec<String> =
            s.cp.gateways()
                .await
                .unwrap()
                .into_iter()
                .map(|(g, _)| g.instance_id)
                .collect();
        assert_eq!(
            ids,
            vec!["gw-eu-1".to_string()],
            "the refused one was not recorded"
        );
        s.shutdown.cancel();
    }

    #[tokio::test]
    async fn oversized_claims_are_refused() {
        let s = serve_test().await;
        let long_id = "g".repeat(crate::identity::MAX_INSTANCE_ID_BYTES + 1);
        let status = open(&s.endpoint, "g", hello(&long_id, 0))
            .await
            .err()
            .unwrap();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let many = Some(Message::Hello(Hello {
            instance_id: "gw-1".into(),
            labels: (0..=crate::identity::MAX_LABELS)
                .map(|i| (format!("k{i}"), "v".into()))
                .collect(),
            current_version: 0,
            build: String::new(),
        }));
        let status = open(&s.endpoint, "g", many).await.err().unwrap();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(s.cp.gateways().await.unwrap().is_empty());
        s.shutdown.cancel();
    }

    #[tokio::test]
    async fn pushes_only_changes_and_records_reports() {
        let s = serve_test().await;
        let mut gw = open(&s.endpoint, "g", hello("gw-1", 0)).await.unwrap();
        wait_gateway(&s.cp, "gw-1", |g| g.connected).await;
        assert!(gw.next(SHORT).await.is_none(), "nothing released yet");

        release(&s.cp, 1, Default::default()).await;
        let a = gw.next(LONG).await.expect("v1 pushed");
        assert_eq!(a.version, 1);
        assert_eq!(a.document, "version: 1\n");
        gw.report(1, true, "").await;
        wait_gateway(&s.cp, "gw-1", |g| g.running_version == Some(1)).await;

        // A rollout that does not reach this instance pushes nothing.
        let other = crate::targeting::Target {
            instances: Some(vec!["gw-other".into()]),
            ..Default::default()
        };
        release(&s.cp, 2, other).await;
        assert!(gw.next(SHORT).await.is_none());

        // A NACK is recorded and pauses the rollout; the version is not pushed again.
        let id = release(&s.cp, 3, Default::default()).await;
        assert_eq!(gw.next(LONG).await.map(|a| a.version), Some(3));
        gw.report(3, false, "topic x is missing").await;
        wait_gateway(&s.cp, "gw-1", |g| {
            g.last_report.as_deref() == Some("nack")
                && g.last_error.as_deref() == Some("topic x is missing")
        })
        .await;
        let rollout = s.cp.rollout(id).await.unwrap();
        assert_eq!(rollout.state, crate::store::RolloutState::Paused);
        assert!(gw.next(SHORT).await.is_none());
        // A report for a version never pushed on this stream changes nothing.
        gw.report(2, true, "").await;
        tokio::time::sleep(SHORT).await;
        let (rec, _) = s.cp.gateways().await.unwrap().into_iter().next().unwrap();
        assert_eq!(rec.running_version, Some(1));

        // Shutdown ends the stream, and the server returns.
        s.shutdown.cancel();
        assert!(gw.next(LONG).await.is_none());
        s.server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn hello_with_the_desired_version_gets_no_push() {
        let s = serve_test().await;
        release(&s.cp, 1, Default::default()).await;
        let mut current = open(&s.endpoint, "g", hello("gw-a", 1)).await.unwrap();
        assert!(current.next(SHORT).await.is_none());
        let mut behind = open(&s.endpoint, "g", hello("gw-b", 0)).await.unwrap();
        assert_eq!(behind.next(LONG).await.map(|a| a.version), Some(1));
        // Closing the stream marks the instance disconnected.
        drop(behind);
        wait_gateway(&s.cp, "gw-b", |g| !g.connected).await;
        s.shutdown.cancel();
        let _ = current.next(LONG).await;
        s.server.await.unwrap().unwrap();
    }
}
