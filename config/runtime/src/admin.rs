//! The admin listener the gateway (8888) and the tail router (8889) serve: `/healthz` (the
//! process serves), `/readyz` (ready to take traffic: requests can be made durable, in Kafka
//! or in the gateway's spool, nothing is still being prepared and shutdown has not begun) and `/metrics` (Prometheus, from the recorder
//! `install_metrics_recorder` installs, then the Collector's process metrics).

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
    crate::process_metrics::start_clock();
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
    /// Produced records fail or time out although the broker may answer its probe.
    kafka_failing: AtomicBool,
    /// A spool takes what Kafka does not acknowledge.
    spool_enabled: AtomicBool,
    /// The spool has room (see `Spool::has_room`).
    spool_has_room: AtomicBool,
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

    /// Records whether recent produce requests failed or timed out with none acknowledged
    /// since (the gateway's Kafka health).
    pub fn set_kafka_failing(&self, failing: bool) {
        let was = self.kafka_failing.swap(failing, Ordering::Relaxed);
        if was != failing && failing {
            tracing::warn!("Kafka does not acknowledge produced records");
        }
    }

    /// Records whether a spool takes what Kafka does not acknowledge (`None`: no spool) and
    /// whether it has room: while it has, the gateway is ready whatever Kafka does.
    pub fn set_spool(&self, has_room: Option<bool>) {
        self.spool_enabled
            .store(has_room.is_some(), Ordering::Relaxed);
        let room = has_room.unwrap_or(false);
        let was = self.spool_has_room.swap(room, Ordering::Relaxed);
        if has_room.is_some() && was != room && !room {
            tracing::warn!("the spool is full or failed");
        }
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
        } else {
            self.kafka_not_ready_reason()
        }
    }

    /// Why requests cannot be made durable, or `None` when Kafka acknowledges them or the
    /// spool has room for them.
    fn kafka_not_ready_reason(&self) -> Option<&'static str> {
        let spool_enabled = self.spool_enabled.load(Ordering::Relaxed);
        if spool_enabled && self.spool_has_room.load(Ordering::Relaxed) {
            return None;
        }
        // With a spool that has no room, say so: it is the half an operator can act on.
        let spool_full = spool_enabled;
        let broker = self.broker.load(Ordering::Relaxed);
        let failing = self.kafka_failing.load(Ordering::Relaxed);
        match (broker, failing, spool_full) {
            (true, false, _) => None,
            (false, _, false) => Some("the Kafka broker does not answer"),
            (false, _, true) => Some("the Kafka broker does not answer and the spool is full"),
            (true, true, false) => Some("Kafka does not acknowledge produced records"),
            (true, true, true) => {
                Some("Kafka does not acknowledge produced records and the spool is full")
            }
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
        // Where the Collector's health_check extension answers (`/`), in its JSON shape, so
        // probes and checks written for it work unchanged on the admin port.
        .route(
            "/",
            get(|State(s): State<AdminState>| async move {
                let (status, body) = match s.readiness.not_ready_reason() {
                    None => (
                        StatusCode::OK,
                        serde_json::json!({ "status": "Server available" }),
                    ),
                    Some(why) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        serde_json::json!({ "status": "Server not available", "reason": why }),
                    ),
                };
                (
                    status,
                    [(http::header::CONTENT_TYPE, "application/json")],
                    body.to_string(),
                )
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<AdminState>| async move {
                let mut text = s.prometheus.render();
                crate::process_metrics::render(&mut text);
                text
            }),
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

    #[test]
    fn a_spool_with_room_keeps_the_gateway_ready_while_kafka_is_not() {
        let r = Readiness::default();
        r.set_broker(true);
        r.set_kafka_failing(true);
        assert_eq!(
            r.not_ready_reason(),
            Some("Kafka does not acknowledge produced records")
        );
        r.set_spool(Some(true));
        assert_eq!(r.not_ready_reason(), None);
        r.set_broker(false);
        assert_eq!(r.not_ready_reason(), None);
        r.set_spool(Some(false));
        assert_eq!(
            r.not_ready_reason(),
            Some("the Kafka broker does not answer and the spool is full")
        );
        r.set_broker(true);
        r.set_kafka_failing(false);
        assert_eq!(
            r.not_ready_reason(),
            None,
            "Kafka acknowledges: a full spool drains"
        );
    }
}
