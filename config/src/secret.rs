//! Secrets in config files (tokens, passwords, connection URLs): where they are read from, read
//! in one way, with errors that name the key and never the value.
//!
//! One spelling everywhere: a secret called `X` is given by exactly one of `X` (the value
//! inline), `X_file` (a file holding it; its trailing newline is dropped) and `X_env` (an
//! environment variable holding it). In a list of access tokens (`receivers.auth.tokens`,
//! the control plane's `auth.tokens`) each entry is itself the secret, so the name drops
//! out: `file` or `env`, and `sha256` (the token's hash) instead of the token inline.

use crate::error::ConfigError;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};

/// Where one secret is read from.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// In the config itself.
    Inline(String),
    /// A file holding it.
    File(PathBuf),
    /// An environment variable holding it.
    Env(String),
}

/// Shows where the secret comes from, never an inline value.
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inline(_) => f.write_str("Inline(<redacted>)"),
            Self::File(p) => f.debug_tuple("File").field(p).finish(),
            Self::Env(v) => f.debug_tuple("Env").field(v).finish(),
        }
    }
}

impl Secret {
    /// The one source that the keys `{name}`, `{name}_file` and `{name}_env` of the section at
    /// `at` give. Errors, naming the section, when none or several are set.
    pub fn one_of(
        at: &str,
        name: &str,
        inline: Option<&String>,
        file: Option<&PathBuf>,
        env: Option<&String>,
    ) -> Result<Self, ConfigError> {
        match (inline, file, env) {
            (Some(v), None, None) => Ok(Self::Inline(v.clone())),
            (None, Some(f), None) => Ok(Self::File(f.clone())),
            (None, None, Some(v)) => Ok(Self::Env(v.clone())),
            _ => Err(ConfigError::invalid(
                at,
                format!("set exactly one of {name}, {name}_file, {name}_env"),
            )),
        }
    }

    /// Reads an optional, non-empty key given inline, from a file or from an environment
    /// variable (at most one of them) under section `at`: `None` when none is set.
    pub fn read_optional_key(
        at: &str,
        name: &str,
        inline: Option<&String>,
        file: Option<&PathBuf>,
        env: Option<&String>,
    ) -> Result<Option<Vec<u8>>, ConfigError> {
        if inline.is_none() && file.is_none() && env.is_none() {
            return Ok(None);
        }
        let key_path = format!("{at}.{name}");
        let key = Self::one_of(at, name, inline, file, env)?.read(&key_path)?;
        if key.is_empty() {
            return Err(ConfigError::invalid(key_path, "the key is empty"));
        }
        Ok(Some(key.into_bytes()))
    }

    /// Reads the secret; `key` is its inline key (e.g. `kafka.security.sasl.password`), and
    /// errors name `{key}_file` or `{key}_env`.
    pub fn read(&self, key: &str) -> Result<String, ConfigError> {
        match self {
            Self::Inline(v) => Ok(v.clone()),
            Self::File(path) => read_file(path, &format!("{key}_file")),
            Self::Env(var) => read_env(var, &format!("{key}_env")),
        }
    }
}

/// Reads a secret from a file, without its trailing newline; `key` names the config key.
pub fn read_file(path: &Path, key: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
        .map_err(|e| ConfigError::invalid(key, format!("cannot read {}: {e}", path.display())))
}

/// Reads a secret from an environment variable; `key` names the config key.
pub fn read_env(var: &str, key: &str) -> Result<String, ConfigError> {
    std::env::var(var).map_err(|e| {
        let why = match e {
            std::env::VarError::NotPresent => "is not set",
            std::env::VarError::NotUnicode(_) => "is not UTF-8",
        };
        ConfigError::invalid(key, format!("environment variable {var} {why}"))
    })
}

/// A SHA-256 digest of a token: what the gateway and the control plane keep instead of it.
pub type TokenHash = [u8; 32];

/// Where an access token of a token list comes from, after validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource<'a> {
    /// The SHA-256 digest of the token.
    Sha256(TokenHash),
    /// A file holding the token.
    File(&'a Path),
    /// An environment variable holding the token.
    Env(&'a str),
}

impl<'a> TokenSource<'a> {
    /// The source of the token-list entry at `at` (e.g. `auth.tokens[0]`): exactly one of its
    /// `sha256`, `file` and `env`. Errors name the key but never the value.
    pub fn of(
        at: &str,
        sha256: Option<&'a String>,
        file: Option<&'a PathBuf>,
        env: Option<&'a String>,
    ) -> Result<Self, ConfigError> {
        match (sha256, file, env) {
            (Some(hex), None, None) => parse_sha256(hex).map(Self::Sha256).ok_or_else(|| {
                ConfigError::invalid(
                    format!("{at}.sha256"),
                    format!(
                        "is not a SHA-256 hash ({} characters; expected 64 hex digits, e.g. from `printf %s TOKEN | sha256sum`)",
                        hex.len()
                    ),
                )
            }),
            (None, Some(path), None) => Ok(Self::File(path)),
            (None, None, Some(var)) if var.is_empty() => Err(ConfigError::invalid(
                format!("{at}.env"),
                "name an environment variable",
            )),
            (None, None, Some(var)) => Ok(Self::Env(var)),
            _ => Err(ConfigError::invalid(at, "set exactly one of sha256, file, env")),
        }
    }

    /// The token's SHA-256, reading the file or variable when that is where it is; surrounding
    /// whitespace is not part of the token. Errors name the key but never the value.
    pub fn hash(&self, at: &str) -> Result<TokenHash, ConfigError> {
        let (token, key) = match self {
            Self::Sha256(digest) => return Ok(*digest),
            Self::File(path) => (
                read_file(path, &format!("{at}.file"))?,
                format!("{at}.file"),
            ),
            Self::Env(var) => (read_env(var, &format!("{at}.env"))?, format!("{at}.env")),
        };
        let token = token.trim();
        if token.is_empty() {
            return Err(ConfigError::invalid(key, "the token is empty"));
        }
        Ok(hash_token(token.as_bytes()))
    }
}

/// Hashes a presented token the way configured tokens are hashed.
pub fn hash_token(token: &[u8]) -> TokenHash {
    Sha256::digest(token).into()
}

fn parse_sha256(text: &str) -> Option<TokenHash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_is_read_and_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dsn");
        std::fs::write(&file, "postgres://u:p@h/db\n").unwrap();
        let at = "storage.postgres";
        let from_file = Secret::one_of(at, "dsn", None, Some(&file), None).unwrap();
        assert_eq!(
            from_file.read("storage.postgres.dsn").unwrap(),
            "postgres://u:p@h/db"
        );
        let inline = "x".to_string();
        let e = Secret::one_of(at, "dsn", Some(&inline), Some(&file), None).unwrap_err();
        assert_eq!(e.key(), Some(at), "{e}");
        assert!(e.to_string().contains("dsn, dsn_file, dsn_env"), "{e}");
        assert_eq!(
            format!("{:?}", Secret::Inline(inline)),
            "Inline(<redacted>)"
        );

        let unset = Secret::Env("WEIR_SECRET_TEST_SURELY_UNSET".into());
        let e = unset.read("storage.postgres.dsn").unwrap_err();
        assert_eq!(e.key(), Some("storage.postgres.dsn_env"), "{e}");
        let missing = Secret::File(dir.path().join("nope"));
        let e = missing.read("storage.postgres.dsn").unwrap_err();
        assert_eq!(e.key(), Some("storage.postgres.dsn_file"), "{e}");
    }

    #[test]
    fn token_sources_hash_the_trimmed_token() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  tok \n").unwrap();
        let source = TokenSource::of("t", None, Some(&file), None).unwrap();
        assert_eq!(source.hash("t").unwrap(), hash_token(b"tok"));
        std::fs::write(&file, "\n").unwrap();
        assert_eq!(source.hash("t").unwrap_err().key(), Some("t.file"));
        let hex = hex::encode(hash_token(b"tok"));
        let hashed = TokenSource::of("t", Some(&hex), None, None).unwrap();
        assert_eq!(hashed.hash("t").unwrap(), hash_token(b"tok"));
        let empty = String::new();
        let e = TokenSource::of("t", None, None, Some(&empty)).unwrap_err();
        assert_eq!(e.key(), Some("t.env"));
    }
}
