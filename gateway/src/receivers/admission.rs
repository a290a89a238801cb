//! The admission layer: a bound on the request bytes held in memory at once. A request that
//! would go past it is refused at once (429 / RESOURCE_EXHAUSTED with a retry delay) rather
//! than queued, so memory stays flat under overload and clients back off. It sits right
//! above the pipeline and counts the decompressed message, held until the pipeline answers.

use super::request::{ExportRequest, Transport};
use super::status::ReceiverError;
use crate::pipeline::PipelineError;
use bytes::Bytes;
use futures::future::{Either, Ready, ready};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

/// The in-flight byte budget shared by every receiver.
#[derive(Clone)]
pub struct Admission {
    budget: Arc<Semaphore>,
    /// The configured budget, as refusals name it.
    max_bytes: usize,
}

/// A body's reservation taken before it was read (from its `Content-Length`, or a gRPC
/// message's frame header), handed to the admission layer in the request's extensions.
#[derive(Clone)]
pub struct ReadReservation(pub Arc<std::sync::Mutex<Option<Admitted>>>);

impl ReadReservation {
    /// Wraps a reservation for the request's extensions.
    pub fn new(admitted: Admitted) -> Self {
        Self(Arc::new(std::sync::Mutex::new(Some(admitted))))
    }

    /// A slot to be filled once the body's length is known.
    pub fn unfilled() -> Self {
        Self(Arc::new(std::sync::Mutex::new(None)))
    }

    /// Puts the reservation in the slot.
    pub fn fill(&self, admitted: Admitted) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(admitted);
        }
    }

    fn take(&self) -> Option<Admitted> {
        self.0.lock().ok()?.take()
    }
}

/// Bytes held by one request; given back when dropped.
pub struct Admitted {
    permit: OwnedSemaphorePermit,
    bytes: u32,
}

impl Admission {
    /// A budget of `max_bytes` (capped at what a semaphore can count).
    pub fn new(max_bytes: usize) -> Self {
        Self {
            budget: Arc::new(Semaphore::new(max_bytes.min(Semaphore::MAX_PERMITS))),
            max_bytes,
        }
    }

    /// Takes `bytes` from the budget, or `None` when that would go past it.
    pub fn try_admit(&self, bytes: usize) -> Option<Admitted> {
        let bytes = u32::try_from(bytes.max(1)).ok()?;
        let permit = self.budget.clone().try_acquire_many_owned(bytes).ok()?;
        metrics::gauge!("weir_receiver_inflight_bytes").increment(f64::from(bytes));
        Some(Admitted { permit, bytes })
    }

    /// The answer to a request the budget has no room for (429 with a retry delay), counted.
    pub fn refused(&self, transport: Transport) -> ReceiverError {
        metrics::counter!("weir_receiver_refused_requests_total", "transport" => transport.label(), "reason" => "in_flight_limit")
            .increment(1);
        PipelineError::Overloaded(format!(
            "the gateway holds its limit of {} in-flight request bytes; retry later",
            self.max_bytes
        ))
        .into()
    }

    /// The configured budget in bytes.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// A reservation of nothing yet, to be grown as a request's output is charged.
    pub fn empty(&self) -> Admitted {
        Admitted {
            permit: self
                .budget
                .clone()
                .try_acquire_many_owned(0)
                .expect("a reservation of zero permits never waits"),
            bytes: 0,
        }
    }

    /// Adds `bytes` to `held`, or leaves it as it is when that would go past the budget.
    pub fn grow(&self, held: &mut Admitted, bytes: usize) -> bool {
        let Ok(n) = u32::try_from(bytes) else {
            return false;
        };
        let Some(total) = held.bytes.checked_add(n) else {
            return false;
        };
        let Ok(more) = self.budget.clone().try_acquire_many_owned(n) else {
            return false;
        };
        held.permit.merge(more);
        held.bytes = total;
        metrics::gauge!("weir_receiver_inflight_bytes").increment(f64::from(n));
        true
    }
}

impl Admitted {
    /// The bytes this reservation holds.
    pub fn bytes(&self) -> usize {
        self.bytes as usize
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        metrics::gauge!("weir_receiver_inflight_bytes").decrement(f64::from(self.bytes));
    }
}

/// Admission as a layer, over one budget shared by every stack it is part of.
#[derive(Clone)]
pub struct AdmissionLayer {
    admission: Admission,
}

impl AdmissionLayer {
    /// Admits requests within `admission`'s budget.
    pub fn new(admission: Admission) -> Self {
        Self { admission }
    }
}

impl<Inner> Layer<Inner> for AdmissionLayer {
    type Service = Admit<Inner>;

    fn layer(&self, inner: Inner) -> Self::Service {
        Admit {
            inner,
            admission: self.admission.clone(),
        }
    }
}

/// Passes a request on while its bytes fit the budget; answers the others Overloaded.
#[derive(Clone)]
pub struct Admit<Inner> {
    inner: Inner,
    admission: Admission,
}

impl<Inner> Service<ExportRequest<Bytes>> for Admit<Inner>
where
    Inner: Service<ExportRequest<Bytes>, Error = ReceiverError>,
{
    type Response = Inner::Response;
    type Error = ReceiverError;
    type Future = Either<Ready<Result<Inner::Response, ReceiverError>>, Holding<Inner::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ReceiverError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: ExportRequest<Bytes>) -> Self::Future {
        let len = req.http.body().len();
        // A body reserved before it was read keeps that reservation, grown to the message
        // when decompression made it larger.
        let reserved = req
            .http
            .extensions_mut()
            .remove::<ReadReservation>()
            .and_then(|r| r.take())
            .and_then(|mut held| {
                let more = len.saturating_sub(held.bytes());
                (more == 0 || self.admission.grow(&mut held, more)).then_some(held)
            });
        let Some(admitted) = reserved.or_else(|| self.admission.try_admit(len)) else {
            return Either::Left(ready(Err(self.admission.refused(req.transport))));
        };
        Either::Right(Holding {
            future: self.inner.call(req),
            admitted: Some(admitted),
        })
    }
}

pin_project! {
    /// The inner answer, with the request's bytes held in the budget until it is ready.
    pub struct Holding<F> {
        #[pin]
        future: F,
        admitted: Option<Admitted>,
    }
}

impl<F: Future> Future for Holding<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = std::task::ready!(this.future.poll(cx));
        // Given back as soon as the pipeline has answered, not when the reply is sent.
        this.admitted.take();
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_budget_and_recovers_on_drop() {
        let a = Admission::new(100);
        let first = a.try_admit(60).unwrap();
        assert!(a.try_admit(50).is_none());
        let second = a.try_admit(40).unwrap();
        drop(first);
        assert!(a.try_admit(60).is_some());
        drop(second);
    }

    #[test]
    fn a_reservation_grows_within_the_budget_and_gives_everything_back() {
        let a = Admission::new(100);
        let body = a.try_admit(30).unwrap();
        let mut output = a.empty();
        assert!(a.grow(&mut output, 50));
        assert!(!a.grow(&mut output, 21), "30 + 50 + 21 is past 100");
        assert_eq!(output.bytes(), 50);
        assert!(a.grow(&mut output, 20));
        assert!(a.try_admit(1).is_none());
        drop(output);
        drop(body);
        assert!(a.try_admit(100).is_some());
    }
}
