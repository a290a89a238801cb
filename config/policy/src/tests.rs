//! Tests of whole policies: parsing and its errors, sampling statistics and consistency,
//! tracestate thresholds, routing, rate limits, and that evaluation does not allocate.

use super::span::testing::{TestSpan, Val};
use super::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

const SEC: u64 = 1_000_000_000;

fn policy(yaml: &str) -> Policy {
    Policy::parse(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

fn refused(yaml: &str) -> PolicyError {
    match Policy::parse(yaml) {
        Ok(_) => panic!("should be refused:\n{yaml}"),
        Err(e) => e,
    }
}

/// SplitMix64: a fixed, seeded generator, so the statistics tests see the same ids each run.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }

    fn trace_id(&mut self) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.next().to_be_bytes());
        id[8..].copy_from_slice(&self.next().to_be_bytes());
        id
    }
}

/// A trace id whose randomness (last 7 bytes) is `r`.
fn id_with_randomness(r: u64) -> [u8; 16] {
    let mut id = [0xab; 16];
    id[9..].copy_from_slice(&r.to_be_bytes()[1..]);
    id
}

fn span_in(trace_id: [u8; 16], service: &str, name: &str) -> TestSpan {
    TestSpan {
        trace_id,
        ..TestSpan::new(service, name)
    }
}

#[test]
fn the_example_files_are_valid() {
    let p = policy(include_str!("../../policies/example.yaml"));
    assert_eq!(p.version(), 7);
    let names: Vec<_> = p.rules().iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "errors",
            "slow-checkout",
            "health-checks",
            "batch-jobs",
            "drop-synthetics",
            "payments-audit",
            "internal-tools",
            "server-5xx"
        ]
    );
    assert_eq!(p.rules()[4].section, Section::Routing);
    assert_eq!(
        p.topics(),
        [
            "otlp_spans",
            "payments_audit",
            "otlp_spans_internal",
            "otlp_spans_errors"
        ]
    );
    let p = policy(include_str!("../../policies/minimal.yaml"));
    assert_eq!(p.version(), 1);
    assert!(p.rules().is_empty());
    let p = policy(include_str!("../../policies/example.json"));
    assert_eq!(p.version(), 3);
    assert_eq!(p.rules().len(), 4);
}

#[test]
fn errors_name_the_key_and_the_reason() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "version: 1\nrouting:\n  rules:\n    - { name: a, match: { root: true }, action: drop }\n    - { name: b, match: { root: false }, action: drop }\n    - name: c\n      match: { span_attribute: http.url, regex: '(unclosed' }\n      action: drop\n",
            "routing.rules[2].match.regex",
            "invalid regular expression `(unclosed`",
        ),
        (
            "version: 1\nsampling:\n  rulez: []\n",
            "sampling.rulez",
            "unknown field `rulez`",
        ),
        (
            "version: 1\nsampling:\n  rules:\n    - { name: a, match: { root: true }, probability: 1.5 }\n",
            "sampling.rules[0].probability",
            "1.5 is not a probability",
        ),
        (
            "version: 1\nsampling:\n  default_probability: -0.1\n",
            "sampling.default_probability",
            "is not a probability",
        ),
        (
            "version: 1\nsampling:\n  rules:\n    - { name: a, match: { root: true }, probability: 1e-20 }\n",
            "sampling.rules[0].probability",
            "below the smallest probability",
        ),
        (
            "version: 1\nsampling:\n  rules:\n    - { name: a, match: { root: true }, probability: 1 }\n    - { name: b, match: { root: true }, probability: 1 }\n    - { name: a, match: { root: true }, probability: 1 }\n",
            "sampling.rules[2].name",
            "duplicate rule name `a`: sampling.rules[0] has it too",
        ),
        (
            "version: 1\nrouting:\n  rules:\n    - { name: a, match: { span_kind: sever }, action: drop }\n",
            "routing.rules[0].match.span_kind",
            "unknown span kind `sever`",
        ),
        (
            "version: 1\nrouting:\n  rules:\n    - { name: a, match: { root: true }, action: { topic: '' } }\n",
            "routing.rules[0].action.topic",
            "empty topic name",
        ),
        (
            "version: 1\nrouting:\n  rules:\n    - { name: a, match: { root: true }, action: { topics: [a, 'b c'] } }\n",
            "routing.rules[0].action.topics[1]",
            "not a Kafka topic name",
        ),
        (
            "version: 1\nrouting:\n  rules:\n    - { name: a, match: { root: true }, action: send }\n",
            "routing.rules[0].action",
            "`send` is not an action",
        ),
        (
            "version: 1\nrouting:\n  rules:\n    - { name: a, match: { root: true }, action: { topic: a, topics: [b] } }\n",
            "routing.rules[0].action",
            "exactly one of `topic` and `topics`",
        ),
        (
            "version: 1\nrouting:\n  rules:\n    - { name: '', match: { root: true }, action: drop }\n",
            "routing.rules[0].name",
            "non-empty name",
        ),
        (
            "version: 1\nrouting:\n  rules:\n    - { name: a, action: drop }\n",
            "routing.rules[0]",
            "missing field `match`",
        ),
        ("sampling: {}\n", ".", "missing field `version`"),
        ("version: 0\n", "version", "keep-everything"),
        ("version: one\n", "version", "invalid type"),
        ("", ".", "the document is empty"),
        (
            "version: 1\nsampling:\n  precision: 15\n",
            "sampling.precision",
            "use 1 to 14",
        ),
        (
            "version: 1\nsampling:\n  mode: fancy\n",
            "sampling.mode",
            "unknown variant `fancy`",
        ),
        (
            "version: 1\nsampling:\n  rate_limit: { burst: 5 }\n",
            "sampling.rate_limit.burst",
            "needs `spans_per_second`",
        ),
        (
            "version: 1\nsampling:\n  rate_limit: { exempt_errors: true }\n",
            "sampling.rate_limit",
            "limits nothing",
        ),
        (
            "version: 1\nsampling:\n  rate_limit: { spans_per_second: 0 }\n",
            "sampling.rate_limit.spans_per_second",
            "must be above 0",
        ),
        (
            "version: 1\nsampling:\n  rate_limit: { spans_per_second: 5, bucket_idle_timeout: soon }\n",
            "sampling.rate_limit.bucket_idle_timeout",
            "is not a duration",
        ),
        (
            "version: 1\nsampling:\n  rate_limit: { spans_per_second: 5, max_services_per_tenant: -1 }\n",
            "sampling.rate_limit.max_services_per_tenant",
            "expected usize",
        ),
        (
            "version: 1\nsampling:\n  rate_limit:\n    services:\n      checkout: { spans_per_second: 5, burst: 0 }\n",
            "sampling.rate_limit.services.checkout.burst",
            "at least 1",
        ),
        (
            "{\"version\": 1, \"routing\": {\"rules\": [{\"name\": \"a\", \"match\": {\"span_name\": {\"prefix\": [1]}}, \"action\": \"drop\"}]}}",
            "routing.rules[0].match.span_name.prefix",
            "invalid type",
        ),
    ];
    for (yaml, path, reason) in cases {
        let e = refused(yaml);
        assert_eq!(e.path(), *path, "{e}\n{yaml}");
        assert!(e.reason().contains(reason), "{e}\nwanted: {reason}");
        assert_eq!(e.to_string(), format!("{}: {}", e.path(), e.reason()));
        assert!(!e.reason().contains(": invalid"), "a path repeated: {e}");
        let parent = e.path().rsplit_once(['.', '[']).map_or("", |(p, _)| p);
        assert!(
            parent.is_empty() || !e.reason().starts_with(parent),
            "a path repeated: {e}"
        );
    }
}

#[test]
fn keep_everything_keeps_everything() {
    let p = Policy::keep_everything();
    assert_eq!(p.version(), 0);
    assert!(p.rules().is_empty());
    let mut rng = SplitMix(1);
    for _ in 0..1000 {
        let mut s = span_in(rng.trace_id(), "svc", "op");
        s.trace_state = "ot=th:fff".into();
        let d = p.evaluate(&s, 0);
        assert!(d.keep);
        assert_eq!(d.outcome, Outcome::Kept);
        assert_eq!(d.threshold, None, "the tracestate stays as it came");
        assert_eq!(p.topic_set(d.topics), [Topic::Default]);
        assert_eq!(p.topic_name(Topic::Default, "otlp_spans"), "otlp_spans");
    }
    // An empty policy document behaves the same.
    let d = policy("version: 1").evaluate(&TestSpan::new("a", "b"), 0);
    assert!(d.keep && d.threshold.is_none() && d.sampling_rule.is_none());
}

#[test]
fn a_million_trace_ids_at_probability_0_1_keep_10_percent() {
    let p = policy("version: 1\nsampling:\n  default_probability: 0.1\n");
    let mut rng = SplitMix(0x5eed);
    let mut s = TestSpan::new("svc", "op");
    let n = 1_000_000;
    let mut kept = 0;
    for _ in 0..n {
        s.trace_id = rng.trace_id();
        let d = p.evaluate(&s, 0);
        if d.keep {
            kept += 1;
            assert_eq!(d.threshold.map(|t| t.to_string()).as_deref(), Some("e666"));
        } else {
            assert_eq!(d.outcome, Outcome::SampledOut);
        }
    }
    let share = f64::from(kept) / f64::from(n);
    assert!((0.095..=0.105).contains(&share), "kept {share}");
}

#[test]
fn decisions_are_consistent_per_trace() {
    let text = "version: 1\nsampling:\n  default_probability: 0.3\n  rules:\n    - { name: tenth, match: { resource: service.name, eq: cart }, probability: 0.1 }\n    - { name: half, match: { resource: service.name, eq: web }, probability: 0.5 }\n";
    let (a, b) = (policy(text), policy(text));
    let mut rng = SplitMix(42);
    let mut kept_at = [0u32; 3];
    for _ in 0..20_000 {
        let id = rng.trace_id();
        // Two gateways, and several spans of one trace that meet the same probability.
        let spans = [
            span_in(id, "other", "GET /"),
            span_in(id, "other", "SELECT"),
            span_in(id, "another", "publish"),
        ];
        let first = a.evaluate(&spans[0], 0).keep;
        for s in &spans {
            assert_eq!(a.evaluate(s, 0), b.evaluate(s, 0));
            assert_eq!(a.evaluate(s, 0).keep, first);
        }
        // Across probabilities, kept at 0.1 implies kept at 0.3 implies kept at 0.5.
        let at = |svc| a.evaluate(&span_in(id, svc, "op"), 0).keep;
        let (tenth, default, half) = (at("cart"), at("other"), at("web"));
        assert!(!tenth || default, "kept at 0.1 but not at 0.3");
        assert!(!default || half, "kept at 0.3 but not at 0.5");
        for (i, k) in [tenth, default, half].into_iter().enumerate() {
            kept_at[i] += u32::from(k);
        }
    }
    assert!(
        kept_at[0] < kept_at[1] && kept_at[1] < kept_at[2],
        "{kept_at:?}"
    );
}

#[test]
fn sampling_rules_are_ordered_and_reported() {
    let p = policy(
        "version: 1\nsampling:\n  default_probability: 0\n  rules:\n    - { name: errors, match: { status: error }, probability: 1 }\n    - { name: checkout, match: { resource: service.name, eq: checkout }, probability: 0 }\n",
    );
    let mut s = TestSpan::new("checkout", "op");
    s.status = STATUS_CODE_ERROR;
    let d = p.evaluate(&s, 0);
    assert!(d.keep, "the first matching rule wins");
    assert_eq!(d.sampling_rule, Some(0));
    s.status = 0;
    let d = p.evaluate(&s, 0);
    assert_eq!(
        (d.keep, d.outcome, d.sampling_rule),
        (false, Outcome::SampledOut, Some(1))
    );
    assert_eq!(d.routing_rule, None);
    assert!(d.topics.is_empty());
    let d = p.evaluate(&TestSpan::new("cart", "op"), 0);
    assert_eq!((d.keep, d.sampling_rule), (false, None));
}

#[test]
fn randomness_comes_from_rv_when_present() {
    let p = policy("version: 1\nsampling:\n  default_probability: 0.5\n");
    // Trace id randomness 0 would be dropped at 0.5; an rv above 0x80.. keeps the span.
    let mut s = span_in(id_with_randomness(0), "svc", "op");
    assert!(!p.evaluate(&s, 0).keep);
    s.trace_state = "ot=rv:c0000000000000,vendor=1".into();
    let d = p.evaluate(&s, 0);
    assert!(d.keep);
    let mut out = String::new();
    assert!(d.write_tracestate(&s.trace_state, &mut out));
    assert_eq!(out, "ot=rv:c0000000000000;th:8,vendor=1");
    // An invalid rv is ignored.
    s.trace_state = "ot=rv:zz".into();
    assert!(!p.evaluate(&s, 0).keep);
}

#[test]
fn arriving_thresholds_in_proportional_mode() {
    let p = policy("version: 1\nsampling:\n  default_probability: 0.5\n");
    // Arrived sampled at 1/2 (th:8); 0.5 here makes 1/4 (th:c).
    let mut s = span_in(id_with_randomness(0xd0_0000_0000_0000), "svc", "op");
    s.trace_state = "ot=th:8".into();
    let d = p.evaluate(&s, 0);
    assert_eq!(d.threshold, Threshold::parse("c"));
    assert!(d.keep);
    s.trace_id = id_with_randomness(0xb0_0000_0000_0000);
    assert!(!p.evaluate(&s, 0).keep, "R >= 8 but < c: dropped");

    // An arriving threshold the randomness contradicts is ignored and replaced.
    s.trace_id = id_with_randomness(0x90_0000_0000_0000);
    s.trace_state = "ot=th:f".into();
    let d = p.evaluate(&s, 0);
    assert!(d.keep);
    assert_eq!(d.threshold, Threshold::parse("8"));

    // At probability 1 the span and its tracestate pass untouched.
    let all = policy(
        "version: 1\nsampling:\n  rules:\n    - { name: all, match: { root: false }, probability: 1 }\n",
    );
    s.trace_state = "ot=th:f".into();
    let d = all.evaluate(&s, 0);
    assert!(d.keep && d.threshold.is_none());
    let mut out = String::from("unchanged");
    assert!(!d.write_tracestate(&s.trace_state, &mut out));
    assert_eq!(out, "unchanged");
}

#[test]
fn arriving_thresholds_in_equalizing_mode() {
    let p = policy("version: 1\nsampling:\n  mode: equalizing\n  default_probability: 0.5\n");
    assert_eq!(p.sampling_mode(), SamplingMode::Equalizing);
    let mut s = span_in(id_with_randomness(0xd0_0000_0000_0000), "svc", "op");
    // Arrived at 1/2: already equal, unchanged.
    s.trace_state = "ot=th:8".into();
    assert_eq!(p.evaluate(&s, 0).threshold, None);
    assert!(p.evaluate(&s, 0).keep);
    // Arrived at 1/4: sampled harder upstream, passes as it is.
    s.trace_state = "ot=th:c".into();
    let d = p.evaluate(&s, 0);
    assert!(d.keep && d.threshold.is_none());
    // Arrived at 1 (th:0): brought to 1/2.
    s.trace_state = "ot=th:0".into();
    assert_eq!(p.evaluate(&s, 0).threshold, Threshold::parse("8"));
}

#[test]
fn precision_applies_to_written_thresholds() {
    let p = policy("version: 1\nsampling:\n  precision: 14\n  default_probability: 0.1\n");
    let s = span_in(id_with_randomness(0xff_ffff_ffff_ffff), "svc", "op");
    let d = p.evaluate(&s, 0);
    assert_eq!(d.threshold.unwrap().to_string(), "e6666666666666");
}

#[test]
fn routing_to_topics_and_drop() {
    let p = policy(
        r#"
version: 2
routing:
  default_topic: main
  rules:
    - name: drop-health
      match: { span_name: { prefix: "GET /health" } }
      action: drop
    - name: payments
      match: { resource: service.name, eq: payments }
      action: { topics: [main, audit] }
    - name: payments-too
      match: { resource: service.name, prefix: pay }
      action: { topic: never-reached-for-payments }
    - name: debug
      match: { resource: deployment.environment, eq: dev }
      action: { topic: dev }
"#,
    );
    assert_eq!(
        p.topics(),
        ["main", "audit", "never-reached-for-payments", "dev"]
    );
    let names = |d: Decision| -> Vec<&str> {
        p.topic_set(d.topics)
            .iter()
            .map(|t| p.topic_name(*t, "otlp_spans"))
            .collect()
    };

    let d = p.evaluate(&TestSpan::new("payments", "charge"), 0);
    assert_eq!(names(d), ["main", "audit"]);
    assert_eq!(d.routing_rule, Some(1));
    assert_eq!(p.rules()[1].name, "payments");

    let d = p.evaluate(&TestSpan::new("payroll", "pay"), 0);
    assert_eq!(names(d), ["never-reached-for-payments"]);
    assert_eq!(d.routing_rule, Some(2));

    let d = p.evaluate(&TestSpan::new("payments", "GET /healthz"), 0);
    assert_eq!((d.keep, d.outcome), (false, Outcome::RoutedToDrop));
    assert_eq!(d.routing_rule, Some(0));
    assert!(p.topic_set(d.topics).is_empty());

    let dev = TestSpan::new("web", "op").res("deployment.environment", Val::Str("dev".into()));
    assert_eq!(names(p.evaluate(&dev, 0)), ["dev"]);

    let d = p.evaluate(&TestSpan::new("web", "op"), 0);
    assert_eq!(names(d), ["main"]);
    assert_eq!(d.routing_rule, None);
    assert_eq!(p.topic_set(d.topics), [Topic::Named(0)]);

    // Without default_topic, the gateway's own.
    let p = policy(
        "version: 1\nrouting:\n  rules:\n    - { name: x, match: { root: true }, action: { topic: t } }\n",
    );
    let d = p.evaluate(&TestSpan::new("web", "op"), 0);
    assert_eq!(p.topic_set(d.topics), [Topic::Default]);
    assert_eq!(p.topic_name(Topic::Default, "otlp_spans"), "otlp_spans");
}

#[test]
fn rule_indices_count_sampling_rules_first() {
    let p = policy(
        "version: 1\nsampling:\n  rules:\n    - { name: s0, match: { root: true }, probability: 1 }\n    - { name: s1, match: { root: false }, probability: 1 }\nrouting:\n  rules:\n    - { name: shared-name-is-fine, match: { root: false }, action: { topic: t } }\n",
    );
    let d = p.evaluate(&TestSpan::new("a", "b"), 0);
    assert_eq!((d.sampling_rule, d.routing_rule), (Some(1), Some(2)));
    assert_eq!(p.rules()[2].section, Section::Routing);
    assert_eq!(p.rules()[2].section.as_str(), "routing");
}

#[test]
fn rate_limits_with_a_fake_clock() {
    let p = policy(
        r#"
version: 1
sampling:
  rate_limit:
    spans_per_second: 2
    burst: 3
    exempt_errors: true
    services:
      checkout: { spans_per_second: 1, burst: 1 }
routing:
  rules:
    - { name: drop-noise, match: { span_name: noise }, action: drop }
"#,
    );
    let t0 = 100 * SEC;
    let web = TestSpan::new("web", "op");
    let kept =
        |s: &TestSpan, now: u64, n: usize| (0..n).filter(|_| p.evaluate(s, now).keep).count();

    // Burst, then refusals, then the refill rate.
    assert_eq!(kept(&web, t0, 10), 3);
    let d = p.evaluate(&web, t0);
    assert_eq!((d.keep, d.outcome), (false, Outcome::RateLimited));
    assert!(d.topics.is_empty());
    assert_eq!(kept(&web, t0 + SEC / 2, 10), 1);
    assert_eq!(kept(&web, t0 + SEC, 10), 1);
    assert_eq!(kept(&web, t0 + 60 * SEC, 10), 3, "refill stops at burst");

    // Each service has its own bucket; named ones have their own limit.
    let checkout = TestSpan::new("checkout", "op");
    assert_eq!(kept(&checkout, t0, 10), 1);
    assert_eq!(kept(&TestSpan::new("search", "op"), t0, 10), 3);
    let mut anonymous = TestSpan::new("x", "op");
    anonymous.resource.clear();
    assert_eq!(
        kept(&anonymous, t0, 10),
        3,
        "unknown_service has a bucket too"
    );

    // Error spans pass without taking tokens.
    let mut failed = checkout.clone();
    failed.status = STATUS_CODE_ERROR;
    assert_eq!(kept(&failed, t0, 10), 10);
    assert_eq!(kept(&checkout, t0 + SEC, 10), 1, "errors took no tokens");

    // Spans routed to drop take no tokens either.
    let noise = TestSpan::new("fresh", "noise");
    assert_eq!(kept(&noise, t0, 10), 0);
    assert_eq!(kept(&TestSpan::new("fresh", "op"), t0, 10), 3);
}

#[test]
fn errors_count_against_the_limit_unless_exempt() {
    let p = policy("version: 1\nsampling:\n  rate_limit: { spans_per_second: 1 }\n");
    let mut s = TestSpan::new("web", "op");
    s.status = STATUS_CODE_ERROR;
    assert!(p.evaluate(&s, SEC).keep);
    assert_eq!(p.evaluate(&s, SEC).outcome, Outcome::RateLimited);
}

#[test]
fn sampled_out_spans_take_no_tokens() {
    let p = policy(
        "version: 1\nsampling:\n  rules:\n    - { name: none, match: { span_name: dropped }, probability: 0 }\n  rate_limit: { spans_per_second: 1, burst: 1 }\n",
    );
    for _ in 0..5 {
        assert_eq!(
            p.evaluate(&TestSpan::new("web", "dropped"), SEC).outcome,
            Outcome::SampledOut
        );
    }
    assert!(p.evaluate(&TestSpan::new("web", "kept"), SEC).keep);
}

#[test]
fn reloads_carry_rate_limits_over() {
    let text = "version: 1\nsampling:\n  rate_limit: { spans_per_second: 1, burst: 1 }\n";
    let old = policy(text);
    let s = TestSpan::new("web", "op");
    assert!(old.evaluate(&s, SEC).keep);
    let new = policy(&text.replace("version: 1", "version: 2"));
    new.carry_over_rate_limits(&old, SEC);
    assert!(
        !new.evaluate(&s, SEC).keep,
        "the bucket stayed empty across the reload"
    );
    let fresh = policy(text);
    assert!(fresh.evaluate(&s, SEC).keep);
}

#[test]
fn rate_limit_buckets_are_bounded_per_tenant_and_freed_when_idle() {
    // The keys as the gateway's black-box tests write them.
    let p = policy(
        "version: 1\nsampling:\n  rate_limit:\n    spans_per_second: 1\n    max_services: 8\n    max_services_per_tenant: 1\n    bucket_idle_timeout: 2s\n",
    );
    let span = |service: &str, tenant: Option<&str>| TestSpan {
        tenant: tenant.map(Into::into),
        ..TestSpan::new(service, "op")
    };
    assert!(p.evaluate(&span("a", Some("t")), SEC).keep);
    assert!(p.evaluate(&span("b", Some("t")), SEC).keep, "t's overflow");
    assert!(
        !p.evaluate(&span("c", Some("t")), SEC).keep,
        "shared with b"
    );
    assert!(p.evaluate(&span("c", None), SEC).keep);
    assert!(p.evaluate(&span("c", Some("u")), SEC).keep);
    assert_eq!(p.rate_limit_buckets(), 5, "3 services, 2 tenants' overflow");
    assert!(p.evaluate(&span("d", None), 4 * SEC).keep);
    assert_eq!(p.rate_limit_buckets(), 1, "idle 2 s: freed");
    assert_eq!(policy("version: 1").rate_limit_buckets(), 0);
}

#[test]
fn tail_is_compiled() {
    let p = policy("version: 1\ntail:\n  rules:\n    - { name: errors, error: true }\n");
    let tail = p.tail().unwrap();
    assert_eq!(tail.rule_names().collect::<Vec<_>>(), ["errors"]);
    assert!(policy("version: 1").tail().is_none());
}

#[test]
fn policies_are_send_and_sync() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<Policy>();
    shared::<Decision>();
}

// Counts allocations of the current thread, to check that evaluation allocates nothing.
struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: forwards to the system allocator; counting touches only a const thread-local.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn evaluation_does_not_allocate() {
    let p = policy(include_str!("../../policies/example.yaml"));
    let mut rng = SplitMix(7);
    let mut spans: Vec<TestSpan> = Vec::new();
    for (service, name) in [
        ("checkout", "GET /cart"),
        ("search", "GET /healthz"),
        ("batch-nightly", "run"),
        ("payments", "charge"),
        ("web", "render"),
    ] {
        let mut s = span_in(rng.trace_id(), service, name)
            .attr("http.response.status_code", Val::Int(503))
            .res("deployment.environment", Val::Str("prod".into()));
        s.scope = "com.example.internal.jobs".into();
        s.trace_state = "ot=th:8;rv:fedcba98765432,vendor=x".into();
        spans.push(s);
    }
    // The first evaluation on a thread may set up regex caches and buckets of new services.
    for s in &spans {
        p.evaluate(s, SEC);
    }
    let before = allocations();
    let mut kept = 0;
    for i in 0..10_000u64 {
        for s in &spans {
            kept += usize::from(p.evaluate(s, SEC + i * 1000).keep);
        }
    }
    assert_eq!(allocations() - before, 0, "evaluate allocated");
    assert!(kept > 0);
}

#[test]
fn the_service_index_keeps_document_order() {
    let p = policy(
        r#"
version: 1
sampling:
  rules:
    - { name: a-first, match: { resource: service.name, eq: a }, probability: 1 }
    - { name: servers, match: { span_kind: server }, probability: 1 }
    - { name: b-after, match: { resource: service.name, in: [a, b] }, probability: 1 }
    - { name: b-or-c, match: { any: [ { resource: service.name, eq: b }, { resource: service.name, eq: c } ] }, probability: 1 }
routing:
  rules:
    - { name: c-errors, match: { all: [ { status: error }, { resource: service.name, eq: c } ] }, action: { topic: errors } }
    - { name: roots, match: { root: true }, action: { topic: roots } }
    - { name: c, match: { resource: service.name, eq: c }, action: { topic: c } }
"#,
    );
    let services = ["a", "b", "c", "d"];
    for (n, service) in services.iter().enumerate() {
        for kind in [2, 3] {
            for status in [0, 2] {
                for root in [false, true] {
                    let mut s = TestSpan::new(service, "op");
                    s.kind = kind;
                    s.status = status;
                    s.root = root;
                    if n == 3 {
                        s.resource.clear();
                    }
                    // What a plain scan in document order finds.
                    let sampling = p
                        .sampling
                        .rules
                        .iter()
                        .position(|r| r.condition.matches(&s));
                    let routing = p.routing.rules.iter().position(|r| r.condition.matches(&s));
                    let d = p.evaluate(&s, 0);
                    assert_eq!(d.sampling_rule.map(usize::from), sampling, "{s:?}");
                    assert_eq!(
                        d.routing_rule
                            .map(|i| usize::from(i) - p.sampling.rules.len()),
                        routing,
                        "{s:?}"
                    );
                }
            }
        }
    }
    // Spot checks: a server span of `b` meets `servers` before `b-after`.
    let s = TestSpan::new("b", "op");
    assert_eq!(p.evaluate(&s, 0).sampling_rule, Some(1));
}

#[test]
fn a_policy_says_whether_it_reads_resource_attributes() {
    let reads = |yaml: &str| policy(yaml).reads_resource_attributes();
    assert!(!reads("version: 1\n"));
    assert!(!reads(
        "version: 1\nrouting:\n  rules:\n    - name: gold\n      match: { span_attribute: tier, eq: gold }\n      action: { topic: gold }\n"
    ));
    assert!(!reads(
        "version: 1\ntail:\n  rules:\n    - { name: slow, slower_than: 1s, span_kind: client }\n"
    ));
    assert!(reads(
        "version: 1\nrouting:\n  rules:\n    - name: pay\n      match: { not: { any: [ { status: error }, { resource: service.name, eq: pay } ] } }\n      action: { topic: pay }\n"
    ));
    assert!(reads(
        "version: 1\nsampling:\n  rules:\n    - name: web\n      match: { resource: deployment.environment, eq: dev }\n      probability: 0.5\n"
    ));
    assert!(reads(
        "version: 1\nsampling:\n  rate_limit: { spans_per_second: 10 }\n"
    ));
    assert!(reads(
        "version: 1\ntail:\n  rules:\n    - { name: slow, slower_than: 1s, service: checkout }\n"
    ));
}

#[test]
fn regular_expressions_are_bounded_in_length_and_compiled_size() {
    let doc = |re: &str| {
        format!(
            "version: 1\nrouting:\n  rules:\n    - name: r\n      match: {{ span_attribute: a, regex: '{re}' }}\n      action: drop\n"
        )
    };
    // Small text, large program: a counted Unicode class compiles to megabytes.
    let e = Policy::parse(&doc(r"\w{50}\w{50}\w{50}")).unwrap_err();
    assert!(
        e.to_string().contains("routing.rules[0].match.regex"),
        "{e}"
    );
    assert!(e.to_string().contains("size limit"), "{e}");
    let e = Policy::parse(&doc(&"a".repeat(4097))).unwrap_err();
    assert!(e.to_string().contains("at most 4096"), "{e}");
    // Ordinary patterns are untouched.
    Policy::parse(&doc("^/api/v[0-9]+/(users|orders)/[^/]+$")).unwrap();
}
