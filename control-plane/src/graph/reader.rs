//! Reads the span metrics topic into the windows. Every replica reads every partition (a
//! consumer group of its own, nothing committed), starting 15 minutes back by timestamp so a
//! restarted replica serves full windows at once; when the broker cannot look offsets up by
//! time, from the beginning, leaving out the points older than the windows.

use super::records::fold_record;
use super::windows::{RETENTION_SECS, Windows};
use anyhow::Context;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use weir_config::control_plane::SpanMetricsSource;

/// How long a metadata or offset lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait before looking for the topic again.
const RETRY: Duration = Duration::from_secs(5);

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// A consumer of `source` in a group of its own.
fn consumer(source: &SpanMetricsSource) -> anyhow::Result<StreamConsumer> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", source.brokers.join(","))
        .set("client.id", &source.client_id)
        .set(
            "group.id",
            format!(
                "weir-control-plane-span-metrics-{}-{}",
                std::process::id(),
                now().as_millis()
            ),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    for (k, v) in &source.properties {
        c.set(k, v);
    }
    c.create().context("creating the span metrics consumer")
}

/// Assigns every partition of the topic at the offsets of `lookback` ago (or the beginning).
async fn assign(consumer: &Arc<StreamConsumer>, topic: &str) -> anyhow::Result<usize> {
    let c = consumer.clone();
    let t = topic.to_string();
    tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
        let md = c.fetch_metadata(Some(&t), LOOKUP_TIMEOUT)?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .filter(|m| m.name() == t)
            .flat_map(|m| m.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            anyhow::bail!("the topic `{t}` has no partitions (does it exist?)");
        }
        let since = now().saturating_sub(Duration::from_secs(RETENTION_SECS));
        let mut by_time = TopicPartitionList::new();
        for p in &partitions {
            by_time.add_partition_offset(&t, *p, Offset::Offset(since.as_millis() as i64))?;
        }
        let tpl = match c.offsets_for_times(by_time, LOOKUP_TIMEOUT) {
            // A partition with nothing that recent answers End: nothing to read back.
            Ok(found) => found,
            Err(e) => {
                tracing::info!(error = %e, "the broker did not look offsets up by time: reading the span metrics from the beginning");
                let mut all = TopicPartitionList::new();
                for p in &partitions {
                    all.add_partition_offset(&t, *p, Offset::Beginning)?;
                }
                all
            }
        };
        c.assign(&tpl)?;
        Ok(partitions.len())
    })
    .await?
}

/// Reads `source` into `windows` until `stop`; waits for the topic while it does not exist.
pub async fn run(source: SpanMetricsSource, windows: Arc<Windows>, stop: CancellationToken) {
    let consumer = match consumer(&source) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::error!(error = %e, "span metrics are not read");
            return;
        }
    };
    loop {
        match assign(&consumer, &source.topic).await {
            Ok(partitions) => {
                tracing::info!(
                    topic = source.topic,
                    partitions,
                    "reading span metrics from 15 minutes back"
                );
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, topic = source.topic, "span metrics topic not readable yet; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
    let mut expire = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = expire.tick() => windows.expire(now().as_secs()),
            received = consumer.recv() => match received {
                Ok(m) => {
                    metrics::counter!("weir_cp_span_metrics_records_total").increment(1);
                    match fold_record(&windows, m.payload().unwrap_or_default(), now().as_secs()) {
                        Ok(folded) => {
                            metrics::counter!("weir_cp_span_metrics_points_total", "outcome" => "folded")
                                .increment(folded.points);
                            metrics::counter!("weir_cp_span_metrics_points_total", "outcome" => "skipped")
                                .increment(folded.skipped);
                        }
                        Err(e) => {
                            metrics::counter!("weir_cp_span_metrics_undecodable_records_total").increment(1);
                            tracing::debug!(error = %e, partition = m.partition(), offset = m.offset(), "a span metrics record is not OTLP MetricsData");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading span metrics");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            },
        }
    }
}
