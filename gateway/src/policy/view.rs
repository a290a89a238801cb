//! The span view over the wire: each span of a request as the policy reads it
//! ([`SpanView`]), straight from the request bytes, without decoding the span.

use std::cell::{Cell, RefCell};
use weir_policy::{AttrValue, AttributeVisitor, KeyFilter, Policy, ResourceCandidates, SpanView};
use weir_proto::wire::{self, SpanEntry, TraceRequestView, WireValue};

/// Attributes read once for the many lookups a policy makes: (key, value), last one wins.
type Attrs<'a> = Vec<(&'a str, WireValue<'a>)>;

/// The value of `key` among `attrs`, the last one when repeated.
#[inline]
fn lookup<'a>(attrs: &[(&'a str, WireValue<'a>)], key: &str) -> Option<WireValue<'a>> {
    attrs.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// A span as the policy sees it, read from the request bytes as the policy asks: its name and
/// attributes where validation found them, its other fields in one pass on first use. Its
/// attributes are parsed for lookups into a buffer reused from span to span; the resource's
/// once per request.
pub(super) struct WireSpan<'a, 's> {
    entry: &'s SpanEntry,
    /// The span's own bytes.
    pub(super) bytes: &'a [u8],
    resource: &'s [(&'a str, WireValue<'a>)],
    scope_head: &'a [u8],
    attrs: &'s RefCell<Attrs<'a>>,
    attrs_read: Cell<bool>,
    /// The request's authenticated tenant.
    tenant: Option<&'s str>,
}

impl WireSpan<'_, '_> {
    /// The span's `trace_state` (UTF-8, as validated).
    #[inline]
    pub(super) fn trace_state_str(&self) -> &str {
        std::str::from_utf8(self.entry.trace_state(self.bytes)).unwrap_or("")
    }
}

/// A string value's bytes, as the rule index looks values up.
#[inline]
fn text(v: WireValue<'_>) -> Option<&[u8]> {
    match v {
        WireValue::Str(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// A wire value as the policy reads it.
#[inline]
fn attr(v: WireValue<'_>) -> AttrValue<'_> {
    match v {
        WireValue::Str(s) => AttrValue::Str(s),
        WireValue::Int(i) => AttrValue::Int(i),
        WireValue::Double(d) => AttrValue::Double(d),
        WireValue::Bool(b) => AttrValue::Bool(b),
        WireValue::Other => AttrValue::Other,
    }
}

// `#[inline]` on these per-span reads: the policy's evaluation is instantiated in `plan.rs`,
// which may be another codegen unit than this module.
impl SpanView for WireSpan<'_, '_> {
    #[inline]
    fn trace_id(&self) -> &[u8; 16] {
        &self.entry.trace_id
    }
    #[inline]
    fn name(&self) -> &str {
        std::str::from_utf8(self.entry.name(self.bytes)).unwrap_or("")
    }
    #[inline]
    fn name_bytes(&self) -> &[u8] {
        self.entry.name(self.bytes)
    }
    #[inline]
    fn kind(&self) -> i32 {
        self.entry.kind
    }
    #[inline]
    fn status_code(&self) -> i32 {
        self.entry.status_code
    }
    #[inline]
    fn start_time_unix_nano(&self) -> u64 {
        self.entry.start_time_unix_nano
    }
    #[inline]
    fn end_time_unix_nano(&self) -> u64 {
        self.entry.end_time_unix_nano
    }
    #[inline]
    fn trace_state(&self) -> &str {
        self.trace_state_str()
    }
    #[inline]
    fn is_root(&self) -> bool {
        self.entry.is_root
    }
    #[inline]
    fn scope_name(&self) -> &str {
        wire::scope_name(self.scope_head)
    }
    #[inline]
    fn tenant(&self) -> Option<&str> {
        self.tenant
    }
    #[inline]
    fn span_attribute(&self, key: &str) -> Option<AttrValue<'_>> {
        if !self.attrs_read.replace(true) {
            let mut attrs = self.attrs.borrow_mut();
            attrs.clear();
            attrs.extend(self.entry.attributes(self.bytes));
        }
        lookup(&self.attrs.borrow(), key).map(attr)
    }
    #[inline]
    fn resource_attribute(&self, key: &str) -> Option<AttrValue<'_>> {
        lookup(self.resource, key).map(attr)
    }
    #[inline]
    fn for_each_span_attribute(&self, keys: &KeyFilter, f: &mut AttributeVisitor<'_>) {
        self.entry
            .scan_attributes(self.bytes, |k| keys.may_contain(k), f);
    }
    #[inline]
    fn for_each_resource_attribute(&self, f: &mut AttributeVisitor<'_>) {
        for (k, v) in self.resource {
            f(k.as_bytes(), text(*v));
        }
    }
}

/// Calls `f` with the index, the resource's candidate rules and a policy view of every span
/// of the request, in order.
pub(super) fn for_each_span<'a>(
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
