//! OTLP/gRPC: the trace, metrics and logs `Export` services on one tonic server.
//!
//! The services take the message as raw bytes (tonic still handles framing, the gzip/zstd
//! `grpc-encoding`, and the size limit, measured after decompression), so decode errors are
//! ours to report as INVALID_ARGUMENT and the pipeline sees one body type for both receivers.

use super::Ingress;
use crate::auth::AuthError;
use crate::listener::{self, ServeOptions};
use crate::pipeline::{Format, Pipeline, PipelineError, RequestMeta, Transport};
use crate::signal::{Logs, Metrics, Signal, Traces};
use bytes::{Buf, Bytes};
use prost::Message;
use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Code, Status};
use weir_proto::rpc;

/// Serves the three Export services on `listener` (with the TLS and connection limits of
/// `options`) until `shutdown` is cancelled, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    options: ServeOptions,
    pipeline: Arc<Pipeline>,
    ingress: Arc<Ingress>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let routes = tonic::service::Routes::new(ExportServer::<Traces>::new(
        pipeline.clone(),
        ingress.clone(),
    ))
    .add_service(ExportServer::<Metrics>::new(
        pipeline.clone(),
        ingress.clone(),
    ))
    .add_service(ExportServer::<Logs>::new(pipeline, ingress));
    listener::serve(listener, options, routes, shutdown).await
}

/// UNAUTHENTICATED, with the `google.rpc.Status` in the details as the other errors carry it.
fn unauthenticated(err: AuthError) -> Status {
    let message = err.to_string();
    let details = rpc::Status::new(Code::Unauthenticated as i32, message.clone());
    Status::with_details(
        Code::Unauthenticated,
        message,
        Bytes::from(details.encode_to_vec()),
    )
}

/// The gRPC status for a pipeline error, with `RetryInfo` on the retryable ones.
pub fn status_of(err: &PipelineError, retry_after: std::time::Duration) -> Status {
    let (code, retry) = match err {
        PipelineError::InvalidArgument(_) => (Code::InvalidArgument, false),
        PipelineError::TooLarge(_) => (Code::ResourceExhausted, false),
        PipelineError::Overloaded(_) => (Code::ResourceExhausted, true),
        PipelineError::Unavailable(_) => (Code::Unavailable, true),
    };
    let message = err.to_string();
    if !retry {
        return Status::new(code, message);
    }
    let details = rpc::Status::new(code as i32, message.clone()).with_retry_after(retry_after);
    Status::with_details(code, message, Bytes::from(details.encode_to_vec()))
}

/// A tower service for one signal's `Export` method.
pub struct ExportServer<S> {
    pipeline: Arc<Pipeline>,
    ingress: Arc<Ingress>,
    signal: PhantomData<fn() -> S>,
}

impl<S> ExportServer<S> {
    fn new(pipeline: Arc<Pipeline>, ingress: Arc<Ingress>) -> Self {
        Self {
            pipeline,
            ingress,
            signal: PhantomData,
        }
    }
}

impl<S> Clone for ExportServer<S> {
    fn clone(&self) -> Self {
        Self::new(self.pipeline.clone(), self.ingress.clone())
    }
}

impl<S: Signal> NamedService for ExportServer<S> {
    const NAME: &'static str = S::GRPC_SERVICE;
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for ExportServer<S>
where
    S: Signal,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != S::GRPC_PATH {
            return Box::pin(async {
                Ok(Status::unimplemented("only the Export method is served").into_http())
            });
        }
        // Credentials first: an unauthenticated request's body is never read.
        let meta = match self.ingress.admit(req.headers(), Transport::Grpc) {
            Ok(meta) => meta,
            Err(e) => return Box::pin(async move { Ok(unauthenticated(e).into_http()) }),
        };
        let pipeline = self.pipeline.clone();
        Box::pin(async move {
            let max = pipeline.max_message_size();
            let mut grpc = Grpc::new(RawCodec::<S::Response>::default())
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .send_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Zstd)
                .max_decoding_message_size(max);
            let mut resp = grpc
                .unary(
                    ExportMethod::<S> {
                        pipeline,
                        meta,
                        signal: PhantomData,
                    },
                    req,
                )
                .await;
            oversize_is_resource_exhausted(&mut resp);
            Ok(resp)
        })
    }
}

/// tonic answers a message over the size limit with OUT_OF_RANGE; the OTLP specification
/// names RESOURCE_EXHAUSTED. Our own handlers never answer OUT_OF_RANGE, so the rewrite
/// touches only tonic's limit check.
fn oversize_is_resource_exhausted(resp: &mut http::Response<tonic::body::Body>) {
    let out_of_range = (Code::OutOfRange as i32).to_string();
    if resp
        .headers()
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == out_of_range.as_bytes())
    {
        let code = (Code::ResourceExhausted as i32).to_string();
        resp.headers_mut().insert(
            "grpc-status",
            http::HeaderValue::from_str(&code).expect("digits are a valid header"),
        );
    }
}

struct ExportMethod<S> {
    pipeline: Arc<Pipeline>,
    meta: RequestMeta,
    signal: PhantomData<fn() -> S>,
}

impl<S: Signal> UnaryService<Bytes> for ExportMethod<S> {
    type Response = S::Response;
    type Future = BoxFuture<tonic::Response<S::Response>, Status>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let pipeline = self.pipeline.clone();
        let meta = std::mem::take(&mut self.meta);
        Box::pin(async move {
            let body = request.into_inner();
            match pipeline
                .export::<S>(body, Format::Protobuf, Transport::Grpc, &meta)
                .await
            {
                Ok(resp) => Ok(tonic::Response::new(resp)),
                Err(e) => Err(status_of(&e, pipeline.retry_after())),
            }
        })
    }
}

/// Decodes nothing (the message stays bytes) and encodes the prost response.
struct RawCodec<R>(PhantomData<fn() -> R>);

impl<R> Default for RawCodec<R> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<R: Message + Send + 'static> Codec for RawCodec<R> {
    type Encode = R;
    type Decode = Bytes;
    type Encoder = ResponseEncoder<R>;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ResponseEncoder(PhantomData)
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

/// Encodes a prost response message.
struct ResponseEncoder<R>(PhantomData<fn() -> R>);

impl<R: Message> Encoder for ResponseEncoder<R> {
    type Item = R;
    type Error = Status;

    fn encode(&mut self, item: R, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the response: {e}")))
    }
}

/// Hands the whole (decompressed) message on as bytes.
struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
