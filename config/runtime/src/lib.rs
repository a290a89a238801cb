//! What the three Weir binaries (gateway, tail router, control plane) share around their own
//! work: the command line and config check, log initialisation, a multi-threaded runtime that
//! runs until SIGTERM or SIGINT, and the front door of every HTTP listener (TLS with reloaded
//! certificates, connection limits, graceful drain).

mod cli;
pub mod listener;
mod logs;
mod shutdown;
pub mod tls;

pub use cli::{ConfigArgs, run_binary};
pub use logs::init_logs;
pub use shutdown::{cancel_on_signal, run_until_signal};
