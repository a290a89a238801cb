//! TLS for the watch stream: a tonic `ServerTlsConfig` from the shared `ServerTls` config
//! section, read once at start-up (the REST listener's TLS is weir-runtime's, reloaded when its
//! files change).

use anyhow::{Context, bail};
use weir_config::{ServerTls, TlsVersion};
use weir_runtime::tls::{ALPN_H2, server_config};

fn read(path: &std::path::Path, key: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{key}: cannot read {}", path.display()))
}

/// A tonic TLS config for the watch listener. Checks the files by building a rustls config
/// from them first, so that a bad file fails start-up with the key named.
pub fn tonic_config(
    tls: &ServerTls,
    key: &str,
) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
    if tls.min_version == TlsVersion::Tls13 {
        bail!("{key}.min_version: the watch listener accepts TLS 1.2 and 1.3; use \"1.2\"");
    }
    server_config(tls, ALPN_H2).with_context(|| key.to_string())?;
    let cert = read(&tls.cert_file, &format!("{key}.cert_file"))?;
    let private = read(&tls.key_file, &format!("{key}.key_file"))?;
    let mut config = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(cert, private));
    if let Some(ca) = &tls.client_ca_file {
        let ca = read(ca, &format!("{key}.client_ca_file"))?;
        config = config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
    }
    Ok(config)
}
