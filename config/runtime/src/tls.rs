//! TLS for the listeners: a rustls `ServerConfig` (ring provider) built from the PEM files of a
//! `ServerTls` section, swapped behind an `ArcSwap` when the files change, so a rotated
//! certificate is served to new connections without a restart. With a client CA, clients must
//! present a certificate it signed or the handshake fails (mTLS).

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use weir_config::{ServerTls, TlsVersion};

/// ALPN for a gRPC listener: HTTP/2 only (gRPC clients refuse a server that does not offer it).
pub const ALPN_H2: &[&[u8]] = &[b"h2"];
/// ALPN for an HTTP listener: HTTP/2 preferred, HTTP/1.1 accepted.
pub const ALPN_H2_HTTP1: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Why a TLS configuration could not be built; names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("{what} {path}: {reason}")]
    File {
        /// Which file it is (`cert_file`, `key_file`, `client_ca_file`).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the combination (for example a key that does not match the certificate).
    #[error("{0}")]
    Rustls(String),
}

fn file_error(what: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        what,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Reads a PEM certificate chain (at least one certificate).
fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(what, path, e))?;
    if certs.is_empty() {
        return Err(file_error(what, path, "holds no PEM CERTIFICATE"));
    }
    Ok(certs)
}

/// Builds the rustls server config that `tls` describes, offering `alpn`.
pub fn server_config(tls: &ServerTls, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs("cert_file", &tls.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|e| file_error("key_file", &tls.key_file, e))?;
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs("client_ca_file", ca)? {
                roots
                    .add(cert)
                    .map_err(|e| file_error("client_ca_file", ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| file_error("client_ca_file", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Rustls(format!("cert_file and key_file do not go together: {e}")))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// What identifies a version of the files: modification time and length of each.
type Stamp = Vec<Option<(SystemTime, u64)>>;

/// The TLS config of one listener, reloaded when its files change.
pub struct ReloadingTls {
    listener: &'static str,
    settings: ServerTls,
    alpn: &'static [&'static [u8]],
    current: ArcSwap<ServerConfig>,
    /// The stamp of the files last tried (loaded or refused), so a bad file is reported once.
    tried: Mutex<Stamp>,
}

impl ReloadingTls {
    /// Loads the files of `settings`; fails when they do not make a working config.
    pub fn new(
        listener: &'static str,
        settings: &ServerTls,
        alpn: &'static [&'static [u8]],
    ) -> Result<Arc<Self>, TlsError> {
        let stamp = stamp(settings);
        let config = server_config(settings, alpn)?;
        Ok(Arc::new(Self {
            listener,
            settings: settings.clone(),
            alpn,
            current: ArcSwap::from_pointee(config),
            tried: Mutex::new(stamp),
        }))
    }

    /// An acceptor over the config in force; a connection keeps the one it started with.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// Reloads the files when they changed since the last attempt. A set that does not load
    /// (for example a certificate written before its key) is logged and counted, and the
    /// config in force stays; the next change is tried again. Returns true on a reload.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.settings);
        {
            let mut tried = self.tried.lock().unwrap_or_else(|p| p.into_inner());
            if *tried == now {
                return false;
            }
            *tried = now;
        }
        match server_config(&self.settings, self.alpn) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                metrics::counter!("weir_tls_reloads_total", "listener" => self.listener, "result" => "ok")
                    .increment(1);
                tracing::info!(listener = self.listener, cert_file = %self.settings.cert_file.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                metrics::counter!("weir_tls_reloads_total", "listener" => self.listener, "result" => "error")
                    .increment(1);
                tracing::error!(listener = self.listener, error = %e, "TLS files changed but do not load; the previous certificate stays in use");
                false
            }
        }
    }

    /// Checks the files every `reload_interval` until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let interval = self.settings.reload_interval;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {
                    let me = self.clone();
                    // File reads and key parsing are blocking work.
                    let _ = tokio::task::spawn_blocking(move || me.reload_if_changed()).await;
                }
            }
        }
    }
}

fn stamp(tls: &ServerTls) -> Stamp {
    [
        Some(&tls.cert_file),
        Some(&tls.key_file),
        tls.client_ca_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
    })
    .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::TlsConnector;

    /// A CA and a way to issue leaf certificates from it, for tests.
    pub(crate) struct TestCa {
        pub(crate) pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    impl TestCa {
        pub(crate) fn new(name: &str) -> Self {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            Self {
                pem: cert.pem(),
                issuer: Issuer::new(params, key),
            }
        }

        /// (certificate PEM, key PEM) for `name`.
        pub(crate) fn issue(&self, name: &str) -> (String, String) {
            let params = CertificateParams::new(vec![name.to_string()]).unwrap();
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        }
    }

    fn client(ca_pem: &str, identity: Option<(&str, &str)>, alpn: &[u8]) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(cert.as_bytes())
                        .map(Result::unwrap)
                        .collect(),
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        TlsConnector::from(Arc::new(config))
    }

    /// Accepts one connection with `tls` and echoes one byte back.
    async fn echo_once(listener: &TcpListener, tls: &ReloadingTls) -> Result<(), String> {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut s = tls
            .acceptor()
            .accept(tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        s.write_all(&b).await.map_err(|e| e.to_string())?;
        s.flush().await.map_err(|e| e.to_string())?;
        Ok(())
    }

    async fn connect(
        addr: std::net::SocketAddr,
        connector: &TlsConnector,
    ) -> Result<Vec<u8>, String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut s = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(b"x").await.map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        let (_, conn) = s.get_ref();
        Ok(conn.peer_certificates().unwrap()[0].to_vec())
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[tokio::test]
    async fn serves_rotated_certificates_and_keeps_the_old_one_on_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("test ca");
        let (c1, k1) = ca.issue("localhost");
        let settings = ServerTls::new(
            write(dir.path(), "c.pem", &c1),
            write(dir.path(), "k.pem", &k1),
        );
        let tls = ReloadingTls::new("test", &settings, ALPN_H2).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connector = client(&ca.pem, None, b"h2");

        let (served, got) = tokio::join!(echo_once(&listener, &tls), connect(addr, &connector));
        served.unwrap();
        let first = got.unwrap();
        assert!(!tls.reload_if_changed(), "nothing changed yet");

        // A certificate whose key has not been written yet: refused, the old one stays.
        let (c2, k2) = ca.issue("localhost");
        std::fs::write(&settings.cert_file, &c2).unwrap();
        // Make sure the stamp differs even on file systems with coarse modification times.
        std::fs::write(&settings.key_file, format!("{k1}\n")).unwrap();
        assert!(!tls.reload_if_changed());
        let (served, got) = tokio::join!(echo_once(&listener, &tls), connect(addr, &connector));
        served.unwrap();
        assert_eq!(got.unwrap(), first);

        std::fs::write(&settings.key_file, &k2).unwrap();
        assert!(tls.reload_if_changed());
        let (served, got) = tokio::join!(echo_once(&listener, &tls), connect(addr, &connector));
        served.unwrap();
        let second = got.unwrap();
        assert_ne!(second, first, "the rotated certificate is served");
    }

    #[tokio::test]
    async fn mtls_refuses_clients_without_a_certificate_from_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("server ca");
        let client_ca = TestCa::new("client ca");
        let stranger_ca = TestCa::new("stranger ca");
        let (c, k) = ca.issue("localhost");
        let mut settings = ServerTls::new(
            write(dir.path(), "c.pem", &c),
            write(dir.path(), "k.pem", &k),
        );
        settings.client_ca_file = Some(write(dir.path(), "ca.pem", &client_ca.pem));
        settings.min_version = TlsVersion::Tls13;
        let tls = ReloadingTls::new("test", &settings, ALPN_H2).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();

        let anonymous = client(&ca.pem, None, b"h2");
        let (served, got) = tokio::join!(echo_once(&listener, &tls), connect(addr, &anonymous));
        assert!(served.is_err(), "the server refuses the handshake");
        assert!(got.is_err());

        let (sc, sk) = stranger_ca.issue("client");
        let stranger = client(&ca.pem, Some((&sc, &sk)), b"h2");
        let (served, got) = tokio::join!(echo_once(&listener, &tls), connect(addr, &stranger));
        assert!(served.is_err());
        assert!(got.is_err());

        let (cc, ck) = client_ca.issue("client");
        let member = client(&ca.pem, Some((&cc, &ck)), b"h2");
        let (served, got) = tokio::join!(echo_once(&listener, &tls), connect(addr, &member));
        served.unwrap();
        got.unwrap();
    }

    #[test]
    fn bad_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("ca");
        let (c, k) = ca.issue("localhost");
        let (_, other_key) = ca.issue("localhost");
        let cert = write(dir.path(), "c.pem", &c);
        let key = write(dir.path(), "k.pem", &k);
        let garbage = write(dir.path(), "g.pem", "not pem");

        let e =
            server_config(&ServerTls::new(dir.path().join("missing"), &key), ALPN_H2).unwrap_err();
        assert!(e.to_string().starts_with("cert_file "), "{e}");
        let e = server_config(&ServerTls::new(&cert, &garbage), ALPN_H2).unwrap_err();
        assert!(e.to_string().starts_with("key_file "), "{e}");
        let mismatched = write(dir.path(), "k2.pem", &other_key);
        let e = server_config(&ServerTls::new(&cert, &mismatched), ALPN_H2).unwrap_err();
        assert!(e.to_string().contains("do not go together"), "{e}");
    }
}
