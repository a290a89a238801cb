//! Trace records straight from the request's bytes: spans are grouped by trace id and copied
//! as they came into one `TracesData` per trace (split when over the record budget), with no
//! decode and re-encode of span contents. `TraceRequestView` (in `weir-proto`) has already
//! validated the request and found each span.

use super::records::{Batch, OutputBudget, OutputRefused, Record, to_json, trace_key, value_limit};
use prost::Message;
use prost::encoding::encoded_len_varint;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::sync::Arc;
use weir_config::gateway::Encoding;
use weir_proto::json;
use weir_proto::otlp::trace::v1::TracesData;
use weir_proto::wire::{SpanEntry, TraceRequestView, put_varint};

/// Field tags as they appear on the wire: `TracesData.resource_spans` (1, LEN) and
/// `ResourceSpans.scope_spans` / `ScopeSpans.spans` (both 2, LEN).
const TAG_RESOURCE_SPANS: u8 = 0x0a;
const TAG_SCOPE_SPANS: u8 = 0x12;
const TAG_SPANS: u8 = 0x12;

/// The bytes of a record key: a trace id (16 bytes) as hex.
const TRACE_KEY_LEN: usize = 32;

/// What spans are grouped by: one record (or several, split) per topic and trace id.
#[derive(Clone, Copy, PartialEq, Eq)]
struct GroupKey {
    topic: u16,
    trace_id: [u8; 16],
}

impl Hash for GroupKey {
    /// One 128-bit word: a single multiply with foldhash, where hashing the fields one by one
    /// takes three (the topic only tells apart copies of a trace routed to several topics).
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u128(u128::from_le_bytes(self.trace_id) ^ u128::from(self.topic));
    }
}

fn field_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// Where the spans of one request go: decided by the gateway's policy (sampling and routing)
/// before records are built.
#[derive(Debug, Default)]
pub struct TracePlan {
    /// The topics records go to; `routes` name them by index.
    pub topics: Vec<Arc<str>>,
    /// (topic index, span index) for every span sent, in span order; a span routed to several
    /// topics appears once per topic, a dropped span not at all.
    pub routes: Vec<(u16, u32)>,
    /// Spans whose bytes changed (a new `trace_state`): (span index, range in `rewritten`).
    pub replaced: Vec<(u32, Range<usize>)>,
    /// The bytes of the changed spans.
    pub rewritten: Vec<u8>,
}

impl TracePlan {
    /// Every span of `view` to `topic`, unchanged: the plan without a policy.
    pub fn everything_to(topic: Arc<str>, view: &TraceRequestView) -> Self {
        TracePlan {
            topics: vec![topic],
            routes: (0..view.spans.len() as u32).map(|i| (0, i)).collect(),
            ..Default::default()
        }
    }
}

/// One record per topic and trace id (several when a trace is over the budget), in
/// first-seen order.
///
/// Records repeat their resource and scope, so their total can be far larger than the request:
/// the exact size of the protobuf records (keys and values) is charged to `budget` once, after
/// grouping and before any record is allocated; OTLP/JSON's excess over it is charged record
/// by record as each is encoded. A refusal stops building at once.
pub fn traces_batch(
    body: &[u8],
    view: &TraceRequestView,
    plan: &TracePlan,
    encoding: Encoding,
    max_message_size: usize,
    budget: &mut dyn OutputBudget,
) -> Result<Batch, OutputRefused> {
    // Number the (topic, trace) groups in order of first appearance, then list span indices
    // group by group (a counting sort: no allocation per group). Trace ids come from clients,
    // so the map's hasher is seeded per process: ids chosen to collide under a fixed hash
    // would make grouping quadratic.
    let mut ids: HashMap<GroupKey, u32, foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(plan.routes.len(), Default::default());
    let mut group_of = Vec::with_capacity(plan.routes.len());
    for &(topic, span) in &plan.routes {
        let next = ids.len() as u32;
        let key = GroupKey {
            topic,
            trace_id: view.spans[span as usize].trace_id,
        };
        group_of.push(*ids.entry(key).or_insert(next));
    }
    let groups = ids.len();
    drop(ids);
    let mut starts = vec![0u32; groups + 1];
    for &g in &group_of {
        starts[g as usize + 1] += 1;
    }
    for i in 0..groups {
        starts[i + 1] += starts[i];
    }
    let mut order = vec![0u32; plan.routes.len()];
    let mut fill = starts.clone();
    for (&g, &(_, span)) in group_of.iter().zip(&plan.routes) {
        order[fill[g as usize] as usize] = span;
        fill[g as usize] += 1;
    }
    let mut first_route = vec![0usize; groups];
    for (r, &g) in group_of.iter().enumerate().rev() {
        first_route[g as usize] = r;
    }

    let mut bytes: Vec<&[u8]> = view.spans.iter().map(|s| &body[s.range()]).collect();
    for (span, range) in &plan.replaced {
        bytes[*span as usize] = &plan.rewritten[range.clone()];
    }
    let mut writer = Writer {
        spans: &bytes,
        view,
        runs: Vec::new(),
    };
    let limit = value_limit(max_message_size, TRACE_KEY_LEN);
    let group_spans = |g: usize| &order[starts[g] as usize..starts[g + 1] as usize];

    // Sizes first: the records' exact bytes, found without making them. `whole` remembers
    // which traces fit one record, so the usual trace is measured once here and once when
    // written, as before.
    let mut needed = 0usize;
    let mut whole = Vec::with_capacity(groups);
    for g in 0..groups {
        let spans = group_spans(g);
        let size = writer.encoded_len(spans);
        whole.push(size <= limit);
        if size <= limit {
            needed = needed.saturating_add(TRACE_KEY_LEN + size);
        } else {
            writer.pack(
                spans,
                limit,
                &mut |w, kept| {
                    needed = needed.saturating_add(TRACE_KEY_LEN + w.encoded_len(kept));
                    Ok(())
                },
                &mut |_, _| {},
            )?;
        }
    }
    budget.charge(needed)?;

    let mut batch = Batch {
        records: Vec::with_capacity(groups),
        ..Default::default()
    };
    for g in 0..groups {
        let spans = group_spans(g);
        let topic = &plan.topics[usize::from(plan.routes[first_route[g]].0)];
        let key = trace_key(&view.spans[spans[0] as usize].trace_id);
        let mut emit = |w: &mut Writer<'_>, kept: &[u32]| {
            let value = w.write(kept);
            let value = match encoding {
                Encoding::OtlpProto => value,
                Encoding::OtlpJson => {
                    let data = TracesData::decode(&value[..])
                        .expect("bytes written from a validated request decode");
                    to_json(&data, value.len(), json::encode_traces_data, budget)?
                }
            };
            batch.records.push(Record {
                topic: topic.clone(),
                key: key.clone(),
                value,
                items: kept.len() as u64,
                headers: None,
            });
            Ok(())
        };
        if whole[g] {
            emit(&mut writer, spans)?;
            continue;
        }
        let mut rejected = Vec::new();
        writer.pack(spans, limit, &mut emit, &mut |w, si| {
            rejected.push(w.span_len(si))
        })?;
        for span_len in rejected {
            batch.rejected += 1;
            batch.reject_reason = Some(format!(
                "{} span(s) too large for one Kafka record: a span of {span_len} bytes, the record value limit is {limit} bytes (kafka.max_message_size less key and framing)",
                batch.rejected,
            ));
        }
    }
    Ok(batch)
}

/// What `Writer::pack` hands each record's spans to.
type OnChunk<'c, 'a> = dyn FnMut(&mut Writer<'a>, &[u32]) -> Result<(), OutputRefused> + 'c;

/// Writes `TracesData` records from spans of the request body.
struct Writer<'a> {
    /// Each span's bytes, as they came or rewritten.
    spans: &'a [&'a [u8]],
    view: &'a TraceRequestView,
    /// Scratch: (scope-run length, resource-run length) sizes of the record being written.
    runs: Vec<usize>,
}

impl<'a> Writer<'a> {
    fn span(&self, i: u32) -> &SpanEntry {
        &self.view.spans[i as usize]
    }

    fn span_len(&self, i: u32) -> usize {
        self.spans[i as usize].len()
    }

    fn scope_head(&self, s: &SpanEntry) -> &[u8] {
        &self.view.scopes[s.scope as usize].head
    }

    fn resource_of(&self, s: &SpanEntry) -> u32 {
        self.view.scopes[s.scope as usize].resource
    }

    fn resource_head(&self, s: &SpanEntry) -> &[u8] {
        &self.view.resources[self.resource_of(s) as usize].head
    }

    /// Packs `spans` (of one trace, too large for one record) into records of at most `limit`
    /// bytes and hands each record's spans to `chunk`; a span too large for any record goes
    /// to `too_large`. The sizing pass and the writing pass both pack with this, so they
    /// agree on every record.
    fn pack(
        &mut self,
        spans: &[u32],
        limit: usize,
        chunk: &mut OnChunk<'_, 'a>,
        too_large: &mut dyn FnMut(&Self, u32),
    ) -> Result<(), OutputRefused> {
        let mut kept: Vec<u32> = Vec::new();
        let mut size = 0;
        let mut last: Option<(u32, u32)> = None;
        for &si in spans {
            let s = *self.span(si);
            let resource = self.resource_of(&s);
            let span_len = field_len(self.span_len(si));
            // Upper bounds: each level's head plus the largest length prefix it can get.
            let r_over = self.resource_head(&s).len() + 6;
            let s_over = self.scope_head(&s).len() + 6;
            if r_over + s_over + span_len > limit {
                too_large(self, si);
                continue;
            }
            let mut extra = span_len
                + match last {
                    Some((_, scope)) if scope == s.scope => 0,
                    Some((r, _)) if r == resource => s_over,
                    _ => s_over + r_over,
                };
            if size + extra > limit {
                // `kept` is not empty here: alone, this span fits (checked above).
                chunk(self, &kept)?;
                kept.clear();
                size = 0;
                extra = span_len + s_over + r_over;
            }
            size += extra;
            kept.push(si);
            last = Some((resource, s.scope));
        }
        if !kept.is_empty() {
            chunk(self, &kept)?;
        }
        Ok(())
    }

    /// The exact encoded size of a `TracesData` holding `spans`; fills `self.runs` with the
    /// length of each scope run and resource run, in the order `write` needs them.
    fn encoded_len(&mut self, spans: &[u32]) -> usize {
        self.runs.clear();
        let mut total = 0;
        let mut i = 0;
        while i < spans.len() {
            // One resource run: consecutive spans of the same resource.
            let first = *self.span(spans[i]);
            let resource = self.resource_of(&first);
            let r_slot = self.runs.len();
            self.runs.push(0);
            let mut r_len = self.resource_head(&first).len();
            while i < spans.len() && self.resource_of(self.span(spans[i])) == resource {
                // One scope run inside it.
                let scope = self.span(spans[i]).scope;
                let s_slot = self.runs.len();
                self.runs.push(0);
                let mut s_len = self.view.scopes[scope as usize].head.len();
                while i < spans.len() && self.span(spans[i]).scope == scope {
                    s_len += field_len(self.span_len(spans[i]));
                    i += 1;
                }
                self.runs[s_slot] = s_len;
                r_len += field_len(s_len);
            }
            self.runs[r_slot] = r_len;
            total += field_len(r_len);
        }
        total
    }

    /// Writes a `TracesData` holding `spans`, copying their bytes from the request.
    fn write(&mut self, spans: &[u32]) -> Vec<u8> {
        let total = self.encoded_len(spans);
        let mut out = Vec::with_capacity(total);
        let mut run = 0;
        let mut i = 0;
        while i < spans.len() {
            let first = *self.span(spans[i]);
            let resource = self.resource_of(&first);
            out.push(TAG_RESOURCE_SPANS);
            put_varint(&mut out, self.runs[run] as u64);
            run += 1;
            out.extend_from_slice(self.resource_head(&first));
            while i < spans.len() && self.resource_of(self.span(spans[i])) == resource {
                let scope = self.span(spans[i]).scope;
                out.push(TAG_SCOPE_SPANS);
                put_varint(&mut out, self.runs[run] as u64);
                run += 1;
                out.extend_from_slice(&self.view.scopes[scope as usize].head);
                while i < spans.len() && self.span(spans[i]).scope == scope {
                    let bytes = self.spans[spans[i] as usize];
                    out.push(TAG_SPANS);
                    put_varint(&mut out, bytes.len() as u64);
                    out.extend_from_slice(bytes);
                    i += 1;
                }
            }
        }
        debug_assert_eq!(out.len(), total);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::records::tests::built;
    use crate::kafka::records::{OutputLimit, RECORD_OVERHEAD, Unlimited};
    use std::time::{Duration, Instant};
    use weir_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
    use weir_proto::otlp::common::v1::any_value::Value;
    use weir_proto::otlp::resource::v1::Resource;
    use weir_proto::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use weir_proto::test_support::{scope, service, string_kv};

    fn span(trace: u8, n: u32, pad: usize) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: u64::from(n + 1).to_be_bytes().to_vec(),
            name: format!("t{trace}-{n}"),
            attributes: vec![string_kv("pad", &"p".repeat(pad))],
            ..Default::default()
        }
    }

    /// Two resources, each with two scopes, and traces interleaved across all four.
    fn request(spans_per_scope: u32, pad: usize) -> ExportTraceServiceRequest {
        let resource = |svc: &str, base: u32| ResourceSpans {
            resource: Some(service(svc)),
            scope_spans: (0..2)
                .map(|sc| ScopeSpans {
                    scope: Some(scope(&format!("{svc}-scope{sc}"))),
                    spans: (0..spans_per_scope)
                        .map(|i| span((i % 3) as u8 + 1, base + sc * 1000 + i, pad))
                        .collect(),
                    schema_url: format!("{svc}-s{sc}"),
                })
                .collect(),
            schema_url: format!("{svc}-schema"),
        };
        ExportTraceServiceRequest {
            resource_spans: vec![resource("a", 0), resource("b", 10_000)],
        }
    }

    /// (service, scope, span name) of every span in a record, in order.
    fn flatten(data: &TracesData) -> Vec<(String, String, String, Vec<u8>)> {
        let mut out = Vec::new();
        for r in &data.resource_spans {
            let svc = match &r.resource.as_ref().unwrap().attributes[0]
                .value
                .as_ref()
                .unwrap()
                .value
            {
                Some(Value::StringValue(s)) => s.clone(),
                _ => panic!("no service name"),
            };
            for s in &r.scope_spans {
                let scope = s.scope.as_ref().unwrap().name.clone();
                assert_eq!(
                    s.schema_url,
                    format!("{}-s{}", svc, &scope[scope.len() - 1..])
                );
                assert_eq!(r.schema_url, format!("{svc}-schema"));
                for sp in &s.spans {
                    out.push((
                        svc.clone(),
                        scope.clone(),
                        sp.name.clone(),
                        sp.trace_id.clone(),
                    ));
                }
            }
        }
        out
    }

    /// Every span of `req` to one topic.
    fn batch_of(req: &ExportTraceServiceRequest, encoding: Encoding, max: usize) -> Batch {
        let body = req.encode_to_vec();
        let view = TraceRequestView::parse(&body).unwrap();
        traces_batch(
            &body,
            &view,
            &TracePlan::everything_to("t".into(), &view),
            encoding,
            max,
            &mut Unlimited,
        )
        .unwrap()
    }

    fn check(req: &ExportTraceServiceRequest, batch: &Batch, max: usize) {
        // Expected: the request's spans, by trace id, in request order.
        let expected = flatten(&TracesData {
            resource_spans: req.resource_spans.clone(),
        });
        let mut got: Vec<(String, String, String, Vec<u8>)> = Vec::new();
        let mut keys = Vec::new();
        for rec in &batch.records {
            assert!(
                rec.value.len() + rec.key.len() + RECORD_OVERHEAD <= max,
                "record of {} bytes",
                rec.value.len()
            );
            let data = TracesData::decode(&rec.value[..]).unwrap();
            let spans = flatten(&data);
            assert_eq!(spans.len() as u64, rec.items);
            for s in &spans {
                assert_eq!(
                    hex::encode(&s.3).into_bytes(),
                    rec.key,
                    "a record holds one trace"
                );
            }
            keys.push(rec.key.clone());
            got.extend(spans);
        }
        for trace in 1..=3u8 {
            let want: Vec<_> = expected
                .iter()
                .filter(|s| s.3 == vec![trace; 16])
                .cloned()
                .collect();
            let have: Vec<_> = got
                .iter()
                .filter(|s| s.3 == vec![trace; 16])
                .cloned()
                .collect();
            assert_eq!(have, want, "trace {trace}");
        }
        assert_eq!(got.len(), expected.len());
    }

    #[test]
    fn one_record_per_trace_with_resources_and_scopes_intact() {
        let req = request(30, 10);
        let batch = batch_of(&req, Encoding::OtlpProto, 1_000_000);
        assert_eq!(batch.records.len(), 3);
        assert_eq!(batch.rejected, 0);
        check(&req, &batch, 1_000_000);
    }

    #[test]
    fn large_traces_are_split_under_the_limit() {
        let req = request(200, 300);
        let max = 20_000;
        let batch = batch_of(&req, Encoding::OtlpProto, max);
        assert!(batch.records.len() >= 12, "{} records", batch.records.len());
        assert_eq!(batch.rejected, 0);
        check(&req, &batch, max);
    }

    #[test]
    fn a_span_over_the_limit_is_rejected_and_the_rest_kept() {
        let mut req = request(5, 10);
        req.resource_spans[0].scope_spans[0].spans[2] = span(1, 777, 5000);
        let batch = batch_of(&req, Encoding::OtlpProto, 2000);
        assert_eq!(batch.rejected, 1);
        assert!(
            batch
                .reject_reason
                .as_deref()
                .unwrap()
                .contains("too large"),
            "{:?}",
            batch.reject_reason
        );
        let kept: u64 = batch.records.iter().map(|r| r.items).sum();
        assert_eq!(kept, 19);
    }

    #[test]
    fn json_records_hold_the_same_spans() {
        let req = request(4, 10);
        let proto = batch_of(&req, Encoding::OtlpProto, 1_000_000);
        let json = batch_of(&req, Encoding::OtlpJson, 1_000_000);
        assert_eq!(proto.records.len(), json.records.len());
        for (p, j) in proto.records.iter().zip(&json.records) {
            assert_eq!(p.key, j.key);
            let from_json = weir_proto::json::decode_trace_request(&j.value).unwrap();
            let from_proto = TracesData::decode(&p.value[..]).unwrap();
            assert_eq!(from_json.resource_spans, from_proto.resource_spans);
        }
    }

    /// The records of `req` built with a budget that keeps count, and what it was charged.
    fn charged(req: &ExportTraceServiceRequest, encoding: Encoding, max: usize) -> (Batch, usize) {
        let body = req.encode_to_vec();
        let view = TraceRequestView::parse(&body).unwrap();
        let mut budget = OutputLimit::new(usize::MAX);
        let plan = TracePlan::everything_to("t".into(), &view);
        let batch = traces_batch(&body, &view, &plan, encoding, max, &mut budget).unwrap();
        (batch, budget.charged())
    }

    #[test]
    fn the_charge_is_the_exact_size_of_protobuf_records() {
        // Resources and scopes interleaved within traces, whole traces and split ones, and a
        // span too large for any record.
        let mut with_reject = request(5, 10);
        with_reject.resource_spans[1].scope_spans[1].spans[3] = span(2, 778, 5000);
        let cases = [
            (request(30, 10), 1_000_000),
            (request(200, 300), 20_000),
            (request(60, 50), 3_000),
            (request(1, 0), 1_000_000),
            (with_reject, 2000),
        ];
        for (req, max) in &cases {
            let (batch, charged) = charged(req, Encoding::OtlpProto, *max);
            assert!(!batch.records.is_empty());
            assert_eq!(charged, built(&batch), "max {max}");
        }
    }

    #[test]
    fn json_records_are_charged_at_least_their_size() {
        for (req, max) in [(request(30, 10), 1_000_000), (request(200, 300), 20_000)] {
            let (batch, charged) = charged(&req, Encoding::OtlpJson, max);
            assert!(charged >= built(&batch), "{charged} < {}", built(&batch));
        }
    }

    #[test]
    fn a_refused_json_excess_stops_building() {
        let req = request(30, 10);
        let (proto, proto_charge) = charged(&req, Encoding::OtlpProto, 1_000_000);
        assert_eq!(proto_charge, built(&proto));
        // Room for the protobuf size only: the first JSON record's excess is refused.
        let body = req.encode_to_vec();
        let view = TraceRequestView::parse(&body).unwrap();
        let plan = TracePlan::everything_to("t".into(), &view);
        let mut budget = OutputLimit::new(proto_charge);
        let refused = traces_batch(
            &body,
            &view,
            &plan,
            Encoding::OtlpJson,
            1_000_000,
            &mut budget,
        )
        .unwrap_err();
        assert!(refused.needed > proto_charge);
        assert_eq!(refused.available, proto_charge);
    }

    /// One resource with a 900 KB attribute and 3,000 spans of distinct trace ids: 2.7 GB of
    /// records from a request of about 1 MB.
    fn amplifying_request() -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        string_kv("service.name", "amplifier"),
                        string_kv("blob", &"x".repeat(900_000)),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: (0..3000u32)
                        .map(|i| Span {
                            trace_id: [i.to_le_bytes(), [7; 4], [8; 4], [9; 4]].concat(),
                            span_id: vec![1; 8],
                            name: "s".into(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn output_amplification_is_refused_before_records_are_built() {
        let body = amplifying_request().encode_to_vec();
        let view = TraceRequestView::parse(&body).unwrap();
        let plan = TracePlan::everything_to("t".into(), &view);
        let mut budget = OutputLimit::new(256 << 20);
        let started = Instant::now();
        let refused = traces_batch(
            &body,
            &view,
            &plan,
            Encoding::OtlpProto,
            1_000_000,
            &mut budget,
        )
        .unwrap_err();
        let took = started.elapsed();
        assert!(refused.needed > 2_000_000_000, "{refused:?}");
        assert_eq!(refused.available, 256 << 20);
        assert_eq!(budget.charged(), 0, "nothing is charged on a refusal");
        // Building 2.7 GB of records takes seconds; sizing them takes milliseconds.
        assert!(took < Duration::from_secs(1), "took {took:?}");
    }

    /// A trace id whose hash under the unkeyed rotate-xor hasher grouping used to have
    /// (`h = rotl(h, 5) ^ next 8 bytes` over topic 0, the length 16 and the id) is the same
    /// for every id: the first half varies, the second is chosen (as the black-box test does).
    fn colliding_trace_id(first_half: u64) -> [u8; 16] {
        let h = (16u64.rotate_left(5)) ^ first_half;
        let second_half = h.rotate_left(5) ^ 0x5EED;
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&first_half.to_le_bytes());
        id[8..].copy_from_slice(&second_half.to_le_bytes());
        id
    }

    fn one_span_per_trace(ids: impl Iterator<Item = [u8; 16]>) -> Vec<u8> {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![string_kv("service.name", "flood")],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: ids
                        .map(|id| Span {
                            trace_id: id.to_vec(),
                            span_id: vec![1; 8],
                            name: "c".into(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    /// The fastest of three runs of `traces_batch` over `body`, and its record count.
    fn fastest(body: &[u8]) -> (Duration, usize) {
        let view = TraceRequestView::parse(body).unwrap();
        let plan = TracePlan::everything_to("t".into(), &view);
        let mut best = Duration::MAX;
        let mut records = 0;
        for _ in 0..3 {
            let started = Instant::now();
            let batch = traces_batch(
                body,
                &view,
                &plan,
                Encoding::OtlpProto,
                1_000_000,
                &mut Unlimited,
            )
            .unwrap();
            best = best.min(started.elapsed());
            records = batch.records.len();
        }
        (best, records)
    }

    #[test]
    fn colliding_trace_ids_group_as_fast_as_random_ones() {
        const N: u64 = 60_000;
        // The old hasher really did collide on these ids.
        let colliding: Vec<[u8; 16]> = (0..N)
            .map(|i| colliding_trace_id(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1))
            .collect();
        for id in &colliding[..3] {
            let mut h = 0u64;
            for word in [
                0u64,
                16,
                u64::from_le_bytes(id[..8].try_into().unwrap()),
                u64::from_le_bytes(id[8..].try_into().unwrap()),
            ] {
                h = h.rotate_left(5) ^ word;
            }
            assert_eq!(h, 0x5EED);
        }
        let random = one_span_per_trace((0..N).map(|i| {
            let mut id = [0u8; 16];
            id[..8]
                .copy_from_slice(&(i.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ 0xABCD).to_le_bytes());
            id[8..].copy_from_slice(&i.wrapping_mul(0x8CB9_2BA7_2F3D_8DD7).to_le_bytes());
            id
        }));
        let hostile = one_span_per_trace(colliding.into_iter());
        let (random_took, random_records) = fastest(&random);
        let (hostile_took, hostile_records) = fastest(&hostile);
        assert_eq!(random_records, N as usize);
        assert_eq!(hostile_records, N as usize);
        assert!(
            hostile_took <= random_took * 10 + Duration::from_millis(200),
            "colliding ids took {hostile_took:?}, random ones {random_took:?}"
        );
    }
}
