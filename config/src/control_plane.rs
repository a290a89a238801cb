//! The control plane's bootstrap config: its two listeners (REST API, gRPC watch stream),
//! storage (SQLite or PostgreSQL), access tokens and logging. Read once at start-up; every key
//! is documented in `config/control-plane.yaml` and `docs/control-plane.md`.

use crate::error::ConfigError;
use crate::gateway::Log;
use crate::load::ConfigFile;
pub use crate::secret::TokenSource;
use crate::secret::{Secret, TokenHash};
use crate::tls::ServerTls;
use crate::units::duration;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The whole bootstrap config of `weir-control-plane`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneConfig {
    /// The REST API listener (`/api/v1`), default 0.0.0.0:8080.
    #[serde(default = "default_api")]
    pub api: ApiListener,
    /// The gRPC watch-stream listener gateways connect to, default 0.0.0.0:8081.
    #[serde(default = "default_watch")]
    pub watch: CpListener,
    /// Where policies, rollouts, gateways and the audit log are kept.
    #[serde(default)]
    pub storage: Storage,
    /// Bearer tokens and their roles.
    pub auth: Auth,
    /// What the control plane keeps about gateways.
    #[serde(default)]
    pub gateways: Gateways,
    /// How long shutdown waits for in-flight requests.
    #[serde(default = "default_shutdown_timeout", deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    /// Logging.
    #[serde(default)]
    pub log: Log,
    /// Where the gateways' span metrics are read from, for `/api/v1/graph` and
    /// `/api/v1/services/{name}`; absent: those routes answer 503.
    #[serde(default)]
    pub span_metrics: Option<SpanMetricsSource>,
}

/// The Kafka topic the gateways flush span metrics to (the policy's `span_metrics.topic`).
/// Every replica reads all of it, from `lookback` ago, without committing offsets.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpanMetricsSource {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// The topic, default `weir.span_metrics`.
    #[serde(default = "default_span_metrics_topic")]
    pub topic: String,
    /// The consumer's client id, default `weir-control-plane`.
    #[serde(default = "default_span_metrics_client_id")]
    pub client_id: String,
    /// Raw librdkafka consumer properties (security settings, for example); they win over
    /// the keys above.
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
}

fn default_span_metrics_topic() -> String {
    "weir.span_metrics".into()
}

fn default_span_metrics_client_id() -> String {
    "weir-control-plane".into()
}

fn default_api() -> ApiListener {
    ApiListener {
        endpoint: "0.0.0.0:8080".into(),
        tls: None,
        max_connections: default_api_max_connections(),
        max_concurrent_streams: default_api_max_concurrent_streams(),
        idle_timeout: default_api_idle_timeout(),
        header_read_timeout: default_api_header_read_timeout(),
    }
}

fn default_watch() -> CpListener {
    CpListener {
        endpoint: "0.0.0.0:8081".into(),
        tls: None,
    }
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(10)
}

/// One listener of the control plane: the address it binds and, optionally, TLS.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpListener {
    /// `host:port` to bind.
    pub endpoint: String,
    /// Serve TLS with these files instead of plain text.
    #[serde(default)]
    pub tls: Option<ServerTls>,
}

/// The REST API listener: the address, optional TLS, and the connection limits the gateway's
/// listeners have (served by the same code, weir-runtime's listener).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiListener {
    /// `host:port` to bind.
    pub endpoint: String,
    /// Serve TLS with these files instead of plain text.
    #[serde(default)]
    pub tls: Option<ServerTls>,
    /// Connections served at once; past it a new connection is closed at once. Default 1024.
    #[serde(default = "default_api_max_connections")]
    pub max_connections: usize,
    /// HTTP/2 streams (concurrent requests) per connection. Default 100.
    #[serde(default = "default_api_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// A connection with no request in progress for this long is closed. Default 120s.
    #[serde(default = "default_api_idle_timeout", deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// The TLS handshake and a request's headers must arrive within this time, or the
    /// connection is closed: half-open and slow-loris clients do not hold descriptors.
    /// Default 10s.
    #[serde(
        default = "default_api_header_read_timeout",
        deserialize_with = "duration"
    )]
    pub header_read_timeout: Duration,
}

fn default_api_max_connections() -> usize {
    1024
}

fn default_api_max_concurrent_streams() -> u32 {
    100
}

fn default_api_idle_timeout() -> Duration {
    Duration::from_secs(120)
}

fn default_api_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}

impl ApiListener {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_connections == 0 {
            return Err(ConfigError::invalid(
                "api.max_connections",
                "must be at least 1",
            ));
        }
        if self.max_concurrent_streams == 0 {
            return Err(ConfigError::invalid(
                "api.max_concurrent_streams",
                "must be at least 1",
            ));
        }
        for (key, d) in [
            ("api.idle_timeout", self.idle_timeout),
            ("api.header_read_timeout", self.header_read_timeout),
        ] {
            if d < Duration::from_millis(100) {
                return Err(ConfigError::invalid(key, "must be at least 100ms"));
            }
        }
        Ok(())
    }
}

/// What the control plane keeps about gateways.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gateways {
    /// A gateway with no open watch stream that was not seen for this long is deleted from
    /// the gateway list (under a Deployment every restart brings a new instance id); `0s`
    /// keeps them forever. Default 24h.
    #[serde(default = "default_gateway_ttl", deserialize_with = "duration")]
    pub ttl: Duration,
}

impl Default for Gateways {
    fn default() -> Self {
        Self {
            ttl: default_gateway_ttl(),
        }
    }
}

fn default_gateway_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// The storage backend: exactly one of `sqlite` and `postgres` (SQLite when neither is given).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// An embedded SQLite database file: one control-plane process.
    #[serde(default)]
    pub sqlite: Option<Sqlite>,
    /// A PostgreSQL database: one or several control-plane replicas.
    #[serde(default)]
    pub postgres: Option<Postgres>,
    /// How often a replica checks the database for changes made by other replicas, so that
    /// gateways connected to any replica see them. Default 500ms.
    #[serde(default = "default_poll_interval", deserialize_with = "duration")]
    pub poll_interval: Duration,
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            sqlite: None,
            postgres: None,
            poll_interval: default_poll_interval(),
        }
    }
}

fn default_poll_interval() -> Duration {
    Duration::from_millis(500)
}

/// The SQLite backend.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sqlite {
    /// The database file; created with its directory's permissions when missing.
    pub path: PathBuf,
}

impl Default for Sqlite {
    fn default() -> Self {
        Self {
            path: PathBuf::from("weir-control-plane.db"),
        }
    }
}

/// The PostgreSQL backend: exactly one of `dsn`, `dsn_file` and `dsn_env`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Postgres {
    /// A connection URL, `postgres://user:password@host:port/database`.
    #[serde(default)]
    pub dsn: Option<String>,
    /// A file holding the connection URL (trailing newline ignored; keeps the password out of
    /// the config).
    #[serde(default)]
    pub dsn_file: Option<PathBuf>,
    /// The name of an environment variable holding the connection URL (keeps the password
    /// out of the file).
    #[serde(default)]
    pub dsn_env: Option<String>,
    /// Connections in the pool, default 10.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

fn default_max_connections() -> u32 {
    10
}

impl Postgres {
    /// Where the connection URL is read from.
    pub fn dsn_source(&self) -> Result<Secret, ConfigError> {
        Secret::one_of(
            "storage.postgres",
            "dsn",
            self.dsn.as_ref(),
            self.dsn_file.as_ref(),
            self.dsn_env.as_ref(),
        )
    }
}

/// The resolved storage choice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL and pool size.
    Postgres {
        /// The connection URL.
        dsn: String,
        /// Connections in the pool.
        max_connections: u32,
    },
}

impl Storage {
    /// The backend to use; reads `postgres.dsn_file` or `postgres.dsn_env` when that is how
    /// the DSN is given.
    pub fn backend(&self) -> Result<Backend, ConfigError> {
        match (&self.sqlite, &self.postgres) {
            (Some(_), Some(_)) => Err(ConfigError::invalid(
                "storage",
                "give either sqlite or postgres, not both",
            )),
            (None, Some(pg)) => {
                let dsn = pg.dsn_source()?.read("storage.postgres.dsn")?;
                if !(dsn.starts_with("postgres://") || dsn.starts_with("postgresql://")) {
                    return Err(ConfigError::invalid(
                        "storage.postgres.dsn",
                        "must be a URL starting with postgres:// or postgresql://",
                    ));
                }
                Ok(Backend::Postgres {
                    dsn,
                    max_connections: pg.max_connections,
                })
            }
            (sqlite, None) => Ok(Backend::Sqlite(
                sqlite.clone().unwrap_or_default().path.clone(),
            )),
        }
    }
}

/// Access control: the bearer tokens the control plane accepts.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// The tokens; at least one `admin`.
    pub tokens: Vec<Token>,
}

/// What a token may do.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read and write through the REST API.
    Admin,
    /// Read through the REST API.
    Viewer,
    /// Open the watch stream as a gateway.
    Gateway,
}

impl Role {
    /// `admin`, `viewer` or `gateway`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Viewer => "viewer",
            Self::Gateway => "gateway",
        }
    }
}

/// One token: a name for the audit log, a role, and exactly one of `sha256`, `file`, `env`
/// (see `secret.rs`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    /// Who holds it; the audit log records this name.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The SHA-256 of the token, 64 hex digits (`printf %s TOKEN | sha256sum`).
    #[serde(default)]
    pub sha256: Option<String>,
    /// A file holding the token itself (surrounding whitespace ignored).
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// An environment variable holding the token itself.
    #[serde(default)]
    pub env: Option<String>,
    /// Gateway tokens only: the instance ids this token may connect as, as patterns where `*`
    /// stands for any run of characters (`gw-eu-*`); absent: any instance id.
    #[serde(default)]
    pub instances: Option<Vec<String>>,
}

impl Token {
    /// Where the secret comes from; `key` is this token's path, e.g. `auth.tokens[0]`.
    pub fn source(&self, key: &str) -> Result<TokenSource<'_>, ConfigError> {
        TokenSource::of(
            key,
            self.sha256.as_ref(),
            self.file.as_ref(),
            self.env.as_ref(),
        )
    }

    /// The SHA-256 of the token, reading the file or environment variable when that is where
    /// it is. Errors name the key but never the value.
    pub fn resolve(&self, key: &str) -> Result<TokenHash, ConfigError> {
        self.source(key)?.hash(key)
    }
}

impl Auth {
    /// Every token's name, role and SHA-256, in config order.
    pub fn resolve(&self) -> Result<Vec<(String, Role, TokenHash)>, ConfigError> {
        let mut out = Vec::with_capacity(self.tokens.len());
        for (i, t) in self.tokens.iter().enumerate() {
            let key = format!("auth.tokens[{i}]");
            let hash = t.resolve(&key)?;
            if let Some((other, _, _)) = out.iter().find(|(_, _, h)| *h == hash) {
                return Err(ConfigError::invalid(
                    key,
                    format!("the same token is also given to `{other}`"),
                ));
            }
            out.push((t.name.clone(), t.role, hash));
        }
        Ok(out)
    }
}

impl ConfigFile for ControlPlaneConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(sm) = &self.span_metrics {
            if sm.brokers.is_empty() || sm.brokers.iter().any(|b| b.trim().is_empty()) {
                return Err(ConfigError::invalid(
                    "span_metrics.brokers",
                    "list at least one broker as host:port",
                ));
            }
            if sm.topic.is_empty() {
                return Err(ConfigError::invalid(
                    "span_metrics.topic",
                    "cannot be empty",
                ));
            }
        }
        for (key, endpoint, tls) in [
            ("api", &self.api.endpoint, &self.api.tls),
            ("watch", &self.watch.endpoint, &self.watch.tls),
        ] {
            endpoint.parse::<SocketAddr>().map_err(|e| {
                ConfigError::invalid(
                    format!("{key}.endpoint"),
                    format!("`{endpoint}` is not host:port ({e})"),
                )
            })?;
            if let Some(tls) = tls {
                tls.validate(&format!("{key}.tls"))?;
            }
        }
        self.api.validate()?;
        if let Some(pg) = &self.storage.postgres {
            if pg.max_connections == 0 {
                return Err(ConfigError::invalid(
                    "storage.postgres.max_connections",
                    "must be at least 1",
                ));
            }
            pg.dsn_source()?;
        }
        if self.storage.sqlite.is_some() && self.storage.postgres.is_some() {
            return Err(ConfigError::invalid(
                "storage",
                "give either sqlite or postgres, not both",
            ));
        }
        if self.storage.poll_interval < Duration::from_millis(50) {
            return Err(ConfigError::invalid(
                "storage.poll_interval",
                "must be at least 50ms",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, t) in self.auth.tokens.iter().enumerate() {
            let key = format!("auth.tokens[{i}]");
            if t.name.trim().is_empty() {
                return Err(ConfigError::invalid(
                    format!("{key}.name"),
                    "must not be empty",
                ));
            }
            if !names.insert(t.name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{key}.name"),
                    format!("`{}` is used by another token", t.name),
                ));
            }
            t.source(&key)?;
            if let Some(patterns) = &t.instances {
                if t.role != Role::Gateway {
                    return Err(ConfigError::invalid(
                        format!("{key}.instances"),
                        "only gateway tokens connect as instances; remove it or use role gateway",
                    ));
                }
                if patterns.is_empty() {
                    return Err(ConfigError::invalid(
                        format!("{key}.instances"),
                        "list at least one instance id pattern, or leave it out",
                    ));
                }
                if let Some(i) = patterns.iter().position(|p| p.trim().is_empty()) {
                    return Err(ConfigError::invalid(
                        format!("{key}.instances[{i}]"),
                        "must not be empty",
                    ));
                }
            }
        }
        if !self.auth.tokens.iter().any(|t| t.role == Role::Admin) {
            return Err(ConfigError::invalid(
                "auth.tokens",
                "at least one token must have role admin",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str =
        "auth:\n  tokens:\n    - name: ops\n      role: admin\n      env: WEIR_TEST_ADMIN\n";

    #[test]
    fn minimal_config_takes_defaults() {
        let c = ControlPlaneConfig::from_yaml(MINIMAL).unwrap();
        assert_eq!(c.api.endpoint, "0.0.0.0:8080");
        assert_eq!(c.watch.endpoint, "0.0.0.0:8081");
        assert_eq!(
            c.storage.backend().unwrap(),
            Backend::Sqlite(PathBuf::from("weir-control-plane.db"))
        );
        assert_eq!(c.storage.poll_interval, Duration::from_millis(500));
        assert_eq!(
            c.auth.tokens[0].source("t").unwrap(),
            TokenSource::Env("WEIR_TEST_ADMIN")
        );
    }

    #[test]
    fn the_example_file_is_valid() {
        let text = include_str!("../control-plane.yaml");
        let c = ControlPlaneConfig::from_yaml(text).unwrap();
        assert!(c.auth.tokens.iter().any(|t| t.role == Role::Gateway));
    }

    #[test]
    fn errors_name_their_key() {
        let e = ControlPlaneConfig::from_yaml(&format!("{MINIMAL}api:\n  endpoint: nowhere\n"))
            .unwrap_err();
        assert_eq!(e.key(), Some("api.endpoint"), "{e}");
        let e =
            ControlPlaneConfig::from_yaml(&format!("{MINIMAL}storage:\n  sqlite:\n    file: x\n"))
                .unwrap_err();
        assert_eq!(e.key(), Some("storage.sqlite.file"), "{e}");
        let e = ControlPlaneConfig::from_yaml(
            "auth:\n  tokens:\n    - name: a\n      role: admin\n      sha256: abc\n",
        )
        .unwrap_err();
        assert_eq!(e.key(), Some("auth.tokens[0].sha256"), "{e}");
        let e = ControlPlaneConfig::from_yaml(
            "auth:\n  tokens:\n    - name: a\n      role: viewer\n      env: X\n",
        )
        .unwrap_err();
        assert_eq!(e.key(), Some("auth.tokens"), "{e}");
        let e = ControlPlaneConfig::from_yaml(
            "auth:\n  tokens:\n    - name: a\n      role: admin\n      env: X\n      file: y\n",
        )
        .unwrap_err();
        assert_eq!(e.key(), Some("auth.tokens[0]"), "{e}");
        let e = ControlPlaneConfig::from_yaml(&format!(
            "{MINIMAL}storage:\n  sqlite: {{path: a}}\n  postgres: {{dsn: 'postgres://x'}}\n"
        ))
        .unwrap_err();
        assert_eq!(e.key(), Some("storage"), "{e}");
        let e = ControlPlaneConfig::from_yaml(&format!("{MINIMAL}auth2: 1\n")).unwrap_err();
        assert!(e.to_string().contains("auth2"), "{e}");
    }

    #[test]
    fn instance_patterns_belong_to_gateway_tokens() {
        let c = ControlPlaneConfig::from_yaml(&format!(
            "{MINIMAL}    - name: g\n      role: gateway\n      env: G\n      instances: [\"gw-*\"]\ngateways:\n  ttl: 1h\n"
        ))
        .unwrap();
        assert_eq!(c.auth.tokens[1].instances, Some(vec!["gw-*".to_string()]));
        assert_eq!(c.gateways.ttl, Duration::from_secs(3600));
        let e = ControlPlaneConfig::from_yaml(&format!(
            "{MINIMAL}    - name: v\n      role: viewer\n      env: V\n      instances: [a]\n"
        ))
        .unwrap_err();
        assert_eq!(e.key(), Some("auth.tokens[1].instances"), "{e}");
        let e = ControlPlaneConfig::from_yaml(&format!(
            "{MINIMAL}    - name: g\n      role: gateway\n      env: G\n      instances: []\n"
        ))
        .unwrap_err();
        assert_eq!(e.key(), Some("auth.tokens[1].instances"), "{e}");
    }

    #[test]
    fn postgres_dsn_must_be_a_url() {
        let c = ControlPlaneConfig::from_yaml(&format!(
            "{MINIMAL}storage:\n  postgres:\n    dsn: 'host=x'\n"
        ))
        .unwrap();
        let e = c.storage.backend().unwrap_err();
        assert_eq!(e.key(), Some("storage.postgres.dsn"), "{e}");
    }
}
