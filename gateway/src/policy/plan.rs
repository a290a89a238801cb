//! The per-request span plan: [`plan_traces`] evaluates every span of a trace request
//! against one policy version and says which topics it goes to, and with which rewritten
//! tracestate; tail rules mark trace ids on the way.

use super::metrics::{Counted, Tally};
use super::store::ActivePolicy;
use super::view::for_each_span;
use crate::tail::{DecisionWindows, TailMarker};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use weir_exporters::kafka::TracePlan;
use weir_policy::{Outcome, Topic};
use weir_proto::wire::{self, TraceRequestView};

/// Decides, for every span of a trace request, whether it is kept and where it goes, and
/// marks the traces its tail rules match in `windows`.
/// Without a policy (version 0) every span goes to `default_topic` unchanged, unevaluated.
pub fn plan_traces(
    active: &ActivePolicy,
    windows: &DecisionWindows,
    body: &[u8],
    view: &TraceRequestView,
    default_topic: &str,
) -> TracePlan {
    plan_traces_for(active, windows, body, view, default_topic, None)
}

/// `plan_traces` for a request authenticated as `tenant`, which rules can match.
pub fn plan_traces_for(
    active: &ActivePolicy,
    windows: &DecisionWindows,
    body: &[u8],
    view: &TraceRequestView,
    default_topic: &str,
    tenant: Option<&str>,
) -> TracePlan {
    let policy = &active.policy;
    if policy.version() == 0 {
        return TracePlan::everything_to(default_topic.into(), view);
    }
    let mut plan = TracePlan {
        topics: vec![default_topic.into()],
        // Every span once, the usual case (a span routed to several topics grows it).
        routes: Vec::with_capacity(view.spans.len()),
        ..Default::default()
    };
    plan.topics
        .extend(policy.topics().iter().map(|t| Arc::from(t.as_str())));
    if policy.keeps_everything() {
        keep_everything(active, windows, body, view, tenant, &mut plan);
        return plan;
    }
    let now = monotonic_nanos();
    let mut trace_state = String::new();
    // Tail rules mark trace ids in the decision window (set when `tail` drops).
    let mut tail = TailMarker::new(policy, &active.tail_marked, windows);
    let mut tally = Tally::new(&active.counters);
    for_each_span(policy, body, view, tenant, |i, resource, span| {
        tail.observe(resource, span);
        let decision = policy.evaluate_in(resource, span, now);
        tally.add(&decision);
        if !decision.keep {
            return;
        }
        trace_state.clear();
        // Only a sampled-below-1 span has a threshold to record (and its fields to read).
        if decision.threshold.is_some()
            && decision.write_tracestate(span.trace_state_str(), &mut trace_state)
        {
            let start = plan.rewritten.len();
            wire::write_span_with_trace_state(span.bytes, &trace_state, &mut plan.rewritten);
            plan.replaced.push((i as u32, start..plan.rewritten.len()));
        }
        for topic in policy.topic_set(decision.topics) {
            plan.routes.push((topic_index(*topic), i as u32));
        }
    });
    // Once per request: evaluation may have added buckets or swept idle ones.
    active
        .rate_limit_buckets
        .set(policy.rate_limit_buckets() as f64);
    plan
}

/// Fills `plan` for a policy without sampling or routing rules: every span, unchanged, to the
/// policy's default topics, counted under the default rule in one step. Only tail rules (if
/// any) look at the spans.
fn keep_everything(
    active: &ActivePolicy,
    windows: &DecisionWindows,
    body: &[u8],
    view: &TraceRequestView,
    tenant: Option<&str>,
    plan: &mut TracePlan,
) {
    let policy = &active.policy;
    let topics = policy.topic_set(policy.default_topics());
    plan.routes.extend(
        (0..view.spans.len() as u32).flat_map(|i| topics.iter().map(move |t| (topic_index(*t), i))),
    );
    let kept = Counted {
        sampling_rule: None,
        routing_rule: None,
        outcome: Outcome::Kept,
    };
    active.counters.count(&kept, view.spans.len() as u64);
    if policy.tail().is_some_and(|t| t.has_rules()) {
        let mut tail = TailMarker::new(policy, &active.tail_marked, windows);
        for_each_span(policy, body, view, tenant, |_, resource, span| {
            tail.observe(resource, span);
        });
    }
}

/// The index in [`TracePlan::topics`] of `topic`: the gateway's default first, then the
/// policy's named topics.
fn topic_index(topic: Topic) -> u16 {
    match topic {
        Topic::Default => 0,
        Topic::Named(n) => n + 1,
    }
}

/// Nanoseconds on a monotonic clock, for rate limits.
pub(super) fn monotonic_nanos() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use weir_policy::Policy;
    use weir_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
    use weir_proto::otlp::common::v1::KeyValue;
    use weir_proto::otlp::common::v1::any_value::Value;
    use weir_proto::otlp::trace::v1::Span;
    use weir_proto::test_support::{
        error_status, kv, named_span, resource_spans, service, string_kv, traces_request,
        with_overlong_attribute_headers,
    };

    fn request() -> Vec<u8> {
        let span = |t: u8, name: &str, error: bool| Span {
            status: error.then(error_status),
            ..named_span(t, t, name)
        };
        let resource =
            |svc: &str, spans: Vec<Span>| resource_spans(Some(service(svc)), None, spans);
        ExportTraceServiceRequest {
            resource_spans: vec![
                resource(
                    "checkout",
                    vec![span(0xf1, "GET /cart", false), span(2, "POST /pay", true)],
                ),
                resource("healthcheck", vec![span(3, "GET /healthz", false)]),
            ],
        }
        .encode_to_vec()
    }

    const POLICY: &str = r#"
version: 3
sampling:
  default_probability: 1
  rules:
    - name: errors-always
      match: { status: error }
      probability: 1
    - name: half-of-checkout
      match: { resource: service.name, eq: checkout }
      probability: 0.5
routing:
  rules:
    - name: drop-health
      match: { resource: service.name, eq: healthcheck }
      action: drop
    - name: errors-twice
      match: { status: error }
      action: { topics: [errors, otlp_spans] }
"#;

    #[test]
    fn without_a_policy_everything_goes_to_the_default_topic() {
        let body = request();
        let view = TraceRequestView::parse(&body).unwrap();
        let active = ActivePolicy::new(Policy::keep_everything());
        let plan = plan_traces(&active, &DecisionWindows::default(), &body, &view, "spans");
        assert_eq!(plan.routes, vec![(0, 0), (0, 1), (0, 2)]);
        assert!(plan.replaced.is_empty());
    }

    #[test]
    fn a_policy_without_rules_routes_every_span_to_its_default_topic() {
        let body = request();
        let view = TraceRequestView::parse(&body).unwrap();
        // No sampling or routing rule: the plan is made without a decision per span, to the
        // policy's own default topic; the spans are still counted under the default rule.
        let active = ActivePolicy::new(
            Policy::parse("version: 2\nrouting:\n  default_topic: elsewhere\n").unwrap(),
        );
        assert!(active.policy.keeps_everything());
        let plan = plan_traces(&active, &DecisionWindows::default(), &body, &view, "spans");
        assert_eq!(plan.topics.len(), 2);
        assert_eq!(&*plan.topics[1], "elsewhere");
        assert_eq!(plan.routes, vec![(1, 0), (1, 1), (1, 2)]);
        assert!(plan.replaced.is_empty());
        // The same with the gateway's topic as the default.
        let active = ActivePolicy::new(Policy::parse("version: 2\n").unwrap());
        let plan = plan_traces(&active, &DecisionWindows::default(), &body, &view, "spans");
        assert_eq!(plan.routes, vec![(0, 0), (0, 1), (0, 2)]);
        // A sampling rule turns per-span evaluation back on.
        let active = ActivePolicy::new(Policy::parse(POLICY).unwrap());
        assert!(!active.policy.keeps_everything());
    }

    #[test]
    fn span_attribute_rules_route_by_the_span_that_has_the_attribute() {
        let span = |t: u8, attrs: Vec<KeyValue>| Span {
            attributes: attrs,
            ..named_span(t, t, "op")
        };
        let body = |spans: Vec<Span>| traces_request(spans).encode_to_vec();
        let active = ActivePolicy::new(
            Policy::parse(
                "version: 1\nrouting:\n  rules:\n    - name: gold\n      match: { span_attribute: customer.tier, eq: gold }\n      action: { topic: gold }\n",
            )
            .unwrap(),
        );
        let topics = |body: &[u8]| -> Vec<String> {
            let view = TraceRequestView::parse(body).unwrap();
            let plan = plan_traces(&active, &DecisionWindows::default(), body, &view, "spans");
            plan.routes
                .iter()
                .map(|(t, _)| plan.topics[usize::from(*t)].to_string())
                .collect()
        };
        // The key is in the request: only the span that has it with the value is routed by it.
        let mixed = body(vec![
            span(
                1,
                vec![string_kv("a", "b"), string_kv("customer.tier", "gold")],
            ),
            span(2, vec![string_kv("customer.tier", "silver")]),
            span(3, vec![string_kv("note", "customer.tier gold")]),
        ]);
        assert_eq!(topics(&mixed), ["gold", "spans", "spans"]);
        // Nowhere in the request: every span goes to the default topic, unread.
        let none = body(vec![
            span(4, vec![string_kv("a", "gold")]),
            span(5, Vec::new()),
        ]);
        assert_eq!(topics(&none), ["spans", "spans"]);
    }

    /// Issue 16, item 6: attribute field headers written as overlong varints (valid protobuf)
    /// match the rules the usual encoding matches, through the rule index's scan and the
    /// evaluation's lookups alike.
    #[test]
    fn overlong_attribute_headers_route_as_the_usual_encoding() {
        let active = ActivePolicy::new(
            Policy::parse(
                "version: 1\nrouting:\n  rules:\n    - name: routed\n      match: { span_attribute: route.me, eq: \"yes\" }\n      action: { topic: routed }\n    - name: big\n      match: { span_attribute: n, gte: 5 }\n      action: { topic: big }\n",
            )
            .unwrap(),
        );
        let span = |t: u8, attrs: Vec<KeyValue>| Span {
            attributes: attrs,
            ..named_span(t, t, "op")
        };
        let req = traces_request(vec![
            span(1, vec![string_kv("a", "b"), string_kv("route.me", "yes")]),
            span(2, vec![kv("n", Value::IntValue(7)), string_kv("c", "d")]),
            span(
                3,
                vec![string_kv("route.me", "no"), kv("n", Value::IntValue(1))],
            ),
        ]);
        let routes = |body: &[u8]| -> Vec<(String, u32)> {
            let view = TraceRequestView::parse(body).unwrap();
            let plan = plan_traces(&active, &DecisionWindows::default(), body, &view, "spans");
            plan.routes
                .iter()
                .map(|(t, i)| (plan.topics[usize::from(*t)].to_string(), *i))
                .collect()
        };
        let expected = routes(&req.encode_to_vec());
        assert_eq!(
            expected,
            [("routed".into(), 0), ("big".into(), 1), ("spans".into(), 2)]
        );
        for header_len in [1, 2, 5] {
            let body = with_overlong_attribute_headers(&req, header_len);
            assert_eq!(routes(&body), expected, "{header_len}-byte headers");
        }
    }

    #[test]
    fn spans_are_sampled_routed_dropped_and_marked() {
        let body = request();
        let view = TraceRequestView::parse(&body).unwrap();
        let active = ActivePolicy::new(Policy::parse(POLICY).unwrap());
        let plan = plan_traces(&active, &DecisionWindows::default(), &body, &view, "spans");
        let name = |(t, _): &(u16, u32)| plan.topics[usize::from(*t)].to_string();
        // The error span goes to both topics of its routing rule; the health check is dropped.
        let error_routes: Vec<String> = plan.routes.iter().filter(|r| r.1 == 1).map(name).collect();
        assert_eq!(
            error_routes,
            vec!["errors".to_string(), "otlp_spans".to_string()]
        );
        assert!(
            plan.routes.iter().all(|r| r.1 != 2),
            "the healthcheck span was routed: {:?}",
            plan.routes
        );
        // Span 0 is sampled at p=0.5 by its trace id's randomness (0xf1f1..., above the
        // threshold 2^55, so kept), the same way every time, and its tracestate records it.
        let again = plan_traces(&active, &DecisionWindows::default(), &body, &view, "spans");
        assert_eq!(plan.routes, again.routes);
        assert_eq!(
            plan.routes
                .iter()
                .filter(|r| r.1 == 0)
                .map(name)
                .collect::<Vec<_>>(),
            vec!["spans".to_string()]
        );
        let (_, range) = plan
            .replaced
            .iter()
            .find(|(s, _)| *s == 0)
            .expect("span 0 gets a threshold");
        let span = Span::decode(&plan.rewritten[range.clone()]).unwrap();
        assert_eq!(span.trace_state, "ot=th:8");
        assert_eq!(span.name, "GET /cart");
        // The same request with a trace whose randomness is below the threshold: sampled out.
        let mut low = ExportTraceServiceRequest::decode(&body[..]).unwrap();
        low.resource_spans[0].scope_spans[0].spans[0].trace_id = vec![0x01; 16];
        let low = low.encode_to_vec();
        let view = TraceRequestView::parse(&low).unwrap();
        let plan = plan_traces(&active, &DecisionWindows::default(), &low, &view, "spans");
        assert!(plan.routes.iter().all(|r| r.1 != 0), "{:?}", plan.routes);
    }
}
