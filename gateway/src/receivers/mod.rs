//! The OTLP receivers: gRPC on 4317 and HTTP on 4318. Both check the request's credentials and
//! pick its metadata (`Ingress`) before reading the body, hand the (decompressed) body to the
//! same `Pipeline`, and translate its answer into their transport's status codes.

pub mod decompress;
pub mod grpc;
pub mod http;

use crate::auth::{AuthError, Authenticator};
use crate::pipeline::{RequestMeta, Transport};
use ::http::HeaderMap;
use ::http::header::HeaderName;
use std::sync::Arc;
use weir_config::{ConfigError, GatewayConfig};

/// The record header that carries the authenticated tenant.
pub const TENANT_HEADER: &str = "weir.tenant";

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

#[cfg(test)]
mod tests {
    use super::*;
    use ::http::HeaderValue;
    use weir_config::ConfigFile;

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
