//! Splitting OTLP data into records no larger than a byte budget.
//!
//! OTLP data is three levels deep: resource -> scope -> items (metrics, log records; spans
//! have their own byte-level path in `trace_records`).
//! `split` packs items into chunks, repeating the resource and scope of each item in every
//! chunk that holds one, so each chunk is a self-contained `MetricsData` or `LogsData`. An item that cannot fit even alone is counted as rejected, never dropped
//! in silence.

use prost::Message;
use prost::encoding::encoded_len_varint;

/// One level of the OTLP hierarchy that holds a list of children.
pub trait Container: Message + Clone + Sized {
    /// The next level down.
    type Child: Message;
    /// The children.
    fn children(&self) -> &[Self::Child];
    /// The children, to be moved out.
    fn children_mut(&mut self) -> &mut Vec<Self::Child>;
    /// A copy of this level without its children.
    fn shell(&self) -> Self;
}

/// How much an item counts in `rejected` (a span is 1; a metric counts its data points).
pub trait Weighted {
    /// The number of OTLP items (spans, data points, log records) this holds.
    fn weight(&self) -> u64;
}

/// The result of `split`: chunks that each fit the budget, and what could not fit.
#[derive(Debug)]
pub struct Split<R> {
    /// Each chunk is the resource list of one record.
    pub chunks: Vec<Vec<R>>,
    /// Items (by weight) larger than the budget on their own.
    pub rejected: u64,
    /// The size of the largest rejected item, for the error message.
    pub largest_rejected: usize,
}

/// The bytes a length-delimited field of `len` bytes takes (tag, length, body).
fn field_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// Splits `resources` into chunks whose encoding is at most `budget` bytes.
pub fn split<R>(resources: Vec<R>, budget: usize) -> Split<R>
where
    R: Container,
    R::Child: Container,
    <R::Child as Container>::Child: Weighted,
{
    let total: usize = resources.iter().map(|r| field_len(r.encoded_len())).sum();
    if total <= budget {
        return Split {
            chunks: vec![resources],
            rejected: 0,
            largest_rejected: 0,
        };
    }
    let mut out = Split {
        chunks: Vec::new(),
        rejected: 0,
        largest_rejected: 0,
    };
    let mut chunk: Vec<R> = Vec::new();
    let mut size = 0usize;
    for mut resource in resources {
        let r_shell = resource.shell();
        // The shell's own bytes plus room for the largest length prefix it can get.
        let r_over = r_shell.encoded_len() + 1 + 5;
        let mut r_open = false;
        for mut scope in resource.children_mut().drain(..) {
            let s_shell = scope.shell();
            let s_over = s_shell.encoded_len() + 1 + 5;
            let mut s_open = false;
            for item in scope.children_mut().drain(..) {
                let item_len = field_len(item.encoded_len());
                if r_over + s_over + item_len > budget {
                    out.rejected += item.weight();
                    out.largest_rejected = out.largest_rejected.max(item.encoded_len());
                    continue;
                }
                let extra =
                    item_len + if s_open { 0 } else { s_over } + if r_open { 0 } else { r_over };
                if size + extra > budget {
                    out.chunks.push(std::mem::take(&mut chunk));
                    size = 0;
                    r_open = false;
                    s_open = false;
                }
                if !r_open {
                    chunk.push(r_shell.clone());
                    size += r_over;
                    r_open = true;
                }
                let r = chunk.last_mut().expect("a resource was just opened");
                if !s_open {
                    r.children_mut().push(s_shell.clone());
                    size += s_over;
                    s_open = true;
                }
                r.children_mut()
                    .last_mut()
                    .expect("a scope was just opened")
                    .children_mut()
                    .push(item);
                size += item_len;
            }
        }
    }
    if !chunk.is_empty() {
        out.chunks.push(chunk);
    }
    out
}

mod impls {
    use super::{Container, Weighted};
    use weir_proto::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use weir_proto::otlp::metrics::v1::{Metric, ResourceMetrics, ScopeMetrics};

    /// Every level is `{ head (resource or scope), children, schema_url }`.
    macro_rules! container {
        ($t:ty, $head:ident, $children:ident, $child:ty) => {
            impl Container for $t {
                type Child = $child;
                fn children(&self) -> &[$child] {
                    &self.$children
                }
                fn children_mut(&mut self) -> &mut Vec<$child> {
                    &mut self.$children
                }
                fn shell(&self) -> Self {
                    Self {
                        $head: self.$head.clone(),
                        $children: Vec::new(),
                        schema_url: self.schema_url.clone(),
                    }
                }
            }
        };
    }

    container!(ResourceMetrics, resource, scope_metrics, ScopeMetrics);
    container!(ScopeMetrics, scope, metrics, Metric);
    container!(ResourceLogs, resource, scope_logs, ScopeLogs);
    container!(ScopeLogs, scope, log_records, LogRecord);

    impl Weighted for LogRecord {
        fn weight(&self) -> u64 {
            1
        }
    }
    impl Weighted for Metric {
        fn weight(&self) -> u64 {
            crate::kafka::records::data_points(self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::otlp::common::v1::{AnyValue, any_value::Value};
    use weir_proto::otlp::logs::v1::{LogRecord, LogsData, ResourceLogs};
    use weir_proto::test_support::{self, scope, service};

    fn record(i: u32, pad: usize) -> LogRecord {
        LogRecord {
            time_unix_nano: u64::from(i),
            body: Some(AnyValue {
                value: Some(Value::StringValue("x".repeat(pad))),
            }),
            ..Default::default()
        }
    }

    fn resource_logs(n: u32, pad: usize) -> ResourceLogs {
        ResourceLogs {
            schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
            ..test_support::resource_logs(
                Some(service("checkout")),
                Some(scope("lib")),
                (0..n).map(|i| record(i, pad)).collect(),
            )
        }
    }

    #[test]
    fn small_input_stays_one_chunk() {
        let out = split(vec![resource_logs(10, 10)], 1 << 20);
        assert_eq!(out.chunks.len(), 1);
        assert_eq!(out.rejected, 0);
    }

    #[test]
    fn chunks_fit_the_budget_and_keep_every_item_in_order() {
        let input = vec![resource_logs(300, 500), resource_logs(200, 100)];
        let budget = 16 * 1024;
        let out = split(input.clone(), budget);
        assert!(out.chunks.len() > 5, "{} chunks", out.chunks.len());
        assert_eq!(out.rejected, 0);
        let mut times = Vec::new();
        for c in &out.chunks {
            let data = LogsData {
                resource_logs: c.clone(),
            };
            assert!(
                data.encoded_len() <= budget,
                "chunk of {} bytes",
                data.encoded_len()
            );
            for r in c {
                assert!(r.resource.is_some());
                assert_eq!(r.schema_url, "https://opentelemetry.io/schemas/1.26.0");
                for s in &r.scope_logs {
                    assert_eq!(s.scope.as_ref().unwrap().name, "lib");
                    times.extend(s.log_records.iter().map(|l| l.time_unix_nano));
                }
            }
        }
        let want: Vec<u64> = input
            .iter()
            .flat_map(|r| r.scope_logs[0].log_records.iter().map(|l| l.time_unix_nano))
            .collect();
        assert_eq!(times, want);
    }

    #[test]
    fn an_item_larger_than_the_budget_is_rejected_and_counted() {
        let mut r = resource_logs(3, 10);
        r.scope_logs[0].log_records[1] = record(99, 10_000);
        let out = split(vec![r], 4096);
        assert_eq!(out.rejected, 1);
        assert!(out.largest_rejected > 10_000);
        let kept: usize = out
            .chunks
            .iter()
            .flatten()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum();
        assert_eq!(kept, 2);
    }
}
