//! The `weir-control-plane` binary: reads the bootstrap config, opens storage (running
//! migrations), then serves the REST API and the watch stream until SIGTERM or SIGINT.

use anyhow::Context;
use clap::Parser;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use weir_config::{ConfigFile, ControlPlaneConfig};
use weir_control_plane::auth::Tokens;
use weir_control_plane::{ControlPlane, api, watch};
use weir_runtime::ConfigArgs;
use weir_runtime::listener::{self, ConnLimits, Protocols, ServeOptions};
use weir_runtime::tls::{ALPN_H2, ALPN_H2_HTTP1, ReloadingTls};

/// The Weir control plane: versioned policies rolled out to gateways.
#[derive(Parser)]
#[command(name = "weir-control-plane", version)]
struct Cli {
    #[command(flatten)]
    args: ConfigArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    weir_runtime::run_binary(
        "weir-control-plane",
        &cli.args,
        check,
        |(config, tokens)| start(config, tokens),
    )
}

/// The config, with its tokens read and hashed and its storage backend resolved.
fn check(path: &Path) -> anyhow::Result<(ControlPlaneConfig, Tokens)> {
    let config = ControlPlaneConfig::load(path)?;
    let mut tokens = Tokens::new(config.auth.resolve()?);
    for t in &config.auth.tokens {
        if let Some(patterns) = &t.instances {
            tokens.bind_instances(&t.name, patterns.clone());
        }
    }
    config.storage.backend()?;
    Ok((config, tokens))
}

fn start(config: ControlPlaneConfig, tokens: Tokens) -> anyhow::Result<()> {
    let log = config.log.clone();
    weir_runtime::run_until_signal(&log, |shutdown| async move {
        // TLS files are read before anything binds, so a bad file fails start-up at once.
        let api_tls = config
            .api
            .tls
            .as_ref()
            .map(|t| ReloadingTls::new("api", t, ALPN_H2_HTTP1).context("api.tls"))
            .transpose()?;
        let watch_tls = config
            .watch
            .tls
            .as_ref()
            .map(|t| ReloadingTls::new("watch", t, ALPN_H2).context("watch.tls"))
            .transpose()?;
        let prometheus = weir_runtime::admin::install_metrics_recorder()?;
        let backend = config.storage.backend()?;
        let cp = ControlPlane::open(&backend, tokens)
            .await
            .context("opening storage")?;
        cp.set_prometheus(prometheus);
        cp.spawn_change_poller(config.storage.poll_interval, shutdown.clone());
        cp.spawn_gateway_pruner(config.gateways.ttl, shutdown.clone());
        if let Some(source) = config.span_metrics.clone() {
            let windows = Arc::new(weir_control_plane::graph::windows::Windows::default());
            cp.set_span_metrics(windows.clone());
            tokio::spawn(weir_control_plane::graph::reader::run(
                source,
                windows,
                shutdown.clone(),
            ));
        }
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
        for t in [&api_tls, &watch_tls].into_iter().flatten() {
            tokio::spawn(t.clone().watch(shutdown.clone()));
        }
        let mut rest = tokio::spawn(listener::serve(
            api_listener,
            ServeOptions {
                name: "api",
                limits: ConnLimits {
                    max_connections: config.api.max_connections,
                    max_concurrent_streams: config.api.max_concurrent_streams,
                    idle_timeout: config.api.idle_timeout,
                    header_read_timeout: config.api.header_read_timeout,
                    ..ConnLimits::default()
                },
                tls: api_tls,
                protocols: Protocols::Http1And2,
                drain_timeout: Some(config.shutdown_timeout),
            },
            api::router(Arc::clone(&cp)),
            shutdown.clone(),
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
