//! The gateway's bootstrap config: what it listens on, where it writes, and its limits.
//! Read once at start-up; policies (sampling, routing) come separately.

use crate::error::ConfigError;
use crate::load::ConfigFile;
use crate::secret::Secret;
use crate::tls::ServerTls;
use crate::units::{ByteSize, duration};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub mod control_plane;
pub mod spool;
pub use control_plane::GatewayControlPlane;
pub use spool::SpoolConfig;

/// The whole bootstrap config of `weir-gateway`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// The OTLP listeners.
    pub receivers: Receivers,
    /// Request size, memory and time limits.
    pub limits: Limits,
    /// The Kafka exporter.
    pub kafka: KafkaConfig,
    /// The admin listener (health, readiness, metrics).
    pub admin: Admin,
    /// A policy document (sampling, routing), reloaded when it changes and on SIGHUP.
    /// Without one every span is kept and goes to `kafka.traces.topic`.
    pub policy_file: Option<PathBuf>,
    /// The control plane that pushes policies to this gateway; absent: `policy_file` only.
    /// Once it has pushed a policy, that policy wins over `policy_file`.
    pub control_plane: Option<GatewayControlPlane>,
    /// Where tail sampling decisions (the policy's `tail` section) are published.
    pub tail: TailDecisions,
    /// The local write-ahead spool for records Kafka did not acknowledge in time.
    pub spool: SpoolConfig,
    /// How long shutdown waits for in-flight requests and the producer's flush.
    #[serde(deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    /// Logging.
    pub log: Log,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            receivers: Receivers::default(),
            limits: Limits::default(),
            kafka: KafkaConfig::default(),
            admin: Admin::default(),
            policy_file: None,
            control_plane: None,
            tail: TailDecisions::default(),
            spool: SpoolConfig::default(),
            shutdown_timeout: Duration::from_secs(30),
            log: Log::default(),
        }
    }
}

/// The OTLP/gRPC and OTLP/HTTP listeners.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Receivers {
    /// OTLP/gRPC, default 0.0.0.0:4317.
    pub grpc: Listener,
    /// OTLP/HTTP, default 0.0.0.0:4318.
    pub http: Listener,
    /// Who may send: bearer tokens or API keys mapped to tenants. Absent: anyone may send.
    pub auth: Option<crate::auth::Auth>,
}

impl Default for Receivers {
    fn default() -> Self {
        Self {
            grpc: Listener::new("0.0.0.0:4317"),
            http: Listener::new("0.0.0.0:4318"),
            auth: None,
        }
    }
}

/// One listener: whether it runs, the address it binds, TLS, and its connection limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Whether the listener runs.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `host:port` to bind.
    pub endpoint: String,
    /// TLS (and mTLS with a client CA); absent: plaintext.
    #[serde(default)]
    pub tls: Option<ServerTls>,
    /// Connections served at once; past it new connections are closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// HTTP/2 streams (concurrent requests) per connection.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// A connection with no request in progress for this long is closed.
    #[serde(default = "default_idle_timeout", deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// The TLS handshake and a request's headers (the first request's, on HTTP/2) must
    /// arrive within this time, or the connection is closed (slow-loris).
    #[serde(default = "default_header_read_timeout", deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// A request's whole body must arrive within this time once its headers are in, or the
    /// request is answered 408 and its share of the in-flight budget given back (a slow body
    /// must not hold its slot forever): 408 on OTLP/HTTP, DEADLINE_EXCEEDED on OTLP/gRPC.
    #[serde(default = "default_body_read_timeout", deserialize_with = "duration")]
    pub body_read_timeout: Duration,
    /// Connection ageing and HTTP/2 keepalive pings, spelled as the Collector's
    /// `keepalive.server_parameters`.
    #[serde(default)]
    pub keepalive: Keepalive,
    /// CORS for browser clients (OTLP/HTTP only); absent: no CORS headers, preflights go
    /// unanswered as CORS.
    #[serde(default)]
    pub cors: Option<Cors>,
}

/// The `keepalive` section of a listener: the Collector's `keepalive` with its
/// `server_parameters` (grpc-go's `keepalive.ServerParameters`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keepalive {
    /// How connections age and how the server pings.
    #[serde(default)]
    pub server_parameters: KeepaliveServerParameters,
}

/// How long a connection may live and how the server checks that its peer is still there.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepaliveServerParameters {
    /// A connection older than this (give or take 10%, so connections opened together do not
    /// all leave together) is asked to go away (HTTP/2 GOAWAY; HTTP/1 closes after the
    /// current response), so clients reconnect and spread over new replicas. Absent: never.
    #[serde(default, deserialize_with = "optional_duration")]
    pub max_connection_age: Option<Duration>,
    /// How long requests in flight on an aged connection may take to finish before it is
    /// cut. Absent: as long as they need.
    #[serde(default, deserialize_with = "optional_duration")]
    pub max_connection_age_grace: Option<Duration>,
    /// With no frame from the client for this long, the server sends an HTTP/2 PING.
    #[serde(default = "default_keepalive_time", deserialize_with = "duration")]
    pub time: Duration,
    /// A PING not answered within this time closes the connection.
    #[serde(default = "default_keepalive_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for KeepaliveServerParameters {
    fn default() -> Self {
        Self {
            max_connection_age: None,
            max_connection_age_grace: None,
            time: default_keepalive_time(),
            timeout: default_keepalive_timeout(),
        }
    }
}

/// grpc-go's default `Time`: a PING after two hours without a frame.
fn default_keepalive_time() -> Duration {
    Duration::from_secs(2 * 3600)
}

/// grpc-go's default `Timeout`.
fn default_keepalive_timeout() -> Duration {
    Duration::from_secs(20)
}

/// CORS on OTLP/HTTP, as the Collector's `cors` section of `confighttp`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    /// Origins browsers may send from: exact (`https://app.example.com`), with one `*`
    /// wildcard (`https://*.example.com`), or `*` for any.
    pub allowed_origins: Vec<String>,
    /// Request headers allowed besides `Accept`, `Accept-Language`, `Content-Type` and
    /// `Content-Language` (always allowed); `*` allows any.
    #[serde(default)]
    pub allowed_headers: Vec<String>,
    /// How long browsers may cache a preflight's answer, in seconds (the Collector's
    /// integer); absent: no `Access-Control-Max-Age`.
    #[serde(default)]
    pub max_age: Option<u64>,
}

impl Cors {
    /// Checks the origin patterns and header names; `key` is the section's path.
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.allowed_origins.is_empty() {
            return Err(ConfigError::invalid(
                format!("{key}.allowed_origins"),
                "list at least one origin (or remove the cors section)",
            ));
        }
        for (i, o) in self.allowed_origins.iter().enumerate() {
            if o.matches('*').count() > 1 || o.trim().is_empty() {
                return Err(ConfigError::invalid(
                    format!("{key}.allowed_origins[{i}]"),
                    format!(
                        "`{o}` is not an origin pattern: use an origin (scheme://host[:port]) with at most one `*`"
                    ),
                ));
            }
        }
        for (i, h) in self.allowed_headers.iter().enumerate() {
            if h != "*" && !is_token(h) {
                return Err(ConfigError::invalid(
                    format!("{key}.allowed_headers[{i}]"),
                    format!("`{h}` is not a header name"),
                ));
            }
        }
        Ok(())
    }
}

/// An HTTP token (RFC 9110 `tchar`s): what a header name may be made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Deserializes an optional duration ("5m"); absent or null: `None`.
fn optional_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    struct Wrapped(#[serde(deserialize_with = "duration")] Duration);
    Ok(Option::<Wrapped>::deserialize(d)?.map(|Wrapped(d)| d))
}

impl Listener {
    /// An enabled listener on `endpoint` with the default limits and no TLS.
    pub fn new(endpoint: &str) -> Self {
        Self {
            enabled: true,
            endpoint: endpoint.into(),
            tls: None,
            max_connections: default_max_connections(),
            max_concurrent_streams: default_max_concurrent_streams(),
            idle_timeout: default_idle_timeout(),
            header_read_timeout: default_header_read_timeout(),
            body_read_timeout: default_body_read_timeout(),
            keepalive: Keepalive::default(),
            cors: None,
        }
    }

    /// Checks the limits and the TLS section; `key` is the listener's path.
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        parse_addr(&format!("{key}.endpoint"), &self.endpoint)?;
        if let Some(tls) = &self.tls {
            tls.validate(&format!("{key}.tls"))?;
        }
        if self.max_connections == 0 {
            return Err(ConfigError::invalid(
                format!("{key}.max_connections"),
                "must be at least 1",
            ));
        }
        if self.max_concurrent_streams == 0 {
            return Err(ConfigError::invalid(
                format!("{key}.max_concurrent_streams"),
                "must be at least 1",
            ));
        }
        for (name, d) in [
            ("idle_timeout", self.idle_timeout),
            ("header_read_timeout", self.header_read_timeout),
            ("body_read_timeout", self.body_read_timeout),
        ] {
            if d < Duration::from_millis(10) {
                return Err(ConfigError::invalid(
                    format!("{key}.{name}"),
                    "must be at least 10ms",
                ));
            }
        }
        let ka = &self.keepalive.server_parameters;
        let ka_key = format!("{key}.keepalive.server_parameters");
        for (name, d) in [
            ("max_connection_age", ka.max_connection_age),
            ("time", Some(ka.time)),
            ("timeout", Some(ka.timeout)),
        ] {
            // Sub-second ages and pings only churn connections and cost CPU.
            if d.is_some_and(|d| d < Duration::from_secs(1)) {
                return Err(ConfigError::invalid(
                    format!("{ka_key}.{name}"),
                    "must be at least 1s",
                ));
            }
        }
        if let Some(cors) = &self.cors {
            cors.validate(&format!("{key}.cors"))?;
        }
        Ok(())
    }
}

fn yes() -> bool {
    true
}

fn default_max_connections() -> usize {
    4096
}

fn default_max_concurrent_streams() -> u32 {
    256
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(300)
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_body_read_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Limits that keep the gateway's memory and latency bounded.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// The largest OTLP message accepted, after decompression.
    pub max_message_size: ByteSize,
    /// Request bytes held at once over all requests; past it requests are refused with 429.
    pub max_in_flight_bytes: ByteSize,
    /// How long a request waits for Kafka's acknowledgement before it gets 503/UNAVAILABLE.
    #[serde(deserialize_with = "duration")]
    pub export_timeout: Duration,
    /// The delay clients are asked to wait before retrying (Retry-After, RetryInfo).
    #[serde(deserialize_with = "duration")]
    pub retry_after: Duration,
    /// The most attributes a span may carry; absent: no cap.
    pub max_span_attributes: Option<u32>,
    /// The largest string or bytes attribute value of a span (arrays and maps: their encoded
    /// size); absent: no cap.
    pub max_attribute_value_size: Option<ByteSize>,
    /// What happens to a span over either cap.
    pub attribute_limit_action: AttributeLimitAction,
}

/// What the gateway does with a span over `max_span_attributes` or `max_attribute_value_size`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AttributeLimitAction {
    /// Keep the span: drop the attributes past the count (adding to its
    /// `dropped_attributes_count`), cut long strings and bytes, drop long arrays and maps.
    #[default]
    Truncate,
    /// Refuse the span (reported in `partial_success`); the rest of the request goes on.
    Reject,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: ByteSize(64 << 20),
            max_in_flight_bytes: ByteSize(256 << 20),
            export_timeout: Duration::from_secs(10),
            retry_after: Duration::from_secs(1),
            max_span_attributes: None,
            max_attribute_value_size: None,
            attribute_limit_action: AttributeLimitAction::Truncate,
        }
    }
}

/// The most librdkafka producers one gateway spreads its records over (`kafka.producers`).
pub const MAX_PRODUCERS: usize = 16;

/// The Kafka exporter: brokers, topics, encodings, producer settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// The producer's client id.
    pub client_id: String,
    /// Where spans go.
    pub traces: SignalTopic,
    /// Where metric points go.
    pub metrics: SignalTopic,
    /// Where log records go.
    pub logs: SignalTopic,
    /// The largest record value produced; larger groups are split.
    pub max_message_size: ByteSize,
    /// Producer acknowledgements.
    pub acks: Acks,
    /// Record batch compression.
    pub compression: Compression,
    /// How record keys map to partitions.
    pub partitioner: Partitioner,
    /// How long the producer waits to fill a batch (librdkafka `linger.ms`). 0: a batch goes
    /// as soon as the broker connection has room (`max_in_flight`), so records that arrive
    /// while a produce request is outstanding are batched together.
    #[serde(deserialize_with = "duration")]
    pub linger: Duration,
    /// Produce requests outstanding per broker connection (librdkafka
    /// `max.in.flight.requests.per.connection`); at most 5 with `acks: all` (idempotence).
    pub max_in_flight: u32,
    /// librdkafka producers the records are spread over (by key), each with its own broker
    /// connections and so its own `max_in_flight` window: 1 to `MAX_PRODUCERS`.
    pub producers: usize,
    /// Protocol, SASL and TLS to the brokers.
    pub security: KafkaSecurity,
    /// Raw librdkafka producer properties; they win over the keys above.
    pub properties: BTreeMap<String, ScalarString>,
    /// Request headers (gRPC metadata) copied to every record of the request as record
    /// headers, like the Collector's `include_metadata_keys`. Matched case-insensitively.
    pub include_metadata_keys: Vec<String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: vec!["127.0.0.1:9092".into()],
            client_id: "weir-gateway".into(),
            traces: SignalTopic::new("otlp_spans"),
            metrics: SignalTopic::new("otlp_metrics"),
            logs: SignalTopic::new("otlp_logs"),
            max_message_size: ByteSize(1_000_000),
            acks: Acks::All,
            compression: Compression::None,
            partitioner: Partitioner::default(),
            linger: Duration::ZERO,
            max_in_flight: 1,
            producers: 1,
            security: KafkaSecurity::default(),
            properties: BTreeMap::new(),
            include_metadata_keys: Vec::new(),
        }
    }
}

/// A signal's topic and record encoding.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalTopic {
    /// The topic name.
    pub topic: String,
    /// How record values are encoded.
    #[serde(default)]
    pub encoding: Encoding,
}

impl SignalTopic {
    fn new(topic: &str) -> Self {
        Self {
            topic: topic.into(),
            encoding: Encoding::OtlpProto,
        }
    }
}

/// Record value encodings, named as the Collector's kafkaexporter names them.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// OTLP protobuf (`TracesData`, `MetricsData`, `LogsData`).
    #[default]
    OtlpProto,
    /// OTLP/JSON.
    OtlpJson,
}

/// `acks`: how many replicas must have a record before the broker acknowledges it.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum Acks {
    /// All in-sync replicas (`-1`); the only setting that cannot lose acknowledged data.
    #[serde(rename = "all", alias = "-1")]
    All,
    /// The leader only.
    #[serde(rename = "1")]
    Leader,
    /// No acknowledgement at all.
    #[serde(rename = "0")]
    None,
}

impl Acks {
    /// The librdkafka value of `acks`.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Acks::All => "all",
            Acks::Leader => "1",
            Acks::None => "0",
        }
    }
}

/// Record batch compression codecs.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// No compression.
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// The librdkafka value of `compression.codec`.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// How record keys map to partitions: librdkafka's partitioners by their librdkafka names.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Partitioner {
    /// FNV-1a 32-bit of the key, absolute value, modulo the partition count: the mapping of
    /// Sarama's `NewHashPartitioner` and of the Collector's kafkaexporter, so that a topic
    /// written by both keeps each trace in one partition. Keyless records go to a random
    /// partition.
    #[default]
    Fnv1aRandom,
    /// The same as `fnv1a_random`, but keyless records all go to one partition.
    Fnv1a,
    /// CRC32 of the key (librdkafka's own default); keyless records to a random partition.
    ConsistentRandom,
    /// CRC32 of the key; keyless records all go to one partition.
    Consistent,
    /// Murmur2 of the key (the Java client's default); keyless records to a random partition.
    Murmur2Random,
    /// Murmur2 of the key; keyless records all go to one partition.
    Murmur2,
    /// A random partition for every record (traces then split across partitions).
    Random,
}

impl Partitioner {
    /// The librdkafka value of `partitioner`.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Partitioner::Fnv1aRandom => "fnv1a_random",
            Partitioner::Fnv1a => "fnv1a",
            Partitioner::ConsistentRandom => "consistent_random",
            Partitioner::Consistent => "consistent",
            Partitioner::Murmur2Random => "murmur2_random",
            Partitioner::Murmur2 => "murmur2",
            Partitioner::Random => "random",
        }
    }
}

/// How the producer authenticates to and encrypts traffic with the brokers.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSecurity {
    /// `security.protocol`.
    pub protocol: SecurityProtocol,
    /// SASL credentials, for `sasl_plaintext` and `sasl_ssl`.
    pub sasl: Option<Sasl>,
    /// TLS files, for `ssl` and `sasl_ssl`.
    pub tls: Option<KafkaTls>,
}

/// `security.protocol` values.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no SASL.
    #[default]
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL without TLS.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// The librdkafka value of `security.protocol`.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// SASL credentials. The password comes from exactly one of `password`, `password_file` or
/// `password_env`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sasl {
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    pub mechanism: SaslMechanism,
    /// The user name.
    pub username: String,
    /// The password, inline (prefer a file or an environment variable).
    pub password: Option<String>,
    /// A file that holds the password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// An environment variable that holds the password.
    pub password_env: Option<String>,
}

impl Sasl {
    /// Where the password is read from.
    pub fn password_source(&self) -> Result<Secret, ConfigError> {
        Secret::one_of(
            "kafka.security.sasl",
            "password",
            self.password.as_ref(),
            self.password_file.as_ref(),
            self.password_env.as_ref(),
        )
    }

    /// Reads the password from wherever the config says it is.
    pub fn resolve_password(&self) -> Result<String, ConfigError> {
        self.password_source()?.read("kafka.security.sasl.password")
    }
}

/// SASL mechanisms librdkafka supports without Kerberos.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum SaslMechanism {
    /// SASL/PLAIN.
    #[serde(rename = "PLAIN")]
    Plain,
    /// SCRAM with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The librdkafka value of `sasl.mechanism`.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// TLS files for the connection to the brokers.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaTls {
    /// CA bundle that signs the brokers' certificates (system roots when absent).
    pub ca_file: Option<PathBuf>,
    /// Client certificate, for mTLS.
    pub cert_file: Option<PathBuf>,
    /// Client key, for mTLS.
    pub key_file: Option<PathBuf>,
}

/// The admin listener.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// `host:port` to bind, default 0.0.0.0:8888.
    pub endpoint: String,
    /// TLS (and mTLS with a client CA); absent: plaintext.
    pub tls: Option<ServerTls>,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            endpoint: "0.0.0.0:8888".into(),
            tls: None,
        }
    }
}

/// Where the gateway publishes the Bloom filters of its tail sampling decision windows.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TailDecisions {
    /// The topic of decision records, default `weir.tail.decisions`.
    pub decisions_topic: String,
    /// This gateway's id in its decision records; default: the host name and the process id.
    pub gateway_id: Option<String>,
    /// A key shared with the tail routers: each decision record carries its HMAC-SHA256
    /// under it (header `weir-decision-hmac-sha256`). At most one of `signing_key`,
    /// `signing_key_file`, `signing_key_env`.
    pub signing_key: Option<String>,
    /// A file holding the signing key.
    pub signing_key_file: Option<PathBuf>,
    /// An environment variable holding the signing key.
    pub signing_key_env: Option<String>,
}

impl Default for TailDecisions {
    fn default() -> Self {
        Self {
            decisions_topic: "weir.tail.decisions".into(),
            gateway_id: None,
            signing_key: None,
            signing_key_file: None,
            signing_key_env: None,
        }
    }
}

impl TailDecisions {
    /// The key decision records are signed with, when one is configured.
    pub fn signing_key(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        Secret::read_optional_key(
            "tail",
            "signing_key",
            self.signing_key.as_ref(),
            self.signing_key_file.as_ref(),
            self.signing_key_env.as_ref(),
        )
    }
}

/// Logging settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// A `tracing` filter directive, e.g. `info` or `weir_gateway=debug,info`.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Log line formats.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A YAML scalar (string, number or boolean) read as its string form, for librdkafka
/// properties such as `linger.ms: 5`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScalarString(pub String);

impl<'de> Deserialize<'de> for ScalarString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ScalarString;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E>(self, v: &str) -> Result<ScalarString, E> {
                Ok(ScalarString(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<ScalarString, E> {
                Ok(ScalarString(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<ScalarString, E> {
                Ok(ScalarString(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<ScalarString, E> {
                Ok(ScalarString(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<ScalarString, E> {
                Ok(ScalarString(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// The Kafka limit on a record: librdkafka refuses messages over 1,000,000,000 bytes.
const KAFKA_MAX_MESSAGE: u64 = 1_000_000_000;

impl ConfigFile for GatewayConfig {
    fn empty() -> Option<Self> {
        Some(Self::default())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (key, l) in [
            ("receivers.grpc", &self.receivers.grpc),
            ("receivers.http", &self.receivers.http),
        ] {
            if l.enabled {
                l.validate(key)?;
            }
        }
        if self.receivers.grpc.cors.is_some() {
            return Err(ConfigError::invalid(
                "receivers.grpc.cors",
                "browsers cannot speak gRPC: CORS belongs under receivers.http",
            ));
        }
        if let Some(auth) = &self.receivers.auth {
            auth.validate("receivers.auth")?;
        }
        if let Some(cp) = &self.control_plane {
            cp.validate()?;
        }
        if !self.receivers.grpc.enabled && !self.receivers.http.enabled {
            return Err(ConfigError::invalid(
                "receivers",
                "at least one of grpc and http must be enabled",
            ));
        }
        parse_addr("admin.endpoint", &self.admin.endpoint)?;
        if let Some(tls) = &self.admin.tls {
            tls.validate("admin.tls")?;
        }

        let l = &self.limits;
        if l.max_message_size.0 < 1024 || l.max_message_size.0 > u32::MAX as u64 {
            return Err(ConfigError::invalid(
                "limits.max_message_size",
                format!("{} is out of range: use 1KiB to 4GiB", l.max_message_size),
            ));
        }
        if l.max_in_flight_bytes < l.max_message_size {
            return Err(ConfigError::invalid(
                "limits.max_in_flight_bytes",
                format!(
                    "{} is below limits.max_message_size ({}): one largest request must fit",
                    l.max_in_flight_bytes, l.max_message_size
                ),
            ));
        }
        if l.max_span_attributes == Some(0) {
            return Err(ConfigError::invalid(
                "limits.max_span_attributes",
                "must be at least 1, or left out for no cap",
            ));
        }
        if l.max_attribute_value_size.is_some_and(|s| s.0 == 0) {
            return Err(ConfigError::invalid(
                "limits.max_attribute_value_size",
                "must be at least 1 byte, or left out for no cap",
            ));
        }
        if l.export_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "limits.export_timeout",
                "must be greater than zero",
            ));
        }
        self.spool.validate(l.export_timeout)?;
        let k = &self.kafka;
        if !(1..=MAX_PRODUCERS).contains(&k.producers) {
            return Err(ConfigError::invalid(
                "kafka.producers",
                format!("{} is out of range: use 1 to {MAX_PRODUCERS}", k.producers),
            ));
        }
        let most_in_flight = if k.acks == Acks::All { 5 } else { 1_000_000 };
        if !(1..=most_in_flight).contains(&k.max_in_flight) {
            return Err(ConfigError::invalid(
                "kafka.max_in_flight",
                format!(
                    "{} is out of range: use 1 to {most_in_flight}{}",
                    k.max_in_flight,
                    if k.acks == Acks::All {
                        " (acks: all makes the producer idempotent, which allows at most 5)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        if self.shutdown_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "shutdown_timeout",
                "must be greater than zero",
            ));
        }
        if !is_topic_name(&self.tail.decisions_topic) {
            return Err(ConfigError::invalid(
                "tail.decisions_topic",
                format!(
                    "`{}` is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)",
                    self.tail.decisions_topic
                ),
            ));
        }
        if self
            .tail
            .gateway_id
            .as_ref()
            .is_some_and(|id| id.is_empty() || id.len() > 255)
        {
            return Err(ConfigError::invalid(
                "tail.gateway_id",
                "must be 1 to 255 bytes, or left out for the host name and process id",
            ));
        }
        self.tail.signing_key()?;

        let k = &self.kafka;
        check_brokers(&k.brokers)?;
        for (key, t) in [
            ("kafka.traces", &k.traces),
            ("kafka.metrics", &k.metrics),
            ("kafka.logs", &k.logs),
        ] {
            check_topic(&format!("{key}.topic"), &t.topic)?;
        }
        let api_key_header = self
            .receivers
            .auth
            .as_ref()
            .and_then(|a| a.api_key_header.as_deref())
            .map(str::to_ascii_lowercase);
        for (i, name) in k.include_metadata_keys.iter().enumerate() {
            let key = format!("kafka.include_metadata_keys[{i}]");
            let Some(lower) = http_header_name(name) else {
                return Err(ConfigError::invalid(
                    key,
                    format!("`{name}` is not an HTTP header name"),
                ));
            };
            // Credentials must never be copied into Kafka.
            if lower == "authorization" || Some(&lower) == api_key_header.as_ref() {
                return Err(ConfigError::invalid(
                    key,
                    format!("`{name}` carries credentials and is never copied to records"),
                ));
            }
            if lower.starts_with("weir.") {
                return Err(ConfigError::invalid(
                    key,
                    format!("`{name}`: header names starting with `weir.` are Weir's own"),
                ));
            }
        }
        if k.max_message_size.0 < 1024 || k.max_message_size.0 > KAFKA_MAX_MESSAGE {
            return Err(ConfigError::invalid(
                "kafka.max_message_size",
                format!(
                    "{} is out of range: use 1024 to {KAFKA_MAX_MESSAGE} bytes",
                    k.max_message_size
                ),
            ));
        }
        let sec = &k.security;
        match (sec.protocol.uses_sasl(), &sec.sasl) {
            (true, None) => {
                return Err(ConfigError::invalid(
                    "kafka.security.sasl",
                    "required when protocol is sasl_plaintext or sasl_ssl",
                ));
            }
            (false, Some(_)) => {
                return Err(ConfigError::invalid(
                    "kafka.security.sasl",
                    "set protocol to sasl_plaintext or sasl_ssl to use SASL",
                ));
            }
            (true, Some(s)) => {
                s.password_source()?;
            }
            (false, None) => {}
        }
        if let Some(tls) = &sec.tls {
            if !matches!(
                sec.protocol,
                SecurityProtocol::Ssl | SecurityProtocol::SaslSsl
            ) {
                return Err(ConfigError::invalid(
                    "kafka.security.tls",
                    "set protocol to ssl or sasl_ssl to use TLS",
                ));
            }
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(ConfigError::invalid(
                    "kafka.security.tls",
                    "cert_file and key_file go together",
                ));
            }
        }
        Ok(())
    }
}

/// `name` lower-cased when it is a valid HTTP header (gRPC metadata) name (RFC 9110 token).
pub fn http_header_name(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    ok.then(|| name.to_ascii_lowercase())
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::invalid(
            key,
            format!("`{value}` is not an address such as 0.0.0.0:4317"),
        )
    })
}

/// Checks `kafka.brokers`: at least one, each `host:port`.
pub(crate) fn check_brokers(brokers: &[String]) -> Result<(), ConfigError> {
    if brokers.is_empty() {
        return Err(ConfigError::invalid(
            "kafka.brokers",
            "list at least one broker as host:port",
        ));
    }
    for (i, b) in brokers.iter().enumerate() {
        if b.rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(ConfigError::invalid(
                format!("kafka.brokers[{i}]"),
                format!("`{b}` is not host:port"),
            ));
        }
    }
    Ok(())
}

/// Kafka topic names: 1 to 249 characters of `[a-zA-Z0-9._-]`.
fn check_topic(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("`{name}` is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"),
        ))
    }
}

/// True for a valid Kafka topic name: 1 to 249 of `a-z A-Z 0-9 . _ -`, not `.` or `..`.
pub fn is_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(yaml: &str) -> ConfigError {
        GatewayConfig::from_yaml(yaml).expect_err("config should be refused")
    }

    #[test]
    fn the_example_file_is_valid_and_equals_the_defaults() {
        let text = include_str!("../gateway.yaml");
        let cfg = GatewayConfig::from_yaml(text).unwrap();
        let def = GatewayConfig::default();
        assert_eq!(cfg.receivers.grpc.endpoint, def.receivers.grpc.endpoint);
        assert_eq!(cfg.limits.max_message_size, def.limits.max_message_size);
        assert_eq!(cfg.limits.export_timeout, def.limits.export_timeout);
        assert_eq!(cfg.kafka.max_message_size, def.kafka.max_message_size);
        assert_eq!(cfg.kafka.traces.topic, "otlp_spans");
        assert_eq!(cfg.kafka.linger, def.kafka.linger);
    }

    #[test]
    fn max_in_flight_is_bounded_by_idempotence() {
        let cfg = GatewayConfig::from_yaml("kafka:\n  max_in_flight: 5\n").unwrap();
        assert_eq!(cfg.kafka.max_in_flight, 5);
        assert_eq!(GatewayConfig::default().kafka.max_in_flight, 1);
        assert_eq!(GatewayConfig::default().kafka.producers, 1);
        let cfg = GatewayConfig::from_yaml("kafka:\n  producers: 4\n").unwrap();
        assert_eq!(cfg.kafka.producers, 4);
        for bad in ["0", "17"] {
            let e = err(&format!("kafka:\n  producers: {bad}\n")).to_string();
            assert!(e.contains("kafka.producers"), "{e}");
        }
        let e = err("kafka:\n  max_in_flight: 6\n").to_string();
        assert!(
            e.contains("kafka.max_in_flight") && e.contains("idempotent"),
            "{e}"
        );
        assert!(
            err("kafka:\n  max_in_flight: 0\n")
                .to_string()
                .contains("1 to 5")
        );
        let cfg = GatewayConfig::from_yaml("kafka:\n  acks: \"1\"\n  max_in_flight: 20\n").unwrap();
        assert_eq!(cfg.kafka.max_in_flight, 20);
    }

    #[test]
    fn keepalive_and_cors_parse_as_the_collector_spells_them() {
        let cfg = GatewayConfig::from_yaml(
            "receivers:\n  grpc:\n    endpoint: 0.0.0.0:4317\n    keepalive:\n      server_parameters:\n        max_connection_age: 5m\n        max_connection_age_grace: 30s\n        time: 1m\n        timeout: 5s\n  http:\n    endpoint: 0.0.0.0:4318\n    cors:\n      allowed_origins: [\"https://*.example.com\"]\n      allowed_headers: [x-tenant]\n      max_age: 7200\n",
        )
        .unwrap();
        let ka = &cfg.receivers.grpc.keepalive.server_parameters;
        assert_eq!(ka.max_connection_age, Some(Duration::from_secs(300)));
        assert_eq!(ka.max_connection_age_grace, Some(Duration::from_secs(30)));
        assert_eq!(
            (ka.time, ka.timeout),
            (Duration::from_secs(60), Duration::from_secs(5))
        );
        let cors = cfg.receivers.http.cors.as_ref().unwrap();
        assert_eq!(cors.allowed_origins, ["https://*.example.com"]);
        assert_eq!(cors.max_age, Some(7200));
        let def = &GatewayConfig::default()
            .receivers
            .grpc
            .keepalive
            .server_parameters;
        assert_eq!(def.max_connection_age, None);
        assert_eq!(def.time, Duration::from_secs(7200));
    }

    #[test]
    fn bad_keepalive_and_cors_values_name_their_key() {
        let e = err(
            "receivers:\n  grpc:\n    endpoint: 0.0.0.0:4317\n    keepalive:\n      server_parameters:\n        max_connection_age: 10ms\n",
        );
        assert_eq!(
            e.key(),
            Some("receivers.grpc.keepalive.server_parameters.max_connection_age")
        );
        let e = err(
            "receivers:\n  http:\n    endpoint: 0.0.0.0:4318\n    cors:\n      allowed_origins: [\"https://*.*.example.com\"]\n",
        );
        assert_eq!(
            e.key(),
            Some("receivers.http.cors.allowed_origins[0]"),
            "{e}"
        );
        let e = err(
            "receivers:\n  grpc:\n    endpoint: 0.0.0.0:4317\n    cors:\n      allowed_origins: [\"*\"]\n",
        );
        assert_eq!(e.key(), Some("receivers.grpc.cors"), "{e}");
        let e = err(
            "receivers:\n  http:\n    endpoint: 0.0.0.0:4318\n    cors:\n      allowed_origins: [\"*\"]\n      allowed_headers: [\"bad header\"]\n",
        );
        assert_eq!(
            e.key(),
            Some("receivers.http.cors.allowed_headers[0]"),
            "{e}"
        );
    }

    #[test]
    fn env_references_are_expanded_before_parsing() {
        // SAFETY: no other test reads or writes this name.
        unsafe { std::env::set_var("WEIR_GATEWAY_TEST_STREAMS", "17") };
        let cfg = GatewayConfig::from_yaml(
            "receivers:\n  grpc:\n    endpoint: \"${env:WEIR_GATEWAY_TEST_HOST:-127.0.0.1}:4317\"\n    max_concurrent_streams: ${WEIR_GATEWAY_TEST_STREAMS}\n",
        )
        .unwrap();
        assert_eq!(cfg.receivers.grpc.endpoint, "127.0.0.1:4317");
        assert_eq!(cfg.receivers.grpc.max_concurrent_streams, 17);
    }

    #[test]
    fn empty_document_is_the_default() {
        let cfg = GatewayConfig::from_yaml("").unwrap();
        assert_eq!(cfg.kafka.brokers, vec!["127.0.0.1:9092".to_string()]);
        assert_eq!(cfg.kafka.acks, Acks::All);
    }

    #[test]
    fn unknown_keys_name_their_path() {
        let e = err("kafka:\n  brokerz: [a:1]\n");
        assert_eq!(e.key(), Some("kafka.brokerz"), "{e}");
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = err("kafka:\n  traces:\n    topic: t\n    encodng: otlp_json\n");
        assert_eq!(e.key(), Some("kafka.traces.encodng"), "{e}");
    }

    #[test]
    fn bad_values_name_their_path() {
        let e = err("kafka:\n  traces:\n    topic: t\n    encoding: xml\n");
        assert_eq!(e.key(), Some("kafka.traces.encoding"), "{e}");
        let e = err("limits:\n  max_message_size: -5\n");
        assert_eq!(e.key(), Some("limits.max_message_size"), "{e}");
        assert!(e.to_string().contains("negative"), "{e}");
        let e = err("limits:\n  export_timeout: soon\n");
        assert_eq!(e.key(), Some("limits.export_timeout"), "{e}");
        let e = err("receivers:\n  grpc:\n    endpoint: nowhere\n");
        assert_eq!(e.key(), Some("receivers.grpc.endpoint"), "{e}");
        let e = err("kafka:\n  traces:\n    topic: 'bad topic'\n");
        assert_eq!(e.key(), Some("kafka.traces.topic"), "{e}");
        let e = err("limits:\n  max_message_size: 1MiB\n  max_in_flight_bytes: 512KiB\n");
        assert_eq!(e.key(), Some("limits.max_in_flight_bytes"), "{e}");
        let e = err("kafka:\n  security:\n    protocol: sasl_ssl\n");
        assert_eq!(e.key(), Some("kafka.security.sasl"), "{e}");
        let e = err("kafka:\n  acks: 2\n");
        assert_eq!(e.key(), Some("kafka.acks"), "{e}");
    }

    #[test]
    fn listener_limits_tls_and_metadata_keys_are_checked() {
        let cfg = GatewayConfig::from_yaml(
            "receivers:\n  grpc:\n    endpoint: 127.0.0.1:1\n    max_connections: 10\n    idle_timeout: 30s\n    tls: {cert_file: c, key_file: k, min_version: '1.3'}\nkafka:\n  include_metadata_keys: [X-Tenant-Id]\nlimits:\n  max_span_attributes: 64\n  max_attribute_value_size: 1KiB\n  attribute_limit_action: reject\n",
        )
        .unwrap();
        assert_eq!(cfg.receivers.grpc.max_connections, 10);
        assert_eq!(
            cfg.receivers.grpc.header_read_timeout,
            Duration::from_secs(10)
        );
        assert_eq!(
            cfg.receivers.grpc.tls.unwrap().min_version,
            crate::TlsVersion::Tls13
        );
        assert_eq!(cfg.limits.max_attribute_value_size, Some(ByteSize(1024)));
        assert_eq!(
            cfg.limits.attribute_limit_action,
            AttributeLimitAction::Reject
        );
        let e = err("receivers:\n  http:\n    endpoint: 127.0.0.1:1\n    max_connections: 0\n");
        assert_eq!(e.key(), Some("receivers.http.max_connections"), "{e}");
        let e = err(
            "receivers:\n  http:\n    endpoint: 127.0.0.1:1\n    tls: {cert_file: c, key_file: k, reload_interval: 1ms}\n",
        );
        assert_eq!(e.key(), Some("receivers.http.tls.reload_interval"), "{e}");
        let e = err("kafka:\n  include_metadata_keys: [Authorization]\n");
        assert_eq!(e.key(), Some("kafka.include_metadata_keys[0]"), "{e}");
        let e = err("kafka:\n  include_metadata_keys: [ok, 'bad key']\n");
        assert_eq!(e.key(), Some("kafka.include_metadata_keys[1]"), "{e}");
        let e = err("kafka:\n  include_metadata_keys: [weir.tenant]\n");
        assert_eq!(e.key(), Some("kafka.include_metadata_keys[0]"), "{e}");
        let e = err(
            "receivers:\n  auth:\n    api_key_header: X-Key\n    tokens: [{tenant: a, env: V}]\nkafka:\n  include_metadata_keys: [x-key]\n",
        );
        assert_eq!(e.key(), Some("kafka.include_metadata_keys[0]"), "{e}");
        let e = err("limits:\n  max_span_attributes: 0\n");
        assert_eq!(e.key(), Some("limits.max_span_attributes"), "{e}");
    }

    #[test]
    fn properties_accept_scalars() {
        let cfg = GatewayConfig::from_yaml(
            "kafka:\n  properties:\n    linger.ms: 5\n    enable.idempotence: true\n",
        )
        .unwrap();
        assert_eq!(cfg.kafka.properties["linger.ms"].0, "5");
        assert_eq!(cfg.kafka.properties["enable.idempotence"].0, "true");
    }

    #[test]
    fn sasl_password_sources() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        let yaml = format!(
            "kafka:\n  security:\n    protocol: sasl_plaintext\n    sasl:\n      mechanism: SCRAM-SHA-512\n      username: u\n      password_file: {}\n",
            f.display()
        );
        let cfg = GatewayConfig::from_yaml(&yaml).unwrap();
        assert_eq!(
            cfg.kafka.security.sasl.unwrap().resolve_password().unwrap(),
            "s3cret"
        );
    }
}
