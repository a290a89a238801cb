//! Both receivers' stacks end to end, in process: the real layers and pipeline over
//! librdkafka's mock cluster, driven as tower services (no sockets). Each refusal is checked
//! for the status, headers and message a client sees.

use super::{Receiver, grpc, http as otlp_http};
use crate::pipeline::Pipeline;
use crate::policy::PolicyStore;
use crate::signal::Traces;
use ::http::{HeaderValue, Method, Request, StatusCode, header};
use axum::body::Body;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use prost::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use std::io::Write;
use std::sync::Arc;
use tower::ServiceExt;
use weir_config::{ConfigFile, GatewayConfig};
use weir_exporters::kafka::KafkaExporter;
use weir_proto::otlp::collector::trace::v1::ExportTraceServiceResponse;
use weir_proto::rpc;
use weir_proto::test_support::{named_span, traces_request};

const TOKEN_ENV: &str = "WEIR_RECEIVER_STACK_TEST_TOKEN";

/// A receiver over a mock cluster; `auth` turns on bearer tokens (`tok`).
fn receiver(auth: bool) -> (Receiver, MockCluster<'static, DefaultProducerContext>) {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("otlp_spans", 1, 1).unwrap();
    let mut yaml = format!(
        "kafka:\n  brokers: [\"{}\"]\nlimits:\n  max_message_size: 64KiB\n  max_in_flight_bytes: 64KiB\n",
        cluster.bootstrap_servers()
    );
    if auth {
        static TOKEN: std::sync::Once = std::sync::Once::new();
        // SAFETY: no other test reads or writes this variable, and it is written once.
        TOKEN.call_once(|| unsafe { std::env::set_var(TOKEN_ENV, "tok") });
        yaml.push_str(&format!(
            "receivers:\n  auth:\n    tokens:\n      - {{tenant: t1, env: {TOKEN_ENV}}}\n"
        ));
    }
    let config = Arc::new(GatewayConfig::from_yaml(&yaml).unwrap());
    let exporter =
        Arc::new(KafkaExporter::new(&config.kafka, config.limits.export_timeout).unwrap());
    let policies = Arc::new(PolicyStore::new(None).unwrap());
    let pipeline = Arc::new(Pipeline::new(
        config.clone(),
        exporter,
        policies,
        Default::default(),
    ));
    (Receiver::new(&config, pipeline).unwrap(), cluster)
}

fn traces(spans: u8) -> Vec<u8> {
    let spans = (0..spans)
        .map(|s| named_span(1, s + 1, &format!("s{s}")))
        .collect();
    traces_request(spans).encode_to_vec()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn post(path: &str, headers: &[(&'static str, &'static str)], body: Vec<u8>) -> Request<Body> {
    let mut req = Request::builder().method(Method::POST).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Body::from(body)).unwrap()
}

/// Sends `req` down the OTLP/HTTP routes: the status, the headers and the body.
async fn http(receiver: &Receiver, req: Request<Body>) -> (StatusCode, ::http::HeaderMap, Bytes) {
    let resp = otlp_http::router(receiver.clone())
        .oneshot(req)
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

const PROTOBUF: (&str, &str) = ("content-type", "application/x-protobuf");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_accepts_protobuf_and_json_once_kafka_has_them() {
    let (r, _cluster) = receiver(false);
    let (status, headers, body) = http(&r, post("/v1/traces", &[PROTOBUF], traces(3))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/x-protobuf");
    assert_eq!(
        ExportTraceServiceResponse::decode(body).unwrap(),
        ExportTraceServiceResponse::default()
    );
    let gz = gzip(&traces(2));
    let req = post("/v1/traces", &[PROTOBUF, ("content-encoding", "gzip")], gz);
    assert_eq!(http(&r, req).await.0, StatusCode::OK);
    let req = post(
        "/v1/traces",
        &[("content-type", "application/json")],
        b"{\"resourceSpans\":[]}".to_vec(),
    );
    let (status, headers, _) = http(&r, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_refusals_keep_their_order_status_and_headers() {
    let (r, _cluster) = receiver(true);
    // Credentials come first: a GET with no content type still learns only that.
    let req = Request::get("/v1/traces").body(Body::empty()).unwrap();
    let (status, headers, body) = http(&r, req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
    assert_eq!(headers[header::CONTENT_TYPE], "application/x-protobuf");
    let s = rpc::Status::decode(body).unwrap();
    assert_eq!(s.code, rpc::code::UNAUTHENTICATED);
    assert!(
        s.message.starts_with("missing credentials"),
        "{}",
        s.message
    );

    const AUTH: (&str, &str) = ("authorization", "Bearer tok");
    let req = Request::get("/v1/logs")
        .header(AUTH.0, AUTH.1)
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = http(&r, req).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers[header::ALLOW], "POST");
    assert_eq!(
        rpc::Status::decode(body).unwrap().message,
        "GET is not allowed on /v1/logs: OTLP/HTTP takes POST"
    );

    let req = post(
        "/v1/traces",
        &[AUTH, ("content-type", "text/plain")],
        vec![],
    );
    let (status, _, body) = http(&r, req).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        rpc::Status::decode(body).unwrap().message,
        "Content-Type text/plain is not supported: use application/x-protobuf or application/json"
    );

    // From here on the reply is in the request's own format.
    let json = ("content-type", "application/json");
    let req = post(
        "/v1/traces",
        &[AUTH, json, ("content-encoding", "br")],
        vec![],
    );
    let (status, headers, body) = http(&r, req).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert!(String::from_utf8_lossy(&body).contains("Content-Encoding br is not supported"));

    let req = post("/v1/traces", &[AUTH, PROTOBUF], vec![0; 65 * 1024]);
    let (status, _, body) = http(&r, req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        rpc::Status::decode(body).unwrap().message,
        "the request body is larger than the limit of 65536 bytes"
    );

    let bomb = gzip(&vec![0; 1 << 20]);
    let req = post(
        "/v1/traces",
        &[AUTH, PROTOBUF, ("content-encoding", "gzip")],
        bomb,
    );
    let (status, _, body) = http(&r, req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        rpc::Status::decode(body).unwrap().message,
        "the request decompresses to more than the limit of 65536 bytes"
    );

    let req = post(
        "/v1/traces",
        &[AUTH, PROTOBUF, ("content-encoding", "gzip")],
        b"no".to_vec(),
    );
    let (status, _, body) = http(&r, req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        rpc::Status::decode(body).unwrap().code,
        rpc::code::INVALID_ARGUMENT
    );

    let req = post("/v1/traces", &[AUTH, PROTOBUF], vec![0xff; 10]);
    assert_eq!(http(&r, req).await.0, StatusCode::BAD_REQUEST);

    let req = post("/v2/traces", &[json], vec![]);
    let (status, headers, _) = http(&r, req).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_in_flight_budget_both_transports_ask_to_retry() {
    let (r, _cluster) = receiver(false);
    let held = r.admission.try_admit(64 * 1024).unwrap();
    let (status, headers, body) = http(&r, post("/v1/traces", &[PROTOBUF], traces(1))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers[header::RETRY_AFTER], "1");
    let s = rpc::Status::decode(body).unwrap();
    assert_eq!(s.code, rpc::code::RESOURCE_EXHAUSTED);
    assert_eq!(
        s.message,
        "the gateway holds its limit of 65536 in-flight request bytes; retry later"
    );
    assert!(!s.details.is_empty(), "RetryInfo");

    let (headers, _) = grpc_call(&r, TRACES_EXPORT, grpc_frame(&traces(1))).await;
    assert_eq!(headers["grpc-status"], "8");
    assert!(headers.contains_key("grpc-status-details-bin"));
    drop(held);
    let (headers, trailers) = grpc_call(&r, TRACES_EXPORT, grpc_frame(&traces(1))).await;
    assert!(!headers.contains_key("grpc-status"));
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
}

const TRACES_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// A gRPC message frame: uncompressed, length-prefixed.
fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Calls the traces Export stack: the response headers and, when the body has them, trailers.
async fn grpc_call(
    receiver: &Receiver,
    path: &str,
    frame: Vec<u8>,
) -> (::http::HeaderMap, Option<::http::HeaderMap>) {
    grpc_call_with(receiver, path, frame, None).await
}

async fn grpc_call_with(
    receiver: &Receiver,
    path: &str,
    frame: Vec<u8>,
    authorization: Option<&'static str>,
) -> (::http::HeaderMap, Option<::http::HeaderMap>) {
    let mut req = Request::post(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(Full::new(Bytes::from(frame))))
        .unwrap();
    if let Some(a) = authorization {
        req.headers_mut()
            .insert(header::AUTHORIZATION, HeaderValue::from_static(a));
    }
    let resp = grpc::stack::<Traces>(receiver).oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    (parts.headers, collected.trailers().cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_answers_keep_their_codes() {
    let (r, _cluster) = receiver(true);
    let frame = grpc_frame(&traces(2));
    let (headers, _) = grpc_call(&r, TRACES_EXPORT, frame.clone()).await;
    assert_eq!(headers["grpc-status"], "16", "UNAUTHENTICATED");
    assert!(headers.contains_key("grpc-status-details-bin"));

    let auth = Some("Bearer tok");
    let (_, trailers) = grpc_call_with(&r, TRACES_EXPORT, frame.clone(), auth).await;
    assert_eq!(trailers.unwrap()["grpc-status"], "0");

    let wrong = "/opentelemetry.proto.collector.trace.v1.TraceService/Other";
    let (headers, _) = grpc_call_with(&r, wrong, frame, auth).await;
    assert_eq!(headers["grpc-status"], "12", "UNIMPLEMENTED");

    let (headers, _) = grpc_call_with(&r, TRACES_EXPORT, grpc_frame(&[0xff; 10]), auth).await;
    assert_eq!(headers["grpc-status"], "3", "INVALID_ARGUMENT");

    // tonic's own size check answers OUT_OF_RANGE; OTLP names RESOURCE_EXHAUSTED.
    let big = grpc_frame(&vec![0; 65 * 1024]);
    let (headers, _) = grpc_call_with(&r, TRACES_EXPORT, big, auth).await;
    assert_eq!(headers["grpc-status"], "8", "RESOURCE_EXHAUSTED");
}
