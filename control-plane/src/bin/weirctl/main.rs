//! `weirctl`: the command-line client of the control plane's REST API, shaped like kubectl.
//! Readable tables by default, `-o wide` for more columns, `-o json|yaml` for scripts (the
//! API's JSON as it came). Where to connect comes from flags, then environment variables, then
//! the current context of the config file (`contexts.rs`). An error from the API is printed
//! with its `detail` and HTTP status, and the exit status is 1.
//!
//! - `client.rs`: HTTP, tokens, CA, problem documents;
//! - `contexts.rs`: the config file and its contexts;
//! - `status.rs`: `rollout status`, acked/targeted per stage;
//! - `output.rs`: tables, JSON, YAML.

mod client;
mod contexts;
mod output;
mod status;

use anyhow::{Context as _, bail};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use client::{ApiError, Client, Settings};
use contexts::{Context, WeirConfig};
use output::{describe, items, labels, opt, pretty, short, stage_of, stages, table, text};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Where weirctl connects when neither flags, environment nor a context say.
const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Manage Weir policies and their rollouts to gateways.
#[derive(Parser)]
#[command(name = "weirctl", version)]
struct Cli {
    /// The config file holding contexts [default: $XDG_CONFIG_HOME/weir/config.yaml or
    /// ~/.config/weir/config.yaml].
    #[arg(long, global = true, env = "WEIRCONFIG", value_name = "FILE")]
    weirconfig: Option<PathBuf>,
    /// The context to use instead of the config file's current one.
    #[arg(long, global = true, env = "WEIR_CONTEXT", value_name = "NAME")]
    context: Option<String>,
    /// The control plane's REST API [default: the context's, else http://127.0.0.1:8080].
    #[arg(long, global = true, env = "WEIR_SERVER", value_name = "URL")]
    server: Option<String>,
    /// A bearer token (admin to change things, viewer to read).
    #[arg(long, global = true, env = "WEIR_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the bearer token.
    #[arg(long, global = true, env = "WEIR_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// A PEM CA certificate to trust for an https server with a private CA.
    #[arg(long, global = true, env = "WEIR_CA_FILE", value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Output: readable tables (wide: more columns), or the API's JSON or YAML.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

/// How results are printed.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Wide,
    Json,
    Yaml,
}

impl Output {
    /// Whether the output is the API's value (JSON or YAML) rather than text for people.
    fn is_data(self) -> bool {
        matches!(self, Self::Json | Self::Yaml)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Policy versions: submit, list, show, diff, validate.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Rollouts: start, promote, pause, resume, roll back, list, status.
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
    /// Contexts: which control plane to talk to, and how.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Print a shell completion script (e.g. `source <(weirctl completion bash)`).
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Submit a document as a new version (its `version:` must exceed every stored one);
    /// a document stored already is reported unchanged.
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
    /// Acked/targeted gateways per released stage; exits 1 on a NACK or a rollback.
    Status(StatusArgs),
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

#[derive(Args)]
struct StatusArgs {
    /// The rollout id; the newest rollout when left out.
    id: Option<i64>,
    /// Keep watching until every gateway the released stages target has ACKed.
    #[arg(long, short)]
    watch: bool,
    /// With --watch: give up (exit 1) after this long, e.g. `90s`, `5m`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    timeout: Duration,
    /// With --watch: how often to look.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "500ms")]
    interval: Duration,
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// List the contexts; `*` marks the current one.
    GetContexts,
    /// Make a context the current one.
    UseContext {
        /// Its name.
        name: String,
    },
    /// Create or change a context with the --server, --token, --token-file and --ca-file
    /// given on this command line (environment variables are not stored).
    SetContext {
        /// Its name.
        name: String,
    },
    /// Print the current context's name.
    CurrentContext,
}

/// The connection flags given on the command line itself (for `config set-context`).
struct Explicit {
    server: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
}

impl Explicit {
    fn from(cli: &Cli, matches: &ArgMatches) -> Self {
        let given = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
        Self {
            server: cli.server.clone().filter(|_| given("server")),
            token: cli.token.clone().filter(|_| given("token")),
            token_file: cli.token_file.clone().filter(|_| given("token_file")),
            ca_file: cli.ca_file.clone().filter(|_| given("ca_file")),
        }
    }
}

/// Server, token and CA: each from its flag or environment variable, else the context, else
/// the default. A token from the command line beats a token file from the environment (and
/// the other way round); both from the same source is an error.
fn settings(cli: &Cli, matches: &ArgMatches) -> anyhow::Result<Settings> {
    let path = contexts::config_path(cli.weirconfig.as_deref())?;
    let config = WeirConfig::load(&path)?;
    let context = config
        .select(cli.context.as_deref())?
        .cloned()
        .unwrap_or_default();
    let source = |id: &str| matches.value_source(id);
    let token = match (&cli.token, &cli.token_file) {
        (Some(t), Some(f)) => match (source("token"), source("token_file")) {
            (a, b) if a == b => bail!("give --token or --token-file, not both"),
            (Some(ValueSource::CommandLine), _) => Some(t.clone()),
            _ => Some(read_token(f)?),
        },
        (Some(t), None) => Some(t.clone()),
        (None, Some(f)) => Some(read_token(f)?),
        (None, None) => match (&context.token, &context.token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(f)) => {
                Some(read_token(f).with_context(|| format!("context `{}`", context.name))?)
            }
            (None, None) => None,
        },
    };
    Ok(Settings {
        server: cli
            .server
            .clone()
            .or(context.server)
            .unwrap_or_else(|| DEFAULT_SERVER.to_string()),
        token,
        ca_file: cli.ca_file.clone().or(context.ca_file),
    })
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(token.to_string())
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
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
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
    match runtime.block_on(run(&cli, &matches)) {
        Ok(code) => code,
        Err(e) => {
            match e.downcast_ref::<ApiError>() {
                Some(api) => eprintln!("Error from server {api}"),
                None => eprintln!("weirctl: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// Prints `value` as JSON or YAML when that is the output asked for.
fn print_data(output: Output, value: &Value) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", pretty(value)),
        Output::Yaml => print!("{}", output::yaml(value)?),
        Output::Table | Output::Wide => {}
    }
    Ok(())
}

async fn run(cli: &Cli, matches: &ArgMatches) -> anyhow::Result<ExitCode> {
    // Commands that need no control plane.
    match &cli.command {
        Command::Completion { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "weirctl",
                &mut std::io::stdout(),
            );
            return Ok(ExitCode::SUCCESS);
        }
        Command::Config(cmd) => {
            config_command(cli, cmd, Explicit::from(cli, matches))?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let client = Client::new(&settings(cli, matches)?)?;
    let out = cli.output;
    let wide = out == Output::Wide;
    let value = match &cli.command {
        Command::Completion { .. } | Command::Config(_) => return Ok(ExitCode::SUCCESS),
        Command::Policy(cmd) => match cmd {
            PolicyCmd::Apply { file } => {
                let doc = read_document(file)?;
                let v = client
                    .post("/policies", Some(json!({"document": doc})))
                    .await?;
                if !out.is_data() {
                    if v["unchanged"].as_bool() == Some(true) {
                        println!(
                            "policy version {} unchanged (sha256 {})",
                            v["version"],
                            short(&v["sha256"])
                        );
                    } else {
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
                }
                v
            }
            PolicyCmd::List => {
                let v = client.get("/policies").await?;
                if !out.is_data() {
                    let rows = items(&v, "policies")
                        .map(|p| {
                            vec![
                                p["version"].to_string(),
                                text(&p["format"]),
                                if wide {
                                    text(&p["sha256"])
                                } else {
                                    short(&p["sha256"])
                                },
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
                if !out.is_data() {
                    print!("{}", text(&v["document"]));
                    if !text(&v["document"]).ends_with('\n') {
                        println!();
                    }
                }
                v
            }
            PolicyCmd::Diff { from, to } => {
                let v = client.get(&format!("/policies/{from}/diff/{to}")).await?;
                if !out.is_data() {
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
                if out.is_data() {
                    print_data(out, &v)?;
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
        Command::Rollout(RolloutCmd::Status(args)) => {
            return rollout_status(&client, args, out).await;
        }
        Command::Rollout(cmd) => rollout(&client, cmd, out).await?,
        Command::Gateways => {
            let v = client.get("/gateways").await?;
            if !out.is_data() {
                gateways_table(&v, wide);
            }
            v
        }
        Command::Audit { limit } => {
            let v = client.get(&format!("/audit?limit={limit}")).await?;
            if !out.is_data() {
                let rows = items(&v, "entries")
                    .map(|e| {
                        let mut row = vec![
                            text(&e["at"]),
                            text(&e["actor"]),
                            text(&e["role"]),
                            text(&e["action"]),
                        ];
                        if wide {
                            row.insert(0, e["id"].to_string());
                        }
                        row.push(e["details"].to_string());
                        row
                    })
                    .collect();
                let mut headers = vec!["AT", "WHO", "ROLE", "ACTION", "DETAILS"];
                if wide {
                    headers.insert(0, "ID");
                }
                table(&headers, rows);
            }
            v
        }
    };
    print_data(out, &value)?;
    Ok(ExitCode::SUCCESS)
}

fn gateways_table(v: &Value, wide: bool) {
    let rows = items(v, "gateways")
        .map(|g| {
            let report = match (g["last_report"].as_str(), &g["last_report_version"]) {
                (Some(r), Value::Number(n)) => format!("{} v{n}", r.to_uppercase()),
                _ => "-".into(),
            };
            let mut row = vec![
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
            ];
            if wide {
                row.extend([
                    opt(&g["build"]),
                    opt(&g["first_seen"]),
                    opt(&g["last_report_at"]),
                ]);
            }
            row
        })
        .collect();
    let mut headers = vec![
        "INSTANCE",
        "CONNECTED",
        "RUNNING",
        "DESIRED",
        "LAST REPORT",
        "ERROR",
        "LABELS",
        "LAST SEEN",
    ];
    if wide {
        headers.extend(["BUILD", "FIRST SEEN", "REPORTED AT"]);
    }
    table(&headers, rows);
}

/// The newest rollout's id when `id` is None.
async fn rollout_id(client: &Client, id: Option<i64>) -> anyhow::Result<i64> {
    if let Some(id) = id {
        return Ok(id);
    }
    let list = client.get("/rollouts").await?;
    match items(&list, "rollouts")
        .next()
        .and_then(|r| r["id"].as_i64())
    {
        Some(id) => Ok(id),
        None => bail!("there are no rollouts yet"),
    }
}

async fn rollout(client: &Client, cmd: &RolloutCmd, out: Output) -> anyhow::Result<Value> {
    let (op, id) = match cmd {
        RolloutCmd::Start(args) => {
            let target = start_target(args)?;
            let mut body = json!({"version": args.version});
            if let Some(t) = target {
                body["target"] = t;
            }
            let v = client.post("/rollouts", Some(body)).await?;
            if !out.is_data() {
                println!("started {}", describe(&v));
            }
            return Ok(v);
        }
        RolloutCmd::List => {
            let v = client.get("/rollouts").await?;
            if !out.is_data() {
                let wide = out == Output::Wide;
                let rows = items(&v, "rollouts")
                    .map(|r| {
                        let mut row = vec![
                            r["id"].to_string(),
                            r["version"].to_string(),
                            opt(&r["previous_version"]),
                            text(&r["state"]),
                            stage_of(r),
                            stages(&r["stages"]),
                            text(&r["created_by"]),
                            text(&r["updated_at"]),
                        ];
                        if wide {
                            row.push(text(&r["created_at"]));
                        }
                        row
                    })
                    .collect();
                let mut headers = vec![
                    "ID", "VERSION", "PREVIOUS", "STATE", "STAGE", "TARGET", "BY", "UPDATED",
                ];
                if wide {
                    headers.push("CREATED");
                }
                table(&headers, rows);
            }
            return Ok(v);
        }
        RolloutCmd::Status(_) => bail!("rollout status is handled by rollout_status"),
        RolloutCmd::Get(a) => ("", a.id),
        RolloutCmd::Promote(a) => ("promote", a.id),
        RolloutCmd::Pause(a) => ("pause", a.id),
        RolloutCmd::Resume(a) => ("resume", a.id),
        RolloutCmd::Rollback(a) => ("rollback", a.id),
    };
    let id = rollout_id(client, id).await?;
    let v = if op.is_empty() {
        client.get(&format!("/rollouts/{id}")).await?
    } else {
        client.post(&format!("/rollouts/{id}/{op}"), None).await?
    };
    if !out.is_data() {
        println!("{}", describe(&v));
    }
    Ok(v)
}

/// Prints the rollout's progress, once or (`--watch`) each time it changes until every
/// targeted gateway ACKed; exits 1 on a NACK, a rollback or the timeout.
async fn rollout_status(
    client: &Client,
    args: &StatusArgs,
    out: Output,
) -> anyhow::Result<ExitCode> {
    let id = rollout_id(client, args.id).await?;
    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut last_printed = String::new();
    loop {
        let rollout = client.get(&format!("/rollouts/{id}")).await?;
        let gateways = client.get("/gateways").await?;
        let status = status::RolloutStatus::compute(&rollout, &gateways)?;
        let failed = !status.nacked.is_empty() || status.state == "rolled_back";
        let finished = failed || status.done || !args.watch;
        if out.is_data() {
            // Scripts get one document: the final state.
            if finished {
                print_data(out, &serde_json::to_value(&status)?)?;
            }
        } else {
            let shown = status.render();
            if shown != last_printed {
                print!("{shown}");
                last_printed = shown;
            }
        }
        if failed {
            if !out.is_data() {
                let why = if status.nacked.is_empty() {
                    "it was rolled back".to_string()
                } else {
                    format!(
                        "{} gateway(s) refused version {}",
                        status.nacked.len(),
                        status.version
                    )
                };
                eprintln!("rollout {id} failed: {why}");
            }
            return Ok(ExitCode::FAILURE);
        }
        if status.done {
            if !out.is_data() {
                let targeted: usize = status.stages.iter().map(|s| s.targeted.len()).sum();
                let pending = status.stages.iter().any(|s| !s.released);
                println!(
                    "rollout {id}: every targeted gateway runs version {} ({targeted} acked){}",
                    status.version,
                    if pending {
                        "; later stages are not released yet"
                    } else {
                        ""
                    }
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        if !args.watch {
            return Ok(ExitCode::SUCCESS);
        }
        if tokio::time::Instant::now() + args.interval > deadline {
            if out.is_data() {
                print_data(out, &serde_json::to_value(&status)?)?;
            }
            eprintln!(
                "rollout {id}: not every targeted gateway ACKed version {} within {}",
                status.version,
                humantime::format_duration(args.timeout)
            );
            return Ok(ExitCode::FAILURE);
        }
        tokio::time::sleep(args.interval).await;
    }
}

/// `weirctl config ...`.
fn config_command(cli: &Cli, cmd: &ConfigCmd, explicit: Explicit) -> anyhow::Result<()> {
    let path = contexts::config_path(cli.weirconfig.as_deref())?;
    let mut config = WeirConfig::load(&path)?;
    match cmd {
        ConfigCmd::GetContexts => {
            let current = config.current_context.as_deref();
            if cli.output.is_data() {
                let list: Vec<Value> = config
                    .contexts
                    .iter()
                    .map(|c| {
                        json!({
                            "name": c.name,
                            "current": Some(c.name.as_str()) == current,
                            "server": c.server,
                            "auth": auth_of(c),
                            "ca_file": c.ca_file,
                        })
                    })
                    .collect();
                print_data(cli.output, &json!({"contexts": list}))?;
            } else {
                let rows = config
                    .contexts
                    .iter()
                    .map(|c| {
                        vec![
                            if Some(c.name.as_str()) == current {
                                "*"
                            } else {
                                ""
                            }
                            .into(),
                            c.name.clone(),
                            c.server.clone().unwrap_or_else(|| "-".into()),
                            auth_of(c),
                            c.ca_file
                                .as_ref()
                                .map_or_else(|| "-".into(), |p| p.display().to_string()),
                        ]
                    })
                    .collect();
                table(&["CURRENT", "NAME", "SERVER", "AUTH", "CA"], rows);
            }
        }
        ConfigCmd::UseContext { name } => {
            if config.get(name).is_none() {
                bail!("no context named `{name}` in {}", path.display());
            }
            config.current_context = Some(name.clone());
            config.save(&path)?;
            println!("Switched to context \"{name}\".");
        }
        ConfigCmd::SetContext { name } => {
            if explicit.token.is_some() && explicit.token_file.is_some() {
                bail!("give --token or --token-file, not both");
            }
            let existed = config.get(name).is_some();
            config.set(
                name,
                Context {
                    name: name.clone(),
                    server: explicit.server,
                    token: explicit.token,
                    token_file: explicit.token_file,
                    ca_file: explicit.ca_file,
                },
            );
            config.save(&path)?;
            let verb = if existed { "modified" } else { "created" };
            println!("Context \"{name}\" {verb}.");
        }
        ConfigCmd::CurrentContext => match &config.current_context {
            Some(name) => println!("{name}"),
            None => bail!("no current context in {}", path.display()),
        },
    }
    Ok(())
}

/// How a context authenticates, without giving the token away.
fn auth_of(c: &Context) -> String {
    match (&c.token, &c.token_file) {
        (Some(_), _) => "token".into(),
        (None, Some(f)) => format!("token-file {}", f.display()),
        (None, None) => "-".into(),
    }
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
