//! What a policy reads from a span: the gateway implements [`SpanView`] over the span's
//! protobuf bytes, so evaluation never needs a decoded span.

/// What [`SpanView::for_each_span_attribute`] calls with each attribute: its key, and its
/// value when that is a string, as bytes.
pub type AttributeVisitor<'v> = dyn FnMut(&[u8], Option<&[u8]>) + 'v;

/// A cheap pre-check of attribute keys: one bit per (key length, last byte) of the keys some
/// rule looks up. A key whose bit is clear is in no rule, which a span's attribute walk can
/// tell before it reads the value; a set bit only means "maybe".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyFilter([u64; 4]);

impl KeyFilter {
    /// A filter that lets every key through.
    pub const ALL: KeyFilter = KeyFilter([u64::MAX; 4]);

    #[inline]
    fn bit(key: &[u8]) -> (usize, u64) {
        let h = key.len().wrapping_mul(31) + usize::from(key.last().copied().unwrap_or(0));
        ((h / 64) % 4, 1 << (h % 64))
    }

    /// Lets `key` through from now on.
    pub fn insert(&mut self, key: &[u8]) {
        let (word, bit) = Self::bit(key);
        self.0[word] |= bit;
    }

    /// False when no key inserted can be `key`.
    #[inline]
    pub fn may_contain(&self, key: &[u8]) -> bool {
        let (word, bit) = Self::bit(key);
        self.0[word] & bit != 0
    }
}

/// Read-only access to one span and its resource and scope.
///
/// The rule index reads each span's attributes once through `for_each_span_attribute`; the
/// conditions of the few rules it selects then call the lookups, once per attribute test, so
/// implementations should make those cheap too (for example, resolve the resource's
/// attributes once per resource rather than once per span).
pub trait SpanView {
    /// The trace id (16 bytes).
    fn trace_id(&self) -> &[u8; 16];
    /// The span name.
    fn name(&self) -> &str;
    /// The span name's bytes, for lookups (implementations may skip the UTF-8 check).
    fn name_bytes(&self) -> &[u8] {
        self.name().as_bytes()
    }
    /// The `SpanKind` value (0 unspecified, 1 internal, 2 server, 3 client, 4 producer,
    /// 5 consumer).
    fn kind(&self) -> i32;
    /// The `Status.code` value: 0 unset, 1 ok, 2 error.
    fn status_code(&self) -> i32;
    /// Start time, nanoseconds since the Unix epoch.
    fn start_time_unix_nano(&self) -> u64;
    /// End time, nanoseconds since the Unix epoch.
    fn end_time_unix_nano(&self) -> u64;
    /// The W3C `tracestate` of the span (empty when absent).
    fn trace_state(&self) -> &str;
    /// True when the span has no parent span id.
    fn is_root(&self) -> bool;
    /// The instrumentation scope's name (empty when absent).
    fn scope_name(&self) -> &str;
    /// The tenant the request was authenticated as (`receivers.auth`); `None` without auth.
    fn tenant(&self) -> Option<&str> {
        None
    }
    /// The span attribute `key`, if the span has it.
    fn span_attribute(&self, key: &str) -> Option<AttrValue<'_>>;
    /// The resource attribute `key`, if the span's resource has it.
    fn resource_attribute(&self, key: &str) -> Option<AttrValue<'_>>;
    /// Calls `f` with the key and, when its value is a string, the value of every span
    /// attribute whose key `keys` may contain (others may be passed too): as bytes, because
    /// the rule index only looks them up (no UTF-8 check needed).
    fn for_each_span_attribute(&self, keys: &KeyFilter, f: &mut AttributeVisitor<'_>);
    /// Calls `f` with every resource attribute like [`SpanView::for_each_span_attribute`].
    fn for_each_resource_attribute(&self, f: &mut AttributeVisitor<'_>);
}

/// An attribute value as conditions see it. Arrays, maps and bytes are `Other`: they exist,
/// but no comparison matches them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AttrValue<'a> {
    /// A string value.
    Str(&'a str),
    /// An integer value.
    Int(i64),
    /// A floating-point value.
    Double(f64),
    /// A boolean value.
    Bool(bool),
    /// An array, key-value list or bytes value.
    Other,
}

/// `Status.code` of a span that failed.
pub const STATUS_CODE_ERROR: i32 = 2;

/// A span built in memory, for tests of this module and of its users.
#[cfg(test)]
pub(crate) mod testing {
    use super::{AttrValue, AttributeVisitor, KeyFilter, SpanView};

    /// An owned attribute value.
    #[derive(Clone, Debug)]
    pub enum Val {
        Str(String),
        Int(i64),
        Double(f64),
        Bool(bool),
        Bytes,
    }

    impl Val {
        fn text(&self) -> Option<&[u8]> {
            match self {
                Val::Str(s) => Some(s.as_bytes()),
                _ => None,
            }
        }

        fn view(&self) -> AttrValue<'_> {
            match self {
                Val::Str(s) => AttrValue::Str(s),
                Val::Int(i) => AttrValue::Int(*i),
                Val::Double(d) => AttrValue::Double(*d),
                Val::Bool(b) => AttrValue::Bool(*b),
                Val::Bytes => AttrValue::Other,
            }
        }
    }

    /// A span with everything a policy can look at.
    #[derive(Clone, Debug, Default)]
    pub struct TestSpan {
        pub trace_id: [u8; 16],
        pub name: String,
        pub kind: i32,
        pub status: i32,
        pub start: u64,
        pub end: u64,
        pub trace_state: String,
        pub root: bool,
        pub scope: String,
        pub attrs: Vec<(String, Val)>,
        pub resource: Vec<(String, Val)>,
        pub tenant: Option<String>,
    }

    impl TestSpan {
        /// A server span of `service` named `name`, 10ms long.
        pub fn new(service: &str, name: &str) -> Self {
            Self {
                trace_id: [7; 16],
                name: name.into(),
                kind: 2,
                start: 1_000_000_000,
                end: 1_010_000_000,
                scope: "io.opentelemetry.test".into(),
                resource: vec![("service.name".into(), Val::Str(service.into()))],
                ..Default::default()
            }
        }

        pub fn attr(mut self, key: &str, v: Val) -> Self {
            self.attrs.push((key.into(), v));
            self
        }

        pub fn res(mut self, key: &str, v: Val) -> Self {
            self.resource.push((key.into(), v));
            self
        }
    }

    impl SpanView for TestSpan {
        fn trace_id(&self) -> &[u8; 16] {
            &self.trace_id
        }
        fn name(&self) -> &str {
            &self.name
        }
        fn kind(&self) -> i32 {
            self.kind
        }
        fn status_code(&self) -> i32 {
            self.status
        }
        fn start_time_unix_nano(&self) -> u64 {
            self.start
        }
        fn end_time_unix_nano(&self) -> u64 {
            self.end
        }
        fn trace_state(&self) -> &str {
            &self.trace_state
        }
        fn is_root(&self) -> bool {
            self.root
        }
        fn scope_name(&self) -> &str {
            &self.scope
        }
        fn tenant(&self) -> Option<&str> {
            self.tenant.as_deref()
        }
        fn span_attribute(&self, key: &str) -> Option<AttrValue<'_>> {
            self.attrs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.view())
        }
        fn resource_attribute(&self, key: &str) -> Option<AttrValue<'_>> {
            self.resource
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.view())
        }
        fn for_each_span_attribute(&self, keys: &KeyFilter, f: &mut AttributeVisitor<'_>) {
            self.attrs
                .iter()
                .filter(|(k, _)| keys.may_contain(k.as_bytes()))
                .for_each(|(k, v)| f(k.as_bytes(), v.text()));
        }
        fn for_each_resource_attribute(&self, f: &mut AttributeVisitor<'_>) {
            self.resource
                .iter()
                .for_each(|(k, v)| f(k.as_bytes(), v.text()));
        }
    }
}
