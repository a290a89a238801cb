//! OTLP/gRPC: the trace, metrics and logs `Export` services on one tonic server.
//!
//! The services take the message as raw bytes (tonic still handles framing, the gzip/zstd
//! `grpc-encoding`, and the size limit, measured after decompression), so decode errors are
//! ours to report as INVALID_ARGUMENT and the pipeline sees one body type for both receivers.

use super::Receiver;
use super::admission::AdmissionLayer;
use super::auth::AuthLayer;
use super::export::Export;
use super::grpc_body::BodyGuard;
use super::request::{ExportRequest, Format, RequestMeta, Transport};
use super::status::{GrpcStatusLayer, ReceiverError, grpc_status};
use crate::listener::{self, ServeOptions};
use crate::signal::{Logs, Metrics, Signal, Traces};
use bytes::{Buf, Bytes};
use futures::future::{Either, Ready, ready};
use pin_project_lite::pin_project;
use prost::Message;
use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{Grpc, NamedService};
use tower::{Layer, Service, ServiceBuilder};

/// Serves the three Export services on `listener` (with the TLS and connection limits of
/// `options`) until `shutdown` is cancelled, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    options: ServeOptions,
    receiver: Receiver,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let routes = tonic::service::Routes::new(stack::<Traces>(&receiver))
        .add_service(stack::<Metrics>(&receiver))
        .add_service(stack::<Logs>(&receiver));
    listener::serve(listener, options, routes, shutdown).await
}

/// One signal's OTLP/gRPC layers, outermost first (see the receivers' module docs), behind
/// the check that the request is for the `Export` method.
pub fn stack<S: Signal>(
    receiver: &Receiver,
) -> ExportServer<
    S,
    impl Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<tonic::body::Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static,
> {
    let pipeline = &receiver.pipeline;
    let retry_after = pipeline.retry_after();
    let layers = ServiceBuilder::new()
        .layer(GrpcStatusLayer::new(retry_after))
        .layer(AuthLayer::new(receiver.ingress.clone()))
        .layer(GrpcDecodeLayer::<S>::new(BodyGuard {
            admission: receiver.admission.clone(),
            max_message_size: pipeline.max_message_size(),
            timeout: receiver.grpc_body_read_timeout,
            retry_after,
        }))
        .layer(AdmissionLayer::new(receiver.admission.clone()))
        .service(Export::<S>::new(pipeline.clone()));
    ExportServer {
        layers,
        signal: PhantomData,
    }
}

/// A tower service for one signal's `Export` method: what tonic's router sees.
pub struct ExportServer<S, Layers> {
    layers: Layers,
    signal: PhantomData<fn() -> S>,
}

impl<S, Layers: Clone> Clone for ExportServer<S, Layers> {
    fn clone(&self) -> Self {
        Self {
            layers: self.layers.clone(),
            signal: PhantomData,
        }
    }
}

impl<S: Signal, Layers> NamedService for ExportServer<S, Layers> {
    const NAME: &'static str = S::GRPC_SERVICE;
}

impl<S, Layers, B> Service<http::Request<B>> for ExportServer<S, Layers>
where
    S: Signal,
    Layers:
        Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Either<Ready<Result<Self::Response, Infallible>>, Layers::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.layers.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != S::GRPC_PATH {
            return Either::Left(ready(Ok(Status::unimplemented(
                "only the Export method is served",
            )
            .into_http())));
        }
        Either::Right(self.layers.call(req))
    }
}

/// tonic's unary handling as a layer: framing, the gzip/zstd `grpc-encoding` and the size
/// limit (after decompression), over a body guarded by `BodyGuard` (the message's length
/// reserved before it is read, and a deadline). It is gRPC's decompression layer; the layers
/// below it see the whole message.
struct GrpcDecodeLayer<S> {
    guard: BodyGuard,
    signal: PhantomData<fn() -> S>,
}

impl<S> GrpcDecodeLayer<S> {
    fn new(guard: BodyGuard) -> Self {
        Self {
            guard,
            signal: PhantomData,
        }
    }
}

impl<S, Inner> Layer<Inner> for GrpcDecodeLayer<S> {
    type Service = GrpcDecode<S, Inner>;

    fn layer(&self, inner: Inner) -> Self::Service {
        GrpcDecode {
            inner,
            guard: self.guard.clone(),
            signal: PhantomData,
        }
    }
}

/// Decodes a gRPC request's message with tonic and passes it on.
struct GrpcDecode<S, Inner> {
    inner: Inner,
    guard: BodyGuard,
    signal: PhantomData<fn() -> S>,
}

impl<S, Inner: Clone> Clone for GrpcDecode<S, Inner> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            guard: self.guard.clone(),
            signal: PhantomData,
        }
    }
}

/// tonic's `Grpc::unary` is an `async fn`; its future has no name to put here.
type DecodeFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, ReceiverError>> + Send>>;

impl<S, Inner, B> Service<ExportRequest<B>> for GrpcDecode<S, Inner>
where
    S: Signal,
    Inner: Service<ExportRequest<Bytes>, Response = S::Response, Error = ReceiverError>
        + Clone
        + Send
        + 'static,
    Inner::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = ReceiverError;
    type Future = DecodeFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ReceiverError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ExportRequest<B>) -> Self::Future {
        // The inner service is called once the message is in: take the one that is ready.
        let clone = self.inner.clone();
        let unary = Unary::<S, Inner> {
            inner: std::mem::replace(&mut self.inner, clone),
            transport: req.transport,
            meta: req.meta,
            retry_after: self.guard.retry_after,
            signal: PhantomData,
        };
        let max = self.guard.max_message_size;
        let (head, body) = req.http.into_parts();
        let (body, reservation) = self.guard.guard(body);
        let mut http = http::Request::from_parts(head, body);
        http.extensions_mut().insert(reservation);
        Box::pin(async move {
            let mut grpc = Grpc::new(RawCodec::<S::Response>::default())
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .send_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Zstd)
                .max_decoding_message_size(max);
            Ok(grpc.unary(unary, http).await)
        })
    }
}

/// What tonic calls with the decoded message: the layers below, as a unary gRPC method.
struct Unary<S, Inner> {
    inner: Inner,
    transport: Transport,
    meta: RequestMeta,
    retry_after: Duration,
    signal: PhantomData<fn() -> S>,
}

impl<S, Inner> Service<tonic::Request<Bytes>> for Unary<S, Inner>
where
    S: Signal,
    Inner: Service<ExportRequest<Bytes>, Response = S::Response, Error = ReceiverError>,
{
    type Response = tonic::Response<S::Response>;
    type Error = Status;
    type Future = UnaryReply<Inner::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| grpc_status(&e, self.retry_after))
    }

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let (metadata, extensions, message) = request.into_parts();
        let mut http = http::Request::new(message);
        *http.headers_mut() = metadata.into_headers();
        *http.extensions_mut() = extensions;
        UnaryReply {
            future: self.inner.call(ExportRequest {
                http,
                transport: self.transport,
                format: Format::Protobuf,
                // tonic calls a unary method once per request.
                meta: std::mem::take(&mut self.meta),
            }),
            retry_after: self.retry_after,
        }
    }
}

pin_project! {
    /// The layers' answer as tonic wants it. tonic writes the status itself, inside its own
    /// call, so a refusal is mapped here with the same `grpc_status` the outer layer uses.
    struct UnaryReply<F> {
        #[pin]
        future: F,
        retry_after: Duration,
    }
}

impl<F, R> Future for UnaryReply<F>
where
    F: Future<Output = Result<R, ReceiverError>>,
{
    type Output = Result<tonic::Response<R>, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        this.future.poll(cx).map(|answer| match answer {
            Ok(resp) => Ok(tonic::Response::new(resp)),
            Err(e) => Err(grpc_status(&e, *this.retry_after)),
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
