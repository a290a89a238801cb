//! The active policy (head sampling and routing) and how spans meet it: `PolicyStore` holds
//! the compiled document behind an `ArcSwap` and reloads it when its file changes or on
//! SIGHUP; `plan_traces` evaluates every span of a request against one policy version and
//! says which topics it goes to.

use crate::tail::{DecisionWindows, TailMarker};
use arc_swap::ArcSwap;
use metrics::Counter;
use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;
use weir_config::policy::{
    AttrValue, AttributeVisitor, Decision, KeyFilter, Outcome, Policy, ResourceCandidates,
    SpanView, Topic,
};
use weir_exporters::kafka::TracePlan;
use weir_proto::wire::{self, SpanEntry, TraceRequestView, WireValue};

/// How often the policy file is checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// A compiled policy with the metric handles of its rules.
pub struct ActivePolicy {
    /// The compiled document.
    pub policy: Policy,
    counters: RuleCounters,
    /// `weir_tail_traces_marked_total` per tail rule, in rule order.
    tail_marked: Vec<Counter>,
}

/// Counter handles per rule, made once per policy version so evaluation does not look
/// metrics up by name for every span.
struct RuleCounters {
    /// Per rule index, then one slot for "default".
    matched: Vec<Counter>,
    sampled: Vec<Counter>,
    sampled_out: Vec<Counter>,
    rate_limited: Vec<Counter>,
    routed_to_drop: Vec<Counter>,
}

impl RuleCounters {
    fn new(policy: &Policy) -> Self {
        let mut labels: Vec<(&'static str, String)> = policy
            .rules()
            .iter()
            .map(|r| (r.section.as_str(), r.name.clone()))
            .collect();
        labels.push(("default", "default".to_string()));
        let make = |name: &'static str| -> Vec<Counter> {
            labels
                .iter()
                .map(|(section, rule)| metrics::counter!(name, "section" => *section, "rule" => rule.clone()))
                .collect()
        };
        Self {
            matched: make("weir_policy_matched_spans_total"),
            sampled: make("weir_policy_sampled_spans_total"),
            sampled_out: make("weir_policy_sampled_out_spans_total"),
            rate_limited: make("weir_policy_rate_limited_spans_total"),
            routed_to_drop: make("weir_policy_dropped_spans_total"),
        }
    }

    /// Counts `n` spans that met decision `d`.
    fn count(&self, d: &Counted, n: u64) {
        let default = self.matched.len() - 1;
        let sampling = d.sampling_rule.map_or(default, usize::from);
        if d.sampling_rule.is_some() {
            self.matched[sampling].increment(n);
        }
        if let Some(r) = d.routing_rule {
            self.matched[usize::from(r)].increment(n);
        }
        match d.outcome {
            Outcome::SampledOut => self.sampled_out[sampling].increment(n),
            Outcome::RateLimited => {
                self.sampled[sampling].increment(n);
                self.rate_limited[sampling].increment(n);
            }
            Outcome::RoutedToDrop => {
                self.sampled[sampling].increment(n);
                self.routed_to_drop[d.routing_rule.map_or(default, usize::from)].increment(n);
            }
            Outcome::Kept => self.sampled[sampling].increment(n),
        }
    }
}

/// The part of a decision the rule counters count.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Counted {
    sampling_rule: Option<u16>,
    routing_rule: Option<u16>,
    outcome: Outcome,
}

/// A request's decisions, counted as runs of equal ones: the shared (atomic) counters are
/// touched once per run and at the end, not once per span.
struct Tally<'c> {
    counters: &'c RuleCounters,
    run: Option<(Counted, u64)>,
}

impl<'c> Tally<'c> {
    fn new(counters: &'c RuleCounters) -> Self {
        Self {
            counters,
            run: None,
        }
    }

    #[inline]
    fn add(&mut self, d: &Decision) {
        let counted = Counted {
            sampling_rule: d.sampling_rule,
            routing_rule: d.routing_rule,
            outcome: d.outcome,
        };
        match &mut self.run {
            Some((c, n)) if *c == counted => *n += 1,
            run => {
                if let Some((c, n)) = run.replace((counted, 1)) {
                    self.counters.count(&c, n);
                }
            }
        }
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        if let Some((c, n)) = self.run.take() {
            self.counters.count(&c, n);
        }
    }
}

impl ActivePolicy {
    fn new(policy: Policy) -> Self {
        let counters = RuleCounters::new(&policy);
        let tail_marked = policy
            .tail()
            .into_iter()
            .flat_map(|t| t.rule_names())
            .map(|rule| metrics::counter!("weir_tail_traces_marked_total", "rule" => rule.to_string()))
            .collect();
        Self {
            policy,
            counters,
            tail_marked,
        }
    }
}

/// Where the gateway's policy comes from, and the one in force.
pub struct PolicyStore {
    current: ArcSwap<ActivePolicy>,
    file: Option<PathBuf>,
    /// Set once the policy in force came from the control plane: `file` no longer overrides it.
    pushed: std::sync::atomic::AtomicBool,
    /// Held while a policy is swapped in, so that a file reload cannot slip in between a push
    /// and its swap, and rate-limit state carries over from the policy actually replaced.
    swap: std::sync::Mutex<()>,
}

/// Reads and compiles a policy file, naming the file in the error.
pub fn read_policy_file(path: &Path) -> anyhow::Result<Policy> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read policy file {}: {e}", path.display()))?;
    Policy::parse(&text).map_err(|e| anyhow::anyhow!("policy file {}: {e}", path.display()))
}

impl PolicyStore {
    /// The policy of `file` (which must be valid), or keep-everything without a file.
    pub fn new(file: Option<PathBuf>) -> anyhow::Result<Self> {
        let policy = match &file {
            Some(path) => read_policy_file(path)?,
            None => Policy::keep_everything(),
        };
        metrics::gauge!("weir_policy_version").set(policy.version() as f64);
        if let Some(path) = &file {
            tracing::info!(file = %path.display(), version = policy.version(), "policy loaded");
        }
        Ok(Self {
            current: ArcSwap::from_pointee(ActivePolicy::new(policy)),
            file,
            pushed: std::sync::atomic::AtomicBool::new(false),
            swap: std::sync::Mutex::new(()),
        })
    }

    /// Starts with a policy the control plane pushed earlier (the last-known-good one kept on
    /// disk); changes of `file` are ignored while it is in force.
    pub fn from_control_plane(policy: Policy, file: Option<PathBuf>) -> Self {
        metrics::gauge!("weir_policy_version").set(policy.version() as f64);
        tracing::info!(
            version = policy.version(),
            "policy loaded from the last one the control plane pushed"
        );
        Self {
            current: ArcSwap::from_pointee(ActivePolicy::new(policy)),
            file,
            pushed: std::sync::atomic::AtomicBool::new(true),
            swap: std::sync::Mutex::new(()),
        }
    }

    /// Swaps in a policy the control plane pushed; from now on it wins over `file`.
    pub fn apply_pushed(&self, policy: Policy) {
        let _swap = self.swap_lock();
        self.pushed
            .store(true, std::sync::atomic::Ordering::Release);
        self.swap_in(policy);
    }

    fn swap_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic elsewhere cannot leave it inconsistent.
        self.swap.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True when the policy in force came from the control plane.
    pub fn is_pushed(&self) -> bool {
        self.pushed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The policy in force; a request holds on to it from start to end.
    pub fn load(&self) -> Arc<ActivePolicy> {
        self.current.load_full()
    }

    /// Swaps in a compiled policy, continuing the rate-limit state of the one it replaces.
    pub fn apply(&self, policy: Policy) {
        let _swap = self.swap_lock();
        self.swap_in(policy);
    }

    fn swap_in(&self, policy: Policy) {
        let old = self.current.load();
        policy.carry_over_rate_limits(&old.policy);
        let version = policy.version();
        self.current.store(Arc::new(ActivePolicy::new(policy)));
        metrics::gauge!("weir_policy_version").set(version as f64);
        tracing::info!(version, "policy applied");
    }

    /// Reads the policy file again and applies it; a document that fails validation is
    /// refused, counted and logged, and the running policy stays.
    pub fn reload(&self) {
        let Some(path) = &self.file else { return };
        if self.is_pushed() {
            tracing::warn!(file = %path.display(), "the policy file changed, but the control plane's policy is in force and stays");
            return;
        }
        match read_policy_file(path) {
            Ok(policy) => {
                let _swap = self.swap_lock();
                // Checked again under the lock: a push may have landed while the file was read.
                if self.is_pushed() {
                    tracing::warn!(file = %path.display(), "the policy file changed, but the control plane's policy is in force and stays");
                    return;
                }
                self.swap_in(policy)
            }
            Err(e) => {
                metrics::counter!("weir_policy_documents_refused_total").increment(1);
                tracing::error!(error = %e, running_version = self.load().policy.version(), "policy refused; the running policy stays");
            }
        }
    }

    /// Reloads when the file changes (checked every second) or on SIGHUP, until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let Some(path) = self.file.clone() else {
            return;
        };
        let stamp = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
        };
        let mut last = stamp(&path);
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; the policy file is still watched");
                None
            }
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(WATCH_INTERVAL) => {
                    let now = stamp(&path);
                    if now != last {
                        last = now;
                        self.reload();
                    }
                }
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading the policy");
                    last = stamp(&path);
                    self.reload();
                }
            }
        }
    }
}

/// Nanoseconds on a monotonic clock, for rate limits.
fn monotonic_nanos() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Attributes read once for the many lookups a policy makes: (key, value), last one wins.
type Attrs<'a> = Vec<(&'a str, WireValue<'a>)>;

fn lookup<'a>(attrs: &[(&'a str, WireValue<'a>)], key: &str) -> Option<WireValue<'a>> {
    attrs.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// A span as the policy sees it, read from the request bytes as the policy asks: its name and
/// attributes where validation found them, its other fields in one pass on first use. Its
/// attributes are parsed for lookups into a buffer reused from span to span; the resource's
/// once per request.
struct WireSpan<'a, 's> {
    entry: &'s SpanEntry,
    bytes: &'a [u8],
    resource: &'s [(&'a str, WireValue<'a>)],
    scope_head: &'a [u8],
    attrs: &'s RefCell<Attrs<'a>>,
    attrs_read: Cell<bool>,
    /// The request's authenticated tenant.
    tenant: Option<&'s str>,
}

impl WireSpan<'_, '_> {
    /// The span's `trace_state` (UTF-8, as validated).
    fn trace_state_str(&self) -> &str {
        std::str::from_utf8(self.entry.trace_state(self.bytes)).unwrap_or("")
    }
}

/// A string value's bytes, as the rule index looks values up.
fn text(v: WireValue<'_>) -> Option<&[u8]> {
    match v {
        WireValue::Str(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn attr(v: WireValue<'_>) -> AttrValue<'_> {
    match v {
        WireValue::Str(s) => AttrValue::Str(s),
        WireValue::Int(i) => AttrValue::Int(i),
        WireValue::Double(d) => AttrValue::Double(d),
        WireValue::Bool(b) => AttrValue::Bool(b),
        WireValue::Other => AttrValue::Other,
    }
}

impl SpanView for WireSpan<'_, '_> {
    fn trace_id(&self) -> &[u8; 16] {
        &self.entry.trace_id
    }
    fn name(&self) -> &str {
        std::str::from_utf8(self.entry.name(self.bytes)).unwrap_or("")
    }
    fn name_bytes(&self) -> &[u8] {
        self.entry.name(self.bytes)
    }
    fn kind(&self) -> i32 {
        self.entry.kind
    }
    fn status_code(&self) -> i32 {
        self.entry.status_code
    }
    fn start_time_unix_nano(&self) -> u64 {
        self.entry.start_time_unix_nano
    }
    fn end_time_unix_nano(&self) -> u64 {
        self.entry.end_time_unix_nano
    }
    fn trace_state(&self) -> &str {
        self.trace_state_str()
    }
    fn is_root(&self) -> bool {
        self.entry.is_root
    }
    fn scope_name(&self) -> &str {
        wire::scope_name(self.scope_head)
    }
    fn tenant(&self) -> Option<&str> {
        self.tenant
    }
    fn span_attribute(&self, key: &str) -> Option<AttrValue<'_>> {
        if !self.attrs_read.replace(true) {
            let mut attrs = self.attrs.borrow_mut();
            attrs.clear();
            attrs.extend(self.entry.attributes(self.bytes));
        }
        lookup(&self.attrs.borrow(), key).map(attr)
    }
    fn resource_attribute(&self, key: &str) -> Option<AttrValue<'_>> {
        lookup(self.resource, key).map(attr)
    }
    fn for_each_span_attribute(&self, keys: &KeyFilter, f: &mut AttributeVisitor<'_>) {
        self.entry
            .scan_attributes(self.bytes, |k| keys.may_contain(k), f);
    }
    fn for_each_resource_attribute(&self, f: &mut AttributeVisitor<'_>) {
        for (k, v) in self.resource {
            f(k.as_bytes(), text(*v));
        }
    }
}

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

/// Calls `f` with the index, the resource's candidate rules and a policy view of every span
/// of the request, in order.
fn for_each_span<'a>(
    policy: &Policy,
    body: &'a [u8],
    view: &'a TraceRequestView,
    tenant: Option<&str>,
    mut f: impl FnMut(usize, &ResourceCandidates, &WireSpan<'a, '_>),
) {
    // Read only when a rule (or the rate limit) can look at them; no rule is then guarded by
    // one either, so the candidates are the same without them.
    let read = policy.reads_resource_attributes();
    let resources: Vec<Attrs<'_>> = view
        .resources
        .iter()
        .map(|r| match read {
            true => wire::resource_attributes(&r.head).collect(),
            false => Vec::new(),
        })
        .collect();
    // Whether any span of the request can have an attribute a rule names, found once.
    let hints = policy.request_hints(body);
    let candidates: Vec<ResourceCandidates> = resources
        .iter()
        .map(|attrs| {
            policy
                .resource_candidates_in(hints, attrs.iter().map(|(k, v)| (k.as_bytes(), text(*v))))
        })
        .collect();
    let attrs = RefCell::new(Attrs::with_capacity(16));
    for (i, entry) in view.spans.iter().enumerate() {
        let scope = &view.scopes[entry.scope as usize];
        let span = WireSpan {
            entry,
            bytes: &body[entry.range()],
            resource: &resources[scope.resource as usize],
            scope_head: &scope.head,
            attrs: &attrs,
            attrs_read: Cell::new(false),
            tenant,
        };
        f(i, &candidates[scope.resource as usize], &span);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use weir_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
    use weir_proto::otlp::common::v1::{AnyValue, KeyValue, any_value::Value};
    use weir_proto::otlp::resource::v1::Resource;
    use weir_proto::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn request() -> Vec<u8> {
        let span = |t: u8, name: &str, error: bool| Span {
            trace_id: vec![t; 16],
            span_id: vec![t; 8],
            name: name.into(),
            status: error.then(|| Status {
                code: 2,
                ..Default::default()
            }),
            ..Default::default()
        };
        let resource = |svc: &str, spans: Vec<Span>| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", svc)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        };
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
            trace_id: vec![t; 16],
            span_id: vec![t; 8],
            name: "op".into(),
            attributes: attrs,
            ..Default::default()
        };
        let body = |spans: Vec<Span>| {
            ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    scope_spans: vec![ScopeSpans {
                        spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }
            .encode_to_vec()
        };
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
            span(1, vec![kv("a", "b"), kv("customer.tier", "gold")]),
            span(2, vec![kv("customer.tier", "silver")]),
            span(3, vec![kv("note", "customer.tier gold")]),
        ]);
        assert_eq!(topics(&mixed), ["gold", "spans", "spans"]);
        // Nowhere in the request: every span goes to the default topic, unread.
        let none = body(vec![span(4, vec![kv("a", "gold")]), span(5, Vec::new())]);
        assert_eq!(topics(&none), ["spans", "spans"]);
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
