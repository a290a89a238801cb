//! `google.rpc.Status` and `google.rpc.RetryInfo`: the error body of OTLP/HTTP responses and
//! the details of retryable gRPC errors.

use prost::Message;

/// `google.rpc.Status`: the body OTLP/HTTP servers send with every error response.
#[derive(Clone, PartialEq, Message)]
pub struct Status {
    /// A `google.rpc.Code` value.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// A developer-facing message that says what was wrong.
    #[prost(string, tag = "2")]
    pub message: String,
    /// Typed details, such as `RetryInfo`.
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<prost_types_any::Any>,
}

/// `google.rpc.RetryInfo`: how long a client should wait before it retries.
#[derive(Clone, PartialEq, Message)]
pub struct RetryInfo {
    /// The delay before the retry.
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<Duration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, Message)]
pub struct Duration {
    /// Whole seconds.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// The fraction of a second, in nanoseconds.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// The type URL of `RetryInfo` inside an `Any`.
pub const RETRY_INFO_TYPE_URL: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// `google.protobuf.Any`, declared here so the crate needs no `prost-types`.
pub mod prost_types_any {
    /// A message of any type with the URL that names its type.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Any {
        /// The type's URL, e.g. `type.googleapis.com/google.rpc.RetryInfo`.
        #[prost(string, tag = "1")]
        pub type_url: String,
        /// The message's protobuf encoding.
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }
}

/// `google.rpc.Code` values that OTLP servers answer with.
pub mod code {
    /// The request was bad: undecodable or with invalid ids.
    pub const INVALID_ARGUMENT: i32 = 3;
    /// The request did not arrive in time (its body, past the read timeout).
    pub const DEADLINE_EXCEEDED: i32 = 4;
    /// Too much: over the size limit or over the in-flight bound.
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    /// An internal failure.
    pub const INTERNAL: i32 = 13;
    /// Not available now; retry later.
    pub const UNAVAILABLE: i32 = 14;
    /// No valid credential.
    pub const UNAUTHENTICATED: i32 = 16;
    /// The method or type is not supported.
    pub const UNIMPLEMENTED: i32 = 12;
}

impl Status {
    /// A status with a code and message and no details. The message is cut to
    /// [`crate::echo::MAX_REPLY_MESSAGE`] bytes: it may quote the request.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: crate::echo::reply_message(message.into()),
            details: Vec::new(),
        }
    }

    /// Adds a `RetryInfo` detail that asks the client to wait `delay` before retrying.
    pub fn with_retry_after(mut self, delay: std::time::Duration) -> Self {
        let info = RetryInfo {
            retry_delay: Some(Duration {
                seconds: delay.as_secs() as i64,
                nanos: delay.subsec_nanos() as i32,
            }),
        };
        self.details.push(prost_types_any::Any {
            type_url: RETRY_INFO_TYPE_URL.to_string(),
            value: info.encode_to_vec(),
        });
        self
    }
}
