//! The producer side: librdkafka configuration, producing a request's records, and waiting
//! until Kafka acknowledged every one of them (or the export timeout passed).
//!
//! One wait per `produce` call, not per record: every record of a call carries the same
//! `Deliveries` as its librdkafka opaque, the delivery callback (on the producer's polling
//! thread) counts it down, and only the last report wakes the waiting task. A request's ten
//! records cost ten atomic decrements and one wake-up, where a future per record cost ten
//! allocations, ten channels and up to ten wake-ups.

use super::client_log::{error_to_tracing, log_to_tracing};
use super::errors::ExportError;
use super::records::Record;
use arc_swap::ArcSwap;
use futures::task::AtomicWaker;
use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::util::Timeout;
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};
use weir_config::ConfigError;
use weir_config::gateway::{KafkaConfig, KafkaSecurity};

/// The librdkafka producer properties that a `KafkaConfig` stands for.
///
/// `message.timeout.ms` follows the export timeout, so librdkafka stops retrying a record about
/// when the client is told to retry it; raw `properties` are applied last and win.
pub fn producer_config(
    cfg: &KafkaConfig,
    export_timeout: Duration,
) -> Result<ClientConfig, ConfigError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", cfg.brokers.join(","))
        .set("client.id", &cfg.client_id)
        .set("acks", cfg.acks.as_librdkafka())
        .set(
            "enable.idempotence",
            if cfg.acks == weir_config::gateway::Acks::All {
                "true"
            } else {
                "false"
            },
        )
        .set("compression.codec", cfg.compression.as_librdkafka())
        .set("partitioner", cfg.partitioner.as_librdkafka())
        .set("linger.ms", cfg.linger.as_millis().to_string())
        .set(
            "max.in.flight.requests.per.connection",
            cfg.max_in_flight.to_string(),
        )
        .set(
            "message.timeout.ms",
            export_timeout.as_millis().max(1).to_string(),
        )
        .set(
            "message.max.bytes",
            (cfg.max_message_size.0 + 64 * 1024)
                .max(1_000_000)
                .to_string(),
        );
    set_security(&mut c, &cfg.security)?;
    for (k, v) in &cfg.properties {
        c.set(k, &v.0);
    }
    Ok(c)
}

/// Sets a client's `security.protocol`, SASL and TLS settings from `security`, for every
/// Kafka client Weir makes (the exporter's producer, the tail router's consumers).
pub fn set_security(c: &mut ClientConfig, security: &KafkaSecurity) -> Result<(), ConfigError> {
    c.set("security.protocol", security.protocol.as_librdkafka());
    if let Some(sasl) = &security.sasl {
        c.set("sasl.mechanism", sasl.mechanism.as_librdkafka())
            .set("sasl.username", &sasl.username)
            .set("sasl.password", sasl.resolve_password()?);
    }
    if let Some(tls) = &security.tls {
        for (key, path) in [
            ("ssl.ca.location", &tls.ca_file),
            ("ssl.certificate.location", &tls.cert_file),
            ("ssl.key.location", &tls.key_file),
        ] {
            if let Some(p) = path {
                c.set(key, p.display().to_string());
            }
        }
    }
    Ok(())
}

type Producer_ = ThreadedProducer<DeliveryContext>;

/// The delivery reports still to come for the records of one `produce` call, shared by those
/// records (as their librdkafka opaque) and the task that waits for them.
struct Deliveries {
    /// Records handed to librdkafka whose delivery report has not come yet.
    remaining: AtomicUsize,
    /// The first failure reported (a fencing wins over any other: it needs a new producer).
    failure: Mutex<Option<ExportError>>,
    /// The waiting task, woken by the last report.
    waker: AtomicWaker,
}

impl Deliveries {
    fn new(records: usize) -> Arc<Self> {
        Arc::new(Self {
            remaining: AtomicUsize::new(records),
            failure: Mutex::new(None),
            waker: AtomicWaker::new(),
        })
    }

    /// Counts one record's report; `failure` is its error, if it failed.
    fn report(&self, failure: Option<ExportError>) {
        if let Some(e) = failure {
            let mut first = self.failure();
            if first.as_ref().is_none_or(|f| !f.is_fenced()) {
                *first = Some(e);
            }
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.waker.wake();
        }
    }

    fn failure(&self) -> std::sync::MutexGuard<'_, Option<ExportError>> {
        self.failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Resolves once every record has been reported: the first failure, if any.
    async fn settled(&self) -> Result<(), ExportError> {
        poll_fn(|cx| {
            if self.remaining.load(Ordering::Acquire) != 0 {
                self.waker.register(cx.waker());
                // A report between the check and the registration would wake no one.
                if self.remaining.load(Ordering::Acquire) != 0 {
                    return Poll::Pending;
                }
            }
            Poll::Ready(())
        })
        .await;
        match self.failure().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The producer's client context: librdkafka's logs into `tracing`, and each delivery report
/// counted in the `Deliveries` of the record's `produce` call.
struct DeliveryContext;

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_to_tracing(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        error_to_tracing(error, reason);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Arc<Deliveries>;

    fn delivery(&self, result: &DeliveryResult<'_>, deliveries: Arc<Deliveries>) {
        deliveries.report(match result {
            Ok(_) => None,
            Err((e, message)) => Some(delivery_error(message.topic(), e)),
        });
    }
}

/// Records handed to the producers whose acknowledgements are still to be awaited
/// (`KafkaExporter::acknowledgement`). Dropping it stops the wait, not the delivery.
pub struct Produced {
    /// The producer of each lane when the records were handed over, for the lanes in `used`.
    producers: Vec<Arc<Producer_>>,
    /// Bit `i` set: lane `i` got some of the records.
    used: u64,
    deliveries: Arc<Deliveries>,
    records: usize,
    started: Instant,
    deadline: Instant,
}

/// How long the broker must answer probes while every send fails before the producer counts
/// as wedged and is replaced. A broker that lost the producer's state (replaced, or restarted
/// without it) answers each produce with UNKNOWN_PRODUCER_ID, and librdkafka's idempotent
/// producer only bumps its epoch and retries under the same producer id, forever, without a
/// fatal error: only a new producer (a new id from the broker) gets out of it.
const WEDGED_AFTER: Duration = Duration::from_secs(4);

/// The most producers one exporter runs (`kafka.producers`); `Produced::used` has a bit each.
const MAX_LANES: usize = weir_config::gateway::MAX_PRODUCERS;
const _: () = assert!(MAX_LANES <= 64);

/// What the probe needs to tell a wedged producer from a broker that is down.
#[derive(Default)]
struct Liveness {
    /// When Kafka last acknowledged a send.
    last_ack: Option<Instant>,
    /// When a send last failed or timed out.
    last_failure: Option<Instant>,
    /// Since when probes have found the broker answering (`None`: the last one did not), or
    /// since the last replacement.
    up_since: Option<Instant>,
}

impl Liveness {
    /// True when the broker has answered for `WEDGED_AFTER` and sends failed since it came
    /// back, with none acknowledged.
    fn wedged(&self, now: Instant) -> bool {
        let Some(up) = self.up_since else {
            return false;
        };
        now.duration_since(up) >= WEDGED_AFTER
            && self.last_failure.is_some_and(|f| f > up)
            && self.last_ack.is_none_or(|a| a < up)
    }
}

/// One librdkafka producer of the exporter and what it takes to replace it: its own broker
/// connections, so its own window of produce requests in flight.
struct Lane {
    producer: ArcSwap<Producer_>,
    /// Serializes replacements, so that one fatal error replaces the producer once.
    replacing: Mutex<()>,
    /// Recent send outcomes and probe results, to find a producer that is wedged.
    liveness: Mutex<Liveness>,
}

impl Lane {
    fn new(config: &ClientConfig) -> Result<Self, ExportError> {
        Ok(Self {
            producer: ArcSwap::from_pointee(create(config)?),
            replacing: Mutex::new(()),
            liveness: Mutex::new(Liveness::default()),
        })
    }

    /// Replaces `failed` with a new producer if it cannot produce any more (a fatal error, or
    /// `fenced` by the broker) and is still the current one.
    fn replace_if_broken(&self, config: &ClientConfig, failed: &Arc<Producer_>, fenced: bool) {
        let (code, reason) = match failed.client().fatal_error() {
            Some((code, reason)) => (code, reason),
            None if fenced => (
                RDKafkaErrorCode::ProducerFenced,
                "the broker fenced the producer".to_string(),
            ),
            None => return,
        };
        let _guard = self
            .replacing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !Arc::ptr_eq(&self.producer.load(), failed) {
            return;
        }
        tracing::error!(?code, %reason, "the Kafka producer cannot produce any more; replacing it");
        self.replace(config, "fatal");
    }

    /// Stores a new producer; the old one goes once the sends holding it are done. Call with
    /// `replacing` held.
    fn replace(&self, config: &ClientConfig, reason: &'static str) {
        metrics::counter!("weir_exporter_producer_restarts_total", "exporter" => "kafka", "reason" => reason)
            .increment(1);
        match create(config) {
            Ok(p) => self.producer.store(Arc::new(p)),
            Err(e) => tracing::error!(error = %e, "cannot create a new Kafka producer; will retry"),
        }
    }

    fn liveness(&self) -> std::sync::MutexGuard<'_, Liveness> {
        self.liveness
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a failed send for the producer's liveness, and replaces a broken producer.
    fn failed(&self, config: &ClientConfig, producer: &Arc<Producer_>, e: &ExportError) {
        if !e.is_permanent() {
            self.liveness().last_failure = Some(Instant::now());
        }
        self.replace_if_broken(config, producer, e.is_fenced());
    }

    /// See `KafkaExporter::probe`: this lane's producer.
    fn probe(&self, config: &ClientConfig, timeout: Duration) -> bool {
        let producer = self.producer.load_full();
        if producer.client().fatal_error().is_some() {
            self.replace_if_broken(config, &producer, false);
            return false;
        }
        let up = producer
            .client()
            .fetch_metadata(None, Timeout::After(timeout))
            .is_ok();
        let now = Instant::now();
        let wedged = {
            let mut l = self.liveness();
            if !up {
                l.up_since = None;
            } else if l.up_since.is_none() {
                l.up_since = Some(now);
            }
            let wedged = l.wedged(now);
            if wedged {
                // The next replacement waits as long again.
                l.up_since = Some(now);
            }
            wedged
        };
        if wedged {
            let _guard = self
                .replacing
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            tracing::error!(
                after = ?WEDGED_AFTER,
                "the Kafka broker answers but acknowledges no record (it may have lost this producer's state: a replaced broker); replacing the producer"
            );
            self.replace(config, "wedged");
        }
        up
    }
}

fn create(config: &ClientConfig) -> Result<Producer_, ExportError> {
    config
        .create_with_context(DeliveryContext)
        .map_err(|e| ExportError::Config(e.to_string()))
}

/// The lane of a record with key `key` among `lanes`: FNV-1a of the key, so that the records
/// of one trace id share a producer. Which partition a record goes to does not depend on it
/// (every lane's producer has the same partitioner).
fn lane_of(key: &[u8], lanes: usize) -> usize {
    if lanes == 1 {
        return 0;
    }
    let hash = key.iter().fold(0x811c_9dc5_u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    hash as usize % lanes
}

/// Produces records to Kafka and reports when the brokers have acknowledged them.
///
/// The records go through `kafka.producers` librdkafka producers (lanes), each with its own
/// connections: librdkafka puts one partition in each produce request and keeps at most
/// `max_in_flight` of them outstanding per connection, so one producer serves the partitions
/// a broker leads one after another.
///
/// A producer that hit a fatal error (for example an idempotent producer fenced by the broker
/// after its records timed out) can never produce again; it is replaced by a new one, and the
/// requests that failed on it are retried by their clients.
pub struct KafkaExporter {
    lanes: Vec<Lane>,
    config: ClientConfig,
    export_timeout: Duration,
}

impl KafkaExporter {
    /// Creates the producers. Connecting happens in the background; see `probe`.
    pub fn new(cfg: &KafkaConfig, export_timeout: Duration) -> Result<Self, ExportError> {
        let config =
            producer_config(cfg, export_timeout).map_err(|e| ExportError::Config(e.to_string()))?;
        let lanes = (0..cfg.producers.clamp(1, MAX_LANES))
            .map(|_| Lane::new(&config))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            lanes,
            config,
            export_timeout,
        })
    }

    /// Records a failed send on every lane `produced` used.
    fn failed(&self, producers: &[Arc<Producer_>], used: u64, e: &ExportError) {
        for (i, (lane, producer)) in self.lanes.iter().zip(producers).enumerate() {
            if used & (1 << i) != 0 {
                lane.failed(&self.config, producer, e);
            }
        }
    }

    /// Produces `records` (each to its topic) and waits until Kafka acknowledged all of them.
    ///
    /// Returns only after every record is acknowledged, or with an error as soon as one fails
    /// or the export timeout passes. Records already handed to librdkafka may still be
    /// delivered after an error: delivery is at least once, never "acknowledged but lost".
    pub async fn send(&self, records: &[Record]) -> Result<(), ExportError> {
        let produced = self.produce(records).await?;
        self.acknowledgement(produced).await
    }

    /// Hands `records` to the producer (waiting, within the export timeout, while its queue is
    /// full) without waiting for Kafka: `acknowledgement` does, and may be awaited apart from
    /// the request, e.g. after the request went on without it.
    pub async fn produce(&self, records: &[Record]) -> Result<Produced, ExportError> {
        let producers: Vec<Arc<Producer_>> =
            self.lanes.iter().map(|l| l.producer.load_full()).collect();
        let mut used = 0u64;
        let started = Instant::now();
        let deadline = started + self.export_timeout;
        let total = records.len();
        let deliveries = Deliveries::new(total);
        for rec in records {
            let topic = &*rec.topic;
            let lane = lane_of(&rec.key, producers.len());
            used |= 1 << lane;
            let producer = &producers[lane];
            let mut br = BaseRecord::with_opaque_to(topic, deliveries.clone())
                .key(&rec.key[..])
                .payload(&rec.value[..]);
            if let Some(headers) = &rec.headers {
                br = br.headers(owned_headers(headers));
            }
            loop {
                match producer.send(br) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // The local queue is full: wait for it to drain, within the deadline.
                        if Instant::now() >= deadline {
                            let e = self.timeout(total);
                            self.failed(&producers, used, &e);
                            return Err(e);
                        }
                        br = back;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err((e, _)) => {
                        let e = delivery_error(topic, &e);
                        self.failed(&producers, used, &e);
                        return Err(e);
                    }
                }
            }
        }
        Ok(Produced {
            producers,
            used,
            deliveries,
            records: total,
            started,
            deadline,
        })
    }

    /// Waits until Kafka acknowledged every record of `produced`: `Ok`, or the first failure
    /// (a fencing before any other), or a timeout once the export timeout (counted from
    /// `produce`) passed.
    pub async fn acknowledgement(&self, produced: Produced) -> Result<(), ExportError> {
        let Produced {
            producers,
            used,
            deliveries,
            records,
            started,
            deadline,
        } = produced;
        let settled = match tokio::time::timeout_at(deadline.into(), deliveries.settled()).await {
            Ok(settled) => settled,
            Err(_) => {
                let e = self.timeout(records);
                self.failed(&producers, used, &e);
                return Err(e);
            }
        };
        metrics::histogram!("weir_exporter_produce_latency_seconds", "exporter" => "kafka")
            .record(started.elapsed().as_secs_f64());
        match settled {
            Ok(()) => {
                let now = Instant::now();
                for (i, lane) in self.lanes.iter().enumerate() {
                    if used & (1 << i) != 0 {
                        lane.liveness().last_ack = Some(now);
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.failed(&producers, used, &e);
                Err(e)
            }
        }
    }

    fn timeout(&self, records: usize) -> ExportError {
        ExportError::Timeout {
            records,
            timeout_ms: self.export_timeout.as_millis(),
        }
    }

    /// True when a broker answered each producer's metadata request within `timeout` and every
    /// producer can produce. A producer with a fatal error is replaced first; so is one that
    /// stays wedged (see `WEDGED_AFTER`) while the broker answers. Blocking, up to `timeout` per
    /// producer.
    pub fn probe(&self, timeout: Duration) -> bool {
        // Every lane, even after one failed: each finds its own wedged or broken producer.
        let mut all_up = true;
        for lane in &self.lanes {
            all_up &= lane.probe(&self.config, timeout);
        }
        all_up
    }

    /// Which of `topics` the brokers' metadata does not know (sorted, each once), asked within
    /// `timeout`. Asks for every topic's metadata rather than the named ones, so a broker with
    /// `auto.create.topics.enable` does not create them by being asked. Blocking.
    pub fn missing_topics<'a>(
        &self,
        topics: impl IntoIterator<Item = &'a str>,
        timeout: Duration,
    ) -> Result<Vec<String>, KafkaError> {
        let producer = self.lanes[0].producer.load_full();
        let metadata = producer
            .client()
            .fetch_metadata(None, Timeout::After(timeout))?;
        let known: std::collections::HashSet<&str> = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| t.name())
            .collect();
        let mut missing: Vec<String> = topics
            .into_iter()
            .filter(|t| !known.contains(t))
            .map(str::to_string)
            .collect();
        missing.sort();
        missing.dedup();
        Ok(missing)
    }

    /// Waits for every queued record to be delivered, at most `timeout` in all. Blocking.
    pub fn flush(&self, timeout: Duration) -> Result<(), ExportError> {
        let deadline = Instant::now() + timeout;
        for lane in &self.lanes {
            let producer = lane.producer.load_full();
            let left = deadline.saturating_duration_since(Instant::now());
            producer
                .flush(Timeout::After(left))
                .map_err(|e| ExportError::Delivery {
                    topic: "*".to_string(),
                    reason: format!(
                        "flush at shutdown: {e} ({} records still queued)",
                        producer.in_flight_count()
                    ),
                    fenced: false,
                    code: None,
                })?;
        }
        Ok(())
    }
}

/// librdkafka's copy of a record's headers (it takes ownership of them on produce).
fn owned_headers(headers: &[(String, Vec<u8>)]) -> OwnedHeaders {
    headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value.as_slice()),
            })
        },
    )
}

/// An `ExportError` for a librdkafka error, noting whether the broker fenced the producer,
/// and telling apart the refusals that a retry cannot change.
fn delivery_error(topic: &str, e: &KafkaError) -> ExportError {
    let code = e.rdkafka_error_code();
    if matches!(
        code,
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::PolicyViolation
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
        )
    ) {
        return ExportError::Refused {
            topic: topic.to_string(),
            reason: e.to_string(),
            code,
        };
    }
    let fenced = matches!(
        code,
        Some(RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
    );
    ExportError::Delivery {
        topic: topic.to_string(),
        reason: e.to_string(),
        fenced,
        code,
    }
}

#[cfg(test)]
mod tests {
    use super::{Deliveries, ExportError, Liveness, MAX_LANES, WEDGED_AFTER, lane_of};
    use std::time::{Duration, Instant};

    fn delivery(fenced: bool) -> ExportError {
        ExportError::Delivery {
            topic: "t".to_string(),
            reason: "r".to_string(),
            fenced,
            code: None,
        }
    }

    #[tokio::test]
    async fn the_wait_ends_with_the_last_report_and_a_fencing_wins() {
        let deliveries = Deliveries::new(3);
        let waiter = {
            let d = deliveries.clone();
            tokio::spawn(async move { d.settled().await })
        };
        deliveries.report(Some(delivery(false)));
        deliveries.report(Some(delivery(true)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "one record is still unreported");
        deliveries.report(None);
        let settled = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the last report wakes the waiter")
            .unwrap();
        assert!(settled.unwrap_err().is_fenced(), "the fencing is reported");

        let fenced_first = Deliveries::new(2);
        fenced_first.report(Some(delivery(true)));
        fenced_first.report(Some(delivery(false)));
        assert!(fenced_first.settled().await.unwrap_err().is_fenced());

        let all_acked = Deliveries::new(2);
        all_acked.report(None);
        all_acked.report(None);
        assert!(all_acked.settled().await.is_ok());
    }

    #[test]
    fn wedged_only_when_the_broker_answers_and_nothing_is_acknowledged_since() {
        let t0 = Instant::now();
        let later = t0 + WEDGED_AFTER + Duration::from_millis(1);
        let failing = Liveness {
            last_ack: Some(t0 - Duration::from_secs(30)),
            last_failure: Some(t0 + Duration::from_millis(500)),
            up_since: Some(t0),
        };
        assert!(failing.wedged(later));
        assert!(
            !failing.wedged(t0 + WEDGED_AFTER / 2),
            "not up long enough yet"
        );
        let down = Liveness {
            up_since: None,
            ..failing
        };
        assert!(
            !down.wedged(later),
            "a broker that does not answer is down, not wedged"
        );
        let acked = Liveness {
            last_ack: Some(t0 + Duration::from_secs(1)),
            ..failing
        };
        assert!(
            !acked.wedged(later),
            "acknowledged since the broker came back"
        );
        let stale_failure = Liveness {
            last_failure: Some(t0 - Duration::from_secs(1)),
            ..failing
        };
        assert!(
            !stale_failure.wedged(later),
            "no send failed since the broker came back"
        );
    }

    #[test]
    fn a_key_always_takes_the_same_lane_and_keys_spread_over_all() {
        assert_eq!(lane_of(b"anything", 1), 0);
        let keys: Vec<String> = (0..4000).map(|i| format!("{:032x}", i * 7919)).collect();
        for lanes in [2, 3, 4, MAX_LANES] {
            let mut counts = vec![0usize; lanes];
            for key in &keys {
                let lane = lane_of(key.as_bytes(), lanes);
                assert_eq!(
                    lane,
                    lane_of(key.as_bytes(), lanes),
                    "the same key, the same lane"
                );
                counts[lane] += 1;
            }
            let even = keys.len() / lanes;
            assert!(
                counts.iter().all(|&c| c > even / 2 && c < even * 2),
                "{lanes} lanes: {counts:?}"
            );
        }
    }
}
