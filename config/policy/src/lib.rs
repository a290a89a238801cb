//! `weir-policy`: Weir's policy engine. The policy document (what to sample, where to route,
//! what marks a trace for tail sampling) and its compiled form, evaluated once per span on the
//! gateway's hot path. The gateway evaluates policies with it and the control plane validates
//! them with it, so a policy the control plane accepts is one every gateway compiles.
//!
//! Dependencies run one way: this crate depends on `weir-config` (its duration syntax), and
//! `weir-config`, which holds the bootstrap configuration files, does not depend on it.
//!
//! [`Policy::parse`] reads a YAML or JSON document, refuses it with the path of the offending
//! key and the reason ([`PolicyError`]), or compiles it: regexes built, names resolved,
//! probabilities turned into thresholds. [`Policy::evaluate`] then decides for one span,
//! read through [`SpanView`], in three steps:
//!
//! 1. head sampling: the first sampling rule that matches gives the probability (else
//!    `default_probability`); the decision is consistent per trace (`threshold.rs`);
//! 2. routing: the first routing rule that matches sends the span to its topics or drops it
//!    (else the default topic);
//! 3. rate limiting: a kept span takes a token from its service's bucket (`rate_limit.rs`),
//!    unless it is an error span and `exempt_errors` is set.
//!
//! Rules are indexed by the facts a span must show to match them (`rule_index.rs`): an
//! attribute value, a name prefix, a kind...; a span is tested only against the rules whose
//! facts it shows, and those that have none. Evaluation allocates nothing (up to 512 rules),
//! except the first time a rate-limited policy sees a service (or tenant) it does not name. A `Policy` is
//! immutable apart from its rate-limit buckets, and `Send + Sync`: the gateway shares one
//! behind an `ArcSwap` and swaps in a new one when the document changes.
//! The document's schema is documented in `docs/policy.md`, with examples in `config/policies/`.

mod document;
mod error;
mod matcher;
mod prefilter;
mod rate_limit;
mod routing;
mod rule_index;
mod sampling;
mod span;
mod span_metrics;
mod tail;
mod threshold;

#[cfg(test)]
mod tests;

pub use document::SamplingMode;
pub use error::PolicyError;
pub use routing::{Topic, TopicSet};
pub use span::{AttrValue, AttributeVisitor, KeyFilter, STATUS_CODE_ERROR, SpanView};
pub use span_metrics::{Buckets, SpanMetricsPolicy};
pub use tail::{
    FilterParams, MAX_TAIL_FILTER_BYTES, TailPolicy, bitmap_bytes, expand_seed, hash_count,
    in_baseline,
};
pub use threshold::{
    MIN_PROBABILITY, OtSampling, Randomness, ThValue, Threshold, tracestate_with_threshold,
};

use document::{Action, Document, RateLimitDoc, RuleName};
use rate_limit::{Limit, RateLimiter, UnnamedLimits};
use routing::{RoutingBuilder, RoutingRule, RuleAction};
use rule_index::RuleIndex;
use sampling::{Chance, Sampled, Sampling, SamplingRule};
use std::sync::Arc;

/// The resource attribute that names a span's service.
const SERVICE_NAME: &str = "service.name";

/// The service name of spans whose resource has no `service.name` string, as OpenTelemetry
/// SDKs name them.
const UNKNOWN_SERVICE: &str = "unknown_service";

/// The span's `service.name`, or `unknown_service` when its resource has no such string.
fn service_name<S: SpanView + ?Sized>(span: &S) -> &str {
    match span.resource_attribute(SERVICE_NAME) {
        Some(AttrValue::Str(s)) => s,
        _ => UNKNOWN_SERVICE,
    }
}

/// A compiled policy document.
#[derive(Debug)]
pub struct Policy {
    version: u64,
    rules: Box<[RuleInfo]>,
    sampling: Sampling,
    routing: routing::Routing,
    tail: Option<TailPolicy>,
    /// The `span_metrics` section, when present and enabled; shared with the gateway's
    /// flusher, which outlives a policy swap by one interval.
    span_metrics: Option<Arc<SpanMetricsPolicy>>,
    /// Every rule (sampling, then routing) indexed by the facts a span needs to match it.
    index: RuleIndex,
    /// No sampling or routing rule, probability 1, no rate limit: evaluation is a constant.
    keeps_everything: bool,
    /// Whether evaluation can read a resource attribute (a rule's condition, or the rate
    /// limit's service name).
    reads_resource: bool,
}

/// The rules a resource's attributes make candidates, computed once per resource by
/// [`Policy::resource_candidates`] and passed to [`Policy::evaluate_in`] (and
/// [`TailPolicy::first_marking_rule_in`]) for each of its spans.
#[derive(Clone, Debug)]
pub struct ResourceCandidates {
    rules: rule_index::RuleBits,
    /// The tail rules' candidates, when the policy has a `tail` section.
    tail: Option<rule_index::RuleBits>,
    /// What the request's bytes allow (all true when unknown).
    hints: RequestHints,
}

/// What a request's bytes rule out for all of its spans, found once per request by
/// [`Policy::request_hints`]: whether any span can have an attribute that a rule's guard
/// names. When none can, no span's attributes are read.
#[derive(Clone, Copy, Debug)]
pub struct RequestHints {
    span_keys: bool,
    tail_span_keys: bool,
}

impl RequestHints {
    /// Hints that rule nothing out.
    pub const NONE: RequestHints = RequestHints {
        span_keys: true,
        tail_span_keys: true,
    };
}

/// Which section a rule belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Section {
    /// `sampling.rules`.
    Sampling,
    /// `routing.rules`.
    Routing,
}

impl Section {
    /// `sampling` or `routing`, for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Sampling => "sampling",
            Section::Routing => "routing",
        }
    }
}

/// A rule of the policy, for per-rule metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleInfo {
    /// Its section.
    pub section: Section,
    /// Its name, unique within the section.
    pub name: String,
}

/// What happened to a span.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Sent to `Decision::topics`.
    Kept,
    /// Not selected by head sampling.
    SampledOut,
    /// Selected, but its service was over its rate limit.
    RateLimited,
    /// A routing rule with `action: drop` matched.
    RoutedToDrop,
}

impl Outcome {
    /// `kept`, `sampled_out`, `rate_limited` or `routed_to_drop`, for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Kept => "kept",
            Outcome::SampledOut => "sampled_out",
            Outcome::RateLimited => "rate_limited",
            Outcome::RoutedToDrop => "routed_to_drop",
        }
    }
}

/// The policy's decision for one span. `Copy`, allocation-free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the span is sent (`outcome == Outcome::Kept`).
    pub keep: bool,
    /// Why it is kept or dropped.
    pub outcome: Outcome,
    /// For a kept span, the threshold its tracestate must record (`ot=th:...`), when that
    /// differs from what it carries; write it with [`Decision::write_tracestate`]. `None`:
    /// leave the span's bytes as they are.
    pub threshold: Option<Threshold>,
    /// Where a kept span goes ([`Policy::topic_set`]); empty when dropped.
    pub topics: TopicSet,
    /// The sampling rule that matched, as an index into [`Policy::rules`]; `None`: the
    /// default probability applied.
    pub sampling_rule: Option<u16>,
    /// The routing rule that matched, as an index into [`Policy::rules`]; `None`: the default
    /// topic applied, or the span was sampled out before routing.
    pub routing_rule: Option<u16>,
}

impl Decision {
    /// Writes the span's new tracestate into `out` when [`Decision::threshold`] asks for one,
    /// returning true; returns false (leaving `out` untouched) otherwise.
    pub fn write_tracestate(&self, old: &str, out: &mut String) -> bool {
        match &self.threshold {
            Some(th) => {
                tracestate_with_threshold(old, th, out);
                true
            }
            None => false,
        }
    }

    fn dropped(self, outcome: Outcome) -> Decision {
        Decision {
            keep: false,
            outcome,
            threshold: None,
            topics: TopicSet::EMPTY,
            ..self
        }
    }
}

impl Policy {
    /// Parses, validates and compiles a policy document (YAML, or JSON, which YAML reads).
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        if text.trim().is_empty() {
            return Err(PolicyError::new(
                ".",
                "the document is empty: a policy needs at least `version: N`",
            ));
        }
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let doc: Document = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            // serde_yaml_ng appends " at line L column C", which helps to find the key.
            PolicyError::new(path.clone(), without_yaml_path(&path, &message))
        })?;
        Policy::compile(doc)
    }

    /// The policy in force when none is configured: version 0, every span kept and sent to
    /// the gateway's default trace topic.
    pub fn keep_everything() -> Policy {
        let mut topics = RoutingBuilder::default();
        let default = topics.set(&[Topic::Default]).unwrap_or(TopicSet::EMPTY);
        Policy {
            version: 0,
            rules: Box::new([]),
            sampling: Sampling {
                mode: SamplingMode::default(),
                precision: 4,
                rules: Box::new([]),
                default: Chance::new(1.0, 4),
                rate_limit: None,
            },
            routing: topics.build(Vec::new(), default),
            tail: None,
            span_metrics: None,
            index: RuleIndex::default(),
            keeps_everything: true,
            reads_resource: false,
        }
    }

    fn compile(doc: Document) -> Result<Policy, PolicyError> {
        let s = doc.sampling;
        let r = doc.routing;
        unique_names("sampling.rules", s.rules.iter().map(|r| &r.name))?;
        unique_names("routing.rules", r.rules.iter().map(|r| &r.name))?;
        if s.rules.len() + r.rules.len() > usize::from(u16::MAX) {
            return Err(PolicyError::new(
                ".",
                "more than 65535 rules: merge rules with `in: [...]` or `any: [...]`",
            ));
        }

        let precision = s.precision.0;
        let mut rules = Vec::with_capacity(s.rules.len() + r.rules.len());
        let mut sampling_rules = Vec::with_capacity(s.rules.len());
        for rule in s.rules {
            rules.push(RuleInfo {
                section: Section::Sampling,
                name: rule.name.0,
            });
            sampling_rules.push(SamplingRule {
                condition: rule.condition,
                chance: Chance::new(rule.probability.0, precision),
            });
        }
        let rate_limit = s.rate_limit.map(rate_limiter).transpose()?;

        let mut topics = RoutingBuilder::default();
        let routing_error =
            |path: String| move |reason: String| PolicyError::new(path.clone(), reason);
        let default = match &r.default_topic {
            Some(name) => topics.topic(&name.0),
            None => Ok(Topic::Default),
        }
        .and_then(|t| topics.set(&[t]))
        .map_err(routing_error("routing.default_topic".into()))?;
        let mut routing_rules = Vec::with_capacity(r.rules.len());
        for (i, rule) in r.rules.into_iter().enumerate() {
            let action = match rule.action {
                Action::Drop => RuleAction::Drop,
                Action::Topics(names) => {
                    let at = routing_error(format!("routing.rules[{i}].action"));
                    let set = names
                        .iter()
                        .map(|n| topics.topic(&n.0))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(&at)?;
                    RuleAction::Send(topics.set(&set).map_err(&at)?)
                }
            };
            rules.push(RuleInfo {
                section: Section::Routing,
                name: rule.name.0,
            });
            routing_rules.push(RoutingRule {
                condition: rule.condition,
                action,
            });
        }

        let sampling = Sampling {
            mode: s.mode,
            precision,
            rules: sampling_rules.into(),
            default: Chance::new(s.default_probability.0, precision),
            rate_limit,
        };
        let routing = topics.build(routing_rules, default);
        let keeps_everything = sampling.rules.is_empty()
            && sampling.rate_limit.is_none()
            && sampling.default.is_always()
            && routing.rules.is_empty();
        let tail = doc.tail.map(TailPolicy::compile).transpose()?;
        let span_metrics = match doc.span_metrics {
            Some(section) => SpanMetricsPolicy::compile(section)?.map(Arc::new),
            None => None,
        };
        let reads_resource = sampling.rate_limit.is_some()
            || sampling.rules.iter().any(|r| r.condition.reads_resource())
            || routing.rules.iter().any(|r| r.condition.reads_resource())
            || tail.as_ref().is_some_and(TailPolicy::reads_resource);
        Ok(Policy {
            keeps_everything,
            reads_resource,
            version: doc.version.0,
            rules: rules.into(),
            index: RuleIndex::new(
                sampling
                    .rules
                    .iter()
                    .map(|r| &r.condition)
                    .chain(routing.rules.iter().map(|r| &r.condition)),
            ),
            sampling,
            routing,
            tail,
            span_metrics,
        })
    }

    /// The document's `version`, a whole number from 1; 0 for [`Policy::keep_everything`].
    /// Suitable for a gauge of the active version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Decides what happens to `span`. `now_nanos` is the time on a monotonic clock in
    /// nanoseconds (any origin, the same for every call on this policy and on the policies
    /// that [`Policy::carry_over_rate_limits`] links), used by rate limits only.
    pub fn evaluate<S: SpanView + ?Sized>(&self, span: &S, now_nanos: u64) -> Decision {
        let resource = ResourceCandidates {
            rules: self.index.resource_candidates_of(span),
            tail: None,
            hints: RequestHints::NONE,
        };
        self.evaluate_in(&resource, span, now_nanos)
    }

    /// The candidates of a resource with these attributes, for [`Policy::evaluate_in`]: the
    /// resource-level part of evaluation, done once for all the spans of a resource.
    /// Attributes are given as [`SpanView::for_each_resource_attribute`] gives them.
    pub fn resource_candidates<'a, I>(&self, attributes: I) -> ResourceCandidates
    where
        I: IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
        I::IntoIter: Clone,
    {
        self.resource_candidates_in(RequestHints::NONE, attributes)
    }

    /// What the protobuf bytes of a request (an `ExportTraceServiceRequest`) rule out for all
    /// of its spans, for [`Policy::resource_candidates_in`]. Costs a search of the bytes for
    /// each of a few attribute keys; with many keys it rules nothing out and costs nothing.
    pub fn request_hints(&self, body: &[u8]) -> RequestHints {
        RequestHints {
            span_keys: self.index.span_keys_may_occur(body),
            tail_span_keys: self
                .tail
                .as_ref()
                .is_some_and(|t| t.index().span_keys_may_occur(body)),
        }
    }

    /// [`Policy::resource_candidates`] for a resource of a request with `hints`.
    pub fn resource_candidates_in<'a, I>(
        &self,
        hints: RequestHints,
        attributes: I,
    ) -> ResourceCandidates
    where
        I: IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
        I::IntoIter: Clone,
    {
        let attributes = attributes.into_iter();
        ResourceCandidates {
            rules: self.index.resource_candidates(attributes.clone()),
            tail: self
                .tail
                .as_ref()
                .map(|t| t.index().resource_candidates(attributes)),
            hints,
        }
    }

    /// [`Policy::evaluate`] for a span of a resource whose candidates were computed by
    /// [`Policy::resource_candidates`] on this policy.
    #[inline]
    pub fn evaluate_in<S: SpanView + ?Sized>(
        &self,
        resource: &ResourceCandidates,
        span: &S,
        now_nanos: u64,
    ) -> Decision {
        let d = Decision {
            keep: true,
            outcome: Outcome::Kept,
            threshold: None,
            topics: self.routing.default,
            sampling_rule: None,
            routing_rule: None,
        };

        if self.keeps_everything {
            // No rule, probability 1, no rate limit: every span kept, to the default topics.
            return d;
        }
        self.index.with_candidates(
            &resource.rules,
            span,
            resource.hints.span_keys,
            |candidates| self.decide(candidates, span, now_nanos, d),
        )
    }

    /// The rest of [`Policy::evaluate_in`], given the span's candidate rules.
    fn decide<S: SpanView + ?Sized>(
        &self,
        candidates: &[u64],
        span: &S,
        now_nanos: u64,
        mut d: Decision,
    ) -> Decision {
        // Usually no rule is a candidate at all: one test instead of a scan per section.
        let any = candidates.iter().any(|&w| w != 0);
        let (rule, chance) = if any {
            self.sampling.select(span, candidates)
        } else {
            (None, self.sampling.default)
        };
        d.sampling_rule = rule.map(|i| i as u16);
        match self.sampling.sample(chance, span) {
            Sampled::Out => return d.dropped(Outcome::SampledOut),
            Sampled::Kept(threshold) => d.threshold = threshold,
        }

        // Routing before the rate limit, so that spans routed to drop take no tokens.
        let first_routing = self.sampling.rules.len();
        if any && let Some(i) = self.routing.select(span, candidates, first_routing) {
            d.routing_rule = Some((first_routing + i) as u16);
            match self.routing.rules[i].action {
                RuleAction::Drop => return d.dropped(Outcome::RoutedToDrop),
                RuleAction::Send(set) => d.topics = set,
            }
        }

        if let Some(limiter) = &self.sampling.rate_limit
            && !(limiter.exempt_errors && span.status_code() == STATUS_CODE_ERROR)
            && !limiter.allow(service_name(span), span.tenant(), now_nanos)
        {
            return d.dropped(Outcome::RateLimited);
        }
        d
    }

    /// The sampling rules, then the routing rules, in document order; decisions name rules by
    /// their index here.
    pub fn rules(&self) -> &[RuleInfo] {
        &self.rules
    }

    /// The distinct topics the policy names; [`Topic::Named`] indexes this.
    pub fn topics(&self) -> &[String] {
        &self.routing.topics
    }

    /// True when the policy has no sampling or routing rule, probability 1 and no rate
    /// limit: every span is kept, to [`Policy::default_topics`], whatever it holds.
    pub fn keeps_everything(&self) -> bool {
        self.keeps_everything
    }

    /// False when no evaluation of this policy reads a resource attribute through
    /// [`SpanView::resource_attribute`]: a caller need not resolve them. Candidate rules still
    /// come from [`Policy::resource_candidates`].
    pub fn reads_resource_attributes(&self) -> bool {
        self.reads_resource
    }

    /// The topics of a span no routing rule matches (`routing.default_topics`).
    pub fn default_topics(&self) -> TopicSet {
        self.routing.default
    }

    /// The topics of a decision.
    pub fn topic_set(&self, set: TopicSet) -> &[Topic] {
        self.routing.set(set)
    }

    /// The name of `topic`, with `default` (the gateway's `kafka.traces.topic`) for
    /// [`Topic::Default`].
    pub fn topic_name<'a>(&'a self, topic: Topic, default: &'a str) -> &'a str {
        match topic {
            Topic::Default => default,
            Topic::Named(i) => self
                .routing
                .topics
                .get(usize::from(i))
                .map_or(default, String::as_str),
        }
    }

    /// The `sampling.mode`.
    pub fn sampling_mode(&self) -> SamplingMode {
        self.sampling.mode
    }

    /// The compiled `tail` section: tail sampling rules and decision-window parameters.
    pub fn tail(&self) -> Option<&TailPolicy> {
        self.tail.as_ref()
    }

    /// The compiled `span_metrics` section, when present and enabled.
    pub fn span_metrics(&self) -> Option<&Arc<SpanMetricsPolicy>> {
        self.span_metrics.as_ref()
    }

    /// Continues the rate-limit buckets of `previous` (the policy this one replaces) whose
    /// limits did not change, except those idle at `now_nanos` (the clock of
    /// [`Policy::evaluate`]). Call it before swapping this policy in, so that a reload does
    /// not hand every service a fresh burst.
    pub fn carry_over_rate_limits(&self, previous: &Policy, now_nanos: u64) {
        if let (Some(new), Some(old)) = (&self.sampling.rate_limit, &previous.sampling.rate_limit) {
            new.carry_over(old, now_nanos);
        }
    }

    /// How many rate-limit buckets the services the policy does not name hold now: one per
    /// (tenant, service) seen and not idle, and one overflow bucket per tenant. For a gauge
    /// (a load of one atomic).
    pub fn rate_limit_buckets(&self) -> usize {
        self.sampling
            .rate_limit
            .as_ref()
            .map_or(0, RateLimiter::buckets_held)
    }
}

/// serde_yaml_ng starts some messages with its own (shorter) idea of the path: drop it, the
/// error has the exact one.
fn without_yaml_path<'a>(path: &str, message: &'a str) -> &'a str {
    match message.split_once(": ") {
        Some((head, rest))
            if !head.is_empty()
                && path.starts_with(head)
                && matches!(path.as_bytes().get(head.len()), None | Some(b'.' | b'[')) =>
        {
            rest
        }
        _ => message,
    }
}

/// Refuses a rule name used twice within a section.
fn unique_names<'a>(
    section: &str,
    names: impl Iterator<Item = &'a RuleName>,
) -> Result<(), PolicyError> {
    let names: Vec<&str> = names.map(|n| n.0.as_str()).collect();
    for (i, name) in names.iter().enumerate() {
        if let Some(j) = names[..i].iter().position(|n| n == name) {
            return Err(PolicyError::new(
                format!("{section}[{i}].name"),
                format!(
                    "duplicate rule name `{name}`: {section}[{j}] has it too; names are unique within a section"
                ),
            ));
        }
    }
    Ok(())
}

/// Builds the rate limiter of `sampling.rate_limit`.
fn rate_limiter(doc: RateLimitDoc) -> Result<RateLimiter, PolicyError> {
    const PATH: &str = "sampling.rate_limit";
    // One second's worth of spans unless told otherwise.
    let burst = |rate: f64, burst: Option<document::Burst>| {
        burst.map_or((rate.ceil() as u64).max(1), |b| b.0)
    };
    if doc.spans_per_second.is_none() && doc.burst.is_some() {
        return Err(PolicyError::new(
            format!("{PATH}.burst"),
            "a burst needs `spans_per_second` beside it",
        ));
    }
    if doc.spans_per_second.is_none() && doc.services.is_empty() {
        return Err(PolicyError::new(
            PATH,
            "limits nothing: set `spans_per_second` (each service) or `services` (named ones)",
        ));
    }
    let unnamed = doc.spans_per_second.map(|r| UnnamedLimits {
        limit: Limit {
            spans_per_second: r.0,
            burst: burst(r.0, doc.burst),
        },
        max_services: doc.max_services,
        max_services_per_tenant: doc
            .max_services_per_tenant
            .unwrap_or(doc.max_services.div_ceil(4)),
        idle_timeout_nanos: doc.bucket_idle_timeout.nanos(),
    });
    let named: Vec<(&str, Limit)> = doc
        .services
        .iter()
        .map(|(name, l)| {
            (
                name.0.as_str(),
                Limit {
                    spans_per_second: l.spans_per_second.0,
                    burst: burst(l.spans_per_second.0, l.burst),
                },
            )
        })
        .collect();
    Ok(RateLimiter::new(named, unnamed, doc.exempt_errors))
}
