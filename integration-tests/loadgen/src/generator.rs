//! The request pool: OTLP trace export requests encoded once at start-up, and a cheap way to
//! give every send fresh trace and span ids by patching them in place at recorded offsets.
//!
//! Encoding a 100-span request costs far more CPU than copying its bytes, so the generator
//! builds `--pool` distinct requests up front, remembers where every id sits in each encoded
//! body, and per send only copies the body and overwrites those bytes with new random ids.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use prost::Message;
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::{Value, json};
use weir_proto::otlp::collector::trace::v1::ExportTraceServiceRequest;
use weir_proto::otlp::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use weir_proto::otlp::resource::v1::Resource;
use weir_proto::otlp::trace::v1::span::SpanKind;
use weir_proto::otlp::trace::v1::status::StatusCode;
use weir_proto::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, TracesData};

/// Length of an OTLP trace id in bytes.
pub const TRACE_ID_LEN: usize = 16;
/// Length of an OTLP span id in bytes.
pub const SPAN_ID_LEN: usize = 8;

/// What every generated request looks like.
#[derive(Clone, Debug, PartialEq)]
pub struct Shape {
    /// Spans in one export request.
    pub spans_per_request: usize,
    /// Spans that share one trace id (the last trace of a request may be shorter).
    pub spans_per_trace: usize,
    /// Distinct `service.name` resources a request's spans are spread over.
    pub services: usize,
    /// String attributes on every span.
    pub attributes: usize,
    /// Length in bytes of every span attribute value.
    pub attribute_size: usize,
    /// Fraction of spans whose status is `STATUS_CODE_ERROR`, spread evenly over the pool.
    pub error_rate: f64,
}

impl Shape {
    /// Checks the values a command line can get wrong.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.spans_per_request == 0 || self.spans_per_trace == 0 || self.services == 0 {
            bail!("--spans-per-request, --spans-per-trace and --services must be at least 1");
        }
        if self.spans_per_request > u32::MAX as usize / 2 {
            bail!(
                "--spans-per-request {} is too large",
                self.spans_per_request
            );
        }
        if !(0.0..=1.0).contains(&self.error_rate) {
            bail!(
                "--error-rate must be within 0.0..=1.0, got {}",
                self.error_rate
            );
        }
        Ok(())
    }

    /// Number of traces (distinct trace ids) in one request.
    pub fn traces_per_request(&self) -> usize {
        self.spans_per_request.div_ceil(self.spans_per_trace)
    }
}

/// How a request body is encoded, and so how its ids appear in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// OTLP protobuf: ids are raw bytes.
    Protobuf,
    /// OTLP/JSON: ids are lowercase hex strings.
    Json,
}

impl Encoding {
    fn id_width(self, raw_len: usize) -> usize {
        match self {
            Encoding::Protobuf => raw_len,
            Encoding::Json => raw_len * 2,
        }
    }
}

/// Where one id occurrence sits in an encoded body.
#[derive(Clone, Copy, Debug)]
struct Slot {
    offset: u32,
    /// `0..traces` are trace ids, `traces..traces + spans` are span ids.
    id: u32,
}

/// One encoded request and the offsets of every trace id, span id and parent span id in it.
#[derive(Debug)]
pub struct Template {
    body: Vec<u8>,
    encoding: Encoding,
    slots: Vec<Slot>,
    traces: usize,
    /// Trace index of each span, by span index (request order).
    span_trace: Vec<u32>,
    /// Protobuf only: one encoded `TracesData` per trace, by trace index, as Weir would
    /// produce them to Kafka (what the bare producer of `--transport kafka` sends).
    trace_records: Vec<Vec<u8>>,
    /// Where the ids sit in each of `trace_records`, by trace index.
    record_slots: Vec<Vec<Slot>>,
}

/// The fresh ids one send uses: one trace id per trace, one span id per span.
#[derive(Clone, Debug, Default)]
pub struct FreshIds {
    /// New trace ids, by trace index.
    pub trace_ids: Vec<[u8; TRACE_ID_LEN]>,
    /// New span ids, by span index.
    pub span_ids: Vec<[u8; SPAN_ID_LEN]>,
    span_trace: Vec<u32>,
}

impl FreshIds {
    /// The `(trace id, span id)` pair of every span of the request, in span order.
    pub fn spans(&self) -> impl Iterator<Item = (&[u8; TRACE_ID_LEN], &[u8; SPAN_ID_LEN])> {
        self.span_ids
            .iter()
            .zip(&self.span_trace)
            .map(|(span, &trace)| (&self.trace_ids[trace as usize], span))
    }

    /// Appends one `traceid spanid` line (lowercase hex) per span to `out`.
    pub fn write_lines(&self, out: &mut Vec<u8>) {
        for (trace, span) in self.spans() {
            push_hex(out, trace);
            out.push(b' ');
            push_hex(out, span);
            out.push(b'\n');
        }
    }
}

impl Template {
    /// The encoded body as built, with the ids it was built with.
    #[cfg(test)]
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Number of spans in the request.
    pub fn spans(&self) -> usize {
        self.span_trace.len()
    }

    /// The request split into one encoded `TracesData` per trace (by trace index), with the
    /// ids the template was built with; empty for OTLP/JSON templates.
    #[cfg(test)]
    pub fn trace_records(&self) -> &[Vec<u8>] {
        &self.trace_records
    }

    /// Copies of `trace_records` with the ids of the last `instantiate` (in `ids`) written in:
    /// the records Weir would produce for that send's body.
    pub fn instantiate_records(&self, ids: &FreshIds) -> Vec<Vec<u8>> {
        self.trace_records
            .iter()
            .zip(&self.record_slots)
            .map(|(record, slots)| {
                let mut record = record.clone();
                for slot in slots {
                    let raw = self.fresh_id(slot.id as usize, ids);
                    let at = slot.offset as usize;
                    record[at..at + raw.len()].copy_from_slice(raw);
                }
                record
            })
            .collect()
    }

    /// The new value of id `id` (a trace index below `traces`, then span indexes) in `ids`.
    fn fresh_id<'a>(&self, id: usize, ids: &'a FreshIds) -> &'a [u8] {
        if id < self.traces {
            &ids.trace_ids[id]
        } else {
            &ids.span_ids[id - self.traces]
        }
    }

    /// Copies the body and writes new random ids into the copy; `ids` receives them.
    ///
    /// Every occurrence of an id is replaced by the same new value, so spans of one trace keep
    /// sharing a trace id and parent span ids keep pointing at their parents.
    pub fn instantiate(&self, rng: &mut impl Rng, ids: &mut FreshIds) -> Vec<u8> {
        ids.trace_ids.clear();
        ids.trace_ids
            .extend((0..self.traces).map(|_| random_id(rng)));
        ids.span_ids.clear();
        ids.span_ids
            .extend((0..self.span_trace.len()).map(|_| random_id(rng)));
        ids.span_trace.clone_from(&self.span_trace);

        let mut body = self.body.clone();
        for slot in &self.slots {
            let at = slot.offset as usize;
            let raw = self.fresh_id(slot.id as usize, ids);
            match self.encoding {
                Encoding::Protobuf => body[at..at + raw.len()].copy_from_slice(raw),
                Encoding::Json => write_hex(&mut body[at..at + raw.len() * 2], raw),
            }
        }
        body
    }
}

/// The pre-encoded requests the senders cycle through.
#[derive(Debug)]
pub struct RequestPool {
    templates: Vec<Template>,
}

impl RequestPool {
    /// Builds `size` distinct requests of `shape`, encoded as `encoding`.
    pub fn build(
        shape: &Shape,
        encoding: Encoding,
        size: usize,
        rng: &mut impl Rng,
    ) -> anyhow::Result<Self> {
        shape.validate()?;
        if size == 0 {
            bail!("--pool must be at least 1");
        }
        let base_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("the system clock is before 1970")?
            .as_nanos() as u64;
        let mut templates = Vec::with_capacity(size);
        for index in 0..size {
            let first_span = index * shape.spans_per_request;
            templates.push(build_template(shape, encoding, first_span, base_time, rng)?);
        }
        Ok(Self { templates })
    }

    /// The template for send number `n` (the pool is used round-robin).
    pub fn get(&self, n: u64) -> &Template {
        &self.templates[(n % self.templates.len() as u64) as usize]
    }

    /// All templates.
    #[cfg(test)]
    pub fn templates(&self) -> &[Template] {
        &self.templates
    }

    /// Mean size of a per-trace record (`Template::trace_records`), in bytes; `None` for
    /// OTLP/JSON pools, which have none.
    pub fn mean_trace_record_bytes(&self) -> Option<f64> {
        let records = self.templates.iter().flat_map(|t| &t.trace_records);
        let (count, bytes) = records.fold((0usize, 0usize), |(n, b), r| (n + 1, b + r.len()));
        (count > 0).then(|| bytes as f64 / count as f64)
    }

    /// Mean encoded size of a request, in bytes.
    pub fn mean_request_bytes(&self) -> f64 {
        let total: usize = self.templates.iter().map(|t| t.body.len()).sum();
        total as f64 / self.templates.len() as f64
    }
}

/// Whether span number `global` (counted over the whole pool) is an error span: exactly
/// `floor(n * rate)` of the first `n` spans are, evenly spread.
fn is_error_span(global: usize, rate: f64) -> bool {
    ((global + 1) as f64 * rate).floor() > (global as f64 * rate).floor()
}

fn random_id<const N: usize>(rng: &mut impl Rng) -> [u8; N] {
    loop {
        let mut id = [0u8; N];
        rng.fill(&mut id[..]);
        // An all-zero id is invalid in OTLP.
        if id.iter().any(|&b| b != 0) {
            return id;
        }
    }
}

fn random_text(rng: &mut impl Rng, len: usize) -> String {
    rng.sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn string_attr(key: impl Into<String>, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// Builds one request with random ids, then records where those ids landed in its encoding.
/// Retries with other ids in the (astronomically unlikely) case an id's bytes also occur by
/// chance elsewhere in the body.
fn build_template(
    shape: &Shape,
    encoding: Encoding,
    first_span: usize,
    base_time: u64,
    rng: &mut impl Rng,
) -> anyhow::Result<Template> {
    for _ in 0..16 {
        let built = build_request(shape, first_span, base_time, rng);
        let body = match encoding {
            Encoding::Protobuf => built.request.encode_to_vec(),
            Encoding::Json => serde_json::to_vec(&otlp_json(&built.request))?,
        };
        let Some(mut template) = locate_ids(shape, encoding, &built, body) else {
            continue;
        };
        if encoding == Encoding::Protobuf {
            let records = split_by_trace(&built.request, &built.trace_ids);
            let Some(record_slots) = locate_record_ids(shape, &built, &records) else {
                continue;
            };
            template.trace_records = records;
            template.record_slots = record_slots;
        }
        return Ok(template);
    }
    bail!("could not build a request whose ids occur only where expected")
}

/// One encoded `TracesData` per trace id of `trace_ids` (in that order): the resource and scope
/// groups the trace's spans appear in, with only those spans, which is how Weir groups a
/// request into Kafka records.
pub fn split_by_trace(
    request: &ExportTraceServiceRequest,
    trace_ids: &[[u8; TRACE_ID_LEN]],
) -> Vec<Vec<u8>> {
    let index: HashMap<&[u8], usize> = trace_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (&id[..], i))
        .collect();
    let mut per_trace: Vec<TracesData> = vec![TracesData::default(); trace_ids.len()];
    for resource_spans in &request.resource_spans {
        for scope_spans in &resource_spans.scope_spans {
            let mut groups: Vec<Vec<Span>> = vec![Vec::new(); trace_ids.len()];
            for span in &scope_spans.spans {
                if let Some(&i) = index.get(span.trace_id.as_slice()) {
                    groups[i].push(span.clone());
                }
            }
            for (data, spans) in per_trace.iter_mut().zip(groups) {
                if spans.is_empty() {
                    continue;
                }
                data.resource_spans.push(ResourceSpans {
                    resource: resource_spans.resource.clone(),
                    scope_spans: vec![ScopeSpans {
                        scope: scope_spans.scope.clone(),
                        spans,
                        schema_url: scope_spans.schema_url.clone(),
                    }],
                    schema_url: resource_spans.schema_url.clone(),
                });
            }
        }
    }
    per_trace.iter().map(Message::encode_to_vec).collect()
}

/// A request and its ids in request order (the body groups spans by service instead).
struct Built {
    request: ExportTraceServiceRequest,
    trace_ids: Vec<[u8; TRACE_ID_LEN]>,
    span_ids: Vec<[u8; SPAN_ID_LEN]>,
    /// Number of spans whose parent is each span.
    children: Vec<usize>,
}

fn build_request(shape: &Shape, first_span: usize, base_time: u64, rng: &mut impl Rng) -> Built {
    let mut trace_ids = Vec::with_capacity(shape.traces_per_request());
    let mut span_ids = Vec::with_capacity(shape.spans_per_request);
    let mut children = vec![0usize; shape.spans_per_request];
    let mut per_service: Vec<Vec<Span>> = vec![Vec::new(); shape.services];
    let mut trace_id = [0u8; TRACE_ID_LEN];
    let mut root_id = [0u8; SPAN_ID_LEN];
    for k in 0..shape.spans_per_request {
        let trace = k / shape.spans_per_trace;
        let position = k % shape.spans_per_trace;
        if position == 0 {
            trace_id = random_id(rng);
            trace_ids.push(trace_id);
        }
        let span_id: [u8; SPAN_ID_LEN] = random_id(rng);
        span_ids.push(span_id);
        let parent_span_id = if position == 0 {
            root_id = span_id;
            Vec::new()
        } else {
            children[k - position] += 1;
            root_id.to_vec()
        };
        let start = base_time + (k as u64) * 1_000_000;
        let status = if is_error_span(first_span + k, shape.error_rate) {
            Some(Status {
                code: StatusCode::Error as i32,
                message: "synthetic error".to_string(),
            })
        } else {
            None
        };
        let span = Span {
            trace_id: trace_id.to_vec(),
            span_id: span_id.to_vec(),
            parent_span_id,
            name: format!("operation-{position}"),
            kind: if position == 0 {
                SpanKind::Server as i32
            } else {
                SpanKind::Internal as i32
            },
            start_time_unix_nano: start,
            end_time_unix_nano: start + rng.random_range(100_000..50_000_000),
            attributes: (0..shape.attributes)
                .map(|a| string_attr(format!("attr.{a}"), random_text(rng, shape.attribute_size)))
                .collect(),
            status,
            ..Default::default()
        };
        per_service[(trace + position) % shape.services].push(span);
    }
    let resource_spans = per_service
        .into_iter()
        .enumerate()
        .filter(|(_, spans)| !spans.is_empty())
        .map(|(service, spans)| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    string_attr("service.name", format!("loadgen-service-{service}")),
                    string_attr("host.name", "weir-loadgen"),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "weir-loadgen".to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        })
        .collect();
    Built {
        request: ExportTraceServiceRequest { resource_spans },
        trace_ids,
        span_ids,
        children,
    }
}

/// Finds every occurrence of every id of `built` in `body`. Returns `None` unless each
/// trace id occurs once per span of its trace, each span id once plus once per child, and no
/// two occurrences overlap.
fn locate_ids(shape: &Shape, encoding: Encoding, built: &Built, body: Vec<u8>) -> Option<Template> {
    let spans = shape.spans_per_request;
    let traces = shape.traces_per_request();
    let trace_ids: Vec<Vec<u8>> = built
        .trace_ids
        .iter()
        .map(|id| encoded_id(encoding, id))
        .collect();
    let span_ids: Vec<Vec<u8>> = built
        .span_ids
        .iter()
        .map(|id| encoded_id(encoding, id))
        .collect();

    let slots = find_ids(encoding, &trace_ids, &span_ids, &body)?;
    if !ids_counted_once_per_use(shape, built, &slots, |_| true) {
        return None;
    }
    let span_trace = (0..spans)
        .map(|k| (k / shape.spans_per_trace) as u32)
        .collect();
    Some(Template {
        body,
        encoding,
        slots,
        traces,
        span_trace,
        trace_records: Vec::new(),
        record_slots: Vec::new(),
    })
}

/// Every occurrence in `body` of the (encoded) `trace_ids` and then `span_ids`, numbered in
/// that order; `None` if two ids share their first bytes, so that a prefix could not tell
/// them apart.
fn find_ids(
    encoding: Encoding,
    trace_ids: &[Vec<u8>],
    span_ids: &[Vec<u8>],
    body: &[u8],
) -> Option<Vec<Slot>> {
    let traces = trace_ids.len();
    let key_len = encoding.id_width(SPAN_ID_LEN);
    let mut by_key: HashMap<&[u8], u32> = HashMap::new();
    for (i, id) in trace_ids.iter().chain(span_ids).enumerate() {
        if by_key.insert(&id[..key_len], i as u32).is_some() {
            return None;
        }
    }
    let mut slots = Vec::with_capacity(span_ids.len() * 3);
    let mut at = 0;
    while at + key_len <= body.len() {
        let Some(&id) = by_key.get(&body[at..at + key_len]) else {
            at += 1;
            continue;
        };
        let full = if (id as usize) < traces {
            &trace_ids[id as usize]
        } else {
            &span_ids[id as usize - traces]
        };
        if body.get(at..at + full.len()) == Some(full.as_slice()) {
            slots.push(Slot {
                offset: at as u32,
                id,
            });
            // Skipping the whole id also rules out overlapping occurrences.
            at += full.len();
        } else {
            at += 1;
        }
    }
    Some(slots)
}

/// True when `slots` hold each id as often as the spans of the traces `holds` accepts use it:
/// a trace id once per span of its trace, a span id once plus once per child; the ids of other
/// traces not at all.
fn ids_counted_once_per_use(
    shape: &Shape,
    built: &Built,
    slots: &[Slot],
    holds: impl Fn(usize) -> bool,
) -> bool {
    let traces = built.trace_ids.len();
    let trace_of_span = |k: usize| k / shape.spans_per_trace;
    let mut found = vec![0usize; traces + built.span_ids.len()];
    for slot in slots {
        found[slot.id as usize] += 1;
    }
    let mut expected = vec![0usize; found.len()];
    for k in (0..built.span_ids.len()).filter(|&k| holds(trace_of_span(k))) {
        expected[trace_of_span(k)] += 1;
        expected[traces + k] = 1 + built.children[k];
    }
    found == expected
}

/// The ids' places in each per-trace record (`records[t]` holds trace `t`'s spans); `None`
/// unless each record holds exactly its own trace's ids (`ids_counted_once_per_use`).
fn locate_record_ids(shape: &Shape, built: &Built, records: &[Vec<u8>]) -> Option<Vec<Vec<Slot>>> {
    let trace_ids: Vec<Vec<u8>> = built.trace_ids.iter().map(|id| id.to_vec()).collect();
    let span_ids: Vec<Vec<u8>> = built.span_ids.iter().map(|id| id.to_vec()).collect();
    records
        .iter()
        .enumerate()
        .map(|(trace, record)| {
            let slots = find_ids(Encoding::Protobuf, &trace_ids, &span_ids, record)?;
            ids_counted_once_per_use(shape, built, &slots, |t| t == trace).then_some(slots)
        })
        .collect()
}

fn encoded_id(encoding: Encoding, raw: &[u8]) -> Vec<u8> {
    match encoding {
        Encoding::Protobuf => raw.to_vec(),
        Encoding::Json => {
            let mut hex = Vec::with_capacity(raw.len() * 2);
            push_hex(&mut hex, raw);
            hex
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `raw` as lowercase hex into `out` (twice its length).
pub(crate) fn write_hex(out: &mut [u8], raw: &[u8]) {
    for (pair, byte) in out.chunks_exact_mut(2).zip(raw) {
        pair[0] = HEX[(byte >> 4) as usize];
        pair[1] = HEX[(byte & 0xf) as usize];
    }
}

fn push_hex(out: &mut Vec<u8>, raw: &[u8]) {
    for byte in raw {
        out.push(HEX[(byte >> 4) as usize]);
        out.push(HEX[(byte & 0xf) as usize]);
    }
}

/// OTLP/JSON for the subset of fields the generator fills (string, int, bool and double
/// attributes; no events or links): ids as hex, 64-bit integers as strings, enums as numbers.
fn otlp_json(request: &ExportTraceServiceRequest) -> Value {
    fn attrs(list: &[KeyValue]) -> Value {
        Value::Array(
            list.iter()
                .map(|kv| {
                    let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                        Some(any_value::Value::StringValue(s)) => json!({ "stringValue": s }),
                        Some(any_value::Value::IntValue(i)) => json!({ "intValue": i.to_string() }),
                        Some(any_value::Value::BoolValue(b)) => json!({ "boolValue": b }),
                        Some(any_value::Value::DoubleValue(d)) => json!({ "doubleValue": d }),
                        _ => json!({}),
                    };
                    json!({ "key": kv.key, "value": value })
                })
                .collect(),
        )
    }
    fn hex(raw: &[u8]) -> String {
        let mut out = Vec::with_capacity(raw.len() * 2);
        push_hex(&mut out, raw);
        String::from_utf8(out).unwrap_or_default()
    }
    let resource_spans: Vec<Value> = request
        .resource_spans
        .iter()
        .map(|rs| {
            let scope_spans: Vec<Value> = rs
                .scope_spans
                .iter()
                .map(|ss| {
                    let spans: Vec<Value> = ss
                        .spans
                        .iter()
                        .map(|span| {
                            let mut out = json!({
                                "traceId": hex(&span.trace_id),
                                "spanId": hex(&span.span_id),
                                "name": span.name,
                                "kind": span.kind,
                                "startTimeUnixNano": span.start_time_unix_nano.to_string(),
                                "endTimeUnixNano": span.end_time_unix_nano.to_string(),
                                "attributes": attrs(&span.attributes),
                            });
                            if !span.parent_span_id.is_empty() {
                                out["parentSpanId"] = json!(hex(&span.parent_span_id));
                            }
                            if let Some(status) = &span.status {
                                out["status"] =
                                    json!({ "code": status.code, "message": status.message });
                            }
                            out
                        })
                        .collect();
                    let scope = ss
                        .scope
                        .as_ref()
                        .map(|s| json!({ "name": s.name, "version": s.version }));
                    json!({ "scope": scope, "spans": spans })
                })
                .collect();
            let resource = rs
                .resource
                .as_ref()
                .map(|r| json!({ "attributes": attrs(&r.attributes) }));
            json!({ "resource": resource, "scopeSpans": scope_spans })
        })
        .collect();
    json!({ "resourceSpans": resource_spans })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn shape() -> Shape {
        Shape {
            spans_per_request: 100,
            spans_per_trace: 10,
            services: 5,
            attributes: 5,
            attribute_size: 16,
            error_rate: 0.0,
        }
    }

    fn all_spans(request: &ExportTraceServiceRequest) -> Vec<&Span> {
        request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .collect()
    }

    fn decode(body: &[u8]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest::decode(body).expect("the body decodes")
    }

    #[test]
    fn trace_records_hold_each_trace_once_and_only_its_spans() {
        let mut rng = SmallRng::seed_from_u64(7);
        let pool = RequestPool::build(&shape(), Encoding::Protobuf, 2, &mut rng).unwrap();
        for template in pool.templates() {
            let request = decode(template.body());
            let records = template.trace_records();
            assert_eq!(records.len(), shape().traces_per_request());
            let mut seen = Vec::new();
            for record in records {
                let data = TracesData::decode(record.as_slice()).unwrap();
                let spans: Vec<&Span> = data
                    .resource_spans
                    .iter()
                    .flat_map(|rs| &rs.scope_spans)
                    .flat_map(|ss| &ss.spans)
                    .collect();
                assert_eq!(spans.len(), shape().spans_per_trace);
                assert!(spans.iter().all(|s| s.trace_id == spans[0].trace_id));
                // Resources travel with their spans, as in Weir's records.
                assert!(data.resource_spans.iter().all(|rs| rs.resource.is_some()));
                seen.extend(spans.into_iter().cloned());
            }
            let mut sent: Vec<Span> = all_spans(&request).into_iter().cloned().collect();
            let key = |s: &Span| s.span_id.clone();
            sent.sort_by_key(key);
            seen.sort_by_key(key);
            assert_eq!(seen, sent);
        }
        let json = RequestPool::build(&shape(), Encoding::Json, 1, &mut rng).unwrap();
        assert!(json.get(0).trace_records().is_empty());
    }

    #[test]
    fn request_has_the_asked_shape() {
        let shape = Shape {
            spans_per_request: 95,
            attributes: 7,
            attribute_size: 33,
            ..shape()
        };
        let mut rng = SmallRng::seed_from_u64(1);
        let pool = RequestPool::build(&shape, Encoding::Protobuf, 3, &mut rng).unwrap();
        for template in pool.templates() {
            let request = decode(template.body());
            assert_eq!(request.resource_spans.len(), 5);
            let spans = all_spans(&request);
            assert_eq!(spans.len(), 95);
            let mut per_trace: HashMap<&[u8], usize> = HashMap::new();
            for span in &spans {
                *per_trace.entry(&span.trace_id).or_default() += 1;
                assert_eq!(span.trace_id.len(), 16);
                assert_eq!(span.span_id.len(), 8);
                assert_eq!(span.attributes.len(), 7);
                for kv in &span.attributes {
                    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                        Some(any_value::Value::StringValue(s)) => assert_eq!(s.len(), 33),
                        other => panic!("unexpected attribute value {other:?}"),
                    }
                }
            }
            // Ten traces: nine of ten spans, the last one of five.
            let mut sizes: Vec<usize> = per_trace.values().copied().collect();
            sizes.sort_unstable();
            assert_eq!(sizes, [5, 10, 10, 10, 10, 10, 10, 10, 10, 10]);
        }
    }

    #[test]
    fn error_rate_is_exact_over_the_pool() {
        for (rate, pool_size) in [(0.0, 4), (0.013, 64), (0.25, 10), (1.0, 2)] {
            let shape = Shape {
                error_rate: rate,
                ..shape()
            };
            let mut rng = SmallRng::seed_from_u64(2);
            let pool = RequestPool::build(&shape, Encoding::Protobuf, pool_size, &mut rng).unwrap();
            let errors: usize = pool
                .templates()
                .iter()
                .map(|t| {
                    all_spans(&decode(t.body()))
                        .iter()
                        .filter(|s| {
                            s.status
                                .as_ref()
                                .is_some_and(|st| st.code == StatusCode::Error as i32)
                        })
                        .count()
                })
                .sum();
            let total = pool_size * 100;
            assert_eq!(
                errors,
                (total as f64 * rate).floor() as usize,
                "rate {rate}"
            );
        }
    }

    #[test]
    fn instantiated_records_are_the_patched_body_split_by_trace() {
        let mut rng = SmallRng::seed_from_u64(11);
        let pool = RequestPool::build(&shape(), Encoding::Protobuf, 2, &mut rng).unwrap();
        for template in pool.templates() {
            let mut ids = FreshIds::default();
            let body = template.instantiate(&mut rng, &mut ids);
            let records = template.instantiate_records(&ids);
            let patched = decode(&body);
            let fresh: Vec<[u8; TRACE_ID_LEN]> = ids.trace_ids.clone();
            // What Weir would produce for the patched body: its split, with the same ids.
            assert_eq!(records, split_by_trace(&patched, &fresh));
            for (record, trace_id) in records.iter().zip(&fresh) {
                let data = TracesData::decode(record.as_slice()).unwrap();
                let spans = data
                    .resource_spans
                    .iter()
                    .flat_map(|rs| &rs.scope_spans)
                    .flat_map(|ss| &ss.spans);
                assert!(spans.clone().count() > 0);
                assert!(spans.clone().all(|s| s.trace_id == trace_id));
            }
        }
    }

    #[test]
    fn instantiate_patches_every_id_and_nothing_else() {
        let mut rng = SmallRng::seed_from_u64(3);
        let pool = RequestPool::build(&shape(), Encoding::Protobuf, 2, &mut rng).unwrap();
        let template = pool.get(1);
        let original = decode(template.body());
        let mut ids = FreshIds::default();
        let patched_body = template.instantiate(&mut rng, &mut ids);
        assert_eq!(patched_body.len(), template.body().len());
        let patched = decode(&patched_body);

        let expected: Vec<([u8; 16], [u8; 8])> = ids.spans().map(|(t, s)| (*t, *s)).collect();
        assert_eq!(expected.len(), 100);
        let base = all_spans(&original)
            .iter()
            .map(|s| s.start_time_unix_nano)
            .min()
            .unwrap();
        let new_by_old: HashMap<Vec<u8>, Vec<u8>> = all_spans(&original)
            .iter()
            .zip(all_spans(&patched))
            .map(|(old, new)| (old.span_id.clone(), new.span_id.clone()))
            .collect();
        for (old, new) in all_spans(&original).into_iter().zip(all_spans(&patched)) {
            let k = ((new.start_time_unix_nano - base) / 1_000_000) as usize;
            assert_eq!(new.trace_id, expected[k].0, "trace id of span {k}");
            assert_eq!(new.span_id, expected[k].1, "span id of span {k}");
            assert_ne!(new.trace_id, old.trace_id);
            assert_ne!(new.span_id, old.span_id);
            if old.parent_span_id.is_empty() {
                assert!(new.parent_span_id.is_empty());
            } else {
                assert_eq!(new.parent_span_id, new_by_old[&old.parent_span_id]);
            }
            // Everything but the ids is untouched.
            let mut same = new.clone();
            same.trace_id = old.trace_id.clone();
            same.span_id = old.span_id.clone();
            same.parent_span_id = old.parent_span_id.clone();
            assert_eq!(&same, old);
        }
        // Ten distinct trace ids, a hundred distinct span ids.
        let traces: std::collections::HashSet<_> = expected.iter().map(|(t, _)| *t).collect();
        let spans: std::collections::HashSet<_> = expected.iter().map(|(_, s)| *s).collect();
        assert_eq!((traces.len(), spans.len()), (10, 100));

        // A second send gets other ids again.
        let mut again = FreshIds::default();
        template.instantiate(&mut rng, &mut again);
        assert!(again.span_ids.iter().all(|s| !ids.span_ids.contains(s)));
    }

    #[test]
    fn json_requests_are_patched_too() {
        let shape = Shape {
            spans_per_request: 20,
            spans_per_trace: 4,
            error_rate: 0.5,
            ..shape()
        };
        let mut rng = SmallRng::seed_from_u64(4);
        let pool = RequestPool::build(&shape, Encoding::Json, 2, &mut rng).unwrap();
        let mut ids = FreshIds::default();
        let body = pool.get(0).instantiate(&mut rng, &mut ids);
        let doc: Value = serde_json::from_slice(&body).unwrap();
        let mut seen = Vec::new();
        let mut roots = HashMap::new();
        for rs in doc["resourceSpans"].as_array().unwrap() {
            for ss in rs["scopeSpans"].as_array().unwrap() {
                for span in ss["spans"].as_array().unwrap() {
                    let trace = span["traceId"].as_str().unwrap().to_string();
                    let id = span["spanId"].as_str().unwrap().to_string();
                    if span.get("parentSpanId").is_none() {
                        roots.insert(trace.clone(), id.clone());
                    }
                    assert_eq!(span["attributes"].as_array().unwrap().len(), 5);
                    seen.push((trace, id, span.get("parentSpanId").cloned()));
                }
            }
        }
        let mut lines = Vec::new();
        ids.write_lines(&mut lines);
        let lines = String::from_utf8(lines).unwrap();
        assert_eq!(lines.lines().count(), 20);
        for (trace, id, parent) in &seen {
            assert!(
                lines.contains(&format!("{trace} {id}\n")),
                "{trace} {id} is not in the ids"
            );
            if let Some(parent) = parent {
                assert_eq!(parent.as_str(), Some(roots[trace].as_str()));
            }
        }
    }

    #[test]
    fn ids_lines_are_hex_pairs() {
        let mut rng = SmallRng::seed_from_u64(5);
        let pool = RequestPool::build(&shape(), Encoding::Protobuf, 1, &mut rng).unwrap();
        let mut ids = FreshIds::default();
        pool.get(0).instantiate(&mut rng, &mut ids);
        let mut out = Vec::new();
        ids.write_lines(&mut out);
        let text = String::from_utf8(out).unwrap();
        let (trace, span) = text.lines().next().unwrap().split_once(' ').unwrap();
        assert_eq!(trace, hex_of(&ids.trace_ids[0]));
        assert_eq!(span, hex_of(&ids.span_ids[0]));
        assert!(text.lines().all(|l| l.len() == 49));
    }

    fn hex_of(raw: &[u8]) -> String {
        raw.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn bad_shapes_are_refused() {
        let mut rng = SmallRng::seed_from_u64(6);
        for bad in [
            Shape {
                spans_per_request: 0,
                ..shape()
            },
            Shape {
                spans_per_trace: 0,
                ..shape()
            },
            Shape {
                services: 0,
                ..shape()
            },
            Shape {
                error_rate: 1.5,
                ..shape()
            },
        ] {
            assert!(RequestPool::build(&bad, Encoding::Protobuf, 1, &mut rng).is_err());
        }
        assert!(RequestPool::build(&shape(), Encoding::Protobuf, 0, &mut rng).is_err());
    }
}
