//! Hot records that are not one trace's: written without a trace-id key, spans of many traces
//! in one record (a Collector whose kafka exporter has `partition_traces_by_id` off, its
//! default). Such a record is decided trace by trace: the spans of each kept trace are copied
//! into a record of their own, keyed by the trace id, with their resource and scope, in the
//! record's own encoding (`otlp_proto`, or `otlp_json` when the value is a JSON object).

use super::decisions::Verdict;
use prost::Message;
use std::collections::BTreeMap;
use weir_proto::otlp::trace::v1::{ResourceSpans, ScopeSpans, TracesData};

/// What deciding a record trace by trace gave.
#[derive(Debug, Default)]
pub struct PerTrace {
    /// A value per kept trace, keyed by its trace id, with its spans only.
    pub kept: Vec<([u8; 16], Vec<u8>, u64)>,
    /// The verdict of every trace in the record, for the metrics.
    pub verdicts: Vec<Verdict>,
    /// Spans whose trace id is not 16 bytes: they cannot be decided and stay hot only.
    pub spans_without_trace_id: u64,
}

/// Why a record could not be decided trace by trace.
#[derive(Debug, thiserror::Error)]
pub enum PerTraceError {
    /// The value is neither OTLP protobuf nor OTLP/JSON `TracesData`.
    #[error("the record is not OTLP TracesData ({0})")]
    Undecodable(String),
}

/// Whether a value is OTLP/JSON: a JSON object (a protobuf `TracesData` starts with field 1,
/// byte 0x0a).
fn is_json(value: &[u8]) -> bool {
    value
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{')
}

/// Decides `value` trace by trace with `verdict`, and builds the values of the kept traces.
pub fn decide(
    value: &[u8],
    mut verdict: impl FnMut(&[u8; 16]) -> Verdict,
) -> Result<PerTrace, PerTraceError> {
    let json = is_json(value);
    let data = if json {
        let request = weir_proto::json::decode_trace_request(value)
            .map_err(|e| PerTraceError::Undecodable(e.to_string()))?;
        TracesData {
            resource_spans: request.resource_spans,
        }
    } else {
        TracesData::decode(value).map_err(|e| PerTraceError::Undecodable(e.to_string()))?
    };
    let mut out = PerTrace::default();
    let mut verdicts: BTreeMap<[u8; 16], Verdict> = BTreeMap::new();
    // Per kept trace: its data, and the resource and scope its last span was copied under.
    let mut kept: BTreeMap<[u8; 16], (TracesData, (usize, usize), u64)> = BTreeMap::new();
    for (r, rs) in data.resource_spans.iter().enumerate() {
        for (s, ss) in rs.scope_spans.iter().enumerate() {
            for span in &ss.spans {
                let Ok(id) = <[u8; 16]>::try_from(span.trace_id.as_slice()) else {
                    out.spans_without_trace_id += 1;
                    continue;
                };
                let v = *verdicts.entry(id).or_insert_with(|| verdict(&id));
                if !v.keep() {
                    continue;
                }
                let (trace, at, spans) = kept
                    .entry(id)
                    .or_insert_with(|| (TracesData::default(), (usize::MAX, usize::MAX), 0));
                if at.0 != r {
                    trace.resource_spans.push(ResourceSpans {
                        resource: rs.resource.clone(),
                        scope_spans: Vec::new(),
                        schema_url: rs.schema_url.clone(),
                    });
                    *at = (r, usize::MAX);
                }
                let resource = trace
                    .resource_spans
                    .last_mut()
                    .expect("a resource was pushed for this trace above");
                if at.1 != s {
                    resource.scope_spans.push(ScopeSpans {
                        scope: ss.scope.clone(),
                        spans: Vec::new(),
                        schema_url: ss.schema_url.clone(),
                    });
                    at.1 = s;
                }
                resource
                    .scope_spans
                    .last_mut()
                    .expect("a scope was pushed for this trace above")
                    .spans
                    .push(span.clone());
                *spans += 1;
            }
        }
    }
    out.verdicts = verdicts.into_values().collect();
    out.kept = kept
        .into_iter()
        .map(|(id, (trace, _, spans))| {
            let mut value = Vec::new();
            if json {
                weir_proto::json::encode_traces_data(&trace, &mut value);
            } else {
                trace.encode(&mut value).unwrap_or_default();
            }
            (id, value, spans)
        })
        .collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::otlp::common::v1::InstrumentationScope;
    use weir_proto::otlp::trace::v1::Span;
    use weir_proto::test_support::named_span;

    fn data() -> TracesData {
        let scope = |name: &str, spans: Vec<Span>| ScopeSpans {
            scope: Some(InstrumentationScope {
                name: name.into(),
                ..Default::default()
            }),
            spans,
            schema_url: String::new(),
        };
        let resource = |url: &str, scopes: Vec<ScopeSpans>| ResourceSpans {
            resource: None,
            scope_spans: scopes,
            schema_url: url.into(),
        };
        TracesData {
            resource_spans: vec![
                resource(
                    "r1",
                    vec![
                        scope("s1", vec![named_span(1, 1, "a"), named_span(2, 2, "b")]),
                        scope("s2", vec![named_span(3, 3, "c"), named_span(1, 4, "d")]),
                    ],
                ),
                resource("r2", vec![scope("s3", vec![named_span(1, 5, "e")])]),
            ],
        }
    }

    fn marked_one(id: &[u8; 16]) -> Verdict {
        if id[0] == 1 {
            Verdict::Marked
        } else {
            Verdict::Unmarked
        }
    }

    /// A scope's name and its spans' names.
    type ScopeLayout = (String, Vec<String>);

    fn check(kept: &[([u8; 16], Vec<u8>, u64)], decode: impl Fn(&[u8]) -> TracesData) {
        assert_eq!(kept.len(), 1);
        let (id, value, spans) = &kept[0];
        assert_eq!(*id, [1; 16]);
        assert_eq!(*spans, 3);
        let trace = decode(value);
        let layout: Vec<(String, Vec<ScopeLayout>)> = trace
            .resource_spans
            .iter()
            .map(|rs| {
                (
                    rs.schema_url.clone(),
                    rs.scope_spans
                        .iter()
                        .map(|ss| {
                            (
                                ss.scope.as_ref().unwrap().name.clone(),
                                ss.spans.iter().map(|s| s.name.clone()).collect(),
                            )
                        })
                        .collect(),
                )
            })
            .collect();
        let s = |x: &str| x.to_string();
        assert_eq!(
            layout,
            vec![
                (
                    s("r1"),
                    vec![(s("s1"), vec![s("a")]), (s("s2"), vec![s("d")])]
                ),
                (s("r2"), vec![(s("s3"), vec![s("e")])]),
            ]
        );
    }

    #[test]
    fn the_spans_of_kept_traces_are_copied_with_their_resource_and_scope() {
        let value = data().encode_to_vec();
        let out = decide(&value, marked_one).unwrap();
        assert_eq!(out.verdicts.len(), 3);
        check(&out.kept, |v| TracesData::decode(v).unwrap());
    }

    #[test]
    fn json_records_stay_json() {
        let mut value = Vec::new();
        weir_proto::json::encode_traces_data(&data(), &mut value);
        let out = decide(&value, marked_one).unwrap();
        assert!(is_json(&out.kept[0].1));
        check(&out.kept, |v| TracesData {
            resource_spans: weir_proto::json::decode_trace_request(v)
                .unwrap()
                .resource_spans,
        });
    }

    #[test]
    fn garbage_is_undecodable_and_bad_trace_ids_stay_hot() {
        assert!(decide(b"\xff\xff\xff", marked_one).is_err());
        assert!(decide(b"{\"resourceSpans\": 7}", marked_one).is_err());
        let mut d = data();
        d.resource_spans[0].scope_spans[0].spans[0].trace_id = vec![1; 5];
        let out = decide(&d.encode_to_vec(), marked_one).unwrap();
        assert_eq!(out.spans_without_trace_id, 1);
        assert_eq!(out.kept[0].2, 2);
    }
}
