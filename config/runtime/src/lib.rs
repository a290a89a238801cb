//! What the three Weir binaries (gateway, tail router, control plane) share around their own
//! work: the command line and config check, log initialisation, a multi-threaded runtime that
//! runs until SIGTERM or SIGINT, reloads on SIGHUP, the front door of every HTTP listener (TLS
//! with reloaded certificates, connection limits, graceful drain), and the admin listener
//! (health, readiness, Prometheus metrics, with the Collector's process metrics) of the gateway and the tail router.

pub mod admin;
mod cli;
pub mod listener;
mod logs;
pub mod process_metrics;
mod shutdown;
mod signals;
pub mod tls;

pub use cli::{ConfigArgs, run_binary};
pub use logs::init_logs;
pub use shutdown::{cancel_on_signal, run_until_signal};
pub use signals::Hangups;
