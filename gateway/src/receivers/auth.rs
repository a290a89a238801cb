//! The authentication layer: the first thing a request passes, before its body is read.
//!
//! A bearer token (`authorization: Bearer <token>`) or an API key (a configured header) is
//! hashed and looked up among the configured token hashes; a match names the request's
//! tenant. Tokens are never logged and never kept in clear: only their SHA-256 hashes are
//! held, and error messages say what was missing, not what was sent. The same layer copies
//! the configured request headers to the Kafka record headers (`RequestMeta`).

use super::request::{ExportRequest, RequestMeta, Transport};
use super::status::ReceiverError;
use futures::future::{Either, Ready, ready};
use http::HeaderMap;
use http::header::{AUTHORIZATION, HeaderName};
use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};
use weir_config::auth::{Auth, TokenHash, hash_token};
use weir_config::{ConfigError, GatewayConfig};

/// The record header that carries the authenticated tenant.
pub const TENANT_HEADER: &str = "weir.tenant";

/// Why a request is not authenticated; the message is safe to send and to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential at all.
    #[error("missing credentials: send `authorization: Bearer <token>`{0}")]
    Missing(&'static str),
    /// `authorization` is present but is not `Bearer <token>`.
    #[error("the authorization header is not `Bearer <token>`")]
    Malformed,
    /// A credential that no tenant has.
    #[error("the credential is not valid")]
    Invalid,
}

/// Checks credentials against the configured token hashes.
pub struct Authenticator {
    tenants: HashMap<TokenHash, Arc<str>>,
    api_key_header: Option<HeaderName>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("tokens", &self.tenants.len())
            .field("api_key_header", &self.api_key_header)
            .finish()
    }
}

impl Authenticator {
    /// Reads (and hashes) the tokens of a `receivers.auth` section.
    pub fn new(auth: &Auth) -> Result<Self, ConfigError> {
        let key = "receivers.auth";
        let tenants = auth
            .resolve(key)?
            .into_iter()
            .map(|(hash, tenant)| (hash, Arc::from(tenant)))
            .collect();
        let api_key_header = match &auth.api_key_header {
            None => None,
            Some(h) => Some(HeaderName::try_from(h.to_ascii_lowercase()).map_err(|_| {
                ConfigError::invalid(
                    format!("{key}.api_key_header"),
                    format!("`{h}` is not an HTTP header name"),
                )
            })?),
        };
        Ok(Self {
            tenants,
            api_key_header,
        })
    }

    /// The tenant of a request with `headers` (HTTP headers or gRPC metadata).
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<str>, AuthError> {
        let token = if let Some(value) = headers.get(AUTHORIZATION) {
            bearer(value.as_bytes()).ok_or(AuthError::Malformed)?
        } else if let Some(value) = self.api_key_header.as_ref().and_then(|h| headers.get(h)) {
            value.as_bytes().trim_ascii()
        } else {
            return Err(AuthError::Missing(match self.api_key_header {
                Some(_) => " or the API key header",
                None => "",
            }));
        };
        if token.is_empty() {
            return Err(AuthError::Invalid);
        }
        // The lookup is by hash: its timing tells nothing about any configured token.
        self.tenants
            .get(&hash_token(token))
            .cloned()
            .ok_or(AuthError::Invalid)
    }
}

/// The token of a `Bearer <token>` value (the scheme is case-insensitive, RFC 9110).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    Some(rest.trim_ascii())
}

/// What a request passes before its body is read: authentication (when configured) and the
/// request headers copied to Kafka record headers (`kafka.include_metadata_keys`).
#[derive(Debug)]
pub struct Ingress {
    auth: Option<Authenticator>,
    metadata_keys: Vec<HeaderName>,
}

impl Ingress {
    /// Reads the tokens (files, environment) and the metadata keys of `config`.
    pub fn new(config: &GatewayConfig) -> Result<Self, ConfigError> {
        let auth = config
            .receivers
            .auth
            .as_ref()
            .map(Authenticator::new)
            .transpose()?;
        let metadata_keys = config
            .kafka
            .include_metadata_keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                HeaderName::try_from(k.to_ascii_lowercase()).map_err(|_| {
                    ConfigError::invalid(
                        format!("kafka.include_metadata_keys[{i}]"),
                        format!("`{k}` is not an HTTP header name"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            auth,
            metadata_keys,
        })
    }

    /// Authenticates a request by its headers (HTTP headers or gRPC metadata) and collects
    /// its record headers. A refusal is counted and logged without the credential.
    pub fn admit(
        &self,
        headers: &HeaderMap,
        transport: Transport,
    ) -> Result<RequestMeta, AuthError> {
        let tenant = match &self.auth {
            None => None,
            Some(auth) => match auth.authenticate(headers) {
                Ok(t) => Some(t),
                Err(e) => {
                    metrics::counter!("weir_receiver_refused_requests_total", "transport" => transport.label(), "reason" => "unauthenticated")
                        .increment(1);
                    tracing::debug!(transport = transport.label(), reason = %e, "request refused: not authenticated");
                    return Err(e);
                }
            },
        };
        let mut record_headers: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(t) = &tenant {
            record_headers.push((TENANT_HEADER.to_string(), t.as_bytes().to_vec()));
        }
        for key in &self.metadata_keys {
            for value in headers.get_all(key) {
                record_headers.push((key.as_str().to_string(), value.as_bytes().to_vec()));
            }
        }
        Ok(RequestMeta {
            tenant,
            record_headers: (!record_headers.is_empty()).then(|| Arc::from(record_headers)),
        })
    }
}

/// Authentication as a layer: fills the request's `RequestMeta`, or refuses it unread.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    ingress: Arc<Ingress>,
}

impl AuthLayer {
    /// Checks requests with `ingress`.
    pub fn new(ingress: Arc<Ingress>) -> Self {
        Self { ingress }
    }
}

impl<Inner> Layer<Inner> for AuthLayer {
    type Service = Authenticate<Inner>;

    fn layer(&self, inner: Inner) -> Self::Service {
        Authenticate {
            inner,
            ingress: self.ingress.clone(),
        }
    }
}

/// Passes authenticated requests on with their `RequestMeta`; answers the others
/// UNAUTHENTICATED.
#[derive(Clone, Debug)]
pub struct Authenticate<Inner> {
    inner: Inner,
    ingress: Arc<Ingress>,
}

impl<Inner, B, F> Service<ExportRequest<B, F>> for Authenticate<Inner>
where
    Inner: Service<ExportRequest<B, F>, Error = ReceiverError>,
{
    type Response = Inner::Response;
    type Error = ReceiverError;
    type Future = Either<Ready<Result<Inner::Response, ReceiverError>>, Inner::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ReceiverError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: ExportRequest<B, F>) -> Self::Future {
        match self.ingress.admit(req.http.headers(), req.transport) {
            Ok(meta) => {
                req.meta = meta;
                Either::Right(self.inner.call(req))
            }
            Err(e) => Either::Left(ready(Err(e.into()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use weir_config::ConfigFile;
    use weir_config::auth::TokenEntry;

    fn authenticator(api_key_header: Option<&str>) -> Authenticator {
        let entry = |tenant: &str, token: &str| TokenEntry {
            tenant: tenant.into(),
            sha256: Some(
                hash_token(token.as_bytes())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect(),
            ),
            file: None,
            env: None,
        };
        let auth = Auth {
            api_key_header: api_key_header.map(String::from),
            tokens: vec![entry("team-a", "token-a"), entry("team-b", "token-b")],
        };
        auth.validate("receivers.auth").unwrap();
        Authenticator::new(&auth).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_tokens_and_api_keys_name_their_tenant() {
        let a = authenticator(Some("X-API-Key"));
        let t = a.authenticate(&headers(&[("authorization", "Bearer token-a")]));
        assert_eq!(t.as_deref(), Ok("team-a"));
        let t = a.authenticate(&headers(&[("authorization", "bearer  token-b ")]));
        assert_eq!(t.as_deref(), Ok("team-b"));
        let t = a.authenticate(&headers(&[("x-api-key", "token-b")]));
        assert_eq!(t.as_deref(), Ok("team-b"));
    }

    #[test]
    fn missing_malformed_and_unknown_credentials_are_refused() {
        let a = authenticator(None);
        assert!(matches!(
            a.authenticate(&HeaderMap::new()),
            Err(AuthError::Missing(_))
        ));
        // Without an api_key_header, that header is not a credential.
        assert!(matches!(
            a.authenticate(&headers(&[("x-api-key", "token-a")])),
            Err(AuthError::Missing(_))
        ));
        let e = a.authenticate(&headers(&[("authorization", "Basic dXNlcjpwdw==")]));
        assert_eq!(e, Err(AuthError::Malformed));
        let e = a.authenticate(&headers(&[("authorization", "Bearer")]));
        assert_eq!(e, Err(AuthError::Malformed));
        let e = a.authenticate(&headers(&[("authorization", "Bearer token-c")]));
        assert_eq!(e, Err(AuthError::Invalid));
        let e = a.authenticate(&headers(&[("authorization", "Bearer token-a-and-more")]));
        assert_eq!(e, Err(AuthError::Invalid));
        // What the client sent never appears in the message.
        assert!(!AuthError::Invalid.to_string().contains("token"));
        assert!(!format!("{a:?}").contains("team-a"));
    }

    fn ingress(yaml: &str) -> Ingress {
        Ingress::new(&GatewayConfig::from_yaml(yaml).unwrap()).unwrap()
    }

    #[test]
    fn copies_configured_metadata_and_the_tenant() {
        // SAFETY: no other test reads or writes this variable.
        unsafe { std::env::set_var("WEIR_RECEIVERS_TEST_TOKEN", "tok") };
        let i = ingress(
            "receivers:\n  auth:\n    tokens:\n      - {tenant: t1, env: WEIR_RECEIVERS_TEST_TOKEN}\nkafka:\n  include_metadata_keys: [X-Tenant-Id, x-region]\n",
        );
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer tok"));
        h.insert("x-tenant-id", HeaderValue::from_static("acme"));
        h.insert("x-other", HeaderValue::from_static("no"));
        let meta = i.admit(&h, Transport::Http).unwrap();
        assert_eq!(meta.tenant.as_deref(), Some("t1"));
        let headers = meta.record_headers.unwrap();
        assert_eq!(
            &headers[..],
            &[
                ("weir.tenant".to_string(), b"t1".to_vec()),
                ("x-tenant-id".to_string(), b"acme".to_vec()),
            ]
        );
        h.remove("authorization");
        assert!(i.admit(&h, Transport::Grpc).is_err());
    }

    #[test]
    fn without_auth_or_keys_there_are_no_headers() {
        let i = ingress("");
        let meta = i.admit(&HeaderMap::new(), Transport::Http).unwrap();
        assert!(meta.tenant.is_none());
        assert!(meta.record_headers.is_none());
    }
}
