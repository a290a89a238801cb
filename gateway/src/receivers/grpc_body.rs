//! The OTLP/gRPC request body as tonic reads it, guarded: the message's length, read from its
//! frame header, is reserved in the in-flight budget before the message itself is read
//! (RESOURCE_EXHAUSTED at once when it does not fit, instead of after the memory is spent),
//! and the whole body must arrive within `receivers.grpc.body_read_timeout`.

use super::admission::{Admission, ReadReservation};
use super::request::Transport;
use super::status::{ReceiverError, grpc_status};
use crate::pipeline::PipelineError;
use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// What reading the body can fail with; tonic finds the `Status` in it and answers with that.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The length of a gRPC message frame's header: a compression flag and a big-endian `u32`.
const FRAME_HEADER: usize = 5;

/// What the guard needs besides the body: the budget, the limits and the refusal's delay.
#[derive(Clone)]
pub struct BodyGuard {
    /// The in-flight budget the message's length is reserved in.
    pub admission: Admission,
    /// `limits.max_message_size`: longer frames are left to tonic to refuse, unreserved.
    pub max_message_size: usize,
    /// How long the whole body may take once the headers are in.
    pub timeout: Duration,
    /// The `RetryInfo` delay of a refusal.
    pub retry_after: Duration,
}

impl BodyGuard {
    /// Wraps `body`, and returns the slot the reservation will be put in once the frame
    /// header is read (for the request's extensions, where the admission layer takes it).
    pub fn guard<B>(&self, body: B) -> (GuardedBody<B>, ReadReservation) {
        let slot = ReadReservation::unfilled();
        let guarded = GuardedBody {
            inner: body,
            header: [0; FRAME_HEADER],
            seen: 0,
            read: 0,
            message_len: None,
            guard: self.clone(),
            slot: slot.clone(),
            deadline: Some(Box::pin(tokio::time::sleep(self.timeout))),
        };
        (guarded, slot)
    }

    /// The refusal of a message the budget has no room for, as tonic will send it.
    fn refused(&self) -> BoxError {
        let err: ReceiverError = self.admission.refused(Transport::Grpc);
        Box::new(grpc_status(&err, self.retry_after))
    }

    /// The answer to a body still arriving at the deadline.
    fn too_slow(&self) -> BoxError {
        metrics::counter!("weir_receiver_refused_requests_total", "transport" => Transport::Grpc.label(), "reason" => "body_read_timeout")
            .increment(1);
        let err: ReceiverError = PipelineError::BodyTimeout(format!(
            "the request body did not arrive within {:?} (receivers.grpc.body_read_timeout)",
            self.timeout
        ))
        .into();
        Box::new(grpc_status(&err, self.retry_after))
    }
}

pin_project! {
    /// A gRPC request body that reserves its message's length from the frame header and
    /// fails with a status past its deadline or when a second message follows the first.
    pub struct GuardedBody<B> {
        #[pin]
        inner: B,
        header: [u8; FRAME_HEADER],
        // Header bytes read so far (at most FRAME_HEADER).
        seen: usize,
        // Data bytes read so far.
        read: usize,
        // The first message's length, once its header is read.
        message_len: Option<usize>,
        guard: BodyGuard,
        slot: ReadReservation,
        // `None` once the body has ended.
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<B> GuardedBody<B> {
    /// Looks at one data chunk: the frame header's bytes in it (the reservation is taken
    /// once all five are in), and whether the body goes on past the one message a unary
    /// call carries.
    fn observe(self: Pin<&mut Self>, data: &[u8]) -> Result<(), BoxError> {
        let this = self.project();
        *this.read = this.read.saturating_add(data.len());
        if *this.seen < FRAME_HEADER {
            let take = (FRAME_HEADER - *this.seen).min(data.len());
            this.header[*this.seen..*this.seen + take].copy_from_slice(&data[..take]);
            *this.seen += take;
            if *this.seen < FRAME_HEADER {
                return Ok(());
            }
            let [_, a, b, c, d] = *this.header;
            let len = u32::from_be_bytes([a, b, c, d]) as usize;
            *this.message_len = Some(len);
            // A longer message is tonic's to refuse (OUT_OF_RANGE, before it is buffered).
            if len > 0 && len <= this.guard.max_message_size {
                let held = this
                    .guard
                    .admission
                    .try_admit(len)
                    .ok_or_else(|| this.guard.refused())?;
                this.slot.fill(held);
            }
        }
        // Bytes past the first message would be a second one, which tonic would decode
        // (outside the budget) only to refuse the call.
        if let Some(len) = *this.message_len
            && *this.read > FRAME_HEADER.saturating_add(len)
        {
            let err: ReceiverError = PipelineError::InvalidArgument(
                "a unary Export call carries exactly one message; more data followed it".into(),
            )
            .into();
            return Err(Box::new(grpc_status(&err, this.guard.retry_after)));
        }
        Ok(())
    }
}

impl<B> Body for GuardedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.as_mut().project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let chunk = data.chunk();
                    // `Bytes` is one contiguous chunk.
                    debug_assert_eq!(chunk.len(), data.remaining());
                    self.observe(chunk)?;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                *this.deadline = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some(deadline) = this.deadline.as_mut()
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    *this.deadline = None;
                    return Poll::Ready(Some(Err(this.guard.too_slow())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
