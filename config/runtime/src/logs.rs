//! Log initialisation: one `tracing` subscriber writing to stderr, text or JSON.

use anyhow::Context;
use std::io::IsTerminal;
use weir_config::gateway::{Log, LogFormat};

/// Installs the log subscriber. `RUST_LOG`, when set, wins over the config's level.
pub fn init_logs(cfg: &Log) -> anyhow::Result<()> {
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
