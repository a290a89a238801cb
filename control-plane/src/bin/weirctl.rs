//! `weirctl`: the command-line client of the control plane's REST API. Readable tables by
//! default, `-o json` for scripts (the API's JSON as it came). An error from the API is
//! printed as the API worded it, with the HTTP status, and the exit status is 1.

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;

/// Manage Weir policies and their rollouts to gateways.
#[derive(Parser)]
#[command(name = "weirctl", version)]
struct Cli {
    /// The control plane's REST API.
    #[arg(
        long,
        global = true,
        env = "WEIR_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// A bearer token (admin to change things, viewer to read).
    #[arg(long, global = true, env = "WEIR_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A PEM CA certificate to trust for an https server with a private CA.
    #[arg(long, global = true, env = "WEIR_CA_FILE", value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Output: readable tables, or the API's JSON.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Policy versions: submit, list, show, diff, validate.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Rollouts: start, promote, pause, resume, roll back, list.
    #[command(subcommand)]
    Rollout(RolloutCmd),
    /// Every gateway seen: labels, versions, last ACK/NACK, last seen.
    Gateways,
    /// The audit log, newest first.
    Audit {
        /// At most this many entries.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Submit a document as a new version (its `version:` must exceed every stored one).
    Apply {
        /// The policy document (YAML or JSON); `-` reads standard input.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List stored versions.
    List,
    /// Show one version's document.
    Get {
        /// The version.
        version: u64,
    },
    /// A unified diff between two versions.
    Diff {
        /// The old version.
        from: u64,
        /// The new version.
        to: u64,
    },
    /// Validate a document with the gateway's validator, storing nothing.
    Validate {
        /// The policy document (YAML or JSON); `-` reads standard input.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum RolloutCmd {
    /// Start a rollout of a stored version. Without a target: every gateway at once.
    Start(StartArgs),
    /// Release the next stage (after the last: every gateway).
    Promote(IdArg),
    /// Hold the rollout at its current stage.
    Pause(IdArg),
    /// Undo a pause.
    Resume(IdArg),
    /// Return every gateway the rollout reached to the previous version.
    Rollback(IdArg),
    /// List rollouts, newest first.
    List,
    /// Show one rollout.
    Get(IdArg),
}

#[derive(Args)]
struct StartArgs {
    /// The policy version to release.
    #[arg(long)]
    version: u64,
    /// A share of gateways by stable hash of the instance id (0 < P <= 100).
    #[arg(long)]
    percent: Option<f64>,
    /// Only gateways with this label (repeatable; all must match).
    #[arg(long, value_name = "KEY=VALUE")]
    selector: Vec<String>,
    /// Only these instance ids (comma-separated).
    #[arg(long, value_delimiter = ',')]
    instances: Vec<String>,
    /// Stages as a JSON array, e.g. '[{"percent":10},{"selector":{"region":"eu"}},{}]'.
    #[arg(long, conflicts_with_all = ["percent", "selector", "instances"])]
    stages: Option<String>,
}

#[derive(Args)]
struct IdArg {
    /// The rollout id; the newest rollout when left out.
    id: Option<i64>,
}

/// An error the API answered with.
#[derive(Debug)]
struct ApiError {
    status: reqwest::StatusCode,
    message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (HTTP {})", self.message, self.status)
    }
}

impl std::error::Error for ApiError {}

struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(cli: &Cli) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .user_agent(concat!("weirctl/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &cli.ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{}: not a PEM certificate", ca.display()))?;
            builder = builder.add_root_certificate(cert);
        }
        Ok(Self {
            http: builder.build().context("building the HTTP client")?,
            base: cli.server.trim_end_matches('/').to_string(),
            token: cli.token.clone(),
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the control plane at {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await.context("reading the response")?;
        let value: Option<Value> = serde_json::from_str(&text).ok();
        if !status.is_success() {
            let message = value
                .as_ref()
                .and_then(|v| v.get("error"))
                .and_then(Value::as_str)
                .map_or_else(|| text.trim().to_string(), str::to_string);
            return Err(ApiError { status, message }.into());
        }
        value.with_context(|| format!("the server answered {status} with something not JSON"))
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, body).await
    }
}

fn read_document(path: &PathBuf) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("reading standard input")?;
        return Ok(text);
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("weirctl: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(code) => code,
        Err(e) => {
            match e.downcast_ref::<ApiError>() {
                Some(api) => eprintln!("Error from server: {api}"),
                None => eprintln!("weirctl: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let client = Client::new(cli)?;
    let json_out = cli.output == Output::Json;
    let value = match &cli.command {
        Command::Policy(cmd) => match cmd {
            PolicyCmd::Apply { file } => {
                let doc = read_document(file)?;
                let v = client
                    .post("/policies", Some(json!({"document": doc})))
                    .await?;
                if !json_out {
                    println!(
                        "stored policy version {} ({}, sha256 {})",
                        v["version"],
                        text(&v["format"]),
                        short(&v["sha256"])
                    );
                    println!(
                        "release it with: weirctl rollout start --version {}",
                        v["version"]
                    );
                }
                v
            }
            PolicyCmd::List => {
                let v = client.get("/policies").await?;
                if !json_out {
                    let rows = items(&v, "policies")
                        .map(|p| {
                            vec![
                                p["version"].to_string(),
                                text(&p["format"]),
                                short(&p["sha256"]),
                                text(&p["created_by"]),
                                text(&p["created_at"]),
                            ]
                        })
                        .collect();
                    table(
                        &["VERSION", "FORMAT", "SHA256", "CREATED BY", "CREATED AT"],
                        rows,
                    );
                }
                v
            }
            PolicyCmd::Get { version } => {
                let v = client.get(&format!("/policies/{version}")).await?;
                if !json_out {
                    print!("{}", text(&v["document"]));
                    if !text(&v["document"]).ends_with('\n') {
                        println!();
                    }
                }
                v
            }
            PolicyCmd::Diff { from, to } => {
                let v = client.get(&format!("/policies/{from}/diff/{to}")).await?;
                if !json_out {
                    print!("{}", text(&v["diff"]));
                }
                v
            }
            PolicyCmd::Validate { file } => {
                let doc = read_document(file)?;
                let v = client
                    .post("/policies/validate", Some(json!({"document": doc})))
                    .await?;
                let valid = v["valid"].as_bool() == Some(true);
                if json_out {
                    println!("{}", pretty(&v));
                } else if valid {
                    println!("valid: version {} ({})", v["version"], text(&v["format"]));
                } else {
                    println!("invalid: {}", text(&v["error"]));
                }
                return Ok(if valid {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
        },
        Command::Rollout(cmd) => rollout(&client, cmd, json_out).await?,
        Command::Gateways => {
            let v = client.get("/gateways").await?;
            if !json_out {
                let rows = items(&v, "gateways")
                    .map(|g| {
                        let report = match (g["last_report"].as_str(), &g["last_report_version"]) {
                            (Some(r), Value::Number(n)) => format!("{} v{n}", r.to_uppercase()),
                            _ => "-".into(),
                        };
                        vec![
                            text(&g["instance_id"]),
                            if g["connected"].as_bool() == Some(true) {
                                "yes"
                            } else {
                                "no"
                            }
                            .into(),
                            opt(&g["running_version"]),
                            opt(&g["desired_version"]),
                            report,
                            opt(&g["last_error"]),
                            labels(&g["labels"]),
                            text(&g["last_seen"]),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "INSTANCE",
                        "CONNECTED",
                        "RUNNING",
                        "DESIRED",
                        "LAST REPORT",
                        "ERROR",
                        "LABELS",
                        "LAST SEEN",
                    ],
                    rows,
                );
            }
            v
        }
        Command::Audit { limit } => {
            let v = client.get(&format!("/audit?limit={limit}")).await?;
            if !json_out {
                let rows = items(&v, "entries")
                    .map(|e| {
                        vec![
                            text(&e["at"]),
                            text(&e["actor"]),
                            text(&e["role"]),
                            text(&e["action"]),
                            e["details"].to_string(),
                        ]
                    })
                    .collect();
                table(&["AT", "WHO", "ROLE", "ACTION", "DETAILS"], rows);
            }
            v
        }
    };
    if json_out {
        println!("{}", pretty(&value));
    }
    Ok(ExitCode::SUCCESS)
}

async fn rollout(client: &Client, cmd: &RolloutCmd, json_out: bool) -> anyhow::Result<Value> {
    let (op, id) = match cmd {
        RolloutCmd::Start(args) => {
            let target = start_target(args)?;
            let mut body = json!({"version": args.version});
            if let Some(t) = target {
                body["target"] = t;
            }
            let v = client.post("/rollouts", Some(body)).await?;
            if !json_out {
                println!("started {}", describe(&v));
            }
            return Ok(v);
        }
        RolloutCmd::List => {
            let v = client.get("/rollouts").await?;
            if !json_out {
                let rows = items(&v, "rollouts")
                    .map(|r| {
                        vec![
                            r["id"].to_string(),
                            r["version"].to_string(),
                            opt(&r["previous_version"]),
                            text(&r["state"]),
                            stage_of(r),
                            stages(&r["stages"]),
                            text(&r["created_by"]),
                            text(&r["updated_at"]),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "ID", "VERSION", "PREVIOUS", "STATE", "STAGE", "TARGET", "BY", "UPDATED",
                    ],
                    rows,
                );
            }
            return Ok(v);
        }
        RolloutCmd::Get(a) => ("", a.id),
        RolloutCmd::Promote(a) => ("promote", a.id),
        RolloutCmd::Pause(a) => ("pause", a.id),
        RolloutCmd::Resume(a) => ("resume", a.id),
        RolloutCmd::Rollback(a) => ("rollback", a.id),
    };
    let id = match id {
        Some(id) => id,
        None => {
            let list = client.get("/rollouts").await?;
            match items(&list, "rollouts")
                .next()
                .and_then(|r| r["id"].as_i64())
            {
                Some(id) => id,
                None => bail!("there are no rollouts yet"),
            }
        }
    };
    let v = if op.is_empty() {
        client.get(&format!("/rollouts/{id}")).await?
    } else {
        client.post(&format!("/rollouts/{id}/{op}"), None).await?
    };
    if !json_out {
        println!("{}", describe(&v));
    }
    Ok(v)
}

fn start_target(args: &StartArgs) -> anyhow::Result<Option<Value>> {
    if let Some(s) = &args.stages {
        let stages: Value = serde_json::from_str(s).context("--stages: not JSON")?;
        if !stages.is_array() {
            bail!("--stages: give a JSON array of stages, e.g. '[{{\"percent\":10}},{{}}]'");
        }
        return Ok(Some(json!({"stages": stages})));
    }
    let mut target = serde_json::Map::new();
    if let Some(p) = args.percent {
        target.insert("percent".into(), json!(p));
    }
    if !args.selector.is_empty() {
        let mut sel = serde_json::Map::new();
        for s in &args.selector {
            let Some((k, v)) = s.split_once('=') else {
                bail!("--selector `{s}`: expected KEY=VALUE");
            };
            sel.insert(k.to_string(), json!(v));
        }
        target.insert("selector".into(), Value::Object(sel));
    }
    if !args.instances.is_empty() {
        target.insert("instances".into(), json!(args.instances));
    }
    Ok((!target.is_empty()).then_some(Value::Object(target)))
}

fn items<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v[key].as_array().into_iter().flatten()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn opt(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        other => text(other),
    }
}

fn short(v: &Value) -> String {
    text(v).chars().take(12).collect()
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

fn labels(v: &Value) -> String {
    match v.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".into(),
    }
}

fn stage(s: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(sel) = s["selector"].as_object() {
        for (k, v) in sel {
            parts.push(format!("{k}={}", text(v)));
        }
    }
    if let Some(p) = s["percent"].as_f64() {
        parts.push(format!("{p}%"));
    }
    if let Some(list) = s["instances"].as_array() {
        parts.push(format!(
            "[{}]",
            list.iter().map(text).collect::<Vec<_>>().join(",")
        ));
    }
    if parts.is_empty() {
        "all".into()
    } else {
        parts.join("&")
    }
}

fn stages(v: &Value) -> String {
    v.as_array()
        .map(|a| a.iter().map(stage).collect::<Vec<_>>().join(" -> "))
        .unwrap_or_default()
}

fn stage_of(r: &Value) -> String {
    let total = r["stages"].as_array().map_or(0, Vec::len);
    let current = r["current_stage"].as_u64().unwrap_or(0) + 1;
    if r["state"] == "completed" || current as usize > total {
        "all".into()
    } else {
        format!("{current}/{total}")
    }
}

fn describe(r: &Value) -> String {
    format!(
        "rollout {}: version {} (previous {}), {}, stage {}, target {}",
        r["id"],
        r["version"],
        opt(&r["previous_version"]),
        text(&r["state"]),
        stage_of(r),
        stages(&r["stages"])
    )
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}
