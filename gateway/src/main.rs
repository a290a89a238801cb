//! The `weir-gateway` binary: reads the bootstrap config, then runs until SIGTERM or SIGINT.

use anyhow::anyhow;
use clap::Parser;
use std::path::Path;
use std::process::ExitCode;
use weir_config::{ConfigFile, GatewayConfig};
use weir_runtime::ConfigArgs;

/// OTLP gateway: OpenTelemetry SDKs in, Kafka out.
#[derive(Parser)]
#[command(name = "weir-gateway", version)]
struct Cli {
    #[command(flatten)]
    args: ConfigArgs,
}

fn main() -> ExitCode {
    // Before any thread starts: arenas are made as threads first allocate.
    let arena_cap = weir_gateway::malloc_arenas::cap_malloc_arenas();
    let cli = Cli::parse();
    weir_runtime::run_binary("weir-gateway", &cli.args, check, |config| {
        start(config, arena_cap)
    })
}

/// The config, and the policy file it names, both valid.
fn check(path: &Path) -> anyhow::Result<GatewayConfig> {
    let config = GatewayConfig::load(path)?;
    if let Some(policy) = &config.policy_file {
        weir_gateway::policy::read_policy_file(policy).map_err(|e| anyhow!("policy_file: {e}"))?;
    }
    Ok(config)
}

fn start(config: GatewayConfig, arena_cap: Option<usize>) -> anyhow::Result<()> {
    let log = config.log.clone();
    // `target_info`'s instance: the id this gateway publishes its decisions under.
    let instance_id = config
        .tail
        .gateway_id
        .clone()
        .unwrap_or_else(weir_gateway::tail::publish::Publisher::default_gateway_id);
    weir_runtime::run_until_signal(&log, |shutdown| async move {
        if let Some(arenas) = arena_cap {
            tracing::info!(
                arenas,
                "glibc malloc arenas capped (MALLOC_ARENA_MAX sets another cap)"
            );
        }
        let prometheus = weir_gateway::telemetry::init_metrics(instance_id)?;
        weir_gateway::run(config, prometheus, shutdown).await
    })
}
