//! Signals that ask a running process to do something other than stop: SIGHUP, by convention
//! "read your files again".

use tokio::signal::unix::{Signal, SignalKind, signal};

/// The SIGHUPs the process receives, for reloading a file on an operator's request.
pub struct Hangups(Option<Signal>);

impl Hangups {
    /// Starts listening for SIGHUP. Must be called within a Tokio runtime. When the handler
    /// cannot be installed, `recv` never returns and a warning names what still reloads
    /// `otherwise` (the caller's fallback, such as watching the file).
    pub fn listen(otherwise: &str) -> Self {
        match signal(SignalKind::hangup()) {
            Ok(s) => Self(Some(s)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; {otherwise}");
                Self(None)
            }
        }
    }

    /// Waits for the next SIGHUP (forever when none can arrive).
    pub async fn recv(&mut self) {
        match self.0.as_mut() {
            Some(s) => {
                if s.recv().await.is_none() {
                    // The signal stream ended: no further SIGHUP can arrive.
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }
}
