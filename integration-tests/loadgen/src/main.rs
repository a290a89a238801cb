//! `weir-loadgen`: an OTLP trace load generator (the role of the Collector's `telemetrygen`)
//! for benchmarks and crash-safety tests.
//!
//! It pre-encodes a pool of distinct export requests, patches fresh ids into each send, and
//! drives a gateway over OTLP/gRPC or OTLP/HTTP in a closed loop (`--concurrency`) or an open
//! loop (`--rate`), then reports acknowledged spans, failures by code and latency.
//!
//! ```text
//! weir-loadgen --transport grpc --concurrency 8 --duration 20 --json
//! weir-loadgen --transport http-proto --rate 50000 --duration 30 --ids-out acked.txt
//! weir-loadgen --transport grpc --compression zstd --concurrency 8 --json
//! weir-loadgen --transport kafka --endpoint 127.0.0.1:9092 --kafka-topic t --concurrency 8
//! ```
//!
//! `--transport kafka` is no OTLP client but the latency floor of a gateway that replies after
//! Kafka's acknowledgement: a bare producer (acks=all, idempotent, `--kafka-linger-ms`, 0 by
//! default, `--kafka-max-in-flight`, 1 by default) sending per request the records Weir would
//! produce for it (one per trace).

mod client;
mod generator;
mod http1;
mod kafka;
mod load;
#[cfg(test)]
mod load_tests;
mod report;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use rand::SeedableRng;
use rand::rngs::SmallRng;

use crate::client::{BodyCompression, ExportClient, KafkaOptions, Transport};
use crate::generator::{Encoding, RequestPool, Shape};
use crate::load::{IdsSink, Load};
use crate::report::{RunInfo, Stats};

/// Longest run when only `--requests` bounds it, so that no run is unbounded in time.
const DEFAULT_MAX_DURATION_SECS: f64 = 3600.0;
/// Run length when neither `--duration` nor `--requests` is given.
const DEFAULT_DURATION_SECS: f64 = 10.0;

/// An OTLP trace load generator.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// OTLP transport.
    #[arg(long, value_enum, default_value = "grpc")]
    transport: Transport,
    /// Server URL; default http://127.0.0.1:4317 (grpc) or http://127.0.0.1:4318 (http,
    /// path /v1/traces unless the URL has one).
    #[arg(long)]
    endpoint: Option<String>,
    /// Closed loop: this many senders, each waiting for its reply before the next send
    /// (the default mode, with 4 senders).
    #[arg(long, conflicts_with = "rate")]
    concurrency: Option<usize>,
    /// Open loop: offer this many spans per second on a fixed schedule.
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: most requests in flight; a send that finds none free counts as a failure.
    #[arg(long, default_value_t = 1024)]
    max_in_flight: usize,
    /// Start no request after this many seconds (default 10, or 3600 with --requests).
    #[arg(long)]
    duration: Option<f64>,
    /// Start no more than this many requests.
    #[arg(long)]
    requests: Option<u64>,
    /// Spans in each request.
    #[arg(long, default_value_t = 100)]
    spans_per_request: usize,
    /// Spans sharing one trace id.
    #[arg(long, default_value_t = 10)]
    spans_per_trace: usize,
    /// Distinct service.name resources per request.
    #[arg(long, default_value_t = 5)]
    services: usize,
    /// String attributes per span.
    #[arg(long, default_value_t = 5)]
    attributes: usize,
    /// Bytes in each attribute value.
    #[arg(long, default_value_t = 16)]
    attribute_size: usize,
    /// Fraction of spans with STATUS_CODE_ERROR (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Compress request bodies: none, gzip or zstd (gRPC and OTLP/HTTP alike).
    #[arg(long, value_enum, default_value = "none")]
    compression: BodyCompression,
    /// The same as `--compression gzip` (kept for older scripts).
    #[arg(long, conflicts_with = "compression")]
    gzip: bool,
    /// `--transport kafka`: the topic to produce to (it must exist); `--endpoint` then lists
    /// the brokers (default 127.0.0.1:9092).
    #[arg(long)]
    kafka_topic: Option<String>,
    /// `--transport kafka`: librdkafka `linger.ms` of the bare producer (0: send at once, so
    /// that the latency is the broker's own).
    #[arg(long, default_value_t = 0)]
    kafka_linger_ms: u64,
    /// `--transport kafka`: librdkafka `max.in.flight.requests.per.connection` of the bare
    /// producer (1, Weir's default `kafka.max_in_flight`; at most 5, the idempotent limit).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    kafka_max_in_flight: u8,
    /// Distinct pre-encoded requests to cycle through.
    #[arg(long, default_value_t = 64)]
    pool: usize,
    /// Write `traceid spanid` (hex) of every span of every fully acknowledged request here.
    #[arg(long)]
    ids_out: Option<PathBuf>,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for one reply before counting a TIMEOUT.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// gRPC: HTTP/2 connections the requests are spread over (default: min(4, senders)).
    #[arg(long)]
    connections: Option<usize>,
    /// Closed loop: milliseconds a sender pauses after a failed request.
    #[arg(long, default_value_t = 10)]
    failure_pause_ms: u64,
    /// Runtime worker threads (default: the number of CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Build the request pool, print its sizes (e.g. bytes per span, to size a peer's
    /// batches) and exit without connecting.
    #[arg(long)]
    dry_run: bool,
}

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{flag} must be a positive number of seconds, got {value}"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = args.threads {
        if threads == 0 {
            bail!("--threads must be at least 1");
        }
        runtime.worker_threads(threads);
    }
    runtime
        .build()
        .context("cannot start the tokio runtime")?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let shape = Shape {
        spans_per_request: args.spans_per_request,
        spans_per_trace: args.spans_per_trace,
        services: args.services,
        attributes: args.attributes,
        attribute_size: args.attribute_size,
        error_rate: args.error_rate,
    };
    shape.validate()?;
    let duration = match (args.duration, args.requests) {
        (Some(secs), _) => seconds(secs, "--duration")?,
        (None, Some(_)) => seconds(DEFAULT_MAX_DURATION_SECS, "--duration")?,
        (None, None) => seconds(DEFAULT_DURATION_SECS, "--duration")?,
    };
    let timeout = seconds(args.timeout, "--timeout")?;
    if args.requests == Some(0) {
        bail!("--requests must be at least 1");
    }
    let senders = args.concurrency.unwrap_or(4);
    if senders == 0 {
        bail!("--concurrency must be at least 1");
    }
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        bail!("--rate must be a positive number of spans per second, got {rate}");
    }
    if args.max_in_flight == 0 || args.max_in_flight > 1_000_000 {
        bail!("--max-in-flight must be within 1..=1000000");
    }
    let connections = args.connections.unwrap_or(if args.rate.is_some() {
        4
    } else {
        senders.min(4)
    });
    if connections == 0 {
        bail!("--connections must be at least 1");
    }

    let encoding = match args.transport {
        Transport::HttpJson => Encoding::Json,
        Transport::Grpc | Transport::HttpProto | Transport::Kafka => Encoding::Protobuf,
    };
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let pool = RequestPool::build(&shape, encoding, args.pool, &mut rng)?;
    let mean_request_bytes = pool.mean_request_bytes();
    if args.dry_run {
        let bytes_per_span = mean_request_bytes / args.spans_per_request as f64;
        if args.json {
            let doc = serde_json::json!({
                "transport": args.transport.name(),
                "pool": args.pool,
                "spans_per_request": args.spans_per_request,
                "mean_request_bytes": mean_request_bytes.round(),
                "bytes_per_span": bytes_per_span.round(),
                "mean_trace_record_bytes": pool.mean_trace_record_bytes().map(f64::round),
            });
            println!("{doc}");
        } else {
            println!(
                "{} requests of {} spans, {mean_request_bytes:.0} bytes each ({bytes_per_span:.0} bytes/span) as {}",
                args.pool,
                args.spans_per_request,
                args.transport.name()
            );
        }
        return Ok(());
    }
    let endpoint = args
        .endpoint
        .clone()
        .unwrap_or_else(|| args.transport.default_endpoint().to_string());
    let compression = if args.gzip {
        BodyCompression::Gzip
    } else {
        args.compression
    };
    let kafka = KafkaOptions {
        topic: args.kafka_topic.clone(),
        linger: Duration::from_millis(args.kafka_linger_ms),
        max_in_flight: args.kafka_max_in_flight,
        timeout,
    };
    let client =
        ExportClient::connect(args.transport, &endpoint, connections, compression, &kafka).await?;
    let ids_out = args.ids_out.as_deref().map(IdsSink::create).transpose()?;

    let load = Arc::new(Load {
        pool,
        client,
        timeout,
        duration,
        max_requests: args.requests.unwrap_or(u64::MAX),
        failure_pause: Duration::from_millis(args.failure_pause_ms),
        ids_out,
        stats: Mutex::new(Stats::default()),
        stop: Default::default(),
    });
    tokio::spawn(stop_on_signal(load.clone()));

    let cpu_before = report::own_cpu_time();
    let (elapsed, mode, concurrency) = match args.rate {
        Some(rate) => (
            load::open_loop(load.clone(), rate, args.max_in_flight).await,
            "open",
            args.max_in_flight,
        ),
        None => (
            load::closed_loop(load.clone(), senders).await,
            "closed",
            senders,
        ),
    };
    let loadgen_cpu = report::own_cpu_time()
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));

    if let Some(sink) = &load.ids_out {
        sink.finish()?;
    }
    let info = RunInfo {
        transport: args.transport.name().to_string(),
        compression: compression.name().to_string(),
        endpoint,
        mode,
        concurrency,
        rate: args.rate,
        spans_per_request: args.spans_per_request,
        mean_request_bytes,
        elapsed,
        loadgen_cpu,
    };
    let stats = load
        .stats
        .lock()
        .map_err(|_| anyhow::anyhow!("a sender panicked while counting"))?;
    if args.json {
        println!("{}", report::to_json(&stats, &info));
    } else {
        print!("{}", report::to_text(&stats, &info));
    }
    Ok(())
}

/// SIGINT or SIGTERM ends the run early but cleanly: nothing new is sent, in-flight requests
/// finish, and the report and the ids file are still written.
async fn stop_on_signal(load: Arc<Load>) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    load.stop.store(true, Ordering::Relaxed);
}
