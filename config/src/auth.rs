//! Who may send to the OTLP receivers: bearer tokens and API keys, each mapped to a tenant.
//!
//! Tokens never appear in the config in clear: they are given as SHA-256 hashes, or read from a
//! file or an environment variable at start-up and hashed at once. Nothing here puts a token
//! (or a value that might be one) into an error message.

use crate::error::ConfigError;
use crate::secret::TokenSource;
pub use crate::secret::{TokenHash, hash_token};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

/// The `receivers.auth` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// A header whose whole value is an API key, e.g. `x-api-key`, accepted besides
    /// `authorization: Bearer <token>`. Absent: only the `authorization` header is read.
    #[serde(default)]
    pub api_key_header: Option<String>,
    /// The accepted credentials and their tenants.
    pub tokens: Vec<TokenEntry>,
}

/// One accepted credential. Exactly one of `sha256`, `file` and `env` is set.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// The tenant a request with this credential belongs to (`[A-Za-z0-9._-]`, 1-128).
    pub tenant: String,
    /// The SHA-256 of the token, as 64 hex digits (`printf %s TOKEN | sha256sum`).
    #[serde(default)]
    pub sha256: Option<String>,
    /// A file that holds the token (surrounding whitespace ignored), read at start-up.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// An environment variable that holds the token, read at start-up.
    #[serde(default)]
    pub env: Option<String>,
}

/// Shows where a token comes from, never the hash itself.
impl fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEntry")
            .field("tenant", &self.tenant)
            .field("sha256", &self.sha256.as_ref().map(|_| "<redacted>"))
            .field("file", &self.file)
            .field("env", &self.env)
            .finish()
    }
}

impl TokenEntry {
    /// Where the token comes from; `at` is this entry's path, e.g. `receivers.auth.tokens[0]`.
    pub fn source(&self, at: &str) -> Result<TokenSource<'_>, ConfigError> {
        TokenSource::of(
            at,
            self.sha256.as_ref(),
            self.file.as_ref(),
            self.env.as_ref(),
        )
    }
}

impl Auth {
    /// Checks the section's shape without reading files or the environment; `key` is its path.
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if let Some(h) = &self.api_key_header {
            let lower = h.to_ascii_lowercase();
            if crate::gateway::http_header_name(h).is_none() {
                return Err(ConfigError::invalid(
                    format!("{key}.api_key_header"),
                    format!("`{h}` is not an HTTP header name"),
                ));
            }
            if lower == "authorization" {
                return Err(ConfigError::invalid(
                    format!("{key}.api_key_header"),
                    "`authorization` is always read (as `Bearer <token>`); name another header",
                ));
            }
        }
        if self.tokens.is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.tokens"),
                "list at least one token, or leave auth out to accept every request",
            ));
        }
        for (i, t) in self.tokens.iter().enumerate() {
            let at = format!("{key}.tokens[{i}]");
            if !valid_tenant(&t.tenant) {
                return Err(ConfigError::invalid(
                    format!("{at}.tenant"),
                    format!(
                        "`{}` is not a tenant name: use 1-128 of a-z A-Z 0-9 . _ -",
                        t.tenant
                    ),
                ));
            }
            t.source(&at)?;
        }
        Ok(())
    }

    /// Reads and hashes every token: the map from token hash to tenant. Fails, naming the
    /// entry but never its value, when a file or variable cannot be read or is empty, or when
    /// one token is given to two different tenants.
    pub fn resolve(&self, key: &str) -> Result<HashMap<TokenHash, String>, ConfigError> {
        let mut out: HashMap<TokenHash, String> = HashMap::with_capacity(self.tokens.len());
        for (i, t) in self.tokens.iter().enumerate() {
            let at = format!("{key}.tokens[{i}]");
            let hash = t.source(&at)?.hash(&at)?;
            if let Some(other) = out.get(&hash)
                && *other != t.tenant
            {
                return Err(ConfigError::invalid(
                    at,
                    format!(
                        "the same token is also given to tenant `{other}`: a token must name one tenant"
                    ),
                ));
            }
            out.insert(hash, t.tenant.clone());
        }
        Ok(out)
    }
}

/// Tenant names go into Kafka headers and metric labels: keep them short and plain.
fn valid_tenant(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cret-token-value";

    fn auth(yaml: &str) -> Auth {
        crate::load::parse_yaml(yaml).unwrap()
    }

    #[test]
    fn tokens_from_hash_file_and_env_resolve_to_tenants() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tok");
        std::fs::write(&f, "file-token\n").unwrap();
        // A variable name no other test uses, so setting it cannot race.
        let var = "WEIR_CONFIG_AUTH_TEST_TOKEN";
        // SAFETY: no other thread reads or writes this variable.
        unsafe { std::env::set_var(var, "env-token") };
        let hash = hex::encode(hash_token(SECRET.as_bytes()));
        let a = auth(&format!(
            "api_key_header: X-API-Key\ntokens:\n  - {{tenant: a, sha256: {hash}}}\n  - {{tenant: b, file: {}}}\n  - {{tenant: c, env: {var}}}\n",
            f.display()
        ));
        a.validate("receivers.auth").unwrap();
        let map = a.resolve("receivers.auth").unwrap();
        assert_eq!(map[&hash_token(SECRET.as_bytes())], "a");
        assert_eq!(map[&hash_token(b"file-token")], "b");
        assert_eq!(map[&hash_token(b"env-token")], "c");
        assert!(!map.contains_key(&hash_token(b"other")));
    }

    #[test]
    fn errors_name_the_entry_and_never_the_value() {
        // A raw token pasted where the hash goes.
        let a = auth(&format!("tokens:\n  - {{tenant: a, sha256: {SECRET}}}\n"));
        let e = a.validate("receivers.auth").unwrap_err();
        assert_eq!(e.key(), Some("receivers.auth.tokens[0].sha256"), "{e}");
        assert!(!e.to_string().contains(SECRET), "{e}");
        assert!(!format!("{a:?}").contains(SECRET));

        let a = auth("tokens:\n  - {tenant: a, env: WEIR_CONFIG_AUTH_TEST_UNSET}\n");
        let e = a.resolve("receivers.auth").unwrap_err();
        assert_eq!(e.key(), Some("receivers.auth.tokens[0].env"), "{e}");

        let a = auth("tokens:\n  - {tenant: 'bad tenant', env: X}\n");
        let e = a.validate("k").unwrap_err();
        assert_eq!(e.key(), Some("k.tokens[0].tenant"), "{e}");

        let a = auth("tokens:\n  - {tenant: a, env: X, file: /f}\n");
        assert_eq!(a.validate("k").unwrap_err().key(), Some("k.tokens[0]"));

        let a = auth("api_key_header: Authorization\ntokens:\n  - {tenant: a, env: X}\n");
        assert_eq!(a.validate("k").unwrap_err().key(), Some("k.api_key_header"));

        let hash = hex::encode(hash_token(SECRET.as_bytes()));
        let a = auth(&format!(
            "tokens:\n  - {{tenant: a, sha256: {hash}}}\n  - {{tenant: b, sha256: {hash}}}\n"
        ));
        let e = a.resolve("k").unwrap_err();
        assert_eq!(e.key(), Some("k.tokens[1]"), "{e}");
        assert!(!e.to_string().contains(&hash), "{e}");
    }
}
