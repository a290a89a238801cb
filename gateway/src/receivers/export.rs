//! The innermost service of both receivers' stacks: hands the message, its format and its
//! `RequestMeta` to the pipeline, and passes the pipeline's answer back up.

use super::request::ExportRequest;
use super::status::ReceiverError;
use crate::pipeline::Pipeline;
use crate::signal::Signal;
use bytes::Bytes;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

/// Calls the pipeline for one signal's Export requests.
pub struct Export<S> {
    pipeline: Arc<Pipeline>,
    signal: PhantomData<fn() -> S>,
}

impl<S> Export<S> {
    /// Exports through `pipeline`.
    pub fn new(pipeline: Arc<Pipeline>) -> Self {
        Self {
            pipeline,
            signal: PhantomData,
        }
    }
}

impl<S> Clone for Export<S> {
    fn clone(&self) -> Self {
        Self::new(self.pipeline.clone())
    }
}

/// The pipeline's answer. `Pipeline::export` is an `async fn`, whose future has no name to
/// put here: this is the one box per request the stack needs.
type ExportFuture<R> = Pin<Box<dyn Future<Output = Result<R, ReceiverError>> + Send>>;

impl<S: Signal> Service<ExportRequest<Bytes>> for Export<S> {
    type Response = S::Response;
    type Error = ReceiverError;
    type Future = ExportFuture<S::Response>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ReceiverError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: ExportRequest<Bytes>) -> Self::Future {
        let pipeline = self.pipeline.clone();
        Box::pin(async move {
            let ExportRequest {
                http,
                transport,
                format,
                meta,
            } = req;
            let body = http.into_body();
            Ok(pipeline.export::<S>(body, format, transport, &meta).await?)
        })
    }
}
