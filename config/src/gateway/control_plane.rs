//! The gateway's `control_plane:` section: where the gateway takes its policy from when it is
//! managed centrally (the watch stream of `weir-control-plane`), who it says it is, and where it
//! keeps the last policy it applied.

use crate::error::ConfigError;
use crate::secret::{self, Secret};
use crate::units::duration;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The control plane a gateway connects to. The gateway token comes from exactly one of
/// `token`, `token_file` or `token_env`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GatewayControlPlane {
    /// The watch stream's URL: `http://host:8081`, or `https://host:8081` for TLS.
    pub endpoint: String,
    /// The gateway token, inline (prefer a file or an environment variable).
    #[serde(default)]
    pub token: Option<String>,
    /// A file that holds the gateway token (trailing newline ignored); read at every connect,
    /// so a rotated token is picked up without a restart.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// An environment variable that holds the gateway token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// This gateway's stable id (rollout percentages hash it); default: the host name.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Labels the control plane's rollout selectors match, e.g. `region: eu-west-1`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Where the last applied policy document is kept (written atomically), so a gateway that
    /// starts while the control plane is unreachable runs it.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// TLS to the control plane, for an `https://` endpoint.
    #[serde(default)]
    pub tls: Option<ClientTls>,
    /// How long one connection attempt may take.
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// The delays between reconnection attempts.
    #[serde(default)]
    pub reconnect: Reconnect,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/weir-gateway")
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

/// TLS files for the connection to the control plane.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// CA bundle (PEM) that signs the control plane's certificate; default: the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), when the control plane requires mTLS.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name the server certificate must carry; default: the endpoint's host.
    #[serde(default)]
    pub server_name: Option<String>,
}

/// Exponential backoff with jitter between reconnection attempts: each failed attempt doubles
/// the delay up to `max`; a connection that got as far as the Hello resets it to `initial`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Reconnect {
    /// The first delay.
    #[serde(deserialize_with = "duration")]
    pub initial: Duration,
    /// The longest delay.
    #[serde(deserialize_with = "duration")]
    pub max: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// Where a gateway token is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// Inline in the config.
    Inline(String),
    /// A file, read at every connect.
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

impl TokenSource {
    /// Reads the token, naming the config key when it cannot be had.
    pub fn read(&self) -> Result<String, ConfigError> {
        let token = match self {
            TokenSource::Inline(t) => t.clone(),
            TokenSource::File(f) => secret::read_file(f, "control_plane.token_file")?,
            TokenSource::Env(v) => secret::read_env(v, "control_plane.token_env")?,
        };
        if token.is_empty() || token.chars().any(|c| c.is_control() || c == ' ') {
            return Err(ConfigError::invalid(
                "control_plane.token",
                "the token is empty or holds spaces or control characters",
            ));
        }
        Ok(token)
    }
}

impl GatewayControlPlane {
    /// Where the token comes from (exactly one source is set once `validate` passed).
    pub fn token_source(&self) -> Result<TokenSource, ConfigError> {
        let source = Secret::one_of(
            "control_plane",
            "token",
            self.token.as_ref(),
            self.token_file.as_ref(),
            self.token_env.as_ref(),
        )?;
        Ok(match source {
            Secret::Inline(t) => TokenSource::Inline(t),
            Secret::File(f) => TokenSource::File(f),
            Secret::Env(v) => TokenSource::Env(v),
        })
    }

    /// True when the endpoint asks for TLS.
    pub fn uses_tls(&self) -> bool {
        self.endpoint.starts_with("https://")
    }

    /// Checks values that parse but cannot work, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let key = "control_plane";
        let rest = self
            .endpoint
            .strip_prefix("http://")
            .or_else(|| self.endpoint.strip_prefix("https://"))
            .ok_or_else(|| {
                ConfigError::invalid(
                    format!("{key}.endpoint"),
                    format!(
                        "`{}` is not a URL such as http://control-plane:8081 or https://control-plane:8081",
                        self.endpoint
                    ),
                )
            })?;
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(ConfigError::invalid(
                format!("{key}.endpoint"),
                format!(
                    "`{}` must be a scheme and host:port only, e.g. http://control-plane:8081",
                    self.endpoint
                ),
            ));
        }
        self.token_source()?;
        if let Some(id) = &self.instance_id
            && id.trim().is_empty()
        {
            return Err(ConfigError::invalid(
                format!("{key}.instance_id"),
                "must not be empty; leave it out to use the host name",
            ));
        }
        if self.labels.keys().any(|k| k.trim().is_empty()) {
            return Err(ConfigError::invalid(
                format!("{key}.labels"),
                "label names must not be empty",
            ));
        }
        if self.state_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.state_dir"),
                "must name a directory the gateway can write",
            ));
        }
        if let Some(tls) = &self.tls {
            if !self.uses_tls() {
                return Err(ConfigError::invalid(
                    format!("{key}.tls"),
                    "TLS settings need an https:// endpoint",
                ));
            }
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(ConfigError::invalid(
                    format!("{key}.tls"),
                    "cert_file and key_file go together",
                ));
            }
        }
        if self.connect_timeout < Duration::from_millis(10) {
            return Err(ConfigError::invalid(
                format!("{key}.connect_timeout"),
                "must be at least 10ms",
            ));
        }
        let r = &self.reconnect;
        if r.initial < Duration::from_millis(10) {
            return Err(ConfigError::invalid(
                format!("{key}.reconnect.initial"),
                "must be at least 10ms",
            ));
        }
        if r.max < r.initial {
            return Err(ConfigError::invalid(
                format!("{key}.reconnect.max"),
                format!(
                    "{:?} is shorter than reconnect.initial ({:?})",
                    r.max, r.initial
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<GatewayControlPlane, ConfigError> {
        let cp: GatewayControlPlane = crate::load::parse_yaml(yaml)?;
        cp.validate()?;
        Ok(cp)
    }

    #[test]
    fn minimal_section_takes_defaults() {
        let cp = parse("endpoint: http://cp:8081\ntoken: abc\n").unwrap();
        assert_eq!(
            cp.token_source().unwrap(),
            TokenSource::Inline("abc".into())
        );
        assert_eq!(cp.state_dir, PathBuf::from("/var/lib/weir-gateway"));
        assert_eq!(cp.reconnect, Reconnect::default());
        assert_eq!(cp.instance_id, None);
        assert!(!cp.uses_tls());
    }

    #[test]
    fn full_section_parses() {
        let cp = parse(
            "endpoint: https://cp:8081\ntoken_file: /run/token\ninstance_id: gw-1\n\
             labels: { region: eu }\nstate_dir: /tmp/s\nconnect_timeout: 2s\n\
             tls: { ca_file: ca.pem, cert_file: c.pem, key_file: k.pem, server_name: cp.local }\n\
             reconnect: { initial: 100ms, max: 5s }\n",
        )
        .unwrap();
        assert_eq!(
            cp.token_source().unwrap(),
            TokenSource::File("/run/token".into())
        );
        assert_eq!(cp.labels.get("region").map(String::as_str), Some("eu"));
        assert_eq!(cp.reconnect.initial, Duration::from_millis(100));
        assert!(cp.uses_tls());
    }

    #[test]
    fn bad_values_name_their_key() {
        let key = |yaml: &str| parse(yaml).unwrap_err().key().map(str::to_string);
        assert_eq!(
            key("endpoint: cp:8081\ntoken: a\n").as_deref(),
            Some("control_plane.endpoint")
        );
        assert_eq!(
            key("endpoint: http://cp:8081/x\ntoken: a\n").as_deref(),
            Some("control_plane.endpoint")
        );
        assert_eq!(
            key("endpoint: http://cp:8081\n").as_deref(),
            Some("control_plane")
        );
        assert_eq!(
            key("endpoint: http://cp:8081\ntoken: a\ntoken_env: T\n").as_deref(),
            Some("control_plane")
        );
        assert_eq!(
            key("endpoint: http://cp:8081\ntoken: a\ninstance_id: ''\n").as_deref(),
            Some("control_plane.instance_id")
        );
        assert_eq!(
            key("endpoint: http://cp:8081\ntoken: a\ntls: { ca_file: x }\n").as_deref(),
            Some("control_plane.tls")
        );
        assert_eq!(
            key("endpoint: http://cp:8081\ntoken: a\nreconnect: { initial: 2s, max: 1s }\n")
                .as_deref(),
            Some("control_plane.reconnect.max")
        );
        assert_eq!(
            key("endpoint: http://cp:8081\ntoken: a\nreconect: {}\n").as_deref(),
            Some("reconect")
        );
    }

    #[test]
    fn token_sources_are_read() {
        let dir = std::env::temp_dir().join(format!("weir-cp-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        assert_eq!(TokenSource::File(file.clone()).read().unwrap(), "s3cret");
        let missing = TokenSource::File(dir.join("nope")).read().unwrap_err();
        assert_eq!(missing.key(), Some("control_plane.token_file"));
        let unset = TokenSource::Env("WEIR_TEST_SURELY_UNSET_TOKEN".into())
            .read()
            .unwrap_err();
        assert_eq!(unset.key(), Some("control_plane.token_env"));
        assert!(TokenSource::Inline("a b".into()).read().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
