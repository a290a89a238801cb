//! The `weir-tail-router` binary: reads its bootstrap config, then copies the spans of marked
//! traces from the hot topic to the cold topic until SIGTERM or SIGINT.

use clap::Parser;
use std::process::ExitCode;
use weir_config::ConfigFile;
use weir_config::tail_router::TailRouterConfig;
use weir_runtime::ConfigArgs;

/// Tail sampling's cold path: hot topic in (D behind real time), cold topic out.
#[derive(Parser)]
#[command(name = "weir-tail-router", version)]
struct Cli {
    #[command(flatten)]
    args: ConfigArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    weir_runtime::run_binary(
        "weir-tail-router",
        &cli.args,
        |path| Ok(TailRouterConfig::load(path)?),
        start,
    )
}

fn start(config: TailRouterConfig) -> anyhow::Result<()> {
    let log = config.log.clone();
    weir_runtime::run_until_signal(&log, |shutdown| async move {
        let prometheus = weir_runtime::admin::install_metrics_recorder()?;
        weir_tail_router::run(config, prometheus, shutdown).await
    })
}
