//! Weir's configuration model: the gateway's bootstrap config (listeners, Kafka, limits,
//! admin), how it is read, and how it is validated. Every key is documented in the commented
//! example `config/gateway.yaml` and in `docs/configuration.md`.

mod error;
pub mod gateway;
pub mod policy;
pub mod units;

pub use error::ConfigError;
pub use gateway::GatewayConfig;
