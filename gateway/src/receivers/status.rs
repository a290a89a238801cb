//! The error mapping: what a request's outcome becomes on each transport, in one place per
//! transport. The layers below answer with the pipeline's response or a `ReceiverError`;
//! `HttpStatus` turns that into an HTTP response (a `google.rpc.Status` body in the request's
//! format, `Retry-After` on the retryable ones), `GrpcStatus` into a gRPC status (with
//! `RetryInfo` on the retryable ones). The OTLP partial success travels inside the pipeline's
//! response, which is a success on both transports.

use super::auth::AuthError;
use super::request::{ExportRequest, Format, RequestMeta, Transport};
use crate::pipeline::PipelineError;
use crate::signal::Signal;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use pin_project_lite::pin_project;
use prost::Message;
use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tonic::{Code, Status};
use tower::{Layer, Service};
use weir_proto::echo::reply_message;
use weir_proto::json;
use weir_proto::rpc::{self, code};

/// The `Content-Type` of OTLP/HTTP protobuf bodies.
pub const PROTOBUF: &str = "application/x-protobuf";
/// The `Content-Type` of OTLP/JSON bodies.
pub const JSON: &str = "application/json";

/// Why a request got no success reply.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    /// 401 / UNAUTHENTICATED: no valid credential.
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    /// 405 (OTLP/HTTP only): not a POST; the message names the method and the path.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 415 (OTLP/HTTP only): a `Content-Type` or `Content-Encoding` OTLP does not allow.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// What the pipeline (or reading the body, or admission) refused, with its OTLP status.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// The HTTP response for a refused request, in the request's `format`.
pub fn http_error_response(err: &ReceiverError, format: Format, retry_after: Duration) -> Response {
    let pipeline_err = match err {
        ReceiverError::Unauthenticated(e) => {
            let mut resp = status_response(
                StatusCode::UNAUTHORIZED,
                rpc::Status::new(code::UNAUTHENTICATED, e.to_string()),
                format,
            );
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
        ReceiverError::MethodNotAllowed(msg) => {
            let mut resp = status_response(
                StatusCode::METHOD_NOT_ALLOWED,
                rpc::Status::new(code::UNIMPLEMENTED, msg.clone()),
                format,
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return resp;
        }
        ReceiverError::UnsupportedMediaType(msg) => {
            return status_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                rpc::Status::new(code::UNIMPLEMENTED, msg.clone()),
                format,
            );
        }
        ReceiverError::Pipeline(e) => e,
    };
    let (status, code, retry) = match pipeline_err {
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
        PipelineError::BodyTimeout(_) => {
            (StatusCode::REQUEST_TIMEOUT, code::DEADLINE_EXCEEDED, false)
        }
    };
    let mut body = rpc::Status::new(code, pipeline_err.to_string());
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
pub fn status_response(status: StatusCode, body: rpc::Status, format: Format) -> Response {
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

/// The body format a request declares in `Content-Type`, if it is one OTLP allows.
pub fn declared_format(headers: &http::HeaderMap) -> Option<Format> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case(PROTOBUF)
        || essence.eq_ignore_ascii_case("application/protobuf")
    {
        Some(Format::Protobuf)
    } else if essence.eq_ignore_ascii_case(JSON) {
        Some(Format::Json)
    } else {
        None
    }
}

/// The gRPC status for a refused request, with `RetryInfo` on the retryable ones.
pub fn grpc_status(err: &ReceiverError, retry_after: Duration) -> Status {
    let pipeline_err = match err {
        // With the `google.rpc.Status` in the details, as the other errors carry it.
        ReceiverError::Unauthenticated(e) => {
            let message = e.to_string();
            let details = rpc::Status::new(Code::Unauthenticated as i32, message.clone());
            return Status::with_details(
                Code::Unauthenticated,
                message,
                Bytes::from(details.encode_to_vec()),
            );
        }
        // The gRPC layers never refuse with these; a gRPC client would read them so.
        ReceiverError::MethodNotAllowed(msg) | ReceiverError::UnsupportedMediaType(msg) => {
            return Status::unimplemented(msg.clone());
        }
        ReceiverError::Pipeline(e) => e,
    };
    let (code, retry) = match pipeline_err {
        PipelineError::InvalidArgument(_) => (Code::InvalidArgument, false),
        PipelineError::TooLarge(_) => (Code::ResourceExhausted, false),
        PipelineError::Overloaded(_) => (Code::ResourceExhausted, true),
        PipelineError::Unavailable(_) => (Code::Unavailable, true),
        PipelineError::BodyTimeout(_) => (Code::DeadlineExceeded, false),
    };
    // Cut as the HTTP body's `rpc::Status` is: the message may quote the request.
    let message = reply_message(pipeline_err.to_string());
    if !retry {
        return Status::new(code, message);
    }
    let details = rpc::Status::new(code as i32, message.clone()).with_retry_after(retry_after);
    Status::with_details(code, message, Bytes::from(details.encode_to_vec()))
}

/// `grpc-status: OUT_OF_RANGE` (11).
const GRPC_OUT_OF_RANGE: &[u8] = b"11";
/// `grpc-status: RESOURCE_EXHAUSTED` (8).
const GRPC_RESOURCE_EXHAUSTED: HeaderValue = HeaderValue::from_static("8");

/// tonic answers a message over the size limit with OUT_OF_RANGE; the OTLP specification
/// names RESOURCE_EXHAUSTED. Our own layers never answer OUT_OF_RANGE, so the rewrite
/// touches only tonic's limit check.
fn oversize_is_resource_exhausted(resp: &mut http::Response<tonic::body::Body>) {
    if resp
        .headers()
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == GRPC_OUT_OF_RANGE)
    {
        resp.headers_mut()
            .insert("grpc-status", GRPC_RESOURCE_EXHAUSTED);
    }
}

/// The OTLP/HTTP error mapping as a layer: the outermost layer of an HTTP signal's stack.
#[derive(Clone, Copy, Debug)]
pub struct HttpStatusLayer<S> {
    retry_after: Duration,
    signal: PhantomData<fn() -> S>,
}

impl<S> HttpStatusLayer<S> {
    /// Answers retryable refusals with `retry_after`.
    pub fn new(retry_after: Duration) -> Self {
        Self {
            retry_after,
            signal: PhantomData,
        }
    }
}

impl<S, Inner> Layer<Inner> for HttpStatusLayer<S> {
    type Service = HttpStatus<S, Inner>;

    fn layer(&self, inner: Inner) -> Self::Service {
        HttpStatus {
            inner,
            retry_after: self.retry_after,
            signal: PhantomData,
        }
    }
}

/// Starts an OTLP/HTTP request down the stack and turns its outcome into the HTTP response.
#[derive(Debug)]
pub struct HttpStatus<S, Inner> {
    inner: Inner,
    retry_after: Duration,
    signal: PhantomData<fn() -> S>,
}

impl<S, Inner: Clone> Clone for HttpStatus<S, Inner> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            retry_after: self.retry_after,
            signal: PhantomData,
        }
    }
}

impl<S, Inner, B> Service<http::Request<B>> for HttpStatus<S, Inner>
where
    S: Signal,
    Inner: Service<ExportRequest<B, Option<Format>>, Response = S::Response, Error = ReceiverError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = HttpReply<S, Inner::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The layers below are always ready: they refuse a request in its answer, never here.
        self.inner.poll_ready(cx).map(|_| Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let declared = declared_format(req.headers());
        let future = self.inner.call(ExportRequest {
            http: req,
            transport: Transport::Http,
            format: declared,
            meta: RequestMeta::default(),
        });
        HttpReply {
            future,
            // Refusals before the format is checked answer in protobuf.
            format: declared.unwrap_or(Format::Protobuf),
            retry_after: self.retry_after,
            signal: PhantomData,
        }
    }
}

pin_project! {
    /// The HTTP response of one OTLP/HTTP request, once the layers below have answered.
    pub struct HttpReply<S, F> {
        #[pin]
        future: F,
        format: Format,
        retry_after: Duration,
        signal: PhantomData<fn() -> S>,
    }
}

impl<S, F> Future for HttpReply<S, F>
where
    S: Signal,
    F: Future<Output = Result<S::Response, ReceiverError>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = match ready!(this.future.poll(cx)) {
            Ok(resp) => {
                let mut out = Vec::new();
                let content_type = match this.format {
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
            Err(e) => http_error_response(&e, *this.format, *this.retry_after),
        };
        Poll::Ready(Ok(resp))
    }
}

/// The OTLP/gRPC error mapping as a layer: the outermost layer of a gRPC signal's stack.
#[derive(Clone, Copy, Debug)]
pub struct GrpcStatusLayer {
    retry_after: Duration,
}

impl GrpcStatusLayer {
    /// Answers retryable refusals with `RetryInfo` of `retry_after`.
    pub fn new(retry_after: Duration) -> Self {
        Self { retry_after }
    }
}

impl<Inner> Layer<Inner> for GrpcStatusLayer {
    type Service = GrpcStatus<Inner>;

    fn layer(&self, inner: Inner) -> Self::Service {
        GrpcStatus {
            inner,
            retry_after: self.retry_after,
        }
    }
}

/// Starts an OTLP/gRPC request down the stack and turns a refusal into its gRPC status.
#[derive(Clone, Debug)]
pub struct GrpcStatus<Inner> {
    inner: Inner,
    retry_after: Duration,
}

impl<Inner, B> Service<http::Request<B>> for GrpcStatus<Inner>
where
    Inner: Service<
            ExportRequest<B>,
            Response = http::Response<tonic::body::Body>,
            Error = ReceiverError,
        >,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = GrpcReply<Inner::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The layers below are always ready: they refuse a request in its answer, never here.
        self.inner.poll_ready(cx).map(|_| Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        GrpcReply {
            future: self.inner.call(ExportRequest {
                http: req,
                transport: Transport::Grpc,
                format: Format::Protobuf,
                meta: RequestMeta::default(),
            }),
            retry_after: self.retry_after,
        }
    }
}

pin_project! {
    /// The gRPC response of one OTLP/gRPC request, once the layers below have answered.
    pub struct GrpcReply<F> {
        #[pin]
        future: F,
        retry_after: Duration,
    }
}

impl<F> Future for GrpcReply<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, ReceiverError>>,
{
    type Output = Result<http::Response<tonic::body::Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = match ready!(this.future.poll(cx)) {
            Ok(mut resp) => {
                oversize_is_resource_exhausted(&mut resp);
                resp
            }
            Err(e) => grpc_status(&e, *this.retry_after).into_http(),
        };
        Poll::Ready(Ok(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// Issue 16, item 7: whatever a refusal quotes, its message is at most 1 KiB on both
    /// transports.
    #[tokio::test]
    async fn long_messages_are_cut_on_both_transports() {
        let err = ReceiverError::Pipeline(PipelineError::InvalidArgument("m".repeat(1 << 20)));
        let status = grpc_status(&err, Duration::from_secs(1));
        assert!(status.message().len() <= 1024, "{}", status.message().len());
        assert!(status.message().ends_with("… (1048576 bytes)"));
        let resp = http_error_response(&err, Format::Protobuf, Duration::from_secs(1));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let body = rpc::Status::decode(body).unwrap();
        assert_eq!(body.message, status.message());
    }
}
