//! The `weir-gateway` binary: reads the bootstrap config, then runs until SIGTERM or SIGINT.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;
use weir_config::GatewayConfig;

/// OTLP gateway: OpenTelemetry SDKs in, Kafka out.
#[derive(Parser)]
#[command(name = "weir-gateway", version)]
struct Cli {
    /// The bootstrap config (YAML); see config/gateway.yaml.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// Validate the config and exit: 0 when valid, 1 with the offending key otherwise.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match GatewayConfig::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("weir-gateway: invalid config {}: {e}", cli.config.display());
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &config.policy_file
        && let Err(e) = weir_gateway::policy::read_policy_file(path)
    {
        eprintln!(
            "weir-gateway: invalid config {}: policy_file: {e}",
            cli.config.display()
        );
        return ExitCode::FAILURE;
    }
    if cli.check_config {
        println!("{}: valid", cli.config.display());
        return ExitCode::SUCCESS;
    }
    match start(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(config: GatewayConfig) -> anyhow::Result<()> {
    weir_gateway::telemetry::init_logs(&config.log)?;
    let prometheus = weir_gateway::telemetry::init_metrics()?;
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
        weir_gateway::run(config, prometheus, shutdown).await
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
