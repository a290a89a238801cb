//! `weir-tail-router`: the cold path of tail sampling. It reads the gateways' decision
//! records (`decisions.rs`) and the hot topic `delay` behind real time (`hot.rs`), and copies
//! the records of marked and baseline traces to the cold topic. Instances of one consumer
//! group share the hot topic's partitions; each reads every decision record. The records'
//! codec and the window filter are the gateways' own (`weir_proto::decision`).
//! See `docs/tail-sampling.md`.

pub mod cold;
pub mod decisions;
pub mod hot;
pub mod per_trace;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weir_config::tail_router::{RouterKafka, TailRouterConfig};
use weir_exporters::kafka::KafkaExporter;
use weir_proto::decision::unix_millis;
use weir_runtime::admin;

/// The consumers' context: librdkafka logs into `tracing`, and partitions revoked by a
/// rebalance noted for the hot loop (which forgets the records it held of them).
#[derive(Default)]
pub struct RouterContext {
    revoked: Mutex<Vec<i32>>,
}

impl RouterContext {
    /// Partitions revoked since the last call.
    pub fn take_revoked(&self) -> Vec<i32> {
        std::mem::take(&mut *self.revoked.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl ClientContext for RouterContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        weir_exporters::kafka::log_to_tracing(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        weir_exporters::kafka::error_to_tracing(error, reason);
    }
}

impl ConsumerContext for RouterContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(?parts, "hot partitions revoked");
                self.revoked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(parts);
            }
            Rebalance::Assign(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(?parts, "hot partitions assigned");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// The librdkafka settings both consumers share: brokers, client id, security, and the
/// raw `consumer_properties` last.
pub fn consumer_config(k: &RouterKafka, group_id: &str) -> anyhow::Result<ClientConfig> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", k.brokers.join(","))
        .set("client.id", &k.client_id)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "fetch.message.max.bytes",
            (k.max_message_size.0 + 64 * 1024).to_string(),
        );
    weir_exporters::kafka::set_security(&mut c, &k.security)?;
    for (key, v) in &k.consumer_properties {
        c.set(key, &v.0);
    }
    Ok(c)
}

/// Runs the tail router until `shutdown`: decisions first (ready once caught up), then the
/// hot loop; on shutdown the batch in progress finishes within `shutdown_timeout`.
pub async fn run(
    config: TailRouterConfig,
    prometheus: PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let k = &config.kafka;
    let exporter = Arc::new(
        KafkaExporter::new(&k.producer(), config.produce_timeout)
            .context("creating the cold producer")?,
    );
    // The decisions consumer is not part of the group: every router reads every record.
    let decisions_group = format!(
        "{}-decisions-{}-{}",
        k.group_id,
        std::process::id(),
        unix_millis()
    );
    // Its own client id, so that brokers (logs, quotas, ACL audits) tell the two readers apart.
    let mut decisions_config = consumer_config(k, &decisions_group)?;
    if !k.consumer_properties.contains_key("client.id") {
        decisions_config.set("client.id", format!("{}-decisions", k.client_id));
    }
    let decisions_consumer: StreamConsumer<RouterContext> = decisions_config
        .create_with_context(RouterContext::default())
        .context("creating the decisions consumer")?;
    let hot_consumer: Arc<StreamConsumer<RouterContext>> = Arc::new(
        consumer_config(k, &k.group_id)?
            .create_with_context(RouterContext::default())
            .context("creating the hot consumer")?,
    );

    let readiness = Arc::new(admin::Readiness::default());
    readiness.set_preparing(Some(
        "reading the decision records up to their end before routing (catching up)",
    ));
    let admin_listener = TcpListener::bind(&config.admin.endpoint)
        .await
        .with_context(|| format!("binding the admin listener on {}", config.admin.endpoint))?;
    tracing::info!(endpoint = %admin_listener.local_addr()?, "admin listening (/healthz, /readyz, /metrics)");
    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        readiness.clone(),
        prometheus,
        admin_stop.clone(),
    ));

    let store = Arc::new(decisions::DecisionStore::new(
        decisions::StoreLimits::from_config(&config.decisions),
    ));
    let freshness = Arc::new(decisions::Freshness::default());
    let stop = CancellationToken::new();
    let mut decisions_task = tokio::spawn(decisions::consume(
        decisions_consumer,
        decisions::DecisionsReader {
            topic: k.decisions_topic.clone(),
            store: store.clone(),
            retention: config.window_retention,
            signing_key: config
                .decisions
                .signing_key()
                .context("reading decisions.signing_key")?,
            freshness: freshness.clone(),
        },
        stop.clone(),
    ));

    // Hot records are decided only once the decisions up to now are known.
    loop {
        if freshness.current_to() > 0 {
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                stop.cancel();
                admin_stop.cancel();
                let _ = admin_task.await;
                return Ok(());
            }
            res = &mut decisions_task => {
                admin_stop.cancel();
                return match res {
                    Ok(Err(e)) => Err(e.context("reading the decision records")),
                    Ok(Ok(())) => Ok(()),
                    Err(e) => Err(anyhow::anyhow!("the decisions reader panicked: {e}")),
                };
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    hot_consumer
        .subscribe(&[&k.hot_topic])
        .with_context(|| format!("subscribing to {}", k.hot_topic))?;
    readiness.set_preparing(None);
    readiness.set_broker(true);
    tracing::info!(hot = %k.hot_topic, cold = %k.cold_topic, delay = ?config.delay, "routing marked traces");

    let lag_task = tokio::spawn(hot::report_lag(hot_consumer.clone(), stop.clone()));
    let hot_loop = hot::HotLoop {
        consumer: hot_consumer.clone(),
        cold: cold::ColdWriter {
            exporter: exporter.clone(),
            cold_topic: k.cold_topic.as_str().into(),
            dead_letter_topic: config.cold.dead_letter_topic.as_deref().map(Into::into),
        },
        store,
        hot_topic: k.hot_topic.clone(),
        delay_millis: config.delay.as_millis() as u64,
        max_timestamp_lead_millis: config.max_timestamp_lead.as_millis() as u64,
        batch_size: config.batch_size,
        freshness,
        readiness: readiness.clone(),
        stale_after_millis: hot::stale_after(config.delay).as_millis() as u64,
    };
    let hot_stop = CancellationToken::new();
    let mut hot_task = tokio::spawn(hot_loop.run(hot_stop.clone()));

    let result = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        res = &mut hot_task => match res {
            Ok(r) => r.context("the hot loop stopped"),
            Err(e) => Err(anyhow::anyhow!("the hot loop panicked: {e}")),
        },
        res = &mut decisions_task => match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.context("reading the decision records")),
            Err(e) => Err(anyhow::anyhow!("the decisions reader panicked: {e}")),
        },
    };
    tracing::info!("shutting down");
    readiness.set_draining();
    hot_stop.cancel();
    if !hot_task.is_finished()
        && tokio::time::timeout(config.shutdown_timeout, &mut hot_task)
            .await
            .is_err()
    {
        tracing::warn!("shutdown_timeout passed with a batch in progress; it will be read again");
    }
    stop.cancel();
    let _ = lag_task.await;
    let e = exporter.clone();
    let _ = tokio::task::spawn_blocking(move || e.flush(Duration::from_secs(5))).await;
    admin_stop.cancel();
    let _ = admin_task.await;
    tracing::info!("stopped");
    result
}
