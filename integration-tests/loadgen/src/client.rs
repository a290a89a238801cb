//! The export clients: OTLP/gRPC through tonic with a pass-through codec (the body is already
//! encoded), and OTLP/HTTP through the small keep-alive HTTP/1.1 client in `http1`.

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::{Buf, BufMut, Bytes};
use flate2::Compression;
use flate2::write::GzEncoder;
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use weir_proto::otlp::collector::trace::v1::ExportTraceServiceResponse;

use crate::generator::TRACE_ID_LEN;
use crate::http1::{HttpConnection, HttpTarget};
use crate::kafka::KafkaSink;

/// The gRPC method every OTLP trace exporter calls.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// How the server answered one export request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A successful reply; `rejected` spans were refused in `partial_success`.
    Accepted {
        /// `partial_success.rejected_spans` of the reply.
        rejected: u64,
    },
    /// No successful reply; the code names why (a gRPC code name, `HTTP_503`, `TIMEOUT`, ...).
    Failed(String),
}

/// Which OTLP transport to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// OTLP/gRPC (`TraceService/Export`).
    Grpc,
    /// OTLP/HTTP with a protobuf body.
    HttpProto,
    /// OTLP/HTTP with an OTLP/JSON body.
    HttpJson,
    /// No gateway: a bare Kafka producer (acks=all) sending the records Weir would produce
    /// for each request, to `--kafka-topic` on the brokers of `--endpoint`.
    Kafka,
}

/// How request bodies are compressed (`--compression`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BodyCompression {
    /// Sent as they are.
    #[default]
    None,
    /// gzip (gRPC `grpc-encoding: gzip`, HTTP `Content-Encoding: gzip`).
    Gzip,
    /// zstd (gRPC `grpc-encoding: zstd`, HTTP `Content-Encoding: zstd`).
    Zstd,
}

impl BodyCompression {
    /// The name `--compression` takes, and the encoding's HTTP/gRPC name.
    pub fn name(self) -> &'static str {
        match self {
            BodyCompression::None => "none",
            BodyCompression::Gzip => "gzip",
            BodyCompression::Zstd => "zstd",
        }
    }
}

impl Transport {
    /// The name `--transport` takes.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::HttpProto => "http-proto",
            Transport::HttpJson => "http-json",
            Transport::Kafka => "kafka",
        }
    }

    /// The endpoint used when `--endpoint` is not given.
    pub fn default_endpoint(self) -> &'static str {
        match self {
            Transport::Grpc => "http://127.0.0.1:4317",
            Transport::HttpProto | Transport::HttpJson => "http://127.0.0.1:4318",
            Transport::Kafka => "127.0.0.1:9092",
        }
    }
}

/// A connected exporter that many tasks share.
pub enum ExportClient {
    /// OTLP/gRPC over a few HTTP/2 connections, used round-robin.
    Grpc {
        /// One channel per connection.
        channels: Vec<tonic::client::Grpc<Channel>>,
        /// The next channel to hand out.
        next: AtomicUsize,
    },
    /// OTLP/HTTP over a pool of idle keep-alive connections.
    Http {
        /// Where requests go.
        target: HttpTarget,
        /// `application/x-protobuf` or `application/json`.
        json: bool,
        /// How bodies are compressed.
        compression: BodyCompression,
        /// Connections waiting for their next request.
        idle: Mutex<Vec<HttpConnection>>,
    },
    /// A bare Kafka producer: the records Weir would produce, acknowledged with acks=all.
    Kafka(KafkaSink),
}

/// Where `--transport kafka` produces to and how.
#[derive(Clone, Debug)]
pub struct KafkaOptions {
    /// The topic (`--kafka-topic`), which must exist.
    pub topic: Option<String>,
    /// librdkafka `linger.ms`.
    pub linger: Duration,
    /// librdkafka `max.in.flight.requests.per.connection`.
    pub max_in_flight: u8,
    /// librdkafka `message.timeout.ms`: the reply timeout.
    pub timeout: Duration,
}

impl ExportClient {
    /// True for the bare Kafka producer, which sends per-trace records instead of the body.
    pub fn is_kafka(&self) -> bool {
        matches!(self, ExportClient::Kafka(_))
    }

    /// Connects to `endpoint`: `connections` HTTP/2 connections for gRPC; for HTTP the
    /// connections are opened on demand, one per concurrent request; for Kafka `endpoint`
    /// lists the brokers.
    pub async fn connect(
        transport: Transport,
        endpoint: &str,
        connections: usize,
        compression: BodyCompression,
        kafka: &KafkaOptions,
    ) -> anyhow::Result<Self> {
        match transport {
            Transport::Grpc => {
                let endpoint = Endpoint::from_shared(endpoint.to_string())
                    .with_context(|| format!("--endpoint {endpoint:?} is not a valid URI"))?
                    .tcp_nodelay(true);
                let mut channels = Vec::with_capacity(connections.max(1));
                for _ in 0..connections.max(1) {
                    let channel = endpoint.connect().await.with_context(|| {
                        format!(
                            "cannot connect to {}: is the gateway listening?",
                            endpoint.uri()
                        )
                    })?;
                    let mut grpc = tonic::client::Grpc::new(channel)
                        .max_decoding_message_size(64 * 1024 * 1024);
                    match compression {
                        BodyCompression::None => {}
                        BodyCompression::Gzip => {
                            grpc = grpc.send_compressed(CompressionEncoding::Gzip);
                        }
                        BodyCompression::Zstd => {
                            grpc = grpc.send_compressed(CompressionEncoding::Zstd);
                        }
                    }
                    channels.push(grpc);
                }
                Ok(ExportClient::Grpc {
                    channels,
                    next: AtomicUsize::new(0),
                })
            }
            Transport::HttpProto | Transport::HttpJson => {
                let target = HttpTarget::parse(endpoint)?;
                // Fail early, with a clear message, when nothing listens.
                let first = HttpConnection::open(&target).await?;
                Ok(ExportClient::Http {
                    target,
                    json: transport == Transport::HttpJson,
                    compression,
                    idle: Mutex::new(vec![first]),
                })
            }
            Transport::Kafka => {
                let topic = kafka
                    .topic
                    .as_deref()
                    .context("--transport kafka needs --kafka-topic")?;
                if compression != BodyCompression::None {
                    anyhow::bail!(
                        "--transport kafka produces uncompressed records, as Weir does by default"
                    );
                }
                Ok(ExportClient::Kafka(
                    KafkaSink::connect(
                        endpoint,
                        topic,
                        kafka.linger,
                        kafka.max_in_flight,
                        kafka.timeout,
                    )
                    .await?,
                ))
            }
        }
    }

    /// Sends one encoded `ExportTraceServiceRequest` and waits for the reply, at most `timeout`.
    /// The Kafka producer sends the request's `trace_records` instead, keyed by `trace_ids`.
    pub async fn export(
        &self,
        body: Vec<u8>,
        trace_records: &[Vec<u8>],
        trace_ids: &[[u8; TRACE_ID_LEN]],
        timeout: Duration,
    ) -> Outcome {
        let sent = self.export_unbounded(body, trace_records, trace_ids);
        match tokio::time::timeout(timeout, sent).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Failed("TIMEOUT".to_string()),
        }
    }

    async fn export_unbounded(
        &self,
        body: Vec<u8>,
        trace_records: &[Vec<u8>],
        trace_ids: &[[u8; TRACE_ID_LEN]],
    ) -> Outcome {
        match self {
            ExportClient::Kafka(sink) => sink.produce(trace_records, trace_ids).await,
            ExportClient::Grpc { channels, next } => {
                let index = next.fetch_add(1, Ordering::Relaxed) % channels.len();
                let mut grpc = channels[index].clone();
                if let Err(e) = grpc.ready().await {
                    return Outcome::Failed(format!("CONNECT_ERROR ({e})"));
                }
                let path = PathAndQuery::from_static(EXPORT_PATH);
                let reply = grpc
                    .unary(tonic::Request::new(Bytes::from(body)), path, RawCodec)
                    .await;
                match reply {
                    Ok(response) => accepted_from_protobuf(response.get_ref()),
                    Err(status) => Outcome::Failed(grpc_code_name(status.code()).to_string()),
                }
            }
            ExportClient::Http {
                target,
                json,
                compression,
                idle,
            } => {
                let body = match compression {
                    BodyCompression::None => body,
                    BodyCompression::Gzip => match gzip_body(&body) {
                        Ok(compressed) => compressed,
                        Err(e) => return Outcome::Failed(format!("GZIP_ERROR ({e})")),
                    },
                    BodyCompression::Zstd => match zstd::bulk::compress(&body, 0) {
                        Ok(compressed) => compressed,
                        Err(e) => return Outcome::Failed(format!("ZSTD_ERROR ({e})")),
                    },
                };
                let pooled = idle.lock().map(|mut idle| idle.pop()).unwrap_or(None);
                let reused = pooled.is_some();
                let mut connection = match pooled {
                    Some(connection) => connection,
                    None => match HttpConnection::open(target).await {
                        Ok(connection) => connection,
                        Err(_) => return Outcome::Failed("CONNECT_ERROR".to_string()),
                    },
                };
                let content_type = if *json {
                    "application/json"
                } else {
                    "application/x-protobuf"
                };
                let encoding = match compression {
                    BodyCompression::None => None,
                    other => Some(other.name()),
                };
                let mut result = connection.post(target, content_type, encoding, &body).await;
                // A server may close an idle keep-alive connection at any time; a request that
                // met such a closed connection was not processed, so it goes once more on a
                // new connection, as HTTP clients do.
                if reused && matches!(&result, Err(e) if is_stale_connection(e)) {
                    connection = match HttpConnection::open(target).await {
                        Ok(connection) => connection,
                        Err(_) => return Outcome::Failed("CONNECT_ERROR".to_string()),
                    };
                    result = connection.post(target, content_type, encoding, &body).await;
                }
                let response = match result {
                    Ok(response) => response,
                    Err(_) => return Outcome::Failed("IO_ERROR".to_string()),
                };
                if response.keep_alive
                    && let Ok(mut idle) = idle.lock()
                {
                    idle.push(connection);
                }
                if !(200..300).contains(&response.status) {
                    return Outcome::Failed(format!("HTTP_{}", response.status));
                }
                if response.content_type.contains("json") {
                    accepted_from_json(&response.body)
                } else {
                    accepted_from_protobuf(&response.body)
                }
            }
        }
    }
}

/// The errors of a connection the server had already closed before the request.
fn is_stale_connection(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
    ) || (error.kind() == ErrorKind::UnexpectedEof
        && error.to_string() == crate::http1::CLOSED_BEFORE_REPLY)
}

fn gzip_body(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
    encoder.write_all(body)?;
    encoder.finish()
}

fn accepted_from_protobuf(reply: &[u8]) -> Outcome {
    match ExportTraceServiceResponse::decode(reply) {
        Ok(reply) => Outcome::Accepted {
            rejected: reply
                .partial_success
                .map_or(0, |p| p.rejected_spans.max(0) as u64),
        },
        Err(_) => Outcome::Failed("BAD_RESPONSE".to_string()),
    }
}

/// OTLP/JSON replies carry `partialSuccess.rejectedSpans` as a string or a number; an empty
/// body is a full success.
fn accepted_from_json(body: &[u8]) -> Outcome {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Outcome::Accepted { rejected: 0 };
    }
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Outcome::Failed("BAD_RESPONSE".to_string());
    };
    let rejected = &doc["partialSuccess"]["rejectedSpans"];
    let rejected = rejected
        .as_u64()
        .or_else(|| rejected.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0);
    Outcome::Accepted { rejected }
}

/// The canonical gRPC status code name, as the Collector and grpc-go print it.
pub fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A codec that sends an already-encoded message as it is and hands back the reply's bytes,
/// so the generator never re-encodes the request.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Self::Error> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
