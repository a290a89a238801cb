//! The OTLP receivers: gRPC on 4317 and HTTP on 4318. Both hand the (decompressed) body to
//! the same `Pipeline` and translate its answer into their transport's status codes.

pub mod decompress;
pub mod grpc;
pub mod http;
