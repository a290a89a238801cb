//! Splitting OTLP data into records no larger than a byte budget.
//!
//! OTLP data is three levels deep: resource -> scope -> items (metrics, log records; spans
//! have their own byte-level path in `trace_records`).
//! `split` packs items into chunks, repeating the resource and scope of each item in every
//! chunk that holds one, so each chunk is a self-contained `MetricsData` or `LogsData`. An
//! item that cannot fit even alone is counted as rejected, never dropped in silence.
//! `split_len` runs the same packing on sizes only, so the bytes of the chunks are known (and
//! can be refused) before any of them is built.

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
    /// The encoded size of `shell()`, without making it.
    fn shell_len(&self) -> usize;
}

/// The items of a resource level: metrics or log records.
pub type Item<R> = <<R as Container>::Child as Container>::Child;

/// How much an item counts in `rejected` (a span is 1; a metric counts its data points).
pub trait Weighted {
    /// The number of OTLP items (spans, data points, log records) this holds.
    fn weight(&self) -> u64;
}

/// The result of `split`: chunks that each fit the budget, and what could not fit.
#[derive(Debug)]
pub struct Split<R> {
    /// Each chunk is the resource list of one record, with the OTLP items (by weight) it
    /// holds; a chunk of no items (metrics without data points) is left out.
    pub chunks: Vec<(Vec<R>, u64)>,
    /// Items (by weight) larger than the budget on their own.
    pub rejected: u64,
    /// The size of the largest rejected item, for the error message.
    pub largest_rejected: usize,
}

/// The result of `split_len`: what `split` would make, in sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SplitLen {
    /// The chunks `split` would return.
    pub records: usize,
    /// Their encoded sizes, summed.
    pub value_bytes: usize,
}

/// The bytes a length-delimited field of `len` bytes takes (tag, length, body).
fn field_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// Splits `resources` into chunks whose encoding is at most `budget` bytes.
pub fn split<R>(mut resources: Vec<R>, budget: usize) -> Split<R>
where
    R: Container,
    R::Child: Container,
    Item<R>: Weighted + Default,
{
    if let Some(items) = fits_whole(&resources, budget) {
        return Split {
            chunks: if items > 0 {
                vec![(resources, items)]
            } else {
                Vec::new()
            },
            rejected: 0,
            largest_rejected: 0,
        };
    }
    let mut chunks = Chunks {
        out: Split {
            chunks: Vec::new(),
            rejected: 0,
            largest_rejected: 0,
        },
        chunk: Vec::new(),
        items: 0,
        resource: None,
        scope: None,
    };
    pack(&mut resources, budget, &mut chunks);
    chunks.out
}

/// The sizes of what `split` makes of `resources`, without making it (nothing is cloned or
/// moved).
pub fn split_len<R>(resources: &mut [R], budget: usize) -> SplitLen
where
    R: Container,
    R::Child: Container,
    Item<R>: Weighted,
{
    if let Some(items) = fits_whole(resources, budget) {
        return SplitLen {
            records: usize::from(items > 0),
            value_bytes: if items > 0 {
                resources.iter().map(|r| field_len(r.encoded_len())).sum()
            } else {
                0
            },
        };
    }
    let mut sizes = Sizes::default();
    pack(resources, budget, &mut sizes);
    sizes.out
}

/// `Some(items)` when `resources` fit one chunk as they are.
fn fits_whole<R>(resources: &[R], budget: usize) -> Option<u64>
where
    R: Container,
    R::Child: Container,
    Item<R>: Weighted,
{
    let total: usize = resources.iter().map(|r| field_len(r.encoded_len())).sum();
    (total <= budget).then(|| {
        resources
            .iter()
            .flat_map(|r| r.children())
            .flat_map(|s| s.children())
            .map(Weighted::weight)
            .sum()
    })
}

/// What the packing decides, told in order: `split` builds chunks from it, `split_len` sums
/// their sizes.
trait Packing<R: Container>
where
    R::Child: Container,
{
    /// A resource begins; `shell_len` is its encoded size without children.
    fn resource(&mut self, resource: &R, shell_len: usize);
    /// A scope of the current resource begins.
    fn scope(&mut self, scope: &R::Child, shell_len: usize);
    /// `item` (of `len` bytes as a field) goes into the current chunk, under a new copy of its
    /// resource and scope when `new_resource` / `new_scope`.
    fn item(&mut self, item: &mut Item<R>, len: usize, new_resource: bool, new_scope: bool);
    /// `item` can fit no chunk.
    fn reject(&mut self, item: &Item<R>);
    /// The current chunk is complete.
    fn end_chunk(&mut self);
}

/// The greedy packing both `split` and `split_len` follow: items in order, a new chunk when
/// the next item would overflow this one, each level's overhead counted with the largest
/// length prefix it can get.
fn pack<R, P>(resources: &mut [R], budget: usize, packing: &mut P)
where
    R: Container,
    R::Child: Container,
    Item<R>: Weighted,
    P: Packing<R>,
{
    let mut size = 0usize;
    for resource in resources {
        let r_shell = resource.shell_len();
        let r_over = r_shell + 1 + 5;
        packing.resource(resource, r_shell);
        let mut r_open = false;
        for scope in resource.children_mut() {
            let s_shell = scope.shell_len();
            let s_over = s_shell + 1 + 5;
            packing.scope(scope, s_shell);
            let mut s_open = false;
            for item in scope.children_mut() {
                let item_len = field_len(item.encoded_len());
                if r_over + s_over + item_len > budget {
                    packing.reject(item);
                    continue;
                }
                let extra =
                    item_len + if s_open { 0 } else { s_over } + if r_open { 0 } else { r_over };
                if size + extra > budget {
                    packing.end_chunk();
                    size = 0;
                    r_open = false;
                    s_open = false;
                }
                size +=
                    item_len + if s_open { 0 } else { s_over } + if r_open { 0 } else { r_over };
                packing.item(item, item_len, !r_open, !s_open);
                r_open = true;
                s_open = true;
            }
        }
    }
    if size > 0 {
        packing.end_chunk();
    }
}

/// Builds the chunks: items are moved out of the input, shells cloned once per chunk.
struct Chunks<R: Container> {
    out: Split<R>,
    chunk: Vec<R>,
    items: u64,
    /// The current resource and scope without children, cloned into each chunk that needs
    /// them.
    resource: Option<R>,
    scope: Option<R::Child>,
}

impl<R> Packing<R> for Chunks<R>
where
    R: Container,
    R::Child: Container,
    Item<R>: Weighted + Default,
{
    fn resource(&mut self, resource: &R, _: usize) {
        self.resource = Some(resource.shell());
    }

    fn scope(&mut self, scope: &R::Child, _: usize) {
        self.scope = Some(scope.shell());
    }

    fn item(&mut self, item: &mut Item<R>, _: usize, new_resource: bool, new_scope: bool) {
        // `pack` announces the resource and scope of an item before the item.
        let (Some(resource), Some(scope)) = (&self.resource, &self.scope) else {
            return;
        };
        if new_resource {
            self.chunk.push(resource.clone());
        }
        let Some(r) = self.chunk.last_mut() else {
            return;
        };
        if new_scope {
            r.children_mut().push(scope.clone());
        }
        let Some(s) = r.children_mut().last_mut() else {
            return;
        };
        self.items += item.weight();
        s.children_mut().push(std::mem::take(item));
    }

    fn reject(&mut self, item: &Item<R>) {
        self.out.rejected += item.weight();
        self.out.largest_rejected = self.out.largest_rejected.max(item.encoded_len());
    }

    fn end_chunk(&mut self) {
        let chunk = std::mem::take(&mut self.chunk);
        if self.items > 0 {
            self.out.chunks.push((chunk, self.items));
        }
        self.items = 0;
    }
}

/// Sums the exact encoded size of each chunk `Chunks` would build.
#[derive(Default)]
struct Sizes {
    out: SplitLen,
    items: u64,
    /// Shell sizes of the current resource and scope.
    resource_shell: usize,
    scope_shell: usize,
    /// The chunk's resource entries closed so far.
    chunk_len: usize,
    /// The open resource entry (its shell and closed scopes) and scope entry.
    resource_len: Option<usize>,
    scope_len: Option<usize>,
}

impl Sizes {
    fn close_scope(&mut self) {
        if let (Some(s), Some(r)) = (self.scope_len.take(), self.resource_len.as_mut()) {
            *r += field_len(s);
        }
    }

    fn close_resource(&mut self) {
        self.close_scope();
        if let Some(r) = self.resource_len.take() {
            self.chunk_len += field_len(r);
        }
    }
}

impl<R> Packing<R> for Sizes
where
    R: Container,
    R::Child: Container,
    Item<R>: Weighted,
{
    fn resource(&mut self, _: &R, shell_len: usize) {
        self.resource_shell = shell_len;
    }

    fn scope(&mut self, _: &R::Child, shell_len: usize) {
        self.scope_shell = shell_len;
    }

    fn item(&mut self, item: &mut Item<R>, len: usize, new_resource: bool, new_scope: bool) {
        if new_resource {
            self.close_resource();
            self.resource_len = Some(self.resource_shell);
        }
        if new_scope {
            self.close_scope();
            self.scope_len = Some(self.scope_shell);
        }
        if let Some(s) = self.scope_len.as_mut() {
            *s += len;
        }
        self.items += item.weight();
    }

    fn reject(&mut self, _: &Item<R>) {}

    fn end_chunk(&mut self) {
        self.close_resource();
        if self.items > 0 {
            self.out.records += 1;
            self.out.value_bytes += self.chunk_len;
        }
        self.chunk_len = 0;
        self.items = 0;
    }
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
                fn shell_len(&self) -> usize {
                    // The head is field 1 and `schema_url` field 3 at every level.
                    self.$head
                        .as_ref()
                        .map_or(0, |h| prost::encoding::message::encoded_len(1, h))
                        + if self.schema_url.is_empty() {
                            0
                        } else {
                            prost::encoding::string::encoded_len(3, &self.schema_url)
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
    use weir_proto::otlp::common::v1::InstrumentationScope;
    use weir_proto::otlp::common::v1::{AnyValue, any_value::Value};
    use weir_proto::otlp::logs::v1::{LogRecord, LogsData, ResourceLogs, ScopeLogs};
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
        assert_eq!(out.chunks[0].1, 10);
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
        for (c, items) in &out.chunks {
            assert_eq!(
                *items,
                c.iter()
                    .flat_map(|r| &r.scope_logs)
                    .map(|s| s.log_records.len() as u64)
                    .sum::<u64>()
            );
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
            .flat_map(|(c, _)| c)
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len())
            .sum();
        assert_eq!(kept, 2);
    }

    fn scope_logs(name: &str, records: u32, pad: usize) -> ScopeLogs {
        ScopeLogs {
            scope: Some(InstrumentationScope {
                name: name.into(),
                version: "1.0".into(),
                ..Default::default()
            }),
            log_records: (0..records).map(|i| record(i, pad)).collect(),
            schema_url: format!("{name}-schema"),
        }
    }

    /// Resources with several scopes each, of varied sizes.
    fn varied() -> Vec<ResourceLogs> {
        let mut a = resource_logs(40, 300);
        a.scope_logs.push(scope_logs("second", 25, 900));
        a.scope_logs.push(scope_logs("", 3, 0));
        let mut b = resource_logs(0, 0);
        b.schema_url.clear();
        b.scope_logs = vec![scope_logs("only", 70, 150)];
        let c = ResourceLogs {
            resource: None,
            scope_logs: vec![ScopeLogs {
                scope: None,
                log_records: (0..5).map(|i| record(i, 2000)).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        };
        vec![a, b, c]
    }

    #[test]
    fn shell_len_is_the_size_of_the_shell() {
        for r in varied() {
            assert_eq!(r.shell_len(), r.shell().encoded_len());
            for s in &r.scope_logs {
                assert_eq!(s.shell_len(), s.shell().encoded_len());
            }
        }
    }

    #[test]
    fn split_len_is_the_size_of_what_split_makes() {
        // Whole, split in many ways, and with items too large for any chunk.
        for budget in [1 << 20, 64 * 1024, 8 * 1024, 2500, 1200] {
            let mut input = varied();
            let sizes = split_len(&mut input, budget);
            let out = split(input, budget);
            let built: usize = out
                .chunks
                .iter()
                .map(|(c, _)| {
                    LogsData {
                        resource_logs: c.clone(),
                    }
                    .encoded_len()
                })
                .sum();
            assert_eq!(sizes.records, out.chunks.len(), "budget {budget}");
            assert_eq!(sizes.value_bytes, built, "budget {budget}");
        }
    }

    #[test]
    fn chunks_without_items_are_left_out() {
        let empty = resource_logs(0, 0);
        let mut input = vec![empty.clone()];
        assert_eq!(split_len(&mut input, 1 << 20), SplitLen::default());
        assert!(split(vec![empty], 1 << 20).chunks.is_empty());
    }
}
