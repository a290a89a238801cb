//! The decompression layer of OTLP/HTTP: reads the body within the size limit and inflates it
//! by its `Content-Encoding`, bounded. The limit applies to the decompressed size and
//! decompression stops as soon as it is passed, so a decompression bomb costs at most the
//! limit in memory, never what it would inflate to. (OTLP/gRPC bodies are framed and
//! inflated by tonic, in the `grpc` receiver's decode layer.)

use super::admission::{Admission, Admitted, ReadReservation};
use super::request::{ExportRequest, Format, RequestMeta, Transport};
use super::status::ReceiverError;
use crate::blocking::BlockingSections;
use crate::pipeline::PipelineError;
use bytes::{Buf, Bytes};
use http::header;
use http::request::Parts;
use http_body_util::Collected;
use http_body_util::combinators::Collect;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use pin_project_lite::pin_project;
use std::future::Future;
use std::io::Read;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tower::{Layer, Service};

/// What reading a body can fail with (`Limited` boxes the body's own error).
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A `Content-Encoding` the HTTP receiver accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentEncoding {
    /// No encoding (`identity` or no header).
    Identity,
    /// `gzip` (or `x-gzip`).
    Gzip,
    /// `deflate`: zlib-wrapped as HTTP says; raw deflate is accepted too, as browsers do.
    Deflate,
    /// `zstd`.
    Zstd,
}

impl ContentEncoding {
    /// Parses a `Content-Encoding` header value; `None` for encodings we do not accept.
    pub fn parse(value: Option<&str>) -> Option<Self> {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("identity") => Some(Self::Identity),
            Some("gzip") | Some("x-gzip") => Some(Self::Gzip),
            Some("deflate") => Some(Self::Deflate),
            Some("zstd") => Some(Self::Zstd),
            Some(_) => None,
        }
    }
}

/// Why a body could not be decompressed.
#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    /// It inflates past the limit.
    #[error("the body decompresses to more than the limit of {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// It is not valid data for its encoding.
    #[error("the body is not valid {encoding:?} data: {reason}")]
    Corrupt {
        /// The declared encoding.
        encoding: ContentEncoding,
        /// The decoder's error.
        reason: String,
    },
}

/// Decompresses `body` (declared as `encoding`) into at most `limit` bytes, all on the
/// calling thread.
pub fn decompress(
    body: Bytes,
    encoding: ContentEncoding,
    limit: usize,
) -> Result<Bytes, DecompressError> {
    match start_inflation(body, encoding, limit)? {
        Inflation::Whole(message) => Ok(message),
        Inflation::Rest(rest) => rest.finish(),
    }
}

/// Inflated bytes produced on the worker thread before the rest of a body moves off it.
///
/// Most OTLP bodies inflate to far less, so they never pay a `block_in_place` hand-off: each
/// hand-off can start another runtime thread, and under many concurrent requests the gateway
/// grew a hundred of them, each with its own malloc arena, which was most of OTLP/HTTP's peak RSS.
const INLINE_INFLATE_BYTES: usize = 256 * 1024;

/// A body's inflation as far as the worker thread takes it.
enum Inflation {
    /// The whole message, within the limit.
    Whole(Bytes),
    /// More than `INLINE_INFLATE_BYTES`: the rest is inflated in a blocking section, as it
    /// takes long enough to hold up other requests on the worker thread.
    Rest(RestOfInflation),
}

/// An inflation stopped after its inline part.
struct RestOfInflation {
    /// The decoder, bounded at one byte past the limit (that byte means too large).
    reader: std::io::Take<Box<dyn Read + Send>>,
    /// What the inline part inflated.
    out: Vec<u8>,
    encoding: ContentEncoding,
    limit: usize,
    /// A `deflate` body read as zlib, kept to be read again as raw deflate if the rest turns
    /// out not to be zlib.
    raw_deflate: Option<Bytes>,
}

/// Inflates the inline part of `body`.
fn start_inflation(
    body: Bytes,
    encoding: ContentEncoding,
    limit: usize,
) -> Result<Inflation, DecompressError> {
    match encoding {
        ContentEncoding::Identity => {
            if body.len() > limit {
                return Err(DecompressError::TooLarge { limit });
            }
            Ok(Inflation::Whole(body))
        }
        ContentEncoding::Gzip => inflate_inline(
            Box::new(flate2::read::MultiGzDecoder::new(body.reader())),
            encoding,
            limit,
            None,
        ),
        ContentEncoding::Deflate => {
            let zlib = Box::new(flate2::read::ZlibDecoder::new(body.clone().reader()));
            match inflate_inline(zlib, encoding, limit, Some(body.clone())) {
                Err(DecompressError::Corrupt { .. }) => raw_deflate(body, limit),
                other => other,
            }
        }
        ContentEncoding::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(body.reader()).map_err(|e| {
                DecompressError::Corrupt {
                    encoding,
                    reason: e.to_string(),
                }
            })?;
            inflate_inline(Box::new(decoder), encoding, limit, None)
        }
    }
}

/// Inflates the inline part of a `deflate` body that is not zlib-wrapped.
fn raw_deflate(body: Bytes, limit: usize) -> Result<Inflation, DecompressError> {
    let reader = Box::new(flate2::read::DeflateDecoder::new(body.reader()));
    inflate_inline(reader, ContentEncoding::Deflate, limit, None)
}

/// Reads at most `INLINE_INFLATE_BYTES` of `reader`; what is left is the `Rest`.
fn inflate_inline(
    reader: Box<dyn Read + Send>,
    encoding: ContentEncoding,
    limit: usize,
    raw_deflate: Option<Bytes>,
) -> Result<Inflation, DecompressError> {
    let as_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let mut reader = reader.take(as_u64(limit).saturating_add(1));
    let mut out = Vec::new();
    (&mut reader)
        .take(as_u64(INLINE_INFLATE_BYTES))
        .read_to_end(&mut out)
        .map_err(|e| corrupt(encoding, e))?;
    if out.len() > limit {
        return Err(DecompressError::TooLarge { limit });
    }
    if out.len() == INLINE_INFLATE_BYTES {
        return Ok(Inflation::Rest(RestOfInflation {
            reader,
            out,
            encoding,
            limit,
            raw_deflate,
        }));
    }
    Ok(Inflation::Whole(out.into()))
}

impl RestOfInflation {
    /// Inflates the rest, on the calling thread; one byte past the limit means too large.
    fn finish(mut self) -> Result<Bytes, DecompressError> {
        if let Err(e) = self.reader.read_to_end(&mut self.out) {
            return match self.raw_deflate.take() {
                Some(body) => match raw_deflate(body, self.limit)? {
                    Inflation::Whole(message) => Ok(message),
                    Inflation::Rest(rest) => rest.finish(),
                },
                None => Err(corrupt(self.encoding, e)),
            };
        }
        if self.out.len() > self.limit {
            return Err(DecompressError::TooLarge { limit: self.limit });
        }
        Ok(self.out.into())
    }
}

/// A decoder's error, as the client is told.
fn corrupt(encoding: ContentEncoding, e: std::io::Error) -> DecompressError {
    DecompressError::Corrupt {
        encoding,
        reason: e.to_string(),
    }
}

/// Decompression as a layer: what passes it is the whole message, at most `limit` bytes.
#[derive(Clone)]
pub struct DecompressLayer {
    limit: usize,
    read: BodyRead,
    blocking: BlockingSections,
}

/// How a body is read: its deadline, and the budget its declared length is reserved in
/// before a byte of it is read.
#[derive(Clone)]
struct BodyRead {
    timeout: Option<Duration>,
    admission: Option<Admission>,
}

impl DecompressLayer {
    /// Refuses bodies larger than `limit` bytes, before or after decompression; inflates
    /// large ones in `blocking`.
    pub fn new(limit: usize, blocking: BlockingSections) -> Self {
        Self {
            limit,
            read: BodyRead {
                timeout: None,
                admission: None,
            },
            blocking,
        }
    }

    /// Also answers 408 to a body that has not arrived `timeout` after its headers, and
    /// reserves a body's `Content-Length` in `admission` before reading it (429 at once when
    /// it does not fit, instead of after the memory is spent).
    pub fn reading_within(mut self, timeout: Duration, admission: Admission) -> Self {
        self.read = BodyRead {
            timeout: Some(timeout),
            admission: Some(admission),
        };
        self
    }
}

impl<Inner> Layer<Inner> for DecompressLayer {
    type Service = Decompress<Inner>;

    fn layer(&self, inner: Inner) -> Self::Service {
        Decompress {
            inner,
            limit: self.limit,
            read: self.read.clone(),
            blocking: self.blocking.clone(),
        }
    }
}

/// Reads and decompresses a request's body, then passes the message on.
#[derive(Clone)]
pub struct Decompress<Inner> {
    inner: Inner,
    limit: usize,
    read: BodyRead,
    blocking: BlockingSections,
}

impl<Inner, B> Service<ExportRequest<B>> for Decompress<Inner>
where
    Inner: Service<ExportRequest<Bytes>, Error = ReceiverError> + Clone,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = Inner::Response;
    type Error = ReceiverError;
    type Future = DecompressFuture<B, Inner>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ReceiverError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ExportRequest<B>) -> Self::Future {
        let declared = req
            .http
            .headers()
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("?"));
        let Some(encoding) = ContentEncoding::parse(declared) else {
            let msg = format!(
                "Content-Encoding {} is not supported: use gzip, zstd, deflate or none",
                weir_proto::echo::echoed_name(declared.unwrap_or(""))
            );
            return DecompressFuture::Refused {
                error: Some(ReceiverError::UnsupportedMediaType(msg)),
            };
        };
        // The declared length is reserved before the body is read (a longer one is refused by
        // the size limit as it is read).
        let declared_len = req
            .http
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .filter(|&n| n > 0 && n <= self.limit);
        let reserved = match (&self.read.admission, declared_len) {
            (Some(admission), Some(n)) => match admission.try_admit(n) {
                Some(held) => Some(held),
                None => {
                    return DecompressFuture::Refused {
                        error: Some(admission.refused(req.transport)),
                    };
                }
            },
            _ => None,
        };
        // The inner service is called once the body is in: take the one that is ready.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let (head, body) = req.http.into_parts();
        DecompressFuture::Reading {
            body: Limited::new(body, self.limit).collect(),
            deadline: self.read.timeout.map(|t| Box::pin(tokio::time::sleep(t))),
            unread: Some(Unread {
                head,
                transport: req.transport,
                format: req.format,
                meta: req.meta,
                encoding,
                limit: self.limit,
                timeout: self.read.timeout,
                reserved,
                blocking: self.blocking.clone(),
                inner,
            }),
        }
    }
}

/// Everything of a request but its body, while the body is read.
pub struct Unread<Inner> {
    head: Parts,
    transport: Transport,
    format: Format,
    meta: RequestMeta,
    encoding: ContentEncoding,
    limit: usize,
    timeout: Option<Duration>,
    reserved: Option<Admitted>,
    blocking: BlockingSections,
    inner: Inner,
}

pin_project! {
    /// Reads the body, then waits for the inner service's answer.
    #[project = DecompressState]
    pub enum DecompressFuture<B, Inner>
    where
        B: http_body::Body,
        B::Error: Into<BoxError>,
        Inner: Service<ExportRequest<Bytes>>,
    {
        /// The body is being read.
        Reading {
            #[pin]
            body: Collect<Limited<B>>,
            deadline: Option<Pin<Box<tokio::time::Sleep>>>,
            unread: Option<Unread<Inner>>,
        },
        /// The body is in; the rest of its inflation waits for, or runs in, a blocking section.
        Inflating {
            inflation: Pin<Box<dyn Future<Output = Result<Bytes, PipelineError>> + Send>>,
            unread: Option<Unread<Inner>>,
        },
        /// The message went down; the inner answer is pending.
        Calling {
            #[pin]
            future: Inner::Future,
        },
        /// Refused before the body was read.
        Refused {
            error: Option<ReceiverError>,
        },
    }
}

impl<B, Inner> Future for DecompressFuture<B, Inner>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    Inner: Service<ExportRequest<Bytes>, Error = ReceiverError>,
{
    type Output = Result<Inner::Response, ReceiverError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let future = match self.as_mut().project() {
                DecompressState::Calling { future } => return future.poll(cx),
                DecompressState::Refused { error } => {
                    let error = error.take().expect("polled after completion");
                    return Poll::Ready(Err(error));
                }
                DecompressState::Reading {
                    body,
                    deadline,
                    unread,
                } => {
                    let read = match body.poll(cx) {
                        Poll::Ready(read) => read,
                        Poll::Pending => {
                            if let Some(d) = deadline.as_mut() {
                                ready!(d.as_mut().poll(cx));
                                let u = unread.take().expect("polled after completion");
                                metrics::counter!("weir_receiver_refused_requests_total", "transport" => u.transport.label(), "reason" => "body_timeout")
                                    .increment(1);
                                return Poll::Ready(Err(PipelineError::BodyTimeout(format!(
                                    "the request body did not arrive within {:?} (receivers.http.body_read_timeout)",
                                    u.timeout.unwrap_or_default()
                                ))
                                .into()));
                            }
                            return Poll::Pending;
                        }
                    };
                    let unread = unread.take().expect("polled after completion");
                    match read_and_decompress(read, unread.encoding, unread.limit) {
                        Ok(Inflation::Whole(message)) => unread.call(message),
                        Ok(Inflation::Rest(rest)) => {
                            let inflation =
                                inflate_rest(rest, unread.blocking.clone(), unread.limit);
                            self.set(DecompressFuture::Inflating {
                                inflation: Box::pin(inflation),
                                unread: Some(unread),
                            });
                            continue;
                        }
                        Err(e) => return Poll::Ready(Err(e.into())),
                    }
                }
                DecompressState::Inflating { inflation, unread } => {
                    let message = ready!(inflation.as_mut().poll(cx));
                    let unread = unread.take().expect("polled after completion");
                    match message {
                        Ok(message) => unread.call(message),
                        Err(e) => return Poll::Ready(Err(e.into())),
                    }
                }
            };
            self.set(DecompressFuture::Calling { future });
        }
    }
}

impl<Inner: Service<ExportRequest<Bytes>>> Unread<Inner> {
    /// Sends the request on with its whole message.
    fn call(mut self, message: Bytes) -> Inner::Future {
        let mut http = http::Request::from_parts(self.head, message);
        if let Some(held) = self.reserved.take() {
            http.extensions_mut().insert(ReadReservation::new(held));
        }
        self.inner.call(ExportRequest {
            http,
            transport: self.transport,
            format: self.format,
            meta: self.meta,
        })
    }
}

/// The message of a body that was read, within `limit` after decompression: whole, or the
/// rest still to be inflated off the worker thread.
fn read_and_decompress(
    read: Result<Collected<Bytes>, BoxError>,
    encoding: ContentEncoding,
    limit: usize,
) -> Result<Inflation, PipelineError> {
    let body = match read {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(PipelineError::TooLarge(format!(
                "the request body is larger than the limit of {limit} bytes"
            )));
        }
        Err(e) => {
            return Err(PipelineError::InvalidArgument(format!(
                "reading the request body failed: {e}"
            )));
        }
    };
    // Inline: an identity body is passed through, and only the inflation of a large one is
    // left for a blocking section.
    start_inflation(body, encoding, limit).map_err(|e| refusal(e, limit))
}

/// Inflates the rest of a large body in one of the blocking sections, once one is free.
async fn inflate_rest(
    rest: RestOfInflation,
    blocking: BlockingSections,
    limit: usize,
) -> Result<Bytes, PipelineError> {
    let inflated = blocking.run(move || rest.finish()).await;
    inflated.map_err(|e| refusal(e, limit))
}

/// The client's answer to a body that does not decompress within `limit`.
fn refusal(e: DecompressError, limit: usize) -> PipelineError {
    match e {
        DecompressError::TooLarge { .. } => PipelineError::TooLarge(format!(
            "the request decompresses to more than the limit of {limit} bytes"
        )),
        e @ DecompressError::Corrupt { .. } => PipelineError::InvalidArgument(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> bytes::Bytes {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap().into()
    }

    #[test]
    fn round_trips_each_encoding() {
        let data = b"hello otlp".repeat(100);
        assert_eq!(
            &decompress(gzip(&data), ContentEncoding::Gzip, 1 << 20).unwrap()[..],
            &data[..]
        );
        let z = zstd::encode_all(&data[..], 3).unwrap();
        assert_eq!(
            &decompress(z.into(), ContentEncoding::Zstd, 1 << 20).unwrap()[..],
            &data[..]
        );
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&data).unwrap();
        let zlib: bytes::Bytes = e.finish().unwrap().into();
        assert_eq!(
            &decompress(zlib, ContentEncoding::Deflate, 1 << 20).unwrap()[..],
            &data[..]
        );
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&data).unwrap();
        let raw: bytes::Bytes = e.finish().unwrap().into();
        assert_eq!(
            &decompress(raw, ContentEncoding::Deflate, 1 << 20).unwrap()[..],
            &data[..]
        );
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 1 << 20);
        let e = decompress(bomb, ContentEncoding::Gzip, 1 << 20).unwrap_err();
        assert!(matches!(e, DecompressError::TooLarge { limit } if limit == 1 << 20));
    }

    #[test]
    fn a_body_past_the_inline_part_inflates_whole_within_the_limit() {
        // Not zeros, so the inflated bytes show where the inline part and the rest meet.
        let data: Vec<u8> = (0..INLINE_INFLATE_BYTES * 3)
            .map(|i| (i % 251) as u8)
            .collect();
        for limit in [data.len(), data.len() + 1] {
            let out = decompress(gzip(&data), ContentEncoding::Gzip, limit).unwrap();
            assert_eq!(&out[..], &data[..]);
        }
        let e = decompress(gzip(&data), ContentEncoding::Gzip, data.len() - 1).unwrap_err();
        assert!(matches!(e, DecompressError::TooLarge { .. }));
        // Exactly the inline part, with the limit there too.
        let inline = &data[..INLINE_INFLATE_BYTES];
        let out = decompress(gzip(inline), ContentEncoding::Gzip, INLINE_INFLATE_BYTES).unwrap();
        assert_eq!(&out[..], inline);
    }

    /// A body as the HTTP receiver has it once read.
    async fn read(body: Vec<u8>) -> Result<Collected<Bytes>, BoxError> {
        Ok(http_body_util::Full::new(Bytes::from(body))
            .collect()
            .await
            .unwrap())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn benchmark_sized_bodies_are_read_without_a_thread_hand_off() {
        // block_in_place panics on a current-thread runtime, so this fails if these bodies
        // reach it: under many connections every hand-off could start a runtime thread with
        // a malloc arena of its own (issue 19's OTLP/HTTP peak RSS).
        let data = b"span-attributes-".repeat(1500);
        for (body, encoding) in [
            (data.clone(), ContentEncoding::Identity),
            (gzip(&data).to_vec(), ContentEncoding::Gzip),
        ] {
            match read_and_decompress(read(body).await, encoding, 1 << 20) {
                Ok(Inflation::Whole(out)) => assert_eq!(&out[..], &data[..]),
                Ok(Inflation::Rest(_)) => panic!("{encoding:?}: left for a blocking section"),
                Err(e) => panic!("{encoding:?}: {e}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_inflations_wait_for_a_blocking_section_and_arrive_whole() {
        let data = b"otlp".repeat(INLINE_INFLATE_BYTES);
        let z = zstd::encode_all(&data[..], 3).unwrap();
        let Ok(Inflation::Rest(rest)) =
            read_and_decompress(read(z).await, ContentEncoding::Zstd, 1 << 24)
        else {
            panic!("a 1 MiB inflation was not left for a blocking section");
        };
        // The only section is taken until `release` is sent.
        let blocking = BlockingSections::new(1);
        let (release, released) = std::sync::mpsc::channel::<()>();
        let holder = blocking.clone();
        let held = tokio::spawn(async move { holder.run(move || released.recv()).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut inflation = Box::pin(inflate_rest(rest, blocking, 1 << 24));
        let waited = tokio::time::timeout(Duration::from_millis(200), inflation.as_mut()).await;
        assert!(waited.is_err(), "inflated while every section was taken");
        release.send(()).unwrap();
        held.await.unwrap().unwrap();
        assert_eq!(&inflation.await.unwrap()[..], &data[..]);
    }

    #[test]
    fn corrupt_data_is_reported() {
        let e = decompress(
            bytes::Bytes::from_static(b"not gzip"),
            ContentEncoding::Gzip,
            1024,
        )
        .unwrap_err();
        assert!(matches!(e, DecompressError::Corrupt { .. }));
    }

    #[test]
    fn encodings_parse() {
        assert_eq!(
            ContentEncoding::parse(None),
            Some(ContentEncoding::Identity)
        );
        assert_eq!(
            ContentEncoding::parse(Some("GZIP")),
            Some(ContentEncoding::Gzip)
        );
        assert_eq!(ContentEncoding::parse(Some("br")), None);
    }
}
