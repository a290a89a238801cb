//! The `weir-control-plane` binary: reads the bootstrap config, opens storage (running
//! migrations), then serves the REST API and the watch stream until SIGTERM or SIGINT.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use weir_config::ControlPlaneConfig;
use weir_config::gateway::LogFormat;
use weir_control_plane::auth::Tokens;
use weir_control_plane::{ControlPlane, api, server, tls, watch};

/// The Weir control plane: versioned policies rolled out to gateways.
#[derive(Parser)]
#[command(name = "weir-control-plane", version)]
struct Cli {
    /// The bootstrap config (YAML); see config/control-plane.yaml.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// Validate the config (and read its token files and variables) and exit: 0 when valid,
    /// 1 with the offending key otherwise.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let checked = ControlPlaneConfig::load(&cli.config).and_then(|c| {
        let tokens = c.auth.resolve()?;
        c.storage.backend()?;
        Ok((c, tokens))
    });
    let (config, tokens) = match checked {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "weir-control-plane: invalid config {}: {e}",
                cli.config.display()
            );
            return ExitCode::FAILURE;
        }
    };
    if cli.check_config {
        println!("{}: valid", cli.config.display());
        return ExitCode::SUCCESS;
    }
    match start(config, Tokens::new(tokens)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir-control-plane: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(cfg: &weir_config::gateway::Log) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => tracing_subscriber::EnvFilter::new(v),
        _ => tracing_subscriber::EnvFilter::try_new(&cfg.level)
            .with_context(|| format!("log.level `{}`", cfg.level))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match cfg.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

fn start(config: ControlPlaneConfig, tokens: Tokens) -> anyhow::Result<()> {
    init_logs(&config.log)?;
    // TLS files are read before anything binds, so a bad file fails start-up at once.
    let api_tls = config
        .api
        .tls
        .as_ref()
        .map(|t| tls::rustls_config(t, "api.tls"))
        .transpose()?;
    let watch_tls = config
        .watch
        .tls
        .as_ref()
        .map(|t| tls::tonic_config(t, "watch.tls"))
        .transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = wait_for_signal().await {
                tracing::error!(error = %e, "cannot listen for signals");
            }
            signals.cancel();
        });
        let backend = config.storage.backend()?;
        let cp = ControlPlane::open(&backend, tokens)
            .await
            .context("opening storage")?;
        cp.spawn_change_poller(config.storage.poll_interval, shutdown.clone());
        let api_listener = tokio::net::TcpListener::bind(&config.api.endpoint)
            .await
            .with_context(|| format!("api.endpoint: cannot bind {}", config.api.endpoint))?;
        let watch_listener = tokio::net::TcpListener::bind(&config.watch.endpoint)
            .await
            .with_context(|| format!("watch.endpoint: cannot bind {}", config.watch.endpoint))?;
        tracing::info!(
            api = %api_listener.local_addr()?,
            api_tls = api_tls.is_some(),
            watch = %watch_listener.local_addr()?,
            watch_tls = watch_tls.is_some(),
            storage = ?cp.store().kind(),
            "control plane listening"
        );
        let mut rest = tokio::spawn(server::serve(
            api::router(Arc::clone(&cp)),
            api_listener,
            api_tls,
            shutdown.clone(),
            config.shutdown_timeout,
        ));
        let mut grpc = tokio::spawn(watch::serve(
            Arc::clone(&cp),
            watch_listener,
            watch_tls,
            shutdown.clone(),
        ));
        // Either listener ending takes the process down: a half-working control plane would
        // leave gateways or operators without a way in. The other then gets the shutdown
        // timeout to finish.
        let (first, other) = tokio::select! {
            r = &mut rest => (r.context("REST listener task")?.context("REST listener"), grpc),
            r = &mut grpc => (r.context("watch listener task")?.context("watch listener"), rest),
        };
        shutdown.cancel();
        match tokio::time::timeout(config.shutdown_timeout, other).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "listener failed while stopping"),
            Ok(_) => {}
            Err(_) => tracing::warn!("a listener did not stop within the shutdown timeout"),
        }
        let result = first;
        cp.store().close().await;
        tracing::info!("control plane stopped");
        result
    })
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}
