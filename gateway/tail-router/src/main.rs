//! The `weir-tail-router` binary: reads its bootstrap config, then copies the spans of marked
//! traces from the hot topic to the cold topic until SIGTERM or SIGINT.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use weir_config::tail_router::TailRouterConfig;

/// Tail sampling's cold path: hot topic in (D behind real time), cold topic out.
#[derive(Parser)]
#[command(name = "weir-tail-router", version)]
struct Cli {
    /// The bootstrap config (YAML); see config/tail-router.yaml.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// Validate the config and exit: 0 when valid, 1 with the offending key otherwise.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match TailRouterConfig::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "weir-tail-router: invalid config {}: {e}",
                cli.config.display()
            );
            return ExitCode::FAILURE;
        }
    };
    if cli.check_config {
        println!("{}: valid", cli.config.display());
        return ExitCode::SUCCESS;
    }
    match start(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir-tail-router: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(config: TailRouterConfig) -> anyhow::Result<()> {
    let log = config.log.clone();
    weir_gateway::telemetry::run_until_signal(&log, |prometheus, shutdown| {
        weir_tail_router::run(config, prometheus, shutdown)
    })
}
