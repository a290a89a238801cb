//! The OTLP receivers: gRPC on 4317 and HTTP on 4318.
//!
//! Each request concern is one tower layer in its own file, composed once per transport
//! (`grpc::stack`, `http::stack`), outermost first:
//!
//! | layer | file | what it does |
//! |---|---|---|
//! | (OTLP/HTTP only, when configured) CORS | `cors.rs` | answers preflights, marks responses to allowed origins |
//! | error mapping | `status.rs` | the pipeline's answer or a refusal -> the transport's reply |
//! | authentication | `auth.rs` | credentials and record headers (`RequestMeta`), before the body is read |
//! | (OTLP/HTTP only) method and `Content-Type` | `http.rs` | 405 and 415 |
//! | decompression | `decompress.rs` (HTTP), tonic's codec in `grpc.rs` (gRPC, its body guarded by `grpc_body.rs`) | the whole message, within the size limit and the body deadline; the declared length reserved before it is read |
//! | admission | `admission.rs` | the in-flight byte budget shared by both receivers |
//! | export | `export.rs` | hands the message to the `Pipeline` |
//!
//! What passes between them is an `ExportRequest` (`request.rs`).

pub mod admission;
pub mod auth;
pub mod cors;
pub mod decompress;
pub mod export;
pub mod grpc;
pub mod grpc_body;
pub mod http;
pub mod request;
pub mod status;

use crate::pipeline::Pipeline;
use admission::Admission;
use auth::Ingress;
use std::sync::Arc;
use weir_config::{ConfigError, GatewayConfig};

/// What both receivers' stacks are built from: the pipeline they feed, who may send (and
/// which request headers go to Kafka), and the in-flight byte budget they share.
#[derive(Clone)]
pub struct Receiver {
    /// Where requests go.
    pub pipeline: Arc<Pipeline>,
    /// Authentication and metadata.
    pub ingress: Arc<Ingress>,
    /// The in-flight byte budget.
    pub admission: Admission,
    /// How long an OTLP/HTTP body may take to arrive once its headers are in.
    pub body_read_timeout: std::time::Duration,
    /// How long an OTLP/gRPC body may take to arrive once its headers are in.
    pub grpc_body_read_timeout: std::time::Duration,
    /// The OTLP/HTTP listener's CORS rules, when it has a `cors` section.
    pub cors: Option<Arc<cors::CorsPolicy>>,
}

impl Receiver {
    /// Reads the credentials, metadata keys and in-flight limit of `config`.
    pub fn new(config: &GatewayConfig, pipeline: Arc<Pipeline>) -> Result<Self, ConfigError> {
        Ok(Self {
            admission: pipeline.admission().clone(),
            body_read_timeout: config.receivers.http.body_read_timeout,
            grpc_body_read_timeout: config.receivers.grpc.body_read_timeout,
            cors: config
                .receivers
                .http
                .cors
                .as_ref()
                .map(|c| Arc::new(cors::CorsPolicy::new(c))),
            pipeline,
            ingress: Arc::new(Ingress::new(config)?),
        })
    }
}

#[cfg(test)]
mod tests;
