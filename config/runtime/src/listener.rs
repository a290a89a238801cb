//! Serving HTTP on a listener we accept ourselves, so every listener (the gateway's OTLP/gRPC,
//! OTLP/HTTP and admin listeners, the tail router's admin, the control plane's REST API) gets
//! the same front door: optional TLS (reloaded certificates, mTLS), a cap on
//! concurrent connections, HTTP/2 stream limits, an idle timeout, a header-read timeout
//! against slow-loris clients, a maximum connection age (so long-lived clients spread over
//! replicas added later) and HTTP/2 keepalive pings. Each connection is served by hyper with the listener's tower
//! service (tonic `Routes` or an axum `Router`).

use crate::tls::ReloadingTls;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use weir_config::gateway::Listener;

/// How long a connection closed for idleness may take to finish its goodbye (HTTP/2 GOAWAY).
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The largest HTTP/2 frame a client may send (SETTINGS_MAX_FRAME_SIZE). HTTP/2's default of
/// 16 KiB splits a 100-span export (about 23 KB) into two DATA frames, each parsed, buffered
/// and woken for apart; with 256 KiB a client sends a typical export in one (8% less CPU per
/// span, paired, in docs/BENCHMARKS.md).
const MAX_FRAME_SIZE: u32 = 256 * 1024;

/// The protocols a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocols {
    /// HTTP/2 only (gRPC): HTTP/1 requests are refused at the protocol level.
    Http2,
    /// HTTP/1.1 and HTTP/2 (prior knowledge, or ALPN over TLS).
    Http1And2,
}

/// Connection limits of one listener.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Close a connection with no request in progress for this long.
    pub idle_timeout: Duration,
    /// Deadline for the TLS handshake and the request headers (the first request's on HTTP/2).
    pub header_read_timeout: Duration,
    /// Ask a connection to go away (GOAWAY) once it is this old, give or take 10%.
    pub max_connection_age: Option<Duration>,
    /// How long an aged connection's requests may take to finish before it is cut.
    pub max_connection_age_grace: Option<Duration>,
    /// Send an HTTP/2 PING after this long without a frame from the client.
    pub keepalive_time: Duration,
    /// Close the connection when a PING is not answered within this time.
    pub keepalive_timeout: Duration,
}

impl ConnLimits {
    /// The limits a listener section configures.
    pub fn of(listener: &Listener) -> Self {
        let keepalive = &listener.keepalive.server_parameters;
        Self {
            max_connections: listener.max_connections,
            max_concurrent_streams: listener.max_concurrent_streams,
            idle_timeout: listener.idle_timeout,
            header_read_timeout: listener.header_read_timeout,
            max_connection_age: keepalive.max_connection_age,
            max_connection_age_grace: keepalive.max_connection_age_grace,
            keepalive_time: keepalive.time,
            keepalive_timeout: keepalive.timeout,
        }
    }

    /// When a connection accepted at `started` has lived long enough: `max_connection_age`
    /// give or take 10% (as grpc-go), so connections opened together do not all leave at once.
    fn age_deadline(&self, started: Instant) -> Option<Instant> {
        self.max_connection_age
            .map(|age| started + age.mul_f64(rand::random_range(0.9..=1.1)))
    }
}

impl Default for ConnLimits {
    /// The defaults of a receiver listener, for listeners without their own section (admin,
    /// the control plane's REST API).
    fn default() -> Self {
        Self::of(&Listener::new("0.0.0.0:0"))
    }
}

/// Everything that says how one listener serves its connections.
#[derive(Clone)]
pub struct ServeOptions {
    /// The listener's name in logs and metric labels (`grpc`, `http`, `admin`).
    pub name: &'static str,
    /// Its limits.
    pub limits: ConnLimits,
    /// TLS, when configured.
    pub tls: Option<Arc<ReloadingTls>>,
    /// The protocols it speaks.
    pub protocols: Protocols,
    /// How long connections may take to finish after shutdown before they are cut; `None`
    /// waits for them (the caller bounds the whole shutdown instead).
    pub drain_timeout: Option<Duration>,
}

/// Accepts connections on `listener` and serves `service` on each until `shutdown` is
/// cancelled; then stops accepting, asks every connection to finish (HTTP/2 GOAWAY, HTTP/1
/// close after the current response) and returns when they all have.
pub async fn serve<S, B>(
    listener: TcpListener,
    options: ServeOptions,
    service: S,
    shutdown: CancellationToken,
) -> anyhow::Result<()>
where
    S: tower::Service<http::Request<Incoming>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let options = Arc::new(options);
    let slots = Arc::new(Semaphore::new(
        options.limits.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = options.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Refused at once rather than left waiting, so the client can try another gateway.
            metrics::counter!("weir_receiver_refused_connections_total", "listener" => options.name, "reason" => "max_connections")
                .increment(1);
            tracing::debug!(listener = options.name, %peer, "connection refused: max_connections reached");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let options = options.clone();
        let service = service.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            metrics::gauge!("weir_receiver_open_connections", "listener" => options.name)
                .increment(1.0);
            connection(stream, peer, &options, service, shutdown).await;
            metrics::gauge!("weir_receiver_open_connections", "listener" => options.name)
                .decrement(1.0);
            drop(slot);
        });
    }
    drop(listener);
    let drained = async { while connections.join_next().await.is_some() {} };
    match options.drain_timeout {
        None => drained.await,
        Some(limit) => {
            if tokio::time::timeout(limit, drained).await.is_err() {
                tracing::warn!(
                    listener = options.name,
                    "connections still open after the shutdown timeout; closing them"
                );
            }
        }
    }
    Ok(())
}

/// Serves one accepted connection: the TLS handshake (bounded by the header timeout), then
/// HTTP until the client leaves, a limit closes it, or shutdown drains it.
async fn connection<S, B>(
    stream: TcpStream,
    peer: SocketAddr,
    options: &ServeOptions,
    service: S,
    shutdown: CancellationToken,
) where
    S: tower::Service<http::Request<Incoming>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Instant::now();
    match &options.tls {
        None => serve_http(stream, peer, started, options, service, shutdown).await,
        Some(tls) => {
            let handshake = tokio::time::timeout(
                options.limits.header_read_timeout,
                tls.acceptor().accept(stream),
            );
            match handshake.await {
                Ok(Ok(tls_stream)) => {
                    serve_http(tls_stream, peer, started, options, service, shutdown).await
                }
                Ok(Err(e)) => {
                    metrics::counter!("weir_receiver_tls_handshake_failures_total", "listener" => options.name)
                        .increment(1);
                    tracing::debug!(listener = options.name, %peer, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    closed(options.name, "header_timeout");
                    tracing::debug!(listener = options.name, %peer, "TLS handshake timed out");
                }
            }
        }
    }
}

fn closed(listener: &'static str, reason: &'static str) {
    metrics::counter!("weir_receiver_closed_connections_total", "listener" => listener, "reason" => reason)
        .increment(1);
}

/// What the watchdog of a connection knows about its requests.
struct Activity {
    started: Instant,
    /// Requests begun on the connection.
    requests: AtomicU64,
    /// Requests whose response is not finished.
    in_flight: AtomicUsize,
    /// When the last request ended, as nanoseconds after `started`.
    idle_since: AtomicU64,
    /// Wakes the watchdog when a request ends, so an idle deadline is counted from then.
    ended: Notify,
}

/// Marks a request as finished when dropped (also when the client went away mid-request).
struct RequestGuard(Arc<Activity>);

impl Activity {
    fn begin(self: &Arc<Self>) -> RequestGuard {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self.clone())
    }

    /// When the watchdog should look next, or why the connection must close now.
    fn check(&self, limits: &ConnLimits, now: Instant) -> Result<Instant, &'static str> {
        if self.requests.load(Ordering::Relaxed) == 0 {
            let deadline = self.started + limits.header_read_timeout;
            return if now >= deadline {
                Err("header_timeout")
            } else {
                Ok(deadline)
            };
        }
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Ok(now + limits.idle_timeout);
        }
        let idle_since =
            self.started + Duration::from_nanos(self.idle_since.load(Ordering::Relaxed));
        let deadline = idle_since + limits.idle_timeout;
        if now >= deadline {
            Err("idle_timeout")
        } else {
            Ok(deadline)
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let a = &self.0;
        let since = a.started.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        a.idle_since.store(since, Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
        a.ended.notify_one();
    }
}

async fn serve_http<I, S, B>(
    io: I,
    peer: SocketAddr,
    started: Instant,
    options: &ServeOptions,
    service: S,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<http::Request<Incoming>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limits = &options.limits;
    let activity = Arc::new(Activity {
        started,
        requests: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        idle_since: AtomicU64::new(0),
        ended: Notify::new(),
    });
    let tracked = activity.clone();
    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let guard = tracked.begin();
        let service = service.clone();
        async move {
            let resp = service.oneshot(req).await;
            drop(guard);
            resp
        }
    });

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_frame_size(MAX_FRAME_SIZE)
        .keep_alive_interval(Some(limits.keepalive_time))
        .keep_alive_timeout(limits.keepalive_timeout);
    if options.protocols == Protocols::Http2 {
        builder = builder.http2_only();
    }
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);

    // Draining: asked to finish (shutdown, idleness or age); `force_at` ends the wait for
    // idleness or age.
    let mut draining = false;
    let mut force_at: Option<Instant> = None;
    let age_deadline = limits.age_deadline(started);
    loop {
        let now = Instant::now();
        if !draining && age_deadline.is_some_and(|at| now >= at) {
            // GOAWAY: requests already sent finish; the client opens a new connection, which
            // the Service may send to another replica.
            closed(options.name, "max_connection_age");
            tracing::debug!(listener = options.name, %peer, "closing connection: max_connection_age");
            conn.as_mut().graceful_shutdown();
            draining = true;
            force_at = limits.max_connection_age_grace.map(|grace| now + grace);
            continue;
        }
        let wake = match force_at {
            Some(at) => at,
            None if draining => now + Duration::from_secs(3600),
            None => match activity.check(limits, now) {
                Ok(at) => age_deadline.map_or(at, |age| at.min(age)),
                Err(reason) => {
                    closed(options.name, reason);
                    tracing::debug!(listener = options.name, %peer, reason, "closing connection");
                    if reason == "header_timeout" {
                        // A client that has not sent one request gets no goodbye.
                        return;
                    }
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                    force_at = Some(Instant::now() + IDLE_CLOSE_GRACE);
                    continue;
                }
            },
        };
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    // hyper's own HTTP/1 header-read timeout ends the connection with an error.
                    if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout) {
                        closed(options.name, "header_timeout");
                    }
                    tracing::debug!(listener = options.name, %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.cancelled(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            _ = tokio::time::sleep_until(wake) => {
                if force_at.is_some_and(|at| Instant::now() >= at) {
                    return;
                }
            }
            _ = activity.ended.notified(), if !draining => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits() -> ConnLimits {
        ConnLimits {
            max_connections: 2,
            max_concurrent_streams: 4,
            idle_timeout: Duration::from_millis(600),
            header_read_timeout: Duration::from_millis(400),
            ..ConnLimits::default()
        }
    }

    async fn start(limits: ConnLimits) -> (SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let app = axum::Router::new()
            .route("/", axum::routing::get(|| async { "hi" }))
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_millis(800)).await;
                    "slow"
                }),
            );
        let options = ServeOptions {
            name: "test",
            limits,
            tls: None,
            protocols: Protocols::Http1And2,
            drain_timeout: None,
        };
        tokio::spawn(serve(listener, options, app, stop.clone()));
        (addr, stop)
    }

    /// Sends one HTTP/1.1 GET on `s` and returns the response head's status line.
    async fn get(s: &mut TcpStream) -> String {
        get_path(s, "/").await
    }

    /// Sends one HTTP/1.1 GET of `path` on `s` and returns the response head's status line.
    async fn get_path(s: &mut TcpStream, path: &str) -> String {
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    }

    /// True when the server closes `s` within `within`.
    async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(within, s.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn http2_clients_may_send_large_frames() {
        let (addr, stop) = start(limits()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        // The HTTP/2 preface, then an empty SETTINGS frame (length 0, type 4, flags 0, stream 0).
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        // The server's first frame is its SETTINGS: 9-byte header, then 6-byte settings.
        let mut header = [0u8; 9];
        s.read_exact(&mut header).await.unwrap();
        assert_eq!(header[3], 4, "the first frame is not SETTINGS: {header:?}");
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.unwrap();
        let max_frame_size = payload.chunks_exact(6).find_map(|setting| {
            (u16::from_be_bytes([setting[0], setting[1]]) == 5)
                .then(|| u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]))
        });
        assert_eq!(max_frame_size, Some(MAX_FRAME_SIZE));
        stop.cancel();
    }

    #[tokio::test]
    async fn slow_headers_are_cut_off_and_others_are_served() {
        let (addr, stop) = start(limits()).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HT").await.unwrap();
        let mut normal = TcpStream::connect(addr).await.unwrap();
        assert_eq!(get(&mut normal).await, "HTTP/1.1 200 OK");
        assert!(closed_within(&mut slow, Duration::from_secs(3)).await);
        stop.cancel();
    }

    #[tokio::test]
    async fn idle_connections_are_closed_and_busy_ones_are_not() {
        // A header timeout longer than the idle timeout: idleness counts from the last request.
        let (addr, stop) = start(ConnLimits {
            header_read_timeout: Duration::from_secs(30),
            ..limits()
        })
        .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        // Requests every 300ms keep the connection past the 600ms idle timeout.
        for _ in 0..4 {
            assert_eq!(get(&mut s).await, "HTTP/1.1 200 OK");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert!(closed_within(&mut s, Duration::from_secs(3)).await);
        stop.cancel();
    }

    #[tokio::test]
    async fn aged_connections_finish_their_request_then_close() {
        let (addr, stop) = start(ConnLimits {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            max_connection_age: Some(Duration::from_millis(300)),
            ..limits()
        })
        .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        // The request is in flight when the connection reaches its age: it still succeeds.
        assert_eq!(get_path(&mut s, "/slow").await, "HTTP/1.1 200 OK");
        assert!(closed_within(&mut s, Duration::from_secs(2)).await);
        // Without an age the same connection stays open past it.
        stop.cancel();
        let (addr, stop) = start(ConnLimits {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            ..limits()
        })
        .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert_eq!(get_path(&mut s, "/slow").await, "HTTP/1.1 200 OK");
        assert!(!closed_within(&mut s, Duration::from_millis(800)).await);
        stop.cancel();
    }

    #[tokio::test]
    async fn connections_past_the_limit_are_refused() {
        let (addr, stop) = start(limits()).await;
        let mut a = TcpStream::connect(addr).await.unwrap();
        let mut b = TcpStream::connect(addr).await.unwrap();
        assert_eq!(get(&mut a).await, "HTTP/1.1 200 OK");
        assert_eq!(get(&mut b).await, "HTTP/1.1 200 OK");
        let mut c = TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(&mut c, Duration::from_secs(2)).await);
        drop(a);
        // The slot comes back once the server sees the close.
        let mut served = false;
        for _ in 0..50 {
            let mut d = TcpStream::connect(addr).await.unwrap();
            let _ = d.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
            let mut buf = vec![0u8; 256];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(500), d.read(&mut buf)).await
                && buf[..n].starts_with(b"HTTP/1.1 200")
            {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(served);
        drop(b);
        stop.cancel();
    }
}
