//! Reading a bootstrap config file: one loader for every binary's config (gateway, tail router,
//! control plane), so each reports a bad file the same way: the path of the key at fault and,
//! from the YAML parser, its line and column. `${env:VAR}` and `${file:PATH}` references are
//! expanded first, as the OpenTelemetry Collector does (`expand`).

use crate::error::ConfigError;
use serde::de::DeserializeOwned;
use std::path::Path;

/// A bootstrap config that is read from a YAML file and checked before it is used.
pub trait ConfigFile: DeserializeOwned {
    /// The config an empty document stands for; `None` when a document must say something.
    fn empty() -> Option<Self> {
        None
    }

    /// Checks values that parse but cannot work, naming the key.
    fn validate(&self) -> Result<(), ConfigError>;

    /// Reads, parses and validates a config file.
    fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    /// Expands the document's `${env:...}` and `${file:...}` references (see `expand`),
    /// then parses and validates it.
    fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        // Read before logging is set up (the config says how to log): warnings go to stderr.
        let text = &crate::expand::expand(text, &mut |w| eprintln!("warning: config {w}"))?;
        let cfg = match Self::empty() {
            Some(empty) if text.trim().is_empty() => empty,
            _ => parse_yaml(text)?,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Parses a YAML document into `T`, naming the path of the key at fault on error.
pub fn parse_yaml<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        // The parser appends " at line L column C"; keep it, it helps to find the key.
        ConfigError::Parse {
            key,
            reason: inner.to_string(),
        }
    })
}
