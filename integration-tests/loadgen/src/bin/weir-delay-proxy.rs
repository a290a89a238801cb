//! A TCP proxy that holds every byte for a fixed time in each direction: a loopback broker made
//! to answer like one across a network (benchmarks only).
//!
//! ```text
//! weir-delay-proxy --listen 127.0.0.1:19093 --upstream 127.0.0.1:19092 --delay-ms 1
//! ```
//!
//! Run the broker with its advertised listener on the proxy's address, so that clients reach
//! it only through the proxy. Bytes read from one side are written to the other no sooner than
//! `--delay-ms` later (tokio's timer: up to one millisecond more), in order; the round trip of
//! a request grows by twice the delay. Bandwidth is not limited.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Command line of the delay proxy.
#[derive(Parser, Debug)]
#[command(about = "A TCP proxy that delays each direction by a fixed time (benchmarks only)")]
struct Args {
    /// Address to accept connections on.
    #[arg(long)]
    listen: String,
    /// Address every accepted connection is forwarded to.
    #[arg(long)]
    upstream: String,
    /// Milliseconds each byte is held in each direction.
    #[arg(long)]
    delay_ms: u64,
}

/// Chunks read but not yet written, at most this many per direction (then reading waits).
const MAX_QUEUED_CHUNKS: usize = 4096;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let delay = Duration::from_millis(args.delay_ms);
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    loop {
        let (client, _) = listener.accept().await.context("accept failed")?;
        let upstream = args.upstream.clone();
        tokio::spawn(async move {
            if let Err(e) = relay(client, &upstream, delay).await {
                eprintln!("weir-delay-proxy: connection ended: {e:#}");
            }
        });
    }
}

/// Forwards `client` to `upstream` and back, each direction delayed by `delay`, until either
/// side closes.
async fn relay(client: TcpStream, upstream: &str, delay: Duration) -> anyhow::Result<()> {
    let server = TcpStream::connect(upstream)
        .await
        .with_context(|| format!("cannot connect to {upstream}"))?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        r = pump(client_read, server_write, delay) => r,
        r = pump(server_read, client_write, delay) => r,
    }
}

/// Copies `from` to `to`, each chunk written no sooner than `delay` after it was read.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    delay: Duration,
) -> anyhow::Result<()> {
    let (queue, mut queued) = mpsc::channel::<(Instant, Bytes)>(MAX_QUEUED_CHUNKS);
    let writer = async move {
        while let Some((due, chunk)) = queued.recv().await {
            tokio::time::sleep_until(due).await;
            to.write_all(&chunk).await?;
        }
        to.shutdown().await?;
        anyhow::Ok(())
    };
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return anyhow::Ok(());
            }
            let chunk = Bytes::copy_from_slice(&buf[..n]);
            if queue.send((Instant::now() + delay, chunk)).await.is_err() {
                return Ok(());
            }
        }
    };
    let (read, written) = tokio::join!(reader, writer);
    read.and(written)
}
