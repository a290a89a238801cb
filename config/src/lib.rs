//! Weir's configuration model: the gateway's bootstrap config (listeners, Kafka, limits,
//! admin), how it is read, and how it is validated. Every key is documented in the commented
//! example `config/gateway.yaml` and in `docs/configuration.md`.

pub mod auth;
pub mod control_plane;
mod error;
mod expand;
pub mod gateway;
mod load;
pub mod secret;
pub mod tail_router;
pub mod tls;
pub mod units;

pub use control_plane::ControlPlaneConfig;
pub use error::ConfigError;
pub use gateway::GatewayConfig;
pub use load::{ConfigFile, parse_yaml};
pub use tls::{ServerTls, TlsVersion};
