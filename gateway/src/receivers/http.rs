//! OTLP/HTTP: `POST /v1/traces`, `/v1/metrics`, `/v1/logs` with protobuf or JSON bodies.
//!
//! Errors follow the OTLP specification: a `google.rpc.Status` body in the request's own
//! format; 401 without a valid credential (when authentication is on), 405 for other methods, 415 for other content types or encodings, 400 for bodies
//! that do not decode, 413 past the size limit (after decompression), 429 and 503 with
//! `Retry-After` for the retryable ones.

use super::Receiver;
use super::admission::AdmissionLayer;
use super::auth::AuthLayer;
use super::cors::CorsLayer;
use super::decompress::DecompressLayer;
use super::export::Export;
use super::request::{ExportRequest, Format};
use super::status::{
    HttpStatusLayer, JSON, PROTOBUF, ReceiverError, declared_format, status_response,
};
use crate::listener::{self, ServeOptions};
use crate::signal::{Logs, Metrics, Signal, Traces};
use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use axum::routing::any_service;
use futures::future::{Either, Ready, ready};
use http::{StatusCode, header};
use std::convert::Infallible;
use std::task::{Context, Poll};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service, ServiceBuilder};
use weir_proto::rpc::{self, code};

/// The OTLP/HTTP routes, behind CORS when the listener has a `cors` section.
pub fn router(receiver: Receiver) -> Router {
    let routes = Router::new()
        .route(Traces::HTTP_PATH, any_service(stack::<Traces>(&receiver)))
        .route(Metrics::HTTP_PATH, any_service(stack::<Metrics>(&receiver)))
        .route(Logs::HTTP_PATH, any_service(stack::<Logs>(&receiver)))
        .fallback(|req: Request| async move {
            let format = declared_format(req.headers()).unwrap_or(Format::Protobuf);
            let msg = format!(
                "no OTLP endpoint at {}: use /v1/traces, /v1/metrics or /v1/logs",
                weir_proto::echo::echoed_name(req.uri().path())
            );
            status_response(
                StatusCode::NOT_FOUND,
                rpc::Status::new(code::UNIMPLEMENTED, msg),
                format,
            )
        });
    match &receiver.cors {
        Some(policy) => routes.layer(CorsLayer::new(policy.clone())),
        None => routes,
    }
}

/// One signal's OTLP/HTTP layers, outermost first (see the receivers' module docs).
pub fn stack<S: Signal>(
    receiver: &Receiver,
) -> impl Service<Request, Response = Response, Error = Infallible, Future: Send + 'static>
+ Clone
+ Send
+ Sync
+ 'static {
    let pipeline = &receiver.pipeline;
    ServiceBuilder::new()
        .layer(HttpStatusLayer::<S>::new(pipeline.retry_after()))
        .layer(AuthLayer::new(receiver.ingress.clone()))
        .layer(OtlpHttpLayer { path: S::HTTP_PATH })
        .layer(
            DecompressLayer::new(
                pipeline.max_message_size(),
                pipeline.blocking_sections().clone(),
            )
            .reading_within(receiver.body_read_timeout, receiver.admission.clone()),
        )
        .layer(AdmissionLayer::new(receiver.admission.clone()))
        .service(Export::<S>::new(pipeline.clone()))
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

/// What OTLP/HTTP asks of a request besides its credentials, as a layer: `POST`, and a
/// `Content-Type` of protobuf or JSON. Checked after authentication, so an unauthenticated
/// client learns nothing else.
#[derive(Clone, Copy, Debug)]
struct OtlpHttpLayer {
    /// The signal's path, as the 405 message names it.
    path: &'static str,
}

impl<Inner> Layer<Inner> for OtlpHttpLayer {
    type Service = OtlpHttp<Inner>;

    fn layer(&self, inner: Inner) -> Self::Service {
        OtlpHttp {
            inner,
            path: self.path,
        }
    }
}

/// Passes on `POST` requests with a body format OTLP allows; answers the others 405 or 415.
#[derive(Clone, Debug)]
struct OtlpHttp<Inner> {
    inner: Inner,
    path: &'static str,
}

impl<Inner> Service<ExportRequest<Body, Option<Format>>> for OtlpHttp<Inner>
where
    Inner: Service<ExportRequest<Body>, Error = ReceiverError>,
{
    type Response = Inner::Response;
    type Error = ReceiverError;
    type Future = Either<Ready<Result<Inner::Response, ReceiverError>>, Inner::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ReceiverError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ExportRequest<Body, Option<Format>>) -> Self::Future {
        if req.http.method() != http::Method::POST {
            let msg = format!(
                "{} is not allowed on {}: OTLP/HTTP takes POST",
                req.http.method(),
                self.path
            );
            return Either::Left(ready(Err(ReceiverError::MethodNotAllowed(msg))));
        }
        let Some(format) = req.format else {
            let got = req
                .http
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none");
            let got = weir_proto::echo::echoed_name(got);
            let msg = format!("Content-Type {got} is not supported: use {PROTOBUF} or {JSON}");
            return Either::Left(ready(Err(ReceiverError::UnsupportedMediaType(msg))));
        };
        Either::Right(self.inner.call(req.with_format(format)))
    }
}
