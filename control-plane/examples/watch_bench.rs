//! Rollout latency over many watch streams: opens N streams as gateways (distinct instance ids,
//! one HTTP/2 connection each, as real gateways have), then, for each round, submits a new
//! policy version and starts a 100% rollout through the REST API, and measures from the moment
//! the rollout request is sent:
//! - to each stream's receipt of the Assignment (the stream answers ACK at once);
//! - to each ACK as the control plane recorded it (`last_report_at` in GET /api/v1/gateways);
//! - to the moment GET /api/v1/gateways first shows every stream's ACK.
//!
//! Times are upper bounds: they include the REST call that starts the rollout. Run against a
//! control plane with an empty database (scripts/bench_control_plane.sh starts one):
//!
//! ```text
//! cargo run --release -p weir-control-plane --example watch_bench -- \
//!     --api http://127.0.0.1:8080 --watch http://127.0.0.1:8081 \
//!     --admin-token T --gateway-token G --streams 200 --rounds 5
//! ```

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{Mutex, mpsc};
use weir_proto::controlplane::v1::gateway_message::Message;
use weir_proto::controlplane::v1::policy_service_client::PolicyServiceClient;
use weir_proto::controlplane::v1::{GatewayMessage, Hello, Report};

/// Command-line arguments.
#[derive(Parser, Debug)]
#[command(about = "Measures rollout latency over many control-plane watch streams")]
struct Args {
    /// The control plane's REST base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    /// The control plane's watch stream URL.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    watch: String,
    /// An admin token (submits policies, starts rollouts).
    #[arg(long, env = "WEIR_BENCH_ADMIN_TOKEN")]
    admin_token: String,
    /// The gateway token.
    #[arg(long, env = "WEIR_BENCH_GATEWAY_TOKEN")]
    gateway_token: String,
    /// Watch streams to open.
    #[arg(long, default_value_t = 200)]
    streams: usize,
    /// Rollouts to measure, one new policy version each.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// How long one round may take before the run fails.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    round_timeout: Duration,
}

/// What the streams saw: per version, when each stream received its Assignment.
type Receipts = Arc<Mutex<BTreeMap<u64, Vec<Instant>>>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let http = reqwest::Client::new();
    let run = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let receipts: Receipts = Arc::default();

    // Open every stream and wait until the control plane lists them all as connected.
    let started = Instant::now();
    let mut ready = Vec::with_capacity(args.streams);
    for i in 0..args.streams {
        let id = format!("bench-{run}-{i:04}");
        ready.push(tokio::spawn(gateway(
            args.watch.clone(),
            args.gateway_token.clone(),
            id,
            receipts.clone(),
        )));
    }
    for r in ready {
        r.await??;
    }
    let prefix = format!("bench-{run}-");
    let deadline = Instant::now() + args.round_timeout;
    loop {
        let connected = gateways(&http, &args)
            .await?
            .iter()
            .filter(|g| {
                g["instance_id"]
                    .as_str()
                    .is_some_and(|i| i.starts_with(&prefix))
            })
            .filter(|g| g["connected"].as_bool() == Some(true))
            .count();
        if connected == args.streams {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {connected} of {} streams are listed as connected",
                args.streams
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{} watch streams open and listed as connected in {:.2}s",
        args.streams,
        started.elapsed().as_secs_f64()
    );

    let mut receipt_ms = Vec::new();
    let mut recorded_ms = Vec::new();
    let mut last_seen_ms = Vec::new();
    let mut api_ms = Vec::new();
    for round in 0..args.rounds {
        let version = latest_version(&http, &args).await? + 1;
        let document = format!(
            "# watch_bench round {round}\nversion: {version}\nsampling:\n  default_probability: 1\n"
        );
        api(
            &http,
            &args,
            "POST",
            "/policies",
            Some(json!({ "document": document })),
        )
        .await
        .context("submitting the policy")?;

        let sent_wall = SystemTime::now().duration_since(UNIX_EPOCH)?;
        let sent = Instant::now();
        api(
            &http,
            &args,
            "POST",
            "/rollouts",
            Some(json!({ "version": version })),
        )
        .await
        .context("starting the rollout")?;
        api_ms.push(ms(sent.elapsed()));

        // The last ACK as GET /gateways shows it, polled as often as it answers.
        let deadline = sent + args.round_timeout;
        let records = loop {
            let all = gateways(&http, &args).await?;
            let ours: Vec<&Value> = all
                .iter()
                .filter(|g| {
                    g["instance_id"]
                        .as_str()
                        .is_some_and(|i| i.starts_with(&prefix))
                })
                .collect();
            let acked = ours
                .iter()
                .filter(|g| {
                    g["running_version"].as_u64() == Some(version)
                        && g["last_report"].as_str() == Some("ack")
                })
                .count();
            if acked == args.streams {
                last_seen_ms.push(ms(sent.elapsed()));
                break ours.into_iter().cloned().collect::<Vec<_>>();
            }
            if Instant::now() > deadline {
                bail!(
                    "round {round}: only {acked} of {} ACKs of version {version} after {:?}",
                    args.streams,
                    args.round_timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        for g in &records {
            let at = g["last_report_at"]
                .as_str()
                .context("a gateway record without last_report_at")?;
            let at = humantime::parse_rfc3339(at)
                .with_context(|| format!("last_report_at `{at}`"))?
                .duration_since(UNIX_EPOCH)?;
            recorded_ms.push(ms(at.saturating_sub(sent_wall)));
        }
        let got = receipts.lock().await.remove(&version).unwrap_or_default();
        if got.len() != args.streams {
            bail!(
                "round {round}: {} of {} streams received version {version}",
                got.len(),
                args.streams
            );
        }
        receipt_ms.extend(got.iter().map(|t| ms(t.saturating_duration_since(sent))));
        println!(
            "round {round}: version {version}, last ACK seen after {:.1} ms",
            last_seen_ms[round]
        );
    }

    println!();
    println!(
        "streams {}, rounds {}, latency from sending POST /api/v1/rollouts (100%):",
        args.streams, args.rounds
    );
    report("POST /rollouts answered (201)", &mut api_ms);
    report("Assignment received by a stream", &mut receipt_ms);
    report("ACK recorded (last_report_at)", &mut recorded_ms);
    report("all ACKs seen in GET /gateways", &mut last_seen_ms);
    Ok(())
}

/// One simulated gateway: Hello, then ACK every Assignment at once, noting when it arrived.
/// Returns once the stream is accepted; the stream itself runs in a task.
async fn gateway(
    endpoint: String,
    token: String,
    instance_id: String,
    receipts: Receipts,
) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint)?
        .tcp_nodelay(true)
        .connect()
        .await
        .context("connecting to the watch stream")?;
    let mut client = PolicyServiceClient::new(channel);
    let (tx, mut rx) = mpsc::channel(8);
    tx.send(GatewayMessage {
        message: Some(Message::Hello(Hello {
            instance_id: instance_id.clone(),
            labels: BTreeMap::from([("bench".to_string(), "watch".to_string())]),
            current_version: 0,
            build: "watch_bench".to_string(),
        })),
    })
    .await?;
    let mut request = tonic::Request::new(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let mut inbound = client
        .watch(request)
        .await
        .with_context(|| format!("{instance_id}: the watch stream was refused"))?
        .into_inner();
    tokio::spawn(async move {
        while let Ok(Some(a)) = inbound.message().await {
            let at = Instant::now();
            receipts.lock().await.entry(a.version).or_default().push(at);
            let report = Report {
                version: a.version,
                applied: true,
                error: String::new(),
            };
            if tx
                .send(GatewayMessage {
                    message: Some(Message::Report(report)),
                })
                .await
                .is_err()
            {
                break;
            }
        }
        eprintln!("{instance_id}: stream ended");
    });
    Ok(())
}

/// A REST call with the admin token; the parsed JSON of a 2xx answer.
async fn api(
    http: &reqwest::Client,
    args: &Args,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let url = format!("{}/api/v1{path}", args.api.trim_end_matches('/'));
    let mut req = http
        .request(method.parse()?, &url)
        .bearer_auth(&args.admin_token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("{method} {url}: {status}: {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

async fn gateways(http: &reqwest::Client, args: &Args) -> anyhow::Result<Vec<Value>> {
    let v = api(http, args, "GET", "/gateways", None).await?;
    Ok(v["gateways"].as_array().cloned().unwrap_or_default())
}

async fn latest_version(http: &reqwest::Client, args: &Args) -> anyhow::Result<u64> {
    let v = api(http, args, "GET", "/policies", None).await?;
    Ok(v["policies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["version"].as_u64())
        .max()
        .unwrap_or(0))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Prints p50, p99 and max of `samples` (milliseconds).
fn report(what: &str, samples: &mut [f64]) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i]
    };
    if samples.is_empty() {
        println!("  {what}: no samples");
        return;
    }
    println!(
        "  {what:<34} n={:<5} p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
        samples.len(),
        at(0.50),
        at(0.99),
        samples[samples.len() - 1]
    );
}
