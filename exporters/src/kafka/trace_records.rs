//! Trace records straight from the request's bytes: spans are grouped by trace id and copied
//! as they came into one `TracesData` per trace (split when over the record budget), with no
//! decode and re-encode of span contents. `TraceRequestView` (in `weir-proto`) has already
//! validated the request and found each span.

use super::records::{Batch, RECORD_OVERHEAD, Record, trace_key};
use prost::Message;
use prost::encoding::encoded_len_varint;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
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

/// Trace ids are random, so their first eight bytes are already a good hash.
#[derive(Default)]
struct TraceIdHasher(u64);

impl Hasher for TraceIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(b);
        }
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
pub fn traces_batch(
    body: &[u8],
    view: &TraceRequestView,
    plan: &TracePlan,
    encoding: Encoding,
    max_message_size: usize,
) -> Batch {
    // Number the (topic, trace) groups in order of first appearance, then list span indices
    // group by group (a counting sort: no allocation per group).
    let mut ids: HashMap<(u16, [u8; 16]), u32, BuildHasherDefault<TraceIdHasher>> =
        HashMap::default();
    let mut group_of = Vec::with_capacity(plan.routes.len());
    for &(topic, span) in &plan.routes {
        let next = ids.len() as u32;
        group_of.push(
            *ids.entry((topic, view.spans[span as usize].trace_id))
                .or_insert(next),
        );
    }
    let groups = ids.len();
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
    let mut batch = Batch {
        records: Vec::with_capacity(groups),
        ..Default::default()
    };
    let mut writer = Writer {
        spans: &bytes,
        view,
        runs: Vec::new(),
    };
    for g in 0..groups {
        let spans = &order[starts[g] as usize..starts[g + 1] as usize];
        let topic = &plan.topics[usize::from(plan.routes[first_route[g]].0)];
        let key = trace_key(&view.spans[spans[0] as usize].trace_id);
        let budget = max_message_size
            .saturating_sub(key.len() + RECORD_OVERHEAD)
            .max(1);
        writer.chunks(spans, budget, &mut batch, |value, items, batch| {
            let value = match encoding {
                Encoding::OtlpProto => value,
                Encoding::OtlpJson => {
                    let data = TracesData::decode(&value[..])
                        .expect("bytes written from a validated request decode");
                    let mut out = Vec::with_capacity(value.len() * 2);
                    json::encode_traces_data(&data, &mut out);
                    out
                }
            };
            batch.records.push(Record {
                topic: topic.clone(),
                key: key.clone(),
                value,
                items,
                headers: None,
            });
        });
    }
    batch
}

/// Writes `TracesData` records from spans of the request body.
struct Writer<'a> {
    /// Each span's bytes, as they came or rewritten.
    spans: &'a [&'a [u8]],
    view: &'a TraceRequestView,
    /// Scratch: (scope-run length, resource-run length) sizes of the record being written.
    runs: Vec<usize>,
}

impl Writer<'_> {
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

    /// Packs `spans` (of one trace) into records of at most `budget` bytes and hands each to
    /// `emit`. A span too large for any record is counted in `batch.rejected`.
    fn chunks(
        &mut self,
        spans: &[u32],
        budget: usize,
        batch: &mut Batch,
        mut emit: impl FnMut(Vec<u8>, u64, &mut Batch),
    ) {
        // The usual trace fits one record whole.
        if self.encoded_len(spans) <= budget {
            let value = self.write(spans);
            return emit(value, spans.len() as u64, batch);
        }
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
            if r_over + s_over + span_len > budget {
                batch.rejected += 1;
                batch.reject_reason = Some(format!(
                    "{} span(s) too large for one Kafka record: a span of {} bytes, the record value limit is {budget} bytes (kafka.max_message_size less key and framing)",
                    batch.rejected,
                    self.span_len(si)
                ));
                continue;
            }
            let mut extra = span_len
                + match last {
                    Some((_, scope)) if scope == s.scope => 0,
                    Some((r, _)) if r == resource => s_over,
                    _ => s_over + r_over,
                };
            if size + extra > budget {
                // `kept` is not empty here: alone, this span fits (checked above).
                let value = self.write(&kept);
                emit(value, kept.len() as u64, batch);
                kept.clear();
                size = 0;
                extra = span_len + s_over + r_over;
            }
            size += extra;
            kept.push(si);
            last = Some((resource, s.scope));
        }
        if !kept.is_empty() {
            let value = self.write(&kept);
            emit(value, kept.len() as u64, batch);
        }
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
    use weir_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
    use weir_proto::otlp::common::v1::any_value::Value;
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
        )
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
}
