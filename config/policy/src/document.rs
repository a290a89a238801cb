//! The policy document as written (YAML or JSON): its keys, their types and their defaults.
//! Values are checked as they are read, so that serde_path_to_error names the key at fault;
//! checks that span several keys (duplicate rule names) happen when the policy is compiled.
//! The schema is documented in `docs/policy.md` and `config/policies/`.

use super::matcher::Condition;
use super::threshold::MIN_PROBABILITY;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// The whole document.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Document {
    pub version: Version,
    #[serde(default)]
    pub sampling: SamplingDoc,
    #[serde(default)]
    pub routing: RoutingDoc,
    /// Tail sampling policies (`tail.rs`).
    #[serde(default)]
    pub tail: Option<super::tail::TailDoc>,
    /// Span metrics computed by gateways before sampling (`span_metrics.rs`).
    #[serde(default)]
    pub span_metrics: Option<super::span_metrics::SpanMetricsDoc>,
}

/// `version`: a whole number from 1; 0 is the built-in keep-everything policy.
pub(crate) struct Version(pub u64);

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u64::deserialize(d)? {
            0 => Err(de::Error::custom(
                "0 is the built-in keep-everything policy: number versions from 1",
            )),
            v => Ok(Version(v)),
        }
    }
}

/// `sampling`: head sampling rules, the default probability and rate limits.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct SamplingDoc {
    pub mode: SamplingMode,
    pub precision: Precision,
    pub default_probability: Probability,
    pub rules: Vec<SamplingRuleDoc>,
    pub rate_limit: Option<RateLimitDoc>,
}

impl Default for SamplingDoc {
    fn default() -> Self {
        Self {
            mode: SamplingMode::default(),
            precision: Precision::default(),
            default_probability: Probability(1.0),
            rules: Vec::new(),
            rate_limit: None,
        }
    }
}

/// How a span's arriving threshold (`ot=th:` set by an SDK or an earlier collector)
/// combines with the policy's probability; the two modes of the Collector's
/// `probabilistic_sampler` and of the specification's downstream samplers.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SamplingMode {
    /// Multiply: a span that arrives sampled at 1/2 and meets probability 1/10 leaves at
    /// 1/20. Reduces traffic by the configured factor whatever happened upstream.
    #[default]
    Proportional,
    /// Equalize: every span leaves with at most the configured probability; spans that
    /// arrive with a lower one pass through as they are.
    Equalizing,
}

/// `precision`: significant hex digits of computed thresholds, 1 to 14 (default 4, as the
/// Collector's `sampling_precision`).
pub(crate) struct Precision(pub u8);

impl Default for Precision {
    fn default() -> Self {
        Precision(4)
    }
}

impl<'de> Deserialize<'de> for Precision {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u8::deserialize(d)? {
            p @ 1..=14 => Ok(Precision(p)),
            p => Err(de::Error::custom(format!(
                "{p} is out of range: use 1 to 14 hex digits"
            ))),
        }
    }
}

/// A probability from 0 to 1. Between 0 and 2^-56 is refused: no threshold expresses it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Probability(pub f64);

impl<'de> Deserialize<'de> for Probability {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Probability;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a probability from 0 to 1")
            }
            fn visit_f64<E: de::Error>(self, p: f64) -> Result<Probability, E> {
                if !(0.0..=1.0).contains(&p) {
                    return Err(E::custom(format!(
                        "{p} is not a probability: use a number from 0 (keep none) to 1 (keep all), \
                         e.g. 0.1 for 10%"
                    )));
                }
                if p > 0.0 && p < MIN_PROBABILITY {
                    return Err(E::custom(format!(
                        "{p} is below the smallest probability a threshold can express (2^-56); \
                         use 0 to keep none"
                    )));
                }
                Ok(Probability(p))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Probability, E> {
                self.visit_f64(v as f64)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Probability, E> {
                self.visit_f64(v as f64)
            }
        }
        d.deserialize_any(V)
    }
}

/// A rule's name: shown in metrics and errors, unique within its section.
pub(crate) struct RuleName(pub String);

impl<'de> Deserialize<'de> for RuleName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim().is_empty() {
            return Err(de::Error::custom("a rule needs a non-empty name"));
        }
        if s.len() > 128 || s.chars().any(char::is_control) {
            return Err(de::Error::custom(format!(
                "`{s}`: a rule name has at most 128 characters and no control characters"
            )));
        }
        Ok(RuleName(s))
    }
}

/// One head sampling rule.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SamplingRuleDoc {
    pub name: RuleName,
    #[serde(rename = "match")]
    pub condition: Condition,
    pub probability: Probability,
}

/// `sampling.rate_limit`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimitDoc {
    /// The limit of each service not listed in `services`; absent: they are not limited.
    pub spans_per_second: Option<Rate>,
    /// Its burst; default: one second's worth.
    pub burst: Option<Burst>,
    /// Whether error spans pass without counting.
    #[serde(default)]
    pub exempt_errors: bool,
    /// How many unlisted services get a bucket of their own; the rest share one.
    #[serde(default = "default_max_services")]
    pub max_services: usize,
    /// How many of those one tenant's services may hold; default: a quarter of
    /// `max_services`, rounded up.
    pub max_services_per_tenant: Option<usize>,
    /// How long an unlisted service's bucket stays full (unused) before it is freed.
    #[serde(default = "default_bucket_idle_timeout")]
    pub bucket_idle_timeout: Dur,
    /// Limits of named services.
    #[serde(default)]
    pub services: BTreeMap<ServiceName, ServiceLimitDoc>,
}

fn default_max_services() -> usize {
    10_000
}

fn default_bucket_idle_timeout() -> Dur {
    Dur(Duration::from_secs(300))
}

/// `sampling.rate_limit.services.NAME`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceLimitDoc {
    pub spans_per_second: Rate,
    pub burst: Option<Burst>,
}

/// A service name key.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ServiceName(pub String);

impl<'de> Deserialize<'de> for ServiceName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Err(de::Error::custom("a service name cannot be empty"));
        }
        Ok(ServiceName(s))
    }
}

/// Spans per second: above 0, at most 10^9.
#[derive(Clone, Copy)]
pub(crate) struct Rate(pub f64);

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = f64::deserialize(d)?;
        if r > 0.0 && r <= 1e9 {
            Ok(Rate(r))
        } else {
            Err(de::Error::custom(format!(
                "{r} is out of range: spans per second must be above 0 and at most 1e9"
            )))
        }
    }
}

/// A bucket's capacity: at least 1.
#[derive(Clone, Copy)]
pub(crate) struct Burst(pub u64);

impl<'de> Deserialize<'de> for Burst {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u64::deserialize(d)? {
            0 => Err(de::Error::custom(
                "0 would refuse every span: burst must be at least 1",
            )),
            b => Ok(Burst(b)),
        }
    }
}

/// `routing`: ordered rules and the default topic.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RoutingDoc {
    /// Where spans no rule matches go; absent: the gateway's `kafka.traces.topic`.
    pub default_topic: Option<TopicName>,
    pub rules: Vec<RoutingRuleDoc>,
}

/// One routing rule.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoutingRuleDoc {
    pub name: RuleName,
    #[serde(rename = "match")]
    pub condition: Condition,
    pub action: Action,
}

/// What a routing rule does with the spans it matches.
pub(crate) enum Action {
    Drop,
    Topics(Vec<TopicName>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionMap {
    topic: Option<TopicName>,
    topics: Option<Vec<TopicName>>,
}

const ACTIONS: &str = "use `drop`, `{ topic: NAME }` or `{ topics: [NAME, ...] }`";

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Action;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an action: {ACTIONS}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Action, E> {
                match v {
                    "drop" => Ok(Action::Drop),
                    _ => Err(E::custom(format!("`{v}` is not an action: {ACTIONS}"))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Action, A::Error> {
                let m = ActionMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                match (m.topic, m.topics) {
                    (Some(t), None) => Ok(Action::Topics(vec![t])),
                    (None, Some(ts)) if ts.is_empty() => Err(de::Error::custom(
                        "`topics` is empty: list at least one topic, or use `action: drop`",
                    )),
                    (None, Some(ts)) => {
                        for (i, t) in ts.iter().enumerate() {
                            if ts[..i].iter().any(|u| u.0 == t.0) {
                                return Err(de::Error::custom(format!(
                                    "topic `{}` is listed twice",
                                    t.0
                                )));
                            }
                        }
                        Ok(Action::Topics(ts))
                    }
                    _ => Err(de::Error::custom(format!(
                        "give exactly one of `topic` and `topics`: {ACTIONS}"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A Kafka topic name: 1 to 249 of `a-z A-Z 0-9 . _ -`, not `.` or `..`.
pub(crate) struct TopicName(pub String);

impl<'de> Deserialize<'de> for TopicName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        if name.is_empty() {
            return Err(de::Error::custom("empty topic name"));
        }
        let ok = name.len() <= 249
            && name != "."
            && name != ".."
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(de::Error::custom(format!(
                "`{name}` is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"
            )));
        }
        Ok(TopicName(name))
    }
}

/// A duration with a unit ("200ms", "1m").
#[derive(Clone, Copy)]
pub(crate) struct Dur(pub Duration);

impl Dur {
    /// The duration in nanoseconds, saturating (about 584 years).
    pub(crate) fn nanos(self) -> u64 {
        u64::try_from(self.0.as_nanos()).unwrap_or(u64::MAX)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        weir_config::units::duration(d).map(Dur)
    }
}
