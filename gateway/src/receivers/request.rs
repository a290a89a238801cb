//! What the receiver layers pass down to the pipeline: the transport's request, its body
//! format, and what the layers learnt about it on the way (`RequestMeta`).

use weir_exporters::kafka::RecordHeaders;

/// The body format of a request (and of its response).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `application/x-protobuf` (and every gRPC request).
    Protobuf,
    /// `application/json` (OTLP/JSON).
    Json,
}

/// The receiver a request came through, as the `transport` metric label names it.
#[derive(Clone, Copy, Debug)]
pub enum Transport {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP.
    Http,
}

impl Transport {
    /// The `transport` metric label.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Http => "http",
        }
    }
}

/// What the receiver learnt about a request besides its body.
#[derive(Clone, Debug, Default)]
pub struct RequestMeta {
    /// The authenticated tenant, when `receivers.auth` is configured.
    pub tenant: Option<std::sync::Arc<str>>,
    /// Headers for every record of the request: `weir.tenant` and the copied request
    /// metadata (`kafka.include_metadata_keys`).
    pub record_headers: Option<RecordHeaders>,
}

/// One OTLP Export request on its way down a receiver's layers.
///
/// `B` is the body: the transport's stream until the decompression layer, then the whole
/// (decompressed) message as `Bytes`. `F` is the body format: OTLP/HTTP starts with the
/// format `Content-Type` declares (`Option<Format>`, checked after authentication so an
/// unauthenticated client learns nothing else), every layer below works with a `Format`.
/// Carrying these as fields rather than `http::Extensions` costs no allocation per request.
#[derive(Debug)]
pub struct ExportRequest<B, F = Format> {
    /// The transport's request: method, path, headers (or gRPC metadata) and the body.
    pub http: http::Request<B>,
    /// The receiver it came through.
    pub transport: Transport,
    /// The body format.
    pub format: F,
    /// Filled in by the authentication layer.
    pub meta: RequestMeta,
}

impl<B, F> ExportRequest<B, F> {
    /// The same request with another body format (once a layer has settled it).
    pub fn with_format<G>(self, format: G) -> ExportRequest<B, G> {
        ExportRequest {
            http: self.http,
            transport: self.transport,
            format,
            meta: self.meta,
        }
    }
}
