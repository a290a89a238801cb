//! Tail sampling in the gateway: marking valuable trace ids in time-windowed Bloom filters,
//! and publishing the filters to Kafka for the tail router (see `docs/tail-sampling.md`).
//!
//! - `plan_traces` runs a [`TailMarker`] over every span of a request: the first tail rule a
//!   span matches marks its trace id. Marks are buffered on the stack and set in the open
//!   window's filter under one lock per request (or per 64 marks), never per span.
//! - [`DecisionWindows`] holds the open window's filter (parameters from the policy's `tail`
//!   section) and the windows sealed but not yet published. `run` creates it and hands it to
//!   the pipeline (whose markers fill it) and to the publisher (which empties it).
//! - `publish.rs` publishes a snapshot of the open window every `publish_interval` and each
//!   sealed window once, as decision records (`weir_proto::decision`).
//!
//! The filter itself, its hash scheme and the record format are shared with the tail router
//! in `weir_proto::decision`.

pub mod publish;

use metrics::Counter;
use std::sync::Mutex;
use weir_policy::{FilterParams, Policy, ResourceCandidates, SpanView, TailPolicy};
use weir_proto::decision::filter::{self, WindowFilter};
use weir_proto::decision::unix_millis;

/// Marks buffered before they are set in the filter: one batch of the filter's.
const MARK_BUFFER: usize = filter::MAX_BATCH;

/// Sealed windows kept for publishing at most; older ones are dropped (and counted) when the
/// broker is unreachable for that long.
const MAX_SEALED_PENDING: usize = 16;

/// One decision window: its filter and what has been published of it.
pub struct Window {
    /// The window's start, ms since the epoch.
    pub start: u64,
    /// Its filter.
    pub filter: WindowFilter,
    /// The baseline threshold of the policy that opened it.
    pub baseline: Option<u64>,
    /// Bumped by every mark that set a new bit; compared with `published` to skip
    /// unchanged snapshots.
    pub generation: u64,
    /// Traces marked that were new to the filter.
    pub items: u64,
    /// The generation last published; `None`: never published.
    pub published: Option<u64>,
}

impl Window {
    fn new(start: u64, params: &FilterParams, baseline: Option<u64>) -> Option<Window> {
        let filter = WindowFilter::new(params)?;
        Some(Window {
            start,
            filter,
            baseline,
            generation: 0,
            items: 0,
            published: None,
        })
    }
}

#[derive(Default)]
struct State {
    open: Option<Window>,
    sealed: Vec<Window>,
}

/// The gateway's decision windows, shared by every request of the process (`run` makes one).
#[derive(Default)]
pub struct DecisionWindows {
    state: Mutex<State>,
}

impl DecisionWindows {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets trace ids `ids`, marked by the tail rules `rules` (one per id), in the window of
    /// `now_millis`, counting each trace new to the filter in `marked[rule]`
    /// (`weir_tail_traces_marked_total` per rule).
    pub fn mark(
        &self,
        tail: &TailPolicy,
        ids: &[[u8; 16]],
        rules: &[u16],
        marked: &[Counter],
        now_millis: u64,
    ) {
        debug_assert_eq!(ids.len(), rules.len(), "one rule per id");
        let mut state = self.lock();
        let Some(window) = rotate(&mut state, tail, now_millis) else {
            return;
        };
        // New traces per rule, added to the shared counters once per rule after the loop:
        // the first rules get a slot each, the rest are counted one by one.
        let mut per_rule = [0u64; 8];
        let mut new = 0;
        for (ids, rules) in ids
            .chunks(filter::MAX_BATCH)
            .zip(rules.chunks(filter::MAX_BATCH))
        {
            let mut fresh = window.filter.insert_batch(ids);
            while fresh != 0 {
                let rule = rules[fresh.trailing_zeros() as usize];
                fresh &= fresh - 1;
                new += 1;
                match per_rule.get_mut(usize::from(rule)) {
                    Some(n) => *n += 1,
                    None => count(marked, usize::from(rule), 1),
                }
            }
        }
        if new > 0 {
            window.items += new;
            window.generation += 1;
        }
        drop(state);
        for (rule, n) in per_rule.iter().enumerate() {
            if *n > 0 {
                count(marked, rule, *n);
            }
        }
    }

    /// Seals the open window when `now_millis` is past it (or the filter parameters
    /// changed), and opens the current one. Called by the publisher on every tick, so that
    /// windows without marks are published too (the tail router learns the baseline from them).
    pub fn rotate(&self, tail: &TailPolicy, now_millis: u64) {
        let mut state = self.lock();
        rotate(&mut state, tail, now_millis);
    }

    /// Seals the open window whatever the time (at shutdown, or when the policy lost its
    /// `tail` section).
    pub fn seal_open(&self) {
        let mut state = self.lock();
        if let Some(w) = state.open.take() {
            push_sealed(&mut state, w);
        }
    }

    /// Runs `f` on the open window and the sealed ones, under the lock.
    pub fn with<R>(&self, f: impl FnOnce(Option<&mut Window>, &mut Vec<Window>) -> R) -> R {
        let mut state = self.lock();
        let State { open, sealed } = &mut *state;
        f(open.as_mut(), sealed)
    }
}

/// Adds `n` to the count of traces rule `rule` marked.
fn count(marked: &[Counter], rule: usize, n: u64) {
    if let Some(c) = marked.get(rule) {
        c.increment(n);
    }
}

fn push_sealed(state: &mut State, w: Window) {
    state.sealed.push(w);
    if state.sealed.len() > MAX_SEALED_PENDING {
        state.sealed.remove(0);
        metrics::counter!("weir_tail_windows_dropped_total").increment(1);
        tracing::error!(
            "a sealed decision window could not be published for {MAX_SEALED_PENDING} windows; dropped the oldest"
        );
    }
}

/// The open window for `now_millis`, after sealing the previous one if it ended or its
/// parameters differ from the policy's.
fn rotate<'s>(state: &'s mut State, tail: &TailPolicy, now_millis: u64) -> Option<&'s mut Window> {
    let params = tail.filter();
    let start = params.window_start(now_millis);
    let current = state
        .open
        .as_ref()
        .is_some_and(|w| w.start == start && w.filter.params() == params);
    if !current {
        if let Some(old) = state.open.take() {
            push_sealed(state, old);
        }
        let baseline = tail.baseline().map(|t| t.rejection());
        match Window::new(start, params, baseline) {
            Some(w) => state.open = Some(w),
            None => {
                tracing::error!(?params, "cannot build a decision window filter");
                return None;
            }
        }
    }
    state.open.as_mut()
}

/// Marks the trace ids of a request's spans that tail rules match; evaluates nothing when
/// the policy has no tail rules. Marks are set in the windows it was given when the marker is
/// dropped (or its buffer fills), under one lock.
pub struct TailMarker<'p> {
    tail: Option<&'p TailPolicy>,
    marked: &'p [Counter],
    windows: &'p DecisionWindows,
    /// The marked trace ids, and the rule that marked each.
    ids: [[u8; 16]; MARK_BUFFER],
    rules: [u16; MARK_BUFFER],
    len: usize,
}

impl<'p> TailMarker<'p> {
    /// A marker for the tail rules of `policy` into `windows`, counting new traces in
    /// `marked` (one counter per tail rule).
    pub fn new(policy: &'p Policy, marked: &'p [Counter], windows: &'p DecisionWindows) -> Self {
        Self {
            tail: policy.tail().filter(|t| t.has_rules()),
            marked,
            windows,
            ids: [[0; 16]; MARK_BUFFER],
            rules: [0; MARK_BUFFER],
            len: 0,
        }
    }

    /// Evaluates the tail rules on `span` (of a resource with candidates `resource`, from the
    /// marker's policy), buffering a mark when one matches.
    #[inline]
    pub fn observe<S: SpanView + ?Sized>(&mut self, resource: &ResourceCandidates, span: &S) {
        let Some(tail) = self.tail else { return };
        let id = span.trace_id();
        // Spans of one trace usually travel together: once one marked it, the rest of the run
        // need not be evaluated.
        if self.len > 0 && self.ids[self.len - 1] == *id {
            return;
        }
        let Some(rule) = tail.first_marking_rule_in(resource, span) else {
            return;
        };
        // A trace with several marking spans in the request is marked once: the filter
        // would hash it again to find its bits set.
        if self.ids[..self.len].contains(id) {
            return;
        }
        if self.len == MARK_BUFFER {
            self.flush();
        }
        self.ids[self.len] = *id;
        self.rules[self.len] = rule as u16;
        self.len += 1;
    }

    fn flush(&mut self) {
        if let Some(tail) = self.tail
            && self.len > 0
        {
            self.windows.mark(
                tail,
                &self.ids[..self.len],
                &self.rules[..self.len],
                self.marked,
                unix_millis(),
            );
        }
        self.len = 0;
    }
}

impl Drop for TailMarker<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(window: &str) -> Policy {
        Policy::parse(&format!(
            "version: 1\ntail:\n  window: {window}\n  expected_traces: 1000\n  seed: 3\n  publish_interval: 1s\n  rules:\n    - {{ name: errors, error: true }}\n"
        ))
        .unwrap()
    }

    #[test]
    fn windows_rotate_and_seal() {
        let p = policy("10s");
        let tail = p.tail().unwrap();
        let w = DecisionWindows::default();
        w.mark(tail, &[[1; 16]], &[0], &[], 1_000_005_000);
        w.mark(tail, &[[2; 16]], &[0], &[], 1_000_009_999);
        w.with(|open, sealed| {
            let open = open.unwrap();
            assert_eq!(open.start, 1_000_000_000);
            assert!(open.filter.contains(&[1; 16]));
            assert!(open.filter.contains(&[2; 16]));
            assert_eq!(open.generation, 2);
            assert!(sealed.is_empty());
        });
        // The next window: the first is sealed, the new one is empty.
        w.rotate(tail, 1_000_010_000);
        w.with(|open, sealed| {
            let open = open.unwrap();
            assert_eq!(open.start, 1_000_010_000);
            assert!(!open.filter.contains(&[1; 16]));
            assert_eq!(sealed.len(), 1);
            assert!(sealed[0].filter.contains(&[1; 16]));
        });
        // A policy with other filter parameters seals the open window at once.
        let other = policy("20s");
        w.rotate(other.tail().unwrap(), 1_000_010_001);
        w.with(|open, sealed| {
            assert_eq!(open.unwrap().filter.params().window_millis, 20_000);
            assert_eq!(sealed.len(), 2);
        });
    }

    #[test]
    fn plan_traces_marks_the_traces_tail_rules_match() {
        use prost::Message;
        use weir_proto::otlp::trace::v1::Span;
        use weir_proto::test_support::{error_status, named_span, traces_request};
        use weir_proto::wire::TraceRequestView;

        let span = |t: u8, error: bool| Span {
            status: error.then(error_status),
            ..named_span(t, t, "op")
        };
        let body = traces_request(vec![span(0xa7, false), span(0xa7, true), span(0xb7, false)])
            .encode_to_vec();
        let store = crate::policy::PolicyStore::new(None).unwrap();
        store.apply(
            Policy::parse(
                "version: 1\ntail:\n  window: 1h\n  publish_interval: 1s\n  expected_traces: 1000\n  rules: [ { name: errors, error: true } ]\n",
            )
            .unwrap(),
        );
        let view = TraceRequestView::parse(&body).unwrap();
        let windows = DecisionWindows::default();
        let plan = crate::policy::plan_traces(&store.load(), &windows, &body, &view, "spans");
        assert_eq!(plan.routes.len(), 3, "marking keeps every span");
        windows.with(|open, _| {
            let w = open.expect("a window was opened");
            assert!(
                w.filter.contains(&[0xa7; 16]),
                "the error span's trace is marked"
            );
            assert!(!w.filter.contains(&[0xb7; 16]));
        });
    }

    /// A span of trace `.0`, whose status is error when `.1`.
    struct Bare([u8; 16], bool);

    impl SpanView for Bare {
        fn trace_id(&self) -> &[u8; 16] {
            &self.0
        }
        fn name(&self) -> &str {
            "op"
        }
        fn kind(&self) -> i32 {
            1
        }
        fn status_code(&self) -> i32 {
            if self.1 { 2 } else { 0 }
        }
        fn start_time_unix_nano(&self) -> u64 {
            0
        }
        fn end_time_unix_nano(&self) -> u64 {
            1
        }
        fn trace_state(&self) -> &str {
            ""
        }
        fn is_root(&self) -> bool {
            false
        }
        fn scope_name(&self) -> &str {
            ""
        }
        fn span_attribute(&self, _: &str) -> Option<weir_policy::AttrValue<'_>> {
            None
        }
        fn resource_attribute(&self, _: &str) -> Option<weir_policy::AttrValue<'_>> {
            None
        }
        fn for_each_span_attribute(
            &self,
            _: &weir_policy::KeyFilter,
            _: &mut weir_policy::AttributeVisitor<'_>,
        ) {
        }
        fn for_each_resource_attribute(&self, _: &mut weir_policy::AttributeVisitor<'_>) {}
    }

    #[test]
    fn a_trace_marked_by_several_spans_of_a_request_is_buffered_once() {
        let p = policy("10s");
        let resource = p.resource_candidates(std::iter::empty());
        let windows = DecisionWindows::default();
        let mut marker = TailMarker::new(&p, &[], &windows);
        for span in [
            Bare([1; 16], true),
            Bare([2; 16], true),
            Bare([3; 16], false),
            Bare([1; 16], true),
            Bare([2; 16], true),
        ] {
            marker.observe(&resource, &span);
        }
        assert_eq!(&marker.ids[..marker.len], &[[1; 16], [2; 16]]);
        // Dropped without flushing into the windows.
        marker.len = 0;
    }

    #[test]
    fn a_mark_already_in_the_filter_changes_nothing() {
        let p = policy("10s");
        let tail = p.tail().unwrap();
        let w = DecisionWindows::default();
        w.mark(tail, &[[1; 16]], &[0], &[], 5_000);
        w.mark(tail, &[[1; 16]], &[0], &[], 6_000);
        w.with(|open, _| assert_eq!(open.unwrap().generation, 1));
    }
}
