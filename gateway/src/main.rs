//! The `weir-gateway` binary: reads the bootstrap config, then runs until SIGTERM or SIGINT.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
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
    let log = config.log.clone();
    weir_gateway::telemetry::run_until_signal(&log, |prometheus, shutdown| {
        weir_gateway::run(config, prometheus, shutdown)
    })
}
