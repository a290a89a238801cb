//! Authentication of OTLP requests: a bearer token (`authorization: Bearer <token>`) or an API
//! key (a configured header) is hashed and looked up among the configured token hashes; a
//! match names the request's tenant. Tokens are never logged and never kept in clear: only
//! their SHA-256 hashes are held, and error messages say what was missing, not what was sent.

use http::HeaderMap;
use http::header::{AUTHORIZATION, HeaderName};
use std::collections::HashMap;
use std::sync::Arc;
use weir_config::ConfigError;
use weir_config::auth::{Auth, TokenHash, hash_token};

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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
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
}
