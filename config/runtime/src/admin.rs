//! The admin listener the gateway (8888) and the tail router (8889) serve: `/healthz` (the
//! process serves), `/readyz` (ready to take traffic: the broker answers, nothing is still
//! being prepared and shutdown has not begun) and `/metrics` (Prometheus, from the recorder
//! `install_metrics_recorder` installs).

use crate::listener::{self, ServeOptions};
use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Installs the process's Prometheus recorder, with latency buckets for every `*_seconds`
/// histogram, and describes the metrics `Readiness` emits; the binary describes its own.
pub fn install_metrics_recorder() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )
        .context("histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    metrics::describe_gauge!(
        "weir_exporter_broker_up",
        "1 while the Kafka broker answers metadata requests."
    );
    Ok(handle)
}

/// What `/readyz` reports.
#[derive(Default)]
pub struct Readiness {
    broker: AtomicBool,
    draining: AtomicBool,
    /// Why the process is still preparing (the tail router catching up on decisions).
    preparing: std::sync::Mutex<Option<&'static str>>,
}

impl Readiness {
    /// Records whether the broker answered the last probe.
    pub fn set_broker(&self, up: bool) {
        let was = self.broker.swap(up, Ordering::Relaxed);
        if was != up {
            if up {
                tracing::info!("the Kafka broker answers: ready");
            } else {
                tracing::warn!("the Kafka broker does not answer: not ready");
            }
        }
        metrics::gauge!("weir_exporter_broker_up", "exporter" => "kafka").set(if up {
            1.0
        } else {
            0.0
        });
    }

    /// Marks the process as shutting down, so load balancers stop sending to it.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Records what the process is still preparing before it can be ready (`None`: done).
    pub fn set_preparing(&self, why: Option<&'static str>) {
        *self.preparing.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    /// Why the process is not ready, or `None` when it is.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        let preparing = *self.preparing.lock().unwrap_or_else(|p| p.into_inner());
        if self.draining.load(Ordering::Relaxed) {
            Some("shutting down")
        } else if let Some(why) = preparing {
            Some(why)
        } else if !self.broker.load(Ordering::Relaxed) {
            Some("the Kafka broker does not answer")
        } else {
            None
        }
    }
}

#[derive(Clone)]
struct AdminState {
    readiness: Arc<Readiness>,
    prometheus: PrometheusHandle,
}

/// Serves the admin routes in plaintext with the default connection limits until `shutdown`
/// is cancelled.
pub async fn serve(
    listener: TcpListener,
    readiness: Arc<Readiness>,
    prometheus: PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let options = ServeOptions {
        name: "admin",
        limits: listener::ConnLimits::default(),
        tls: None,
        protocols: listener::Protocols::Http1And2,
        drain_timeout: None,
    };
    serve_with(listener, options, readiness, prometheus, shutdown).await
}

/// Serves the admin routes with the TLS and limits of `options` until `shutdown` is cancelled.
pub async fn serve_with(
    listener: TcpListener,
    options: ServeOptions,
    readiness: Arc<Readiness>,
    prometheus: PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(s): State<AdminState>| async move {
                match s.readiness.not_ready_reason() {
                    None => (StatusCode::OK, "ready\n".to_string()),
                    Some(why) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {why}\n"),
                    ),
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<AdminState>| async move { s.prometheus.render() }),
        )
        .with_state(AdminState {
            readiness,
            prometheus,
        });
    listener::serve(listener, options, app, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::Readiness;

    #[test]
    fn readiness_names_what_it_waits_for() {
        let r = Readiness::default();
        assert_eq!(
            r.not_ready_reason(),
            Some("the Kafka broker does not answer")
        );
        r.set_preparing(Some("catching up"));
        assert_eq!(r.not_ready_reason(), Some("catching up"));
        r.set_broker(true);
        assert_eq!(r.not_ready_reason(), Some("catching up"));
        r.set_preparing(None);
        assert_eq!(r.not_ready_reason(), None);
        r.set_draining();
        assert_eq!(r.not_ready_reason(), Some("shutting down"));
    }
}
