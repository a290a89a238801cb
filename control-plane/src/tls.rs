//! TLS for the control plane's two listeners, from the shared `ServerTls` config section: a
//! rustls server config (ring provider) for the REST API and a tonic `ServerTlsConfig` for the
//! watch stream. The files are read once at start-up.

use anyhow::{Context, bail};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use weir_config::{ServerTls, TlsVersion};

fn read(path: &std::path::Path, key: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{key}: cannot read {}", path.display()))
}

fn certs(pem: &[u8], what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{what}: not a PEM certificate file"))?;
    if certs.is_empty() {
        bail!("{what}: holds no certificate");
    }
    Ok(certs)
}

/// A rustls server config for the REST listener; `key` names the config section in errors.
pub fn rustls_config(tls: &ServerTls, key: &str) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(
        &read(&tls.cert_file, &format!("{key}.cert_file"))?,
        &format!("{key}.cert_file"),
    )?;
    let private = PrivateKeyDer::from_pem_slice(&read(&tls.key_file, &format!("{key}.key_file"))?)
        .with_context(|| format!("{key}.key_file: no PEM private key in it"))?;
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .context("TLS protocol versions")?;
    let builder = match &tls.client_ca_file {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            let what = format!("{key}.client_ca_file");
            for c in certs(&read(ca, &what)?, &what)? {
                roots
                    .add(c)
                    .with_context(|| format!("{what}: unusable CA certificate"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .with_context(|| format!("{what}: cannot verify clients with it"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, private)
        .with_context(|| format!("{key}: the key does not fit the certificate"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
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
    rustls_config(tls, key)?;
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
