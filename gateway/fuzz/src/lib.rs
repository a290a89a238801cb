//! What the fuzz targets share: the gateway's trace path from a request body to Kafka records,
//! with the properties it must keep whatever the body is, and the example policies compiled
//! once. A property that does not hold panics, which libFuzzer reports as a crash.

use prost::Message;
use std::sync::{Arc, OnceLock};
use weir_config::gateway::Encoding;
use weir_exporters::kafka::{Batch, OutputLimit, TracePlan, traces_batch};
use weir_gateway::policy::{ActivePolicy, PolicyStore, plan_traces};
use weir_policy::Policy;
use weir_gateway::tail::DecisionWindows;
use weir_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
use weir_proto::otlp::trace::v1::TracesData;
use weir_proto::wire::{self, TraceRequestView};

/// The example policy documents shipped in `config/policies/`, as the gateway would load them.
pub const EXAMPLE_POLICIES: [&str; 3] = [
    include_str!("../../../config/policies/example.yaml"),
    include_str!("../../../config/policies/example.json"),
    include_str!("../../../config/policies/minimal.yaml"),
];

/// Record size limits the trace path is run with: a usual one, and small ones that make most
/// requests split (and some spans too large for any record).
const MAX_MESSAGE_SIZES: [usize; 3] = [1 << 20, 2048, 300];

/// The key and framing bytes `traces_batch` keeps free in a record (`RECORD_OVERHEAD`).
const RECORD_OVERHEAD: usize = 128;

/// No policy (version 0) and each example policy, compiled once.
pub fn policies() -> &'static [Arc<ActivePolicy>] {
    static POLICIES: OnceLock<Vec<Arc<ActivePolicy>>> = OnceLock::new();
    POLICIES.get_or_init(|| {
        let mut out = Vec::new();
        let none = PolicyStore::new(None).expect("no policy file: nothing to read");
        out.push(none.load());
        for text in EXAMPLE_POLICIES {
            let store = PolicyStore::new(None).expect("no policy file: nothing to read");
            store.apply(Policy::parse(text).expect("the example policies are valid"));
            out.push(store.load());
        }
        out
    })
}

/// The decision windows tail rules mark in, shared by every run as a gateway's are by its
/// requests (a window's filter is allocated once, not per run).
fn decision_windows() -> &'static DecisionWindows {
    static WINDOWS: OnceLock<DecisionWindows> = OnceLock::new();
    WINDOWS.get_or_init(DecisionWindows::default)
}

/// Runs a protobuf trace request body through what the gateway does with it: validation and
/// indexing (`TraceRequestView::parse`), the span field reads policies make, sampling and
/// routing under each policy, and record building in both encodings at several size limits.
/// Checks that a body the validator accepts decodes with `prost` too (the exporter relies on
/// it), that no span is lost or invented on the way to records, and that every record is a
/// valid `TracesData` within its size budget, and that the records are no larger than what
/// was charged for them before they were built.
pub fn trace_path(body: &[u8]) {
    let Ok(view) = TraceRequestView::parse(body) else {
        return;
    };
    let decoded = ExportTraceServiceRequest::decode(body)
        .expect("a body TraceRequestView accepts must decode with prost");
    let spans: usize = decoded
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    assert_eq!(view.spans.len(), spans, "the view indexes every span");

    for r in &view.resources {
        for (key, value) in wire::resource_attributes(&r.head) {
            std::hint::black_box((key, value));
        }
    }
    for s in &view.scopes {
        std::hint::black_box(wire::scope_name(&s.head));
    }
    for (entry, span) in view.spans.iter().zip(
        decoded
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans),
    ) {
        // What validation recorded agrees with the decoded span.
        assert_eq!(&entry.trace_id[..], &span.trace_id[..]);
        let bytes = &body[entry.range()];
        assert_eq!(
            entry.name(bytes),
            span.name.as_bytes(),
            "span name read from the wire"
        );
        assert_eq!(entry.kind, span.kind, "span kind read from the wire");
        assert_eq!(entry.trace_state(bytes), span.trace_state.as_bytes());
        assert_eq!(entry.start_time_unix_nano, span.start_time_unix_nano);
        assert_eq!(entry.end_time_unix_nano, span.end_time_unix_nano);
        assert_eq!(entry.is_root, span.parent_span_id.is_empty());
        assert_eq!(
            entry.status_code,
            span.status.as_ref().map_or(0, |s| s.code)
        );
        assert_eq!(entry.attributes(bytes).count(), span.attributes.len());
        let mut scanned = Vec::new();
        entry.scan_attributes(bytes, |_| true, |k, v| scanned.push((k, v)));
        assert_eq!(scanned, entry.raw_attributes(bytes).collect::<Vec<_>>());
        let keys: Vec<&[u8]> = span.attributes.iter().map(|a| a.key.as_bytes()).collect();
        assert_eq!(scanned.iter().map(|(k, _)| *k).collect::<Vec<_>>(), keys);
    }

    let plain = TracePlan::everything_to("traces".into(), &view);
    for &max in &MAX_MESSAGE_SIZES {
        for encoding in [Encoding::OtlpProto, Encoding::OtlpJson] {
            let batch = charged_traces_batch(body, &view, &plain, encoding, max);
            check_batch(&batch, plain.routes.len(), encoding, max);
        }
    }
    for active in policies() {
        let plan = plan_traces(active, decision_windows(), body, &view, "traces");
        assert!(plan.routes.iter().all(|&(t, s)| {
            usize::from(t) < plan.topics.len() && (s as usize) < view.spans.len()
        }));
        let batch = charged_traces_batch(body, &view, &plan, Encoding::OtlpProto, 2048);
        check_batch(&batch, plan.routes.len(), Encoding::OtlpProto, 2048);
    }
}

/// `traces_batch` with a budget that keeps count: the records' key and value bytes are at
/// most what was charged for them (exactly that for protobuf, whose size is known up front).
fn charged_traces_batch(
    body: &[u8],
    view: &TraceRequestView,
    plan: &TracePlan,
    encoding: Encoding,
    max: usize,
) -> Batch {
    let mut budget = OutputLimit::new(usize::MAX);
    let batch = traces_batch(body, view, plan, encoding, max, &mut budget)
        .expect("an unlimited budget refuses nothing");
    check_charge(&batch, budget.charged(), encoding);
    batch
}

/// The output-size bound admission relies on: what was built is no more than what was
/// charged, and for protobuf exactly that.
pub fn check_charge(batch: &Batch, charged: usize, encoding: Encoding) {
    let built: usize = batch
        .records
        .iter()
        .map(|r| r.key.len() + r.value.len())
        .sum();
    assert!(
        built <= charged,
        "records of {built} bytes were built for a charge of {charged}"
    );
    if encoding == Encoding::OtlpProto {
        assert_eq!(
            built, charged,
            "protobuf records are charged their exact size"
        );
    }
}

/// Every routed span is in a record or counted as rejected; records decode and keep within
/// their budget (protobuf records are sized exactly; JSON ones are not bounded by it).
fn check_batch(batch: &Batch, routed: usize, encoding: Encoding, max: usize) {
    let items: u64 = batch.records.iter().map(|r| r.items).sum();
    assert_eq!(
        items + batch.rejected,
        routed as u64,
        "every routed span is sent or rejected"
    );
    assert_eq!(batch.rejected > 0, batch.reject_reason.is_some());
    for record in &batch.records {
        assert!(record.items > 0, "no empty record");
        match encoding {
            Encoding::OtlpProto => {
                let budget = max
                    .saturating_sub(record.key.len() + RECORD_OVERHEAD)
                    .max(1);
                assert!(
                    record.value.len() <= budget,
                    "a record of {} bytes is over its budget of {budget}",
                    record.value.len()
                );
                let data = TracesData::decode(&record.value[..])
                    .expect("a trace record is a valid TracesData");
                let spans: usize = data
                    .resource_spans
                    .iter()
                    .flat_map(|r| &r.scope_spans)
                    .map(|s| s.spans.len())
                    .sum();
                assert_eq!(spans as u64, record.items);
                for s in data
                    .resource_spans
                    .iter()
                    .flat_map(|r| &r.scope_spans)
                    .flat_map(|s| &s.spans)
                {
                    assert_eq!(record.key, hex_key(&s.trace_id), "one trace per record");
                }
            }
            Encoding::OtlpJson => {
                // Protobuf allows deeper nesting (100 messages) than Weir's JSON decoder reads
                // (128 JSON containers, about 3 per nested attribute value): such a record is
                // valid OTLP/JSON that this decoder refuses by its own limit; skip it.
                let data = match weir_proto::json::decode_trace_request(&record.value) {
                    Ok(data) => data,
                    Err(e) if e.reason().contains("recursion limit") => continue,
                    Err(e) => panic!("a JSON trace record must decode as OTLP/JSON: {e}"),
                };
                let spans: usize = data
                    .resource_spans
                    .iter()
                    .flat_map(|r| &r.scope_spans)
                    .map(|s| s.spans.len())
                    .sum();
                assert_eq!(spans as u64, record.items);
            }
        }
    }
}

/// Applies a compiled policy to a gateway's policy store and plans a fixed request of varied
/// spans with it, as the gateway does after a reload; the plan must keep to the request.
pub fn evaluate_policy(policy: Policy) {
    let store = PolicyStore::new(None).expect("no policy file: nothing to read");
    store.apply(policy);
    let active = store.load();
    let body = sample_request();
    let view = TraceRequestView::parse(body).expect("the sample request is valid");
    // Twice: the second pass meets rate limits the first one drained.
    for _ in 0..2 {
        let plan = plan_traces(&active, decision_windows(), body, &view, "traces");
        let batch = charged_traces_batch(body, &view, &plan, Encoding::OtlpProto, 1 << 20);
        check_batch(&batch, plan.routes.len(), Encoding::OtlpProto, 1 << 20);
    }
}

/// A request whose spans differ in everything a policy can match on: service, scope, name,
/// kind, status, duration, parent, attribute types, and an arriving tracestate threshold.
pub fn sample_request() -> &'static [u8] {
    use weir_proto::otlp::common::v1::{InstrumentationScope, any_value};
    use weir_proto::otlp::resource::v1::Resource;
    use weir_proto::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
    use weir_proto::test_support::kv;
    static BODY: OnceLock<Vec<u8>> = OnceLock::new();
    BODY.get_or_init(|| {
        let services = ["checkout", "search", "batch-nightly", "frontend"];
        let names = ["GET /healthz", "POST /cart", "SELECT", "charge"];
        let resource_spans = services
            .iter()
            .enumerate()
            .map(|(r, service)| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        kv(
                            "service.name",
                            any_value::Value::StringValue((*service).into()),
                        ),
                        kv(
                            "deployment.environment",
                            any_value::Value::StringValue("prod".into()),
                        ),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: format!("io.opentelemetry.lib-{r}"),
                        ..Default::default()
                    }),
                    spans: (0..8u8)
                        .map(|i| {
                            let n = r as u8 * 8 + i;
                            Span {
                                trace_id: [n.wrapping_mul(37) | 1; 16].to_vec(),
                                span_id: [n + 1; 8].to_vec(),
                                parent_span_id: if i % 3 == 0 { Vec::new() } else { vec![n; 8] },
                                trace_state: match i % 4 {
                                    0 => String::new(),
                                    1 => "ot=th:8".into(),
                                    2 => "ot=th:e666;rv:abcdefabcdefab".into(),
                                    _ => "vendor=x,ot=th:0".into(),
                                },
                                name: names[usize::from(i) % names.len()].into(),
                                kind: i32::from(i % 6),
                                start_time_unix_nano: 1_700_000_000_000_000_000,
                                end_time_unix_nano: 1_700_000_000_000_000_000
                                    + u64::from(i) * 150_000_000,
                                attributes: vec![
                                    kv(
                                        "http.response.status_code",
                                        any_value::Value::IntValue(200 + i64::from(i) * 50),
                                    ),
                                    kv(
                                        "http.route",
                                        any_value::Value::StringValue(format!("/api/v{i}")),
                                    ),
                                    kv("retry", any_value::Value::BoolValue(i % 2 == 0)),
                                    kv("ratio", any_value::Value::DoubleValue(f64::from(i) / 3.0)),
                                ],
                                status: Some(Status {
                                    code: i32::from(i % 3),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        ExportTraceServiceRequest { resource_spans }.encode_to_vec()
    })
}

fn hex_key(id: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    id.iter()
        .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]])
        .collect()
}
