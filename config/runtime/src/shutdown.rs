//! Running a binary until it is asked to stop: SIGTERM or SIGINT cancel one token that every
//! task of the process watches.

use crate::logs::init_logs;
use anyhow::Context;
use std::future::Future;
use tokio_util::sync::CancellationToken;
use weir_config::gateway::Log;

/// A token that SIGTERM or SIGINT cancels. Must be called within a Tokio runtime.
pub fn cancel_on_signal() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            },
            (Err(e), _) | (_, Err(e)) => {
                // Running on is better than stopping at once: SIGKILL still ends it.
                tracing::error!(error = %e, "cannot listen for signals; stop the process with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
        signals.cancel();
    });
    shutdown
}

/// Runs a binary's main task: sets up logs, starts a multi-threaded runtime and runs `main`
/// on it with a token that SIGTERM or SIGINT cancels.
pub fn run_until_signal<F, Fut>(log: &Log, main: F) -> anyhow::Result<()>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    init_logs(log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async { main(cancel_on_signal()).await })
}
