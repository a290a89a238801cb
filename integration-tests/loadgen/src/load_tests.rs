//! The generator end to end against small in-process OTLP servers: what the servers received
//! must match what the report and the ids file claim.

use std::collections::HashSet;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use weir_proto::otlp::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use weir_proto::otlp::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};

use crate::client::{BodyCompression, ExportClient, KafkaOptions, Transport};
use crate::generator::{Encoding, RequestPool, Shape};
use crate::load::{self, IdsSink, Load, MISSED_SCHEDULE};
use crate::report::Stats;

type SpanKey = (String, String);

fn hex(raw: &[u8]) -> String {
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a fake server saw: every span of every request it accepted in full.
#[derive(Default)]
struct Received {
    requests: AtomicU64,
    /// The content encoding of every request (`identity` when none), in arrival order.
    encodings: Mutex<Vec<String>>,
    accepted_in_full: Mutex<Vec<SpanKey>>,
    accepted_spans: AtomicU64,
}

/// Request number n: every 5th fails, every 3rd (that does not fail) rejects 7 spans.
enum Verdict {
    Accept,
    Partial(i64),
    Fail,
}

fn verdict(n: u64) -> Verdict {
    if n % 5 == 4 {
        Verdict::Fail
    } else if n % 3 == 2 {
        Verdict::Partial(7)
    } else {
        Verdict::Accept
    }
}

impl Received {
    fn take(&self, request: &ExportTraceServiceRequest) -> Verdict {
        let n = self.requests.fetch_add(1, Ordering::SeqCst);
        let spans: Vec<SpanKey> = request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .map(|s| (hex(&s.trace_id), hex(&s.span_id)))
            .collect();
        let verdict = verdict(n);
        match verdict {
            Verdict::Accept => {
                self.accepted_spans
                    .fetch_add(spans.len() as u64, Ordering::SeqCst);
                self.accepted_in_full.lock().unwrap().extend(spans);
            }
            Verdict::Partial(rejected) => {
                self.accepted_spans
                    .fetch_add(spans.len() as u64 - rejected as u64, Ordering::SeqCst);
            }
            Verdict::Fail => {}
        }
        verdict
    }
}

struct FakeGrpc(Arc<Received>);

#[tonic::async_trait]
impl TraceService for FakeGrpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let encoding = request
            .metadata()
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("identity");
        self.0.encodings.lock().unwrap().push(encoding.to_string());
        match self.0.take(request.get_ref()) {
            Verdict::Accept => Ok(tonic::Response::new(ExportTraceServiceResponse::default())),
            Verdict::Partial(rejected) => Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: Some(ExportTracePartialSuccess {
                    rejected_spans: rejected,
                    error_message: "too old".to_string(),
                }),
            })),
            Verdict::Fail => Err(tonic::Status::unavailable("kafka is slow")),
        }
    }
}

async fn start_grpc() -> (SocketAddr, Arc<Received>) {
    let received = Arc::new(Received::default());
    let incoming =
        tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap();
    let service = TraceServiceServer::new(FakeGrpc(received.clone()))
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .accept_compressed(tonic::codec::CompressionEncoding::Zstd);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming),
    );
    (addr, received)
}

/// An OTLP/HTTP server over plain HTTP/1.1 keep-alive; `delay` holds every reply back;
/// `close_after_reply` closes each connection after one reply without saying so, as a server
/// does when an idle keep-alive connection times out.
async fn start_http(delay: Duration, close_after_reply: bool) -> (SocketAddr, Arc<Received>) {
    let received = Arc::new(Received::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_state = received.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let received = server_state.clone();
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                loop {
                    let mut length = 0;
                    let (mut gzip, mut zstd, mut json) = (false, false, false);
                    let mut first = true;
                    loop {
                        let mut line = String::new();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let lower = line.trim().to_ascii_lowercase();
                        if first {
                            assert!(lower.starts_with("post /v1/traces http/1.1"), "{lower}");
                            first = false;
                        } else if lower.is_empty() {
                            break;
                        } else if let Some(v) = lower.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        } else if lower == "content-encoding: gzip" {
                            gzip = true;
                        } else if lower == "content-encoding: zstd" {
                            zstd = true;
                        } else if lower == "content-type: application/json" {
                            json = true;
                        }
                    }
                    let mut body = vec![0; length];
                    stream.read_exact(&mut body).await.unwrap();
                    if gzip {
                        let mut plain = Vec::new();
                        flate2::read::GzDecoder::new(body.as_slice())
                            .read_to_end(&mut plain)
                            .unwrap();
                        body = plain;
                    }
                    if zstd {
                        body = zstd::decode_all(body.as_slice()).unwrap();
                    }
                    let encoding = match (gzip, zstd) {
                        (true, _) => "gzip",
                        (_, true) => "zstd",
                        _ => "identity",
                    };
                    received
                        .encodings
                        .lock()
                        .unwrap()
                        .push(encoding.to_string());
                    let request = if json {
                        from_json(&body)
                    } else {
                        ExportTraceServiceRequest::decode(body.as_slice()).unwrap()
                    };
                    tokio::time::sleep(delay).await;
                    let (status, reply) = match received.take(&request) {
                        Verdict::Accept => ("200 OK", Vec::new()),
                        Verdict::Partial(rejected) => (
                            "200 OK",
                            ExportTraceServiceResponse {
                                partial_success: Some(ExportTracePartialSuccess {
                                    rejected_spans: rejected,
                                    error_message: String::new(),
                                }),
                            }
                            .encode_to_vec(),
                        ),
                        Verdict::Fail => ("503 Service Unavailable", Vec::new()),
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
                        reply.len()
                    );
                    let stream = stream.get_mut();
                    stream.write_all(head.as_bytes()).await.unwrap();
                    stream.write_all(&reply).await.unwrap();
                    if close_after_reply {
                        return;
                    }
                }
            });
        }
    });
    (addr, received)
}

/// Reads the ids back out of an OTLP/JSON body, independently of the generator's encoder.
fn from_json(body: &[u8]) -> ExportTraceServiceRequest {
    use weir_proto::otlp::trace::v1::Span;
    let doc: serde_json::Value = serde_json::from_slice(body).unwrap();
    let unhex = |s: &serde_json::Value| -> Vec<u8> {
        let s = s.as_str().unwrap();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    };
    let spans = doc["resourceSpans"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rs| rs["scopeSpans"].as_array().unwrap())
        .flat_map(|ss| ss["spans"].as_array().unwrap())
        .map(|s| Span {
            trace_id: unhex(&s["traceId"]),
            span_id: unhex(&s["spanId"]),
            ..Default::default()
        })
        .collect();
    weir_proto::test_support::traces_request(spans)
}

fn shape() -> Shape {
    Shape {
        spans_per_request: 100,
        spans_per_trace: 10,
        services: 5,
        attributes: 5,
        attribute_size: 16,
        error_rate: 0.1,
    }
}

fn no_kafka() -> KafkaOptions {
    KafkaOptions {
        topic: None,
        linger: Duration::ZERO,
        max_in_flight: 1,
        timeout: Duration::from_secs(5),
    }
}

async fn make_load(
    transport: Transport,
    addr: SocketAddr,
    requests: u64,
    compression: BodyCompression,
    ids_out: Option<&std::path::Path>,
) -> Arc<Load> {
    let encoding = if transport == Transport::HttpJson {
        Encoding::Json
    } else {
        Encoding::Protobuf
    };
    let pool = RequestPool::build(&shape(), encoding, 4, &mut SmallRng::seed_from_u64(7)).unwrap();
    let client = ExportClient::connect(
        transport,
        &format!("http://{addr}"),
        2,
        compression,
        &no_kafka(),
    )
    .await
    .unwrap();
    Arc::new(Load {
        pool,
        client,
        timeout: Duration::from_secs(5),
        duration: Duration::from_secs(20),
        max_requests: requests,
        failure_pause: Duration::ZERO,
        ids_out: ids_out.map(|p| IdsSink::create(p).unwrap()),
        stats: Mutex::new(Stats::default()),
        stop: Default::default(),
    })
}

/// The report, the ids file and the server agree: 40 requests, 8 failed (every 5th),
/// 11 partially accepted (every 3rd of the rest), 21 accepted in full.
/// Every request the server saw came with `compression`'s encoding.
fn check_encoding(received: &Received, compression: BodyCompression) {
    let want = match compression {
        BodyCompression::None => "identity",
        other => other.name(),
    };
    let seen = received.encodings.lock().unwrap();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|e| e == want), "{seen:?}, want {want}");
}

fn check_agreement(load: &Load, received: &Received, ids_file: &std::path::Path) {
    load.ids_out.as_ref().unwrap().finish().unwrap();
    let stats = load.stats.lock().unwrap();
    assert_eq!(received.requests.load(Ordering::SeqCst), 40);
    assert_eq!((stats.requests_ok, stats.requests_failed), (32, 8));
    assert_eq!(stats.requests_partial, 11);
    assert_eq!(stats.failures.values().sum::<u64>(), 8);
    assert_eq!(
        stats.spans_acknowledged,
        received.accepted_spans.load(Ordering::SeqCst)
    );
    assert_eq!(stats.spans_acknowledged, 21 * 100 + 11 * 93);
    assert_eq!(stats.latency_us.len(), 40);

    let text = std::fs::read_to_string(ids_file).unwrap();
    let written: Vec<SpanKey> = text
        .lines()
        .map(|l| {
            let (t, s) = l.split_once(' ').unwrap();
            (t.to_string(), s.to_string())
        })
        .collect();
    let mut server: Vec<SpanKey> = received.accepted_in_full.lock().unwrap().clone();
    let mut written_sorted = written.clone();
    written_sorted.sort();
    server.sort();
    assert_eq!(
        written_sorted, server,
        "the ids file lists exactly the fully accepted spans"
    );
    assert_eq!(
        written.iter().collect::<HashSet<_>>().len(),
        2100,
        "every sent span id is fresh"
    );
    let traces: HashSet<&String> = written.iter().map(|(t, _)| t).collect();
    assert_eq!(traces.len(), 210);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_closed_loop_reports_what_the_server_saw() {
    for compression in [BodyCompression::Gzip, BodyCompression::Zstd] {
        let (addr, received) = start_grpc().await;
        let dir = tempfile::tempdir().unwrap();
        let ids = dir.path().join("ids.txt");
        let load = make_load(Transport::Grpc, addr, 40, compression, Some(&ids)).await;
        load::closed_loop(load.clone(), 4).await;
        assert_eq!(load.stats.lock().unwrap().failures["UNAVAILABLE"], 8);
        check_agreement(&load, &received, &ids);
        check_encoding(&received, compression);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_open_loop_reports_what_the_server_saw() {
    for (transport, compression) in [
        (Transport::HttpProto, BodyCompression::None),
        (Transport::HttpJson, BodyCompression::Gzip),
        (Transport::HttpProto, BodyCompression::Zstd),
    ] {
        let (addr, received) = start_http(Duration::ZERO, false).await;
        let dir = tempfile::tempdir().unwrap();
        let ids = dir.path().join("ids.txt");
        let load = make_load(transport, addr, 40, compression, Some(&ids)).await;
        // 40 requests of 100 spans at 20000 spans/s: one every 5 ms, the last at 195 ms.
        let elapsed = load::open_loop(load.clone(), 20_000.0, 64).await;
        assert!(elapsed >= Duration::from_millis(195), "{elapsed:?}");
        assert_eq!(load.stats.lock().unwrap().failures["HTTP_503"], 8);
        check_agreement(&load, &received, &ids);
        check_encoding(&received, compression);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_counts_missed_sends_and_latency_from_the_schedule() {
    let (addr, received) = start_http(Duration::from_millis(100), false).await;
    let load = make_load(Transport::HttpProto, addr, 10, BodyCompression::None, None).await;
    // A send every 10 ms, one in flight at a time, replies after 100 ms: most sends miss.
    load::open_loop(load.clone(), 10_000.0, 1).await;
    let stats = load.stats.lock().unwrap();
    let sent = received.requests.load(Ordering::SeqCst);
    assert!((1..10).contains(&sent), "sent {sent}");
    assert_eq!(stats.failures[MISSED_SCHEDULE], 10 - sent);
    assert!(stats.latency_us.min() >= 100_000);
    // The generator's own lateness is counted for every request it sent, and only for those.
    assert_eq!(stats.send_lateness_us.len(), sent);
}

#[tokio::test]
async fn duration_bounds_a_closed_loop() {
    let (addr, _received) = start_http(Duration::from_millis(20), false).await;
    let load = make_load(
        Transport::HttpProto,
        addr,
        u64::MAX,
        BodyCompression::None,
        None,
    )
    .await;
    let load = Arc::new(Load {
        duration: Duration::from_millis(300),
        ..Arc::try_unwrap(load).ok().unwrap()
    });
    let elapsed = load::closed_loop(load.clone(), 2).await;
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    let stats = load.stats.lock().unwrap();
    assert!(stats.requests_ok + stats.requests_failed >= 5);
}

#[tokio::test]
async fn closed_idle_connections_are_replaced() {
    let (addr, received) = start_http(Duration::ZERO, true).await;
    let load = make_load(Transport::HttpProto, addr, 10, BodyCompression::None, None).await;
    load::closed_loop(load.clone(), 1).await;
    let stats = load.stats.lock().unwrap();
    assert_eq!(received.requests.load(Ordering::SeqCst), 10);
    assert_eq!(stats.requests_ok + stats.requests_failed, 10);
    assert!(
        !stats.failures.contains_key("IO_ERROR"),
        "{:?}",
        stats.failures
    );
}

#[tokio::test]
async fn unreachable_servers_fail_fast() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let error = ExportClient::connect(
        Transport::HttpProto,
        &format!("http://{addr}"),
        1,
        BodyCompression::None,
        &no_kafka(),
    )
    .await
    .err()
    .unwrap();
    assert!(
        format!("{error:#}").contains("is the gateway listening"),
        "{error:#}"
    );
    assert!(
        ExportClient::connect(
            Transport::Grpc,
            &format!("http://{addr}"),
            1,
            BodyCompression::None,
            &no_kafka()
        )
        .await
        .is_err()
    );
}
