//! OTLP/HTTP: `POST /v1/traces`, `/v1/metrics`, `/v1/logs` with protobuf or JSON bodies.
//!
//! Errors follow the OTLP specification: a `google.rpc.Status` body in the request's own
//! format; 401 without a valid credential (when authentication is on), 405 for other methods, 415 for other content types or encodings, 400 for bodies
//! that do not decode, 413 past the size limit (after decompression), 429 and 503 with
//! `Retry-After` for the retryable ones.

use super::Ingress;
use super::decompress::{ContentEncoding, DecompressError, decompress};
use crate::listener::{self, ServeOptions};
use crate::pipeline::{Format, Pipeline, PipelineError, Transport};
use crate::signal::{Logs, Metrics, Signal, Traces};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use prost::Message;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weir_proto::json;
use weir_proto::rpc::{self, code};

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// What every OTLP/HTTP handler needs.
#[derive(Clone)]
pub struct Receiver {
    /// Where requests go.
    pub pipeline: Arc<Pipeline>,
    /// Authentication and metadata.
    pub ingress: Arc<Ingress>,
}

/// The OTLP/HTTP routes.
pub fn router(receiver: Receiver) -> Router {
    Router::new()
        .route(Traces::HTTP_PATH, any(export::<Traces>))
        .route(Metrics::HTTP_PATH, any(export::<Metrics>))
        .route(Logs::HTTP_PATH, any(export::<Logs>))
        .fallback(|req: Request| async move {
            let format = request_format(&req).unwrap_or(Format::Protobuf);
            let msg = format!(
                "no OTLP endpoint at {}: use /v1/traces, /v1/metrics or /v1/logs",
                req.uri().path()
            );
            status_response(
                StatusCode::NOT_FOUND,
                rpc::Status::new(code::UNIMPLEMENTED, msg),
                format,
            )
        })
        .with_state(receiver)
}

/// Serves the routes on `listener` (with the TLS and connection limits of `options`) until
/// `shutdown` is cancelled, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    options: ServeOptions,
    receiver: Receiver,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    listener::serve(listener, options, router(receiver), shutdown).await
}

/// The body format a request declares in `Content-Type`, if it is one OTLP allows.
fn request_format(req: &Request) -> Option<Format> {
    let ct = req.headers().get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        PROTOBUF | "application/protobuf" => Some(Format::Protobuf),
        JSON => Some(Format::Json),
        _ => None,
    }
}

async fn export<S: Signal>(State(receiver): State<Receiver>, req: Request) -> Response {
    let format = request_format(&req);
    // Credentials first: an unauthenticated request learns nothing else and its body is
    // never read.
    let meta = match receiver.ingress.admit(req.headers(), Transport::Http) {
        Ok(meta) => meta,
        Err(e) => {
            let mut resp = status_response(
                StatusCode::UNAUTHORIZED,
                rpc::Status::new(code::UNAUTHENTICATED, e.to_string()),
                format.unwrap_or(Format::Protobuf),
            );
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
    };
    let pipeline = receiver.pipeline;
    if req.method() != Method::POST {
        let msg = format!(
            "{} is not allowed on {}: OTLP/HTTP takes POST",
            req.method(),
            S::HTTP_PATH
        );
        let mut resp = status_response(
            StatusCode::METHOD_NOT_ALLOWED,
            rpc::Status::new(code::UNIMPLEMENTED, msg),
            format.unwrap_or(Format::Protobuf),
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    let Some(format) = format else {
        let got = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none");
        let msg = format!("Content-Type {got} is not supported: use {PROTOBUF} or {JSON}");
        return status_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            rpc::Status::new(code::UNIMPLEMENTED, msg),
            Format::Protobuf,
        );
    };
    let declared = req
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?"));
    let Some(encoding) = ContentEncoding::parse(declared) else {
        let msg = format!(
            "Content-Encoding {} is not supported: use gzip, zstd, deflate or none",
            declared.unwrap_or("")
        );
        return status_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            rpc::Status::new(code::UNIMPLEMENTED, msg),
            format,
        );
    };

    let limit = pipeline.max_message_size();
    let retry_after = pipeline.retry_after();
    let body = match read_body(req.into_body(), limit).await {
        Ok(b) => b,
        Err(e) => return error_response(&e, format, retry_after),
    };
    let body = match tokio::task::block_in_place(|| decompress(body, encoding, limit)) {
        Ok(b) => b,
        Err(DecompressError::TooLarge { .. }) => {
            let e = PipelineError::TooLarge(format!(
                "the request decompresses to more than the limit of {limit} bytes"
            ));
            return error_response(&e, format, retry_after);
        }
        Err(e @ DecompressError::Corrupt { .. }) => {
            return error_response(
                &PipelineError::InvalidArgument(e.to_string()),
                format,
                retry_after,
            );
        }
    };
    match pipeline
        .export::<S>(body, format, Transport::Http, &meta)
        .await
    {
        Ok(resp) => {
            let mut out = Vec::new();
            let content_type = match format {
                Format::Protobuf => {
                    resp.encode(&mut out).expect("a Vec grows as needed");
                    PROTOBUF
                }
                Format::Json => {
                    S::encode_json_response(&resp, &mut out);
                    JSON
                }
            };
            ([(header::CONTENT_TYPE, content_type)], out).into_response()
        }
        Err(e) => error_response(&e, format, retry_after),
    }
}

/// Reads the whole body, refusing it once it passes `limit` bytes.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, PipelineError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(PipelineError::TooLarge(
            format!("the request body is larger than the limit of {limit} bytes"),
        )),
        Err(e) => Err(PipelineError::InvalidArgument(format!(
            "reading the request body failed: {e}"
        ))),
    }
}

/// The HTTP response for a pipeline error.
fn error_response(err: &PipelineError, format: Format, retry_after: Duration) -> Response {
    let (status, code, retry) = match err {
        PipelineError::InvalidArgument(_) => {
            (StatusCode::BAD_REQUEST, code::INVALID_ARGUMENT, false)
        }
        PipelineError::TooLarge(_) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            code::RESOURCE_EXHAUSTED,
            false,
        ),
        PipelineError::Overloaded(_) => (
            StatusCode::TOO_MANY_REQUESTS,
            code::RESOURCE_EXHAUSTED,
            true,
        ),
        PipelineError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, code::UNAVAILABLE, true),
    };
    let mut body = rpc::Status::new(code, err.to_string());
    if retry {
        body = body.with_retry_after(retry_after);
    }
    let mut resp = status_response(status, body, format);
    if retry {
        let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// A response whose body is a `google.rpc.Status` in the request's format.
fn status_response(status: StatusCode, body: rpc::Status, format: Format) -> Response {
    let mut out = Vec::new();
    let content_type = match format {
        Format::Protobuf => {
            body.encode(&mut out).expect("a Vec grows as needed");
            PROTOBUF
        }
        Format::Json => {
            json::encode_status(&body, &mut out);
            JSON
        }
    };
    (status, [(header::CONTENT_TYPE, content_type)], out).into_response()
}
