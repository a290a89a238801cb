//! Server-side TLS settings shared by every listener that terminates TLS (the OTLP receivers,
//! the admin listener, the control plane): certificate and key files, the lowest protocol
//! version accepted, an optional client CA for mTLS, and how often the files are checked for
//! rotation.

use crate::error::ConfigError;
use crate::units::duration;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// TLS for one listener. The files are PEM; they are re-read when their modification time
/// changes, so certificates rotate without a restart.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// The server certificate chain (leaf first), PEM.
    pub cert_file: PathBuf,
    /// The private key of the leaf certificate (PKCS#8, PKCS#1 or SEC1), PEM.
    pub key_file: PathBuf,
    /// CA certificates that sign client certificates. When set, clients must present a valid
    /// certificate (mTLS) or the handshake fails.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// The lowest TLS version accepted: `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// How often the files' modification times are checked; a change reloads them.
    #[serde(default = "default_reload_interval", deserialize_with = "duration")]
    pub reload_interval: Duration,
}

/// The default `reload_interval`: rotation is noticed within a few seconds at negligible cost.
pub fn default_reload_interval() -> Duration {
    Duration::from_secs(5)
}

/// TLS protocol versions a listener can require as its minimum.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

impl ServerTls {
    /// A config with the given files, TLS 1.2 minimum, no client CA, the default interval.
    pub fn new(cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        Self {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            client_ca_file: None,
            min_version: TlsVersion::Tls12,
            reload_interval: default_reload_interval(),
        }
    }

    /// Checks values that parse but cannot work; `key` is this section's path, e.g.
    /// `receivers.grpc.tls`. Whether the files exist and hold valid PEM is checked when the
    /// listener loads them (they may legitimately be written after the config is).
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        for (name, path) in [("cert_file", &self.cert_file), ("key_file", &self.key_file)] {
            if path.as_os_str().is_empty() {
                return Err(ConfigError::invalid(
                    format!("{key}.{name}"),
                    "must name a PEM file",
                ));
            }
        }
        if let Some(ca) = &self.client_ca_file
            && ca.as_os_str().is_empty()
        {
            return Err(ConfigError::invalid(
                format!("{key}.client_ca_file"),
                "must name a PEM file, or be left out to not require client certificates",
            ));
        }
        if self.reload_interval < Duration::from_millis(100) {
            return Err(ConfigError::invalid(
                format!("{key}.reload_interval"),
                "must be at least 100ms",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ServerTls, ConfigError> {
        crate::load::parse_yaml(yaml)
    }

    #[test]
    fn minimal_section_takes_defaults() {
        let t = parse("cert_file: /c.pem\nkey_file: /k.pem\n").unwrap();
        assert_eq!(t, ServerTls::new("/c.pem", "/k.pem"));
        t.validate("x").unwrap();
    }

    #[test]
    fn full_section_parses() {
        let t = parse(
            "cert_file: c\nkey_file: k\nclient_ca_file: ca\nmin_version: '1.3'\nreload_interval: 2s\n",
        )
        .unwrap();
        assert_eq!(t.min_version, TlsVersion::Tls13);
        assert_eq!(t.client_ca_file, Some(PathBuf::from("ca")));
        assert_eq!(t.reload_interval, Duration::from_secs(2));
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = parse("cert_file: c\nkey_file: k\nmin_version: '1.1'\n").unwrap_err();
        assert_eq!(e.key(), Some("min_version"), "{e}");
        let e = parse("cert_file: c\n").unwrap_err();
        assert!(e.to_string().contains("key_file"), "{e}");
        let mut t = ServerTls::new("c", "k");
        t.reload_interval = Duration::from_millis(1);
        let e = t.validate("admin.tls").unwrap_err();
        assert_eq!(e.key(), Some("admin.tls.reload_interval"), "{e}");
        let e = ServerTls::new("", "k").validate("admin.tls").unwrap_err();
        assert_eq!(e.key(), Some("admin.tls.cert_file"), "{e}");
    }
}
