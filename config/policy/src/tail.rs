//! Tail sampling policies: the `tail` section of the policy document, compiled.
//!
//! Gateways evaluate the named rules on every span as it passes; a span that matches one
//! marks its trace id in the Bloom filter of the current time window. The filter's
//! parameters (window length, expected marked traces per window, false-positive rate, seed)
//! come from this section, so the filters that every gateway builds for one window have the
//! same size, hash count and hash keys, and merge with a bitwise OR in the tail router.
//! The baseline probability keeps a consistent-hash share of all traces, decided from the
//! trace id's randomness (the last 7 bytes) as head sampling does (`threshold.rs`); the
//! gateways record it in their decision records and the tail router applies it.
//!
//! A rule marks a trace when every key it has holds for one span:
//! - `error: true`: the span's status is error;
//! - `slower_than: 200ms`: the span lasted longer than that;
//! - `root_slower_than: 2s`: the span is a root span (no parent span id) and lasted longer;
//! - `match: {..}`: any condition of the policy engine (`matcher.rs`);
//! - `service`, `span_name`, `span_kind`: restrictions, written as in conditions.

use super::PolicyError;
use super::document::{Dur, Probability, RuleName};
use super::matcher::Condition;
use super::prefilter::Prefilter;
use super::rule_index::{RuleBits, RuleIndex, first_match};
use super::span::SpanView;
use super::threshold::{Randomness, Threshold};
use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};
use std::time::Duration;
// The filter and its sizing belong to the decision record's filter, which the tail router
// shares; the policy only chooses the parameters.
pub use weir_proto::decision::filter::{FilterParams, bitmap_bytes, expand_seed, hash_count};

/// The largest filter a window may have, in bytes (1 GiB would not fit a Kafka record
/// stream at any sensible publish interval; 256 MiB holds ~150M traces at 0.1%).
pub const MAX_TAIL_FILTER_BYTES: u64 = 256 << 20;

/// The `tail` section as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TailDoc {
    /// Length of a decision window.
    #[serde(default = "default_window")]
    window: Dur,
    /// Marked traces expected per window, all gateways together.
    #[serde(default = "default_expected_traces")]
    expected_traces: u64,
    /// The false-positive rate of a full filter.
    #[serde(default = "default_false_positive_rate")]
    false_positive_rate: f64,
    /// Seeds the filter's hash keys; every gateway must use the same one.
    #[serde(default)]
    seed: u64,
    /// How often gateways publish a snapshot of the open window.
    #[serde(default = "default_publish_interval")]
    publish_interval: Dur,
    /// A share of all traces kept whatever the rules say.
    #[serde(default)]
    baseline_probability: Option<Probability>,
    #[serde(default)]
    rules: Vec<TailRuleDoc>,
}

fn default_window() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_expected_traces() -> u64 {
    100_000
}
fn default_false_positive_rate() -> f64 {
    0.001
}
fn default_publish_interval() -> Dur {
    Dur(Duration::from_secs(5))
}

/// One tail rule as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TailRuleDoc {
    name: RuleName,
    error: Option<bool>,
    slower_than: Option<Dur>,
    root_slower_than: Option<Dur>,
    service: Option<Value>,
    span_name: Option<Value>,
    span_kind: Option<Value>,
    #[serde(rename = "match")]
    condition: Option<Condition>,
}

/// A compiled tail rule.
#[derive(Debug)]
struct TailRule {
    name: String,
    condition: Condition,
}

/// The compiled `tail` section.
#[derive(Debug)]
pub struct TailPolicy {
    rules: Box<[TailRule]>,
    /// The rules indexed by their guards, as the sampling and routing rules are.
    index: RuleIndex,
    /// What the rules need of a span's fixed fields, tested first (up to 64 rules).
    prefilter: Option<Prefilter>,
    filter: FilterParams,
    false_positive_rate: f64,
    publish_interval: Duration,
    baseline: Option<Threshold>,
}

impl TailPolicy {
    pub(crate) fn compile(doc: TailDoc) -> Result<TailPolicy, PolicyError> {
        let window = doc.window.0;
        if window < Duration::from_secs(1) || window > Duration::from_secs(24 * 3600) {
            return Err(PolicyError::new(
                "tail.window",
                format!(
                    "{window:?} is out of range: a decision window lasts from 1s to 24h (default 1m)"
                ),
            ));
        }
        if !window.subsec_nanos().is_multiple_of(1_000_000) {
            return Err(PolicyError::new(
                "tail.window",
                "give the window in whole milliseconds",
            ));
        }
        let publish = doc.publish_interval.0;
        if publish < Duration::from_millis(100) || publish > window {
            return Err(PolicyError::new(
                "tail.publish_interval",
                format!(
                    "{publish:?} is out of range: publish from every 100ms to once per window ({window:?})"
                ),
            ));
        }
        if doc.expected_traces == 0 || doc.expected_traces > 1 << 40 {
            return Err(PolicyError::new(
                "tail.expected_traces",
                format!(
                    "{} is out of range: give the marked traces expected per window, 1 to 2^40",
                    doc.expected_traces
                ),
            ));
        }
        let p = doc.false_positive_rate;
        if !(1e-9..=0.5).contains(&p) {
            return Err(PolicyError::new(
                "tail.false_positive_rate",
                format!("{p} is out of range: use a rate from 1e-9 to 0.5, e.g. 0.001 for 0.1%"),
            ));
        }
        let bitmap_bytes = bitmap_bytes(doc.expected_traces, p);
        if bitmap_bytes > MAX_TAIL_FILTER_BYTES {
            return Err(PolicyError::new(
                "tail.expected_traces",
                format!(
                    "a filter for {} traces at rate {p} needs {bitmap_bytes} bytes, over the limit of {MAX_TAIL_FILTER_BYTES}: shorten the window or raise the rate",
                    doc.expected_traces
                ),
            ));
        }
        let baseline = match doc.baseline_probability {
            Some(Probability(p)) if p > 0.0 => Threshold::from_probability(p, 14),
            _ => None,
        };
        super::unique_names("tail.rules", doc.rules.iter().map(|r| &r.name))?;
        if doc.rules.is_empty() && baseline.is_none() {
            return Err(PolicyError::new(
                "tail",
                "marks nothing: add `rules`, or a `baseline_probability` above 0",
            ));
        }
        let rules = doc
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| compile_rule(i, r))
            .collect::<Result<Vec<_>, _>>()?;
        let conditions: Vec<&Condition> = rules.iter().map(|r| &r.condition).collect();
        Ok(TailPolicy {
            index: RuleIndex::new(conditions.iter().copied()),
            prefilter: Prefilter::new(&conditions),
            rules: rules.into(),
            filter: FilterParams {
                window_millis: window.as_millis() as u64,
                expected_traces: doc.expected_traces,
                bitmap_bytes,
                hashes: hash_count(bitmap_bytes * 8, doc.expected_traces),
                seed: expand_seed(doc.seed),
            },
            false_positive_rate: p,
            publish_interval: publish,
            baseline,
        })
    }

    /// The index of the first rule that `span` satisfies: the rule that marks its trace.
    /// Allocation-free.
    pub fn first_marking_rule<S: SpanView + ?Sized>(&self, span: &S) -> Option<usize> {
        let resource = self.index.resource_candidates_of(span);
        self.first_marking_rule_from(&resource, span, true)
    }

    /// [`TailPolicy::first_marking_rule`] for a span of a resource whose candidates
    /// [`Policy::resource_candidates`](super::Policy::resource_candidates) computed, on the
    /// policy this section belongs to.
    #[inline]
    pub fn first_marking_rule_in<S: SpanView + ?Sized>(
        &self,
        resource: &super::ResourceCandidates,
        span: &S,
    ) -> Option<usize> {
        match &resource.tail {
            Some(bits) => self.first_marking_rule_from(bits, span, resource.hints.tail_span_keys),
            None => self.first_marking_rule(span),
        }
    }

    #[inline]
    fn first_marking_rule_from<S: SpanView + ?Sized>(
        &self,
        resource: &RuleBits,
        span: &S,
        span_keys: bool,
    ) -> Option<usize> {
        // Most spans are neither errors nor slow: the prefilter tells so in a few operations.
        let possible = self
            .prefilter
            .as_ref()
            .map(|p| p.candidates(span, span_keys));
        if possible == Some(0) {
            return None;
        }
        self.matching_rule(resource, span, span_keys, possible)
    }

    /// The first rule, among the index's candidates and those of `possible` (bit i: rule i;
    /// `None`: every rule), whose condition `span` satisfies. Kept out of line: the few spans
    /// the prefilter lets through pay the call, the rest keep the prefilter inlined.
    #[inline(never)]
    fn matching_rule<S: SpanView + ?Sized>(
        &self,
        resource: &RuleBits,
        span: &S,
        span_keys: bool,
        possible: Option<u64>,
    ) -> Option<usize> {
        self.index
            .with_candidates(resource, span, span_keys, |candidates| {
                first_match(candidates, 0..self.rules.len(), |i| {
                    possible.is_none_or(|m| m & 1 << i != 0)
                        && self.rules[i].condition.matches(span)
                })
            })
    }

    /// True when a rule's condition can read a resource attribute.
    pub(crate) fn reads_resource(&self) -> bool {
        self.rules.iter().any(|r| r.condition.reads_resource())
    }

    /// The rule index, for the resource part of evaluation.
    pub(crate) fn index(&self) -> &RuleIndex {
        &self.index
    }

    /// True when the section has rules (a baseline alone marks nothing in the gateway).
    pub fn has_rules(&self) -> bool {
        !self.rules.is_empty()
    }

    /// The rules' names, in document order; [`TailPolicy::first_marking_rule`] indexes this.
    pub fn rule_names(&self) -> impl ExactSizeIterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }

    /// The parameters of every window's filter.
    pub fn filter(&self) -> &FilterParams {
        &self.filter
    }

    /// The false-positive rate a window's filter is sized for.
    pub fn false_positive_rate(&self) -> f64 {
        self.false_positive_rate
    }

    /// How often a snapshot of the open window is published.
    pub fn publish_interval(&self) -> Duration {
        self.publish_interval
    }

    /// The baseline's rejection threshold: traces whose randomness reaches it are kept
    /// whatever the rules say. `None`: no baseline.
    pub fn baseline(&self) -> Option<Threshold> {
        self.baseline
    }
}

/// True when `trace_id` is in the baseline share that `baseline` (a rejection threshold)
/// keeps: its randomness (last 7 bytes) is at least the threshold, as head sampling decides.
pub fn in_baseline(baseline: Option<Threshold>, trace_id: &[u8; 16]) -> bool {
    baseline.is_some_and(|t| t.keeps(Randomness::from_trace_id(trace_id)))
}

fn compile_rule(i: usize, r: TailRuleDoc) -> Result<TailRule, PolicyError> {
    let path = |key: &str| format!("tail.rules[{i}].{key}");
    let mut parts: Vec<Condition> = Vec::new();
    let mut triggers = 0;
    match r.error {
        Some(true) => {
            triggers += 1;
            parts.push(condition(&path("error"), "status", Value::from("error"))?);
        }
        Some(false) => {
            return Err(PolicyError::new(
                path("error"),
                "`error: false` marks nothing: remove the key, or mark with `error: true`",
            ));
        }
        None => {}
    }
    let longer_than = |d: Dur| Condition::Duration(d.nanos().saturating_add(1), u64::MAX);
    if let Some(d) = r.slower_than {
        triggers += 1;
        parts.push(longer_than(d));
    }
    if let Some(d) = r.root_slower_than {
        triggers += 1;
        parts.push(Condition::Root(true));
        parts.push(longer_than(d));
    }
    if let Some(c) = r.condition {
        triggers += 1;
        parts.push(c);
    }
    if triggers == 0 {
        return Err(PolicyError::new(
            format!("tail.rules[{i}]"),
            "the rule marks nothing: give `error: true`, `slower_than`, `root_slower_than` or `match`",
        ));
    }
    if let Some(v) = r.service {
        // One name is an equality, a list a set membership, as in conditions.
        let mut m = Mapping::new();
        m.insert("resource".into(), "service.name".into());
        let op = if v.is_sequence() { "in" } else { "eq" };
        m.insert(op.into(), v);
        parts.push(parse_condition(&path("service"), Value::Mapping(m))?);
    }
    if let Some(v) = r.span_name {
        parts.push(condition(&path("span_name"), "span_name", v)?);
    }
    if let Some(v) = r.span_kind {
        parts.push(condition(&path("span_kind"), "span_kind", v)?);
    }
    let condition = if parts.len() == 1 {
        parts.remove(0)
    } else {
        Condition::All(parts.into())
    };
    Ok(TailRule {
        name: r.name.0,
        condition,
    })
}

/// The condition `{ key: value }`, refused with `path` when the value is not one `key` takes.
fn condition(path: &str, key: &str, value: Value) -> Result<Condition, PolicyError> {
    let mut m = Mapping::new();
    m.insert(key.into(), value);
    parse_condition(path, Value::Mapping(m))
}

fn parse_condition(path: &str, value: Value) -> Result<Condition, PolicyError> {
    serde_path_to_error::deserialize::<_, Condition>(value).map_err(|e| {
        let inner = e.path().to_string();
        // The inner path starts with the key we wrapped the value in: the rule's own key.
        let inner = inner.split_once('.').map_or("", |(_, rest)| rest);
        let full = if inner.is_empty() {
            path.to_string()
        } else {
            format!("{path}.{inner}")
        };
        let reason = e.into_inner().to_string();
        PolicyError::new(full, reason)
    })
}

#[cfg(test)]
mod tests {
    use super::super::Policy;
    use super::super::span::testing::{TestSpan, Val};
    use super::*;

    fn tail(yaml: &str) -> Policy {
        Policy::parse(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
    }

    fn refused(yaml: &str) -> PolicyError {
        match Policy::parse(yaml) {
            Ok(_) => panic!("should be refused:\n{yaml}"),
            Err(e) => e,
        }
    }

    const DOC: &str = r#"
version: 1
tail:
  window: 30s
  expected_traces: 1000000
  false_positive_rate: 0.001
  seed: 7
  publish_interval: 2s
  baseline_probability: 0.01
  rules:
    - name: errors
      error: true
    - name: slow-db
      slower_than: 200ms
      span_kind: client
      match: { span_attribute: db.system, exists: true }
    - name: slow-checkout
      slower_than: 1s
      service: [checkout, cart]
      span_name: { prefix: "POST " }
    - name: vip
      match: { span_attribute: customer.tier, eq: gold }
    - name: checkout-sla
      root_slower_than: 2s
      service: checkout
"#;

    fn span(service: &str, name: &str, millis: u64) -> TestSpan {
        let mut s = TestSpan::new(service, name);
        s.end = s.start + millis * 1_000_000;
        s
    }

    /// Spans of every kind, status, root-ness, duration (around the thresholds), service,
    /// name and attribute the rules of `DOC` and `MORE` name, and some they do not.
    fn varied_spans() -> Vec<TestSpan> {
        let mut spans = Vec::new();
        let millis = [0, 5, 200, 201, 999, 1001, 2000, 2001, 5000];
        for (i, service) in ["checkout", "cart", "web"].into_iter().enumerate() {
            for name in ["POST /pay", "GET /"] {
                for attrs in 0..4 {
                    for kind in [0i32, 1, 2, 3, 4, 5, 9, -1] {
                        for status in [0, 1, 2, 7] {
                            let d = millis[(i + attrs + kind.unsigned_abs() as usize) % 9];
                            let mut s = span(service, name, d);
                            s.kind = kind;
                            s.status = status;
                            s.root = (kind + status) % 2 == 0;
                            if attrs & 1 == 1 {
                                s = s.attr("db.system", Val::Str("pg".into()));
                            }
                            if attrs & 2 == 2 {
                                s = s.attr("customer.tier", Val::Str("gold".into()));
                            }
                            spans.push(s);
                        }
                    }
                }
            }
        }
        spans
    }

    const MORE: &str = r#"
    - name: nested
      match: { all: [ { root: false }, { span_kind: { in: [client, producer] } }, { duration: { gte: 1s, lt: 2s } } ] }
    - name: contradiction
      root_slower_than: 1ms
      match: { root: false }
    - name: either
      match: { any: [ { status: error }, { span_attribute: db.system, exists: true } ] }
      slower_than: 2s
    - name: not-ok
      match: { not: { status: ok } }
      span_kind: server
"#;

    #[test]
    fn the_prefilter_rules_out_only_spans_that_no_rule_matches() {
        let p = tail(&format!("{DOC}{MORE}"));
        let t = p.tail().unwrap();
        assert!(t.prefilter.is_some());
        let (mut ruled_out, mut marked) = (0, 0);
        for span in varied_spans() {
            let resource = t.index().resource_candidates_of(&span);
            let exact = t.matching_rule(&resource, &span, true, None);
            // A request of this one span: its bytes hold a rule's attribute key or not.
            let keys = span
                .attrs
                .iter()
                .any(|(k, _)| k == "db.system" || k == "customer.tier");
            let filtered = t.first_marking_rule_from(&resource, &span, keys);
            assert_eq!(filtered, exact, "{span:?}");
            let candidates = t.prefilter.as_ref().unwrap().candidates(&span, keys);
            if let Some(rule) = exact {
                assert_ne!(candidates & 1 << rule, 0, "{span:?}");
                marked += 1;
            }
            ruled_out += usize::from(candidates == 0);
        }
        // The test must reach both sides: spans ruled out early, and spans marked.
        assert!(ruled_out > 50 && marked > 100, "{ruled_out} {marked}");
    }

    #[test]
    fn rules_mark_the_spans_they_describe() {
        let p = tail(DOC);
        let t = p.tail().unwrap();
        let names: Vec<&str> = t.rule_names().collect();
        assert_eq!(
            names,
            ["errors", "slow-db", "slow-checkout", "vip", "checkout-sla"]
        );
        let mut error = span("web", "GET /", 5);
        error.status = 2;
        assert_eq!(t.first_marking_rule(&error), Some(0));
        assert_eq!(t.first_marking_rule(&span("web", "GET /", 5)), None);

        let mut db = span("orders", "SELECT", 250).attr("db.system", Val::Str("pg".into()));
        db.kind = 3;
        assert_eq!(t.first_marking_rule(&db), Some(1));
        let mut fast_db = db.clone();
        fast_db.end = fast_db.start + 200_000_000; // exactly 200ms is not over it
        assert_eq!(t.first_marking_rule(&fast_db), None);
        let mut server_db = db.clone();
        server_db.kind = 2;
        assert_eq!(t.first_marking_rule(&server_db), None);

        assert_eq!(
            t.first_marking_rule(&span("cart", "POST /add", 1500)),
            Some(2)
        );
        assert_eq!(t.first_marking_rule(&span("cart", "GET /add", 1500)), None);
        assert_eq!(t.first_marking_rule(&span("web", "POST /add", 1500)), None);

        let vip = span("web", "GET /", 1).attr("customer.tier", Val::Str("gold".into()));
        assert_eq!(t.first_marking_rule(&vip), Some(3));

        let mut root = span("checkout", "GET /checkout", 2500);
        assert_eq!(t.first_marking_rule(&root), None, "not a root span");
        root.root = true;
        assert_eq!(t.first_marking_rule(&root), Some(4));
    }

    #[test]
    fn filter_parameters_follow_the_document() {
        let p = tail(DOC);
        let f = *p.tail().unwrap().filter();
        assert_eq!(f.window_millis, 30_000);
        assert_eq!(f.expected_traces, 1_000_000);
        // -n ln p / (ln 2)^2 bits = 14.38 bits per trace: ~1.8 MB for a million at 0.1%.
        assert_eq!(f.bitmap_bytes, 1_797_199);
        assert_eq!(f.hashes, 10);
        assert_eq!(f.seed, expand_seed(7));
        assert_ne!(expand_seed(7), expand_seed(8));
        assert_eq!(f.window_start(61_234), 60_000);
        let t = p.tail().unwrap();
        assert_eq!(t.publish_interval(), Duration::from_secs(2));
        // The baseline keeps 1% of trace ids, by their last 7 bytes.
        let keeps = |last: u8| {
            let mut id = [0u8; 16];
            id[9] = last;
            in_baseline(t.baseline(), &id)
        };
        assert!(keeps(0xff));
        assert!(!keeps(0x01));
        assert!(!in_baseline(None, &[0xff; 16]));
    }

    #[test]
    fn defaults_apply() {
        let p = tail("version: 1\ntail:\n  rules: [ { name: e, error: true } ]\n");
        let t = p.tail().unwrap();
        assert_eq!(t.filter().window_millis, 60_000);
        assert_eq!(t.filter().expected_traces, 100_000);
        assert_eq!(t.false_positive_rate(), 0.001);
        assert_eq!(t.publish_interval(), Duration::from_secs(5));
        assert!(t.baseline().is_none());
        assert!(t.has_rules());
        assert!(p.tail().is_some());
        assert!(tail("version: 1").tail().is_none());
    }

    #[test]
    fn bad_tail_sections_are_refused_with_their_path() {
        let cases = [
            (
                "tail: { rules: [ { name: e } ] }",
                "tail.rules[0]",
                "marks nothing",
            ),
            (
                "tail: { rules: [ { name: e, error: false } ] }",
                "tail.rules[0].error",
                "marks nothing",
            ),
            (
                "tail: { rules: [ { name: e, error: true, span_kind: sideways } ] }",
                "tail.rules[0].span_kind",
                "unknown span kind",
            ),
            (
                "tail: { rules: [ { name: e, slower_than: 200 } ] }",
                "tail.rules[0].slower_than",
                "duration",
            ),
            (
                "tail: { rules: [ { name: e, error: true, colour: red } ] }",
                "tail.rules[0].colour",
                "unknown field `colour`",
            ),
            (
                "tail: { rules: [ { name: e, match: { span_name: { regex: '(' } } } ] }",
                "tail.rules[0].match.span_name.regex",
                "invalid regular expression",
            ),
            (
                "tail: { rules: [ { name: e, error: true }, { name: e, error: true } ] }",
                "tail.rules[1].name",
                "duplicate",
            ),
            (
                "tail: { false_positive_rate: 1.5, rules: [ { name: e, error: true } ] }",
                "tail.false_positive_rate",
                "out of range",
            ),
            (
                "tail: { window: 10ms, rules: [ { name: e, error: true } ] }",
                "tail.window",
                "out of range",
            ),
            (
                "tail: { window: 10s, publish_interval: 1m, rules: [ { name: e, error: true } ] }",
                "tail.publish_interval",
                "out of range",
            ),
            (
                "tail: { expected_traces: 0, rules: [ { name: e, error: true } ] }",
                "tail.expected_traces",
                "out of range",
            ),
            (
                "tail: { expected_traces: 1000000000000, false_positive_rate: 0.0001, rules: [ { name: e, error: true } ] }",
                "tail.expected_traces",
                "over the limit",
            ),
            (
                "tail: { baseline_probability: 2, rules: [] }",
                "tail.baseline_probability",
                "not a probability",
            ),
            ("tail: { rules: [] }", "tail", "marks nothing"),
        ];
        for (section, path, reason) in cases {
            let e = refused(&format!("version: 1\n{section}\n"));
            assert_eq!(e.path(), path, "{section}: {e}");
            assert!(e.reason().contains(reason), "{section}: {e}");
        }
    }

    #[test]
    fn the_example_file_is_valid() {
        let p = tail(include_str!("../../policies/tail.yaml"));
        assert_eq!(p.tail().unwrap().rule_names().len(), 5);
    }

    #[test]
    fn a_baseline_alone_is_a_tail_section() {
        let p = tail("version: 1\ntail: { baseline_probability: 0.5 }\n");
        let t = p.tail().unwrap();
        assert!(!t.has_rules());
        assert_eq!(t.first_marking_rule(&span("a", "b", 1)), None);
        assert!(t.baseline().is_some());
    }
}
