//! `weir-gateway`: OTLP in (gRPC 4317, HTTP 4318), Kafka out, acknowledged only after Kafka
//! acknowledged. `run` wires the receivers, the pipeline, the exporter and the admin listener
//! together and owns the shutdown sequence.

pub mod admin;
pub mod admission;
pub mod pipeline;
pub mod policy;
pub mod receivers;
pub mod signal;
pub mod telemetry;
pub mod validate;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weir_config::GatewayConfig;
use weir_exporters::kafka::KafkaExporter;

/// How often the broker is probed for `/readyz`.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Runs the gateway until `shutdown` is cancelled, then drains: stops accepting, lets
/// in-flight requests finish, and flushes the producer, within `shutdown_timeout`.
pub async fn run(
    config: GatewayConfig,
    prometheus: PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let exporter = Arc::new(
        KafkaExporter::new(&config.kafka, config.limits.export_timeout)
            .context("creating the Kafka producer")?,
    );
    let policies = Arc::new(policy::PolicyStore::new(config.policy_file.clone())?);
    let pipeline = Arc::new(pipeline::Pipeline::new(
        config.clone(),
        exporter.clone(),
        policies.clone(),
    ));
    let readiness = Arc::new(admin::Readiness::default());

    // Bind everything first, so a port in use fails the start rather than a later request.
    let bind = |endpoint: String, what: &'static str| async move {
        TcpListener::bind(&endpoint)
            .await
            .with_context(|| format!("binding the {what} listener on {endpoint}"))
    };
    let admin_listener = bind(config.admin.endpoint.clone(), "admin").await?;
    let grpc_listener = match config.receivers.grpc.enabled {
        true => Some(bind(config.receivers.grpc.endpoint.clone(), "OTLP/gRPC").await?),
        false => None,
    };
    let http_listener = match config.receivers.http.enabled {
        true => Some(bind(config.receivers.http.endpoint.clone(), "OTLP/HTTP").await?),
        false => None,
    };

    // Servers stop accepting on `stop`, which fires after the outer `shutdown`.
    let stop = CancellationToken::new();
    let mut servers = tokio::task::JoinSet::new();
    if let Some(l) = grpc_listener {
        tracing::info!(endpoint = %l.local_addr()?, "OTLP/gRPC receiver listening");
        servers.spawn(receivers::grpc::serve(l, pipeline.clone(), stop.clone()));
    }
    if let Some(l) = http_listener {
        tracing::info!(endpoint = %l.local_addr()?, "OTLP/HTTP receiver listening");
        servers.spawn(receivers::http::serve(l, pipeline.clone(), stop.clone()));
    }
    tracing::info!(endpoint = %admin_listener.local_addr()?, "admin listening (/healthz, /readyz, /metrics)");
    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        readiness.clone(),
        prometheus,
        admin_stop.clone(),
    ));
    let probe_task = tokio::spawn(probe_broker(
        exporter.clone(),
        readiness.clone(),
        admin_stop.clone(),
    ));
    let policy_task = tokio::spawn(policies.watch(admin_stop.clone()));

    tokio::select! {
        _ = shutdown.cancelled() => {}
        Some(res) = servers.join_next() => {
            // A receiver stopped on its own: that is an error worth stopping for.
            res.context("a receiver panicked")?.context("a receiver failed")?;
        }
    }

    tracing::info!("shutting down: not ready, no new connections, finishing in-flight requests");
    let deadline = Instant::now() + config.shutdown_timeout;
    readiness.set_draining();
    stop.cancel();
    let drained = tokio::time::timeout_at(deadline.into(), async {
        while let Some(res) = servers.join_next().await {
            if let Err(e) = res.map_err(anyhow::Error::from).and_then(|r| r) {
                tracing::warn!(error = %e, "a receiver failed while draining");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("shutdown_timeout passed with requests still in flight; stopping anyway");
        servers.abort_all();
    }
    let remaining = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    let flushed = tokio::task::spawn_blocking(move || exporter.flush(remaining)).await?;
    if let Err(e) = flushed {
        tracing::error!(error = %e, "records were still queued at shutdown");
    }
    admin_stop.cancel();
    let _ = admin_task.await;
    let _ = probe_task.await;
    let _ = policy_task.await;
    tracing::info!("stopped");
    Ok(())
}

/// Probes the broker every `PROBE_INTERVAL` and records the result for `/readyz`.
async fn probe_broker(
    exporter: Arc<KafkaExporter>,
    readiness: Arc<admin::Readiness>,
    stop: CancellationToken,
) {
    loop {
        let e = exporter.clone();
        let up = tokio::task::spawn_blocking(move || e.probe(PROBE_INTERVAL))
            .await
            .unwrap_or(false);
        readiness.set_broker(up);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
        }
    }
}
