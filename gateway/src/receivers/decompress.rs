//! The decompression layer of OTLP/HTTP: reads the body within the size limit and inflates it
//! by its `Content-Encoding`, bounded. The limit applies to the decompressed size and
//! decompression stops as soon as it is passed, so a decompression bomb costs at most the
//! limit in memory, never what it would inflate to. (OTLP/gRPC bodies are framed and
//! inflated by tonic, in the `grpc` receiver's decode layer.)

use super::admission::{Admission, Admitted, ReadReservation};
use super::request::{ExportRequest, Format, RequestMeta, Transport};
use super::status::ReceiverError;
use crate::pipeline::PipelineError;
use bytes::Bytes;
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

/// Decompresses `body` (declared as `encoding`) into at most `limit` bytes.
pub fn decompress(
    body: bytes::Bytes,
    encoding: ContentEncoding,
    limit: usize,
) -> Result<bytes::Bytes, DecompressError> {
    let out = match encoding {
        ContentEncoding::Identity => {
            if body.len() > limit {
                return Err(DecompressError::TooLarge { limit });
            }
            return Ok(body);
        }
        ContentEncoding::Gzip => read_bounded(
            flate2::read::MultiGzDecoder::new(&body[..]),
            encoding,
            limit,
        )?,
        ContentEncoding::Deflate => {
            match read_bounded(flate2::read::ZlibDecoder::new(&body[..]), encoding, limit) {
                Err(DecompressError::Corrupt { .. }) => read_bounded(
                    flate2::read::DeflateDecoder::new(&body[..]),
                    encoding,
                    limit,
                )?,
                other => other?,
            }
        }
        ContentEncoding::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(&body[..]).map_err(|e| {
                DecompressError::Corrupt {
                    encoding,
                    reason: e.to_string(),
                }
            })?;
            read_bounded(decoder, encoding, limit)?
        }
    };
    Ok(out.into())
}

/// Inflated bytes produced on the worker thread before the rest of a body moves off it.
///
/// Most OTLP bodies inflate to far less, so they never pay a `block_in_place` hand-off: each
/// hand-off can start another runtime thread, and under many concurrent requests the gateway
/// grew a hundred of them, each with its own malloc arena, which was most of OTLP/HTTP's peak RSS.
const INLINE_INFLATE_BYTES: usize = 256 * 1024;

/// Reads at most `limit` bytes; one byte more means the body is too large. Past
/// `INLINE_INFLATE_BYTES` the rest is read in `block_in_place`, as inflating a large body
/// takes long enough to hold up other requests on this worker thread.
fn read_bounded(
    reader: impl Read,
    encoding: ContentEncoding,
    limit: usize,
) -> Result<Vec<u8>, DecompressError> {
    let corrupt = |e: std::io::Error| DecompressError::Corrupt {
        encoding,
        reason: e.to_string(),
    };
    let as_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let mut bounded = reader.take(as_u64(limit).saturating_add(1));
    let mut out = Vec::new();
    (&mut bounded)
        .take(as_u64(INLINE_INFLATE_BYTES))
        .read_to_end(&mut out)
        .map_err(corrupt)?;
    if out.len() == INLINE_INFLATE_BYTES {
        tokio::task::block_in_place(|| bounded.read_to_end(&mut out)).map_err(corrupt)?;
    }
    if out.len() > limit {
        return Err(DecompressError::TooLarge { limit });
    }
    Ok(out)
}

/// Decompression as a layer: what passes it is the whole message, at most `limit` bytes.
#[derive(Clone)]
pub struct DecompressLayer {
    limit: usize,
    read: BodyRead,
}

/// How a body is read: its deadline, and the budget its declared length is reserved in
/// before a byte of it is read.
#[derive(Clone)]
struct BodyRead {
    timeout: Option<Duration>,
    admission: Option<Admission>,
}

impl DecompressLayer {
    /// Refuses bodies larger than `limit` bytes, before or after decompression.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            read: BodyRead {
                timeout: None,
                admission: None,
            },
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
        }
    }
}

/// Reads and decompresses a request's body, then passes the message on.
#[derive(Clone)]
pub struct Decompress<Inner> {
    inner: Inner,
    limit: usize,
    read: BodyRead,
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

/// The whole message of a body that was read, within `limit` after decompression.
fn read_and_decompress(
    read: Result<Collected<Bytes>, BoxError>,
    encoding: ContentEncoding,
    limit: usize,
) -> Result<Bytes, PipelineError> {
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
    // Inline: an identity body is passed through, and large inflations move off this worker
    // thread by themselves (`read_bounded`).
    match decompress(body, encoding, limit) {
        Ok(message) => Ok(message),
        Err(DecompressError::TooLarge { .. }) => Err(PipelineError::TooLarge(format!(
            "the request decompresses to more than the limit of {limit} bytes"
        ))),
        Err(e @ DecompressError::Corrupt { .. }) => {
            Err(PipelineError::InvalidArgument(e.to_string()))
        }
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
        let out = read_and_decompress(read(data.clone()).await, ContentEncoding::Identity, 1 << 20);
        assert_eq!(&out.unwrap()[..], &data[..]);
        let out = read_and_decompress(
            read(gzip(&data).to_vec()).await,
            ContentEncoding::Gzip,
            1 << 20,
        );
        assert_eq!(&out.unwrap()[..], &data[..]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_inflations_move_off_the_worker_thread_and_arrive_whole() {
        let data = b"otlp".repeat(INLINE_INFLATE_BYTES);
        let z = zstd::encode_all(&data[..], 3).unwrap();
        let out = read_and_decompress(read(z).await, ContentEncoding::Zstd, 1 << 24);
        assert_eq!(&out.unwrap()[..], &data[..]);
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
