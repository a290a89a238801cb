//! Contexts, as kubeconfig has them: named sets of server, credentials and CA in one YAML file
//! (`$WEIRCONFIG`, else `$XDG_CONFIG_HOME/weir/config.yaml`, else `~/.config/weir/config.yaml`),
//! one of them current. Flags and environment variables override the context's values.

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The config file: the contexts and which one is used when none is named.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WeirConfig {
    /// The context used when neither `--context` nor `WEIR_CONTEXT` names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    /// Every context.
    #[serde(default)]
    pub contexts: Vec<Context>,
}

/// One control plane and how to talk to it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Context {
    /// Its name.
    pub name: String,
    /// The REST API's base URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// A bearer token, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A file holding the bearer token (read at each use, so a rotated token is picked up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// A PEM CA certificate to trust for an https server with a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// Where the config file is: `explicit` (the `--weirconfig` flag or `$WEIRCONFIG`), else under
/// the XDG config directory.
pub fn config_path(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => PathBuf::from(home).join(".config"),
            None => bail!("neither HOME nor XDG_CONFIG_HOME is set: give --weirconfig FILE"),
        },
    };
    Ok(base.join("weir").join("config.yaml"))
}

impl WeirConfig {
    /// Reads the file; a missing file is an empty config.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml_ng::from_str(&text)
            .with_context(|| format!("{}: not a weirctl config", path.display()))
    }

    /// Writes the file atomically, readable by its owner only (it may hold tokens).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = serde_yaml_ng::to_string(self).context("writing the config as YAML")?;
        let tmp = path.with_extension("yaml.tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        std::io::Write::write_all(&mut file, text.as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
    }

    /// The context named `name`.
    pub fn get(&self, name: &str) -> Option<&Context> {
        self.contexts.iter().find(|c| c.name == name)
    }

    /// The context to use: `named` when given (it must exist), else the current one if any.
    pub fn select(&self, named: Option<&str>) -> anyhow::Result<Option<&Context>> {
        match named.or(self.current_context.as_deref()) {
            None => Ok(None),
            Some(name) => match self.get(name) {
                Some(c) => Ok(Some(c)),
                None => bail!(
                    "no context named `{name}`; see `weirctl config get-contexts`, or create it \
                     with `weirctl config set-context {name} --server URL`"
                ),
            },
        }
    }

    /// Creates the context `name` or changes the values given in `update` (None = keep).
    /// An inline token and a token file exclude each other: setting one drops the other.
    pub fn set(&mut self, name: &str, update: Context) {
        let index = match self.contexts.iter().position(|c| c.name == name) {
            Some(i) => i,
            None => {
                self.contexts.push(Context {
                    name: name.to_string(),
                    ..Context::default()
                });
                self.contexts.len() - 1
            }
        };
        let context = &mut self.contexts[index];
        if update.server.is_some() {
            context.server = update.server;
        }
        if update.token.is_some() {
            context.token = update.token;
            context.token_file = None;
        }
        if update.token_file.is_some() {
            context.token_file = update.token_file;
            context.token = None;
        }
        if update.ca_file.is_some() {
            context.ca_file = update.ca_file;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_creates_then_updates_and_token_kinds_exclude_each_other() {
        let mut config = WeirConfig::default();
        config.set(
            "prod",
            Context {
                server: Some("https://a".into()),
                token: Some("t".into()),
                ..Context::default()
            },
        );
        config.set(
            "prod",
            Context {
                token_file: Some("/tok".into()),
                ..Context::default()
            },
        );
        let prod = config.get("prod").unwrap();
        assert_eq!(prod.server.as_deref(), Some("https://a"));
        assert_eq!(prod.token, None);
        assert_eq!(prod.token_file.as_deref(), Some(Path::new("/tok")));
        assert!(config.select(Some("staging")).is_err());
        assert!(config.select(None).unwrap().is_none());
    }

    #[test]
    fn round_trips_through_yaml_with_kubeconfig_like_keys() {
        let text = "current-context: prod\ncontexts:\n- name: prod\n  server: https://cp:8080\n  token-file: /t\n  ca-file: /ca.pem\n";
        let config: WeirConfig = serde_yaml_ng::from_str(text).unwrap();
        assert_eq!(config.select(None).unwrap().unwrap().name, "prod");
        let again: WeirConfig =
            serde_yaml_ng::from_str(&serde_yaml_ng::to_string(&config).unwrap()).unwrap();
        assert_eq!(again.contexts, config.contexts);
    }
}
