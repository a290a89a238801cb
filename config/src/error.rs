//! The one error type of configuration loading: every variant names the file or key at fault.

use std::path::PathBuf;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The document is not valid YAML, or a key is unknown or has a value of the wrong type.
    #[error("{key}: {reason}")]
    Parse {
        /// The path of the offending key, e.g. `kafka.traces.encoding` (`.` for the root).
        key: String,
        /// What was wrong with it.
        reason: String,
    },
    /// A `${...}` reference could not be expanded.
    #[error("line {line}: {reason}")]
    Reference {
        /// The line of the document it is on.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A value parsed but is not acceptable (out of range, inconsistent with another key).
    #[error("{key}: {reason}")]
    Invalid {
        /// The path of the offending key.
        key: String,
        /// What was wrong with it and what would be accepted.
        reason: String,
    },
}

impl ConfigError {
    /// A validation error for `key`.
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// The path of the offending key, when the error is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Io { .. } | Self::Reference { .. } => None,
            Self::Parse { key, .. } | Self::Invalid { key, .. } => Some(key),
        }
    }
}
