//! `weir-gateway`: OTLP in (gRPC 4317, HTTP 4318), Kafka out, acknowledged only after Kafka
//! acknowledged (or the spool fsynced the records). `run` wires the receivers, the pipeline,
//! the exporter, the spool and its replayer and the admin listener together and owns the
//! shutdown sequence.

pub mod admin;
pub mod attribute_limits;
pub mod blocking;
pub mod control_plane;
pub mod kafka_health;
pub mod malloc_arenas;
pub mod pipeline;
pub mod policy;
pub mod receivers;
pub mod signal;
pub mod spanmetrics;
pub mod spool;
pub mod tail;
pub mod telemetry;

/// The listener front door and its TLS live in weir-runtime, shared with the tail router and
/// the control plane; re-exported so the receivers and admin name them as before.
pub use weir_runtime::{listener, tls};

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
/// How long the shutdown drain waits for Kafka's metadata before it leaves the spool as it is.
const DRAIN_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long replay may take to stop (and write its checkpoint) after the shutdown deadline.
const REPLAY_STOP_GRACE: Duration = Duration::from_secs(2);
/// How often `/readyz` takes in the produce outcomes and the spool's room (cheap reads).
const DURABILITY_INTERVAL: Duration = Duration::from_millis(250);

/// Runs the gateway until `shutdown` is cancelled, then drains: stops accepting, lets
/// in-flight requests finish, drains the spool for at most `spool.drain_timeout` (to a reachable
/// Kafka), and flushes the producer.
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
    // With a control plane, the last policy it pushed comes first (see control_plane.rs).
    let (policies, control_plane_state) = match &config.control_plane {
        Some(cp) => {
            let (store, state) =
                control_plane::initial_policy_store(cp, config.policy_file.clone())?;
            (Arc::new(store), Some((cp, state)))
        }
        None => (
            Arc::new(policy::PolicyStore::new(config.policy_file.clone())?),
            None,
        ),
    };
    let control_plane = control_plane_state
        .map(|(cp, state)| {
            control_plane::ControlPlaneClient::new(cp, state, policies.clone(), exporter.clone())
        })
        .transpose()
        .context("control_plane")?;
    // The spool's recovery reads every segment: off the async workers.
    let spool = match config.spool.enabled {
        true => {
            let options = spool::SpoolOptions::from(&config.spool);
            let dir = options.directory.clone();
            let opened = tokio::task::spawn_blocking(move || spool::Spool::open(options))
                .await
                .context("opening the spool")?
                .with_context(|| {
                    format!("opening the spool in {} (spool.directory)", dir.display())
                })?;
            Some(opened)
        }
        false => None,
    };
    // Tail sampling's decision windows: marked by the pipeline, published by the publisher.
    let decision_windows = Arc::new(tail::DecisionWindows::default());
    let mut pipeline = pipeline::Pipeline::new(
        config.clone(),
        exporter.clone(),
        policies.clone(),
        decision_windows.clone(),
    );
    if let Some(s) = &spool {
        pipeline = pipeline.with_spool(s.clone(), config.spool.ack_deadline);
    }
    let kafka_health = pipeline.kafka_health();
    let span_metrics = pipeline.span_metrics();
    let pipeline = Arc::new(pipeline);
    let readiness = Arc::new(admin::Readiness::default());
    let receiver = receivers::Receiver::new(&config, pipeline.clone())
        .context("reading the receivers' credentials")?;
    // TLS files are loaded now, so a bad certificate fails the start, not the first client.
    let tls_of = |name: &'static str, section: Option<&weir_config::ServerTls>, alpn| {
        section
            .map(|t| tls::ReloadingTls::new(name, t, alpn))
            .transpose()
            .with_context(|| format!("loading the TLS files of the {name} listener"))
    };
    let grpc_tls = tls_of("grpc", config.receivers.grpc.tls.as_ref(), tls::ALPN_H2)?;
    let http_tls = tls_of(
        "http",
        config.receivers.http.tls.as_ref(),
        tls::ALPN_H2_HTTP1,
    )?;
    let admin_tls = tls_of("admin", config.admin.tls.as_ref(), tls::ALPN_H2_HTTP1)?;
    let options =
        |name, listener: &weir_config::gateway::Listener, tls, protocols| listener::ServeOptions {
            name,
            limits: listener::ConnLimits::of(listener),
            tls,
            protocols,
            drain_timeout: None,
        };

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
        servers.spawn(receivers::grpc::serve(
            l,
            options(
                "grpc",
                &config.receivers.grpc,
                grpc_tls.clone(),
                listener::Protocols::Http2,
            ),
            receiver.clone(),
            stop.clone(),
        ));
    }
    if let Some(l) = http_listener {
        tracing::info!(endpoint = %l.local_addr()?, "OTLP/HTTP receiver listening");
        servers.spawn(receivers::http::serve(
            l,
            options(
                "http",
                &config.receivers.http,
                http_tls.clone(),
                listener::Protocols::Http1And2,
            ),
            receiver.clone(),
            stop.clone(),
        ));
    }
    tracing::info!(endpoint = %admin_listener.local_addr()?, "admin listening (/healthz, /readyz, /metrics)");
    let admin_stop = CancellationToken::new();
    for t in [&grpc_tls, &http_tls, &admin_tls].into_iter().flatten() {
        tokio::spawn(t.clone().watch(admin_stop.clone()));
    }
    let admin_task = tokio::spawn(admin::serve_with(
        admin_listener,
        listener::ServeOptions {
            name: "admin",
            limits: listener::ConnLimits::default(),
            tls: admin_tls,
            protocols: listener::Protocols::Http1And2,
            drain_timeout: None,
        },
        readiness.clone(),
        prometheus,
        admin_stop.clone(),
    ));
    let probe_task = tokio::spawn(probe_broker(
        exporter.clone(),
        readiness.clone(),
        kafka_health.clone(),
        admin_stop.clone(),
    ));
    let durability_task = tokio::spawn(watch_durability(
        kafka_health.clone(),
        spool.clone(),
        readiness.clone(),
        admin_stop.clone(),
    ));
    // Replay drains the spool to Kafka until the receivers have drained.
    let replay_stop = CancellationToken::new();
    let replay_task = spool.clone().map(|s| {
        let sink = spool::KafkaReplaySink::new(exporter.clone(), kafka_health.clone());
        let rate = config.spool.replay_bytes_per_second.0;
        let stop = replay_stop.clone();
        tokio::spawn(async move {
            if let Err(e) = s.replay(&sink, rate, stop).await {
                tracing::error!(error = %e, "spool replay stopped; spooled records wait for a restart");
            }
        })
    });
    // Tail sampling decisions: published until the receivers have drained, then sealed.
    let tail_signing_key = config
        .tail
        .signing_key()
        .context("reading tail.signing_key")?;
    let tail_stop = CancellationToken::new();
    let gateway_id = config
        .tail
        .gateway_id
        .clone()
        .unwrap_or_else(tail::publish::Publisher::default_gateway_id);
    // Span metrics: flushed every interval until the receivers have drained, then once more.
    let span_metrics_task = tokio::spawn(
        spanmetrics::Flusher::new(
            exporter.clone(),
            policies.clone(),
            span_metrics,
            gateway_id.clone(),
            config.kafka.max_message_size.as_usize(),
        )
        .run(tail_stop.clone()),
    );
    let tail_task = tokio::spawn(
        tail::publish::Publisher::new(
            exporter.clone(),
            policies.clone(),
            decision_windows,
            &config.tail.decisions_topic,
            gateway_id,
            config.kafka.max_message_size.as_usize(),
            tail_signing_key,
        )
        .run(tail_stop.clone()),
    );
    let policy_task = tokio::spawn(policies.watch(admin_stop.clone()));
    // The gateway serves whether or not the control plane answers; this task only reconnects.
    let control_plane_task = control_plane.map(|c| tokio::spawn(c.run(admin_stop.clone())));

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
    tail_stop.cancel();
    if tokio::time::timeout_at(deadline.into(), tail_task)
        .await
        .is_err()
    {
        tracing::warn!("shutdown_timeout passed before the last decision window was published");
    }
    if tokio::time::timeout_at(deadline.into(), span_metrics_task)
        .await
        .is_err()
    {
        tracing::warn!("shutdown_timeout passed before the last span metrics were flushed");
    }
    if let Some(s) = &spool {
        drain_spool(s, &exporter, config.spool.drain_timeout).await;
    }
    // What replay has not sent stays in the spool for the next start. Replay writes its
    // checkpoint as it stops: it gets a moment even when the drain used the deadline up.
    replay_stop.cancel();
    let replay_deadline = deadline.max(Instant::now() + REPLAY_STOP_GRACE);
    if let Some(t) = replay_task
        && tokio::time::timeout_at(replay_deadline.into(), t)
            .await
            .is_err()
    {
        tracing::warn!("shutdown_timeout passed before spool replay stopped");
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
    let _ = durability_task.await;
    let _ = policy_task.await;
    if let Some(t) = control_plane_task {
        let _ = t.await;
    }
    // The spool goes last: dropping its last handle waits for the writer's final fsync, a
    // blocking wait kept off the async workers.
    drop(receiver);
    drop(pipeline);
    if let Some(s) = spool {
        let _ = tokio::task::spawn_blocking(move || drop(s)).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Replays what the spool holds, without the live-traffic rate bound, for at most
/// `drain_timeout`, once the receivers have stopped; skipped when the spool is empty or Kafka
/// does not answer a metadata request. What is left stays on disk for the next start.
async fn drain_spool(spool: &spool::Spool, exporter: &Arc<KafkaExporter>, drain_timeout: Duration) {
    let waiting = spool.records_waiting();
    if waiting == 0 || drain_timeout.is_zero() {
        return;
    }
    let e = exporter.clone();
    let reachable = tokio::task::spawn_blocking(move || e.probe(DRAIN_PROBE_TIMEOUT))
        .await
        .unwrap_or(false);
    if !reachable {
        tracing::warn!(
            records = waiting,
            "Kafka does not answer: the spooled records stay on disk for the next start"
        );
        return;
    }
    tracing::info!(records = waiting, timeout = ?drain_timeout, "draining the spool to Kafka before exiting");
    let started = Instant::now();
    match spool.drain(drain_timeout).await {
        0 => tracing::info!(took = ?started.elapsed(), "the spool is drained"),
        left => tracing::warn!(
            records = left,
            "spool.drain_timeout passed: the records left stay on disk for the next start"
        ),
    }
}

/// Takes the produce outcomes and the spool's room into `/readyz` every
/// `DURABILITY_INTERVAL`, until `stop`.
async fn watch_durability(
    health: Arc<kafka_health::KafkaHealth>,
    spool: Option<spool::Spool>,
    readiness: Arc<admin::Readiness>,
    stop: CancellationToken,
) {
    loop {
        readiness.set_kafka_failing(!health.acknowledging());
        readiness.set_spool(spool.as_ref().map(spool::Spool::has_room));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(DURABILITY_INTERVAL) => {}
        }
    }
}

/// Probes the broker every `PROBE_INTERVAL` and records the result for `/readyz`, and for
/// the pipeline: while the broker does not answer, requests are spooled without waiting.
async fn probe_broker(
    exporter: Arc<KafkaExporter>,
    readiness: Arc<admin::Readiness>,
    health: Arc<kafka_health::KafkaHealth>,
    stop: CancellationToken,
) {
    loop {
        let e = exporter.clone();
        let up = tokio::task::spawn_blocking(move || e.probe(PROBE_INTERVAL))
            .await
            .unwrap_or(false);
        readiness.set_broker(up);
        if !up {
            health.broker_unreachable();
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
        }
    }
}
