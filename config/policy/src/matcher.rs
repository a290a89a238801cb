//! Conditions: the `match:` of sampling and routing rules, read from the document and
//! compiled in one step (regexes built, names resolved to codes, durations to nanoseconds),
//! so that a bad condition is refused with the path of its key and evaluation only compares.
//!
//! A condition is one of:
//! - `{ all: [..] }`, `{ any: [..] }`, `{ not: {..} }`;
//! - an attribute test: `{ resource: KEY, OP: VALUE }` or `{ span_attribute: KEY, OP: VALUE }`
//!   with OP one of `eq`, `in`, `prefix`, `regex`, `exists`, or `gt`/`gte`/`lt`/`lte` (a
//!   lower and an upper bound may be combined);
//! - a span field test, the value being what to compare with (equality) or a map of operators:
//!   `{ span_name: .. }`, `{ scope_name: .. }`, `{ tenant: .. }` (`eq`, `in`, `prefix`,
//!   `regex`; a span without a tenant matches no tenant test),
//!   `{ span_kind: .. }`, `{ status: .. }` (`eq`, `in`), `{ duration: { gt: 200ms } }`
//!   (`gt`, `gte`, `lt`, `lte`), `{ root: true }`.

use super::span::{AttrValue, SpanView};
use regex::Regex;
use serde::Deserialize;
use serde::de::{self, Deserializer, IntoDeserializer, MapAccess, Visitor};
use std::cmp::Ordering;
use std::fmt;
use std::marker::PhantomData;

/// A compiled condition.
#[derive(Debug)]
pub(crate) enum Condition {
    All(Box<[Condition]>),
    Any(Box<[Condition]>),
    Not(Box<Condition>),
    Resource(Box<str>, ValueTest),
    SpanAttribute(Box<str>, ValueTest),
    SpanName(TextTest),
    ScopeName(TextTest),
    /// The authenticated tenant of the span's request.
    Tenant(TextTest),
    SpanKind(CodeSet),
    Status(CodeSet),
    /// Inclusive bounds in nanoseconds.
    Duration(u64, u64),
    Root(bool),
}

impl Condition {
    /// True when `span` satisfies the condition.
    pub(crate) fn matches<S: SpanView + ?Sized>(&self, span: &S) -> bool {
        match self {
            Condition::All(all) => all.iter().all(|c| c.matches(span)),
            Condition::Any(any) => any.iter().any(|c| c.matches(span)),
            Condition::Not(c) => !c.matches(span),
            Condition::Resource(key, test) => test.test(span.resource_attribute(key)),
            Condition::SpanAttribute(key, test) => test.test(span.span_attribute(key)),
            Condition::SpanName(test) => test.test(span.name()),
            Condition::ScopeName(test) => test.test(span.scope_name()),
            Condition::Tenant(test) => span.tenant().is_some_and(|t| test.test(t)),
            Condition::SpanKind(set) => set.contains(span.kind()),
            Condition::Status(set) => set.contains(span.status_code()),
            Condition::Duration(min, max) => {
                let d = span
                    .end_time_unix_nano()
                    .saturating_sub(span.start_time_unix_nano());
                *min <= d && d <= *max
            }
            Condition::Root(root) => span.is_root() == *root,
        }
    }

    /// True when testing the condition can read a resource attribute.
    pub(crate) fn reads_resource(&self) -> bool {
        match self {
            Condition::All(cs) | Condition::Any(cs) => cs.iter().any(Condition::reads_resource),
            Condition::Not(c) => c.reads_resource(),
            Condition::Resource(..) => true,
            _ => false,
        }
    }

    /// Facts one of which a span must show to match (see `rule_index.rs`), or `None` when
    /// no cheap fact is necessary (a regex on the name, a duration, a negation...).
    pub(crate) fn guard(&self) -> Option<Vec<Atom<'_>>> {
        match self {
            Condition::Resource(key, test) => test.guard(Subject::Resource, key),
            Condition::SpanAttribute(key, test) => test.guard(Subject::Span, key),
            Condition::SpanName(TextTest::Eq(name)) => Some(vec![Atom::Name(name)]),
            Condition::SpanName(TextTest::In(names)) => {
                Some(names.iter().map(|n| Atom::Name(n)).collect())
            }
            Condition::SpanName(TextTest::Prefix(p)) if !p.is_empty() => {
                Some(vec![Atom::NamePrefix(p)])
            }
            Condition::SpanKind(codes) => Some(vec![Atom::Kind(*codes)]),
            Condition::Status(codes) => Some(vec![Atom::Status(*codes)]),
            Condition::Duration(min, _) if *min > 0 => Some(vec![Atom::MinDuration(*min)]),
            // Any one part's guard is necessary for all of them: take the most selective.
            Condition::All(all) => all
                .iter()
                .filter_map(Condition::guard)
                .min_by_key(|g| (g.iter().map(Atom::breadth).max().unwrap_or(0), g.len())),
            // Each branch could be the one that matches: all their guards are needed, and
            // a branch without one leaves the whole without one. `any: []` never matches.
            Condition::Any(any) => {
                let mut atoms = Vec::new();
                for c in any {
                    atoms.extend(c.guard()?);
                }
                Some(atoms)
            }
            _ => None,
        }
    }
}

/// Which attributes an attribute fact is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Subject {
    Resource = 0,
    Span = 1,
}

/// A fact about a span that rule lookups can test cheaply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Atom<'c> {
    /// The attribute `key` is present, with the string `value` when one is given.
    Attribute {
        on: Subject,
        key: &'c str,
        value: Option<&'c str>,
    },
    /// The span's name is this.
    Name(&'c str),
    /// The span's name starts with this (never empty).
    NamePrefix(&'c str),
    /// The span's kind is one of these.
    Kind(CodeSet),
    /// The span's status code is one of these.
    Status(CodeSet),
    /// The span lasted at least this many nanoseconds (more than 0).
    MinDuration(u64),
}

impl Atom<'_> {
    /// How many spans the fact lets through, roughly: a value or a name is narrower than a
    /// prefix, which is narrower than presence, a kind or a status.
    fn breadth(&self) -> u8 {
        match self {
            Atom::Attribute { value: Some(_), .. } | Atom::Name(_) => 0,
            Atom::NamePrefix(_) => 1,
            Atom::Attribute { value: None, .. } => 2,
            Atom::Kind(_) | Atom::Status(_) => 3,
            // Thresholds are usually set to catch the few slow spans, but nothing says so.
            Atom::MinDuration(_) => 4,
        }
    }
}

/// A test of a string field (span name, scope name).
#[derive(Debug)]
pub(crate) enum TextTest {
    Eq(Box<str>),
    /// Sorted, for binary search.
    In(Box<[Box<str>]>),
    Prefix(Box<str>),
    Regex(Regex),
}

impl TextTest {
    fn test(&self, s: &str) -> bool {
        match self {
            TextTest::Eq(v) => s == &**v,
            TextTest::In(set) => set.binary_search_by(|v| (**v).cmp(s)).is_ok(),
            TextTest::Prefix(p) => s.starts_with(&**p),
            TextTest::Regex(r) => r.is_match(s),
        }
    }
}

/// A set of small enum codes (span kinds, status codes) as a bit mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CodeSet(u64);

impl CodeSet {
    /// The codes in the set, ascending.
    pub(crate) fn codes(self) -> impl Iterator<Item = u32> {
        (0..64).filter(move |c| self.0 & (1 << c) != 0)
    }

    /// The set as a mask: bit c for code c.
    pub(crate) fn bits(self) -> u64 {
        self.0
    }

    fn contains(self, code: i32) -> bool {
        (0..64).contains(&code) && self.0 & (1 << code) != 0
    }
}

/// A test of an attribute value.
#[derive(Debug)]
pub(crate) enum ValueTest {
    Exists(bool),
    Eq(Scalar),
    In(ScalarSet),
    Prefix(Box<str>),
    Regex(Regex),
    Range(NumRange),
}

impl ValueTest {
    /// The facts of an attribute test on `key`: one of the string values, or presence
    /// (every test but `exists: false` fails on a missing attribute).
    fn guard<'c>(&'c self, on: Subject, key: &'c str) -> Option<Vec<Atom<'c>>> {
        let attribute = |value| Atom::Attribute { on, key, value };
        match self {
            ValueTest::Exists(false) => None,
            ValueTest::Eq(Scalar::Str(s)) => Some(vec![attribute(Some(s))]),
            ValueTest::In(set) if set.nums.is_empty() && set.bools == [false; 2] => {
                Some(set.strs.iter().map(|s| attribute(Some(s))).collect())
            }
            _ => Some(vec![attribute(None)]),
        }
    }

    fn test(&self, value: Option<AttrValue<'_>>) -> bool {
        let Some(v) = value else {
            return matches!(self, ValueTest::Exists(false));
        };
        match self {
            ValueTest::Exists(want) => *want,
            ValueTest::Eq(s) => s.equals(v),
            ValueTest::In(set) => set.contains(v),
            ValueTest::Prefix(p) => matches!(v, AttrValue::Str(s) if s.starts_with(&**p)),
            ValueTest::Regex(r) => matches!(v, AttrValue::Str(s) if r.is_match(s)),
            ValueTest::Range(range) => Num::of(v).is_some_and(|n| range.contains(n)),
        }
    }
}

/// A number from the document: integers stay exact.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    fn of(v: AttrValue<'_>) -> Option<Num> {
        match v {
            AttrValue::Int(i) => Some(Num::Int(i)),
            AttrValue::Double(d) => Some(Num::Float(d)),
            _ => None,
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    fn compare(self, other: Num) -> Option<Ordering> {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => Some(a.cmp(&b)),
            (a, b) => a.as_f64().partial_cmp(&b.as_f64()),
        }
    }
}

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Scalar::deserialize(d)? {
            Scalar::Int(i) => Ok(Num::Int(i)),
            Scalar::Float(f) => Ok(Num::Float(f)),
            other => Err(de::Error::custom(format!(
                "{other} is not a number: comparisons take a number"
            ))),
        }
    }
}

/// Bounds of a numeric comparison; `true` marks an inclusive bound.
#[derive(Debug)]
pub(crate) struct NumRange {
    lower: Option<(Num, bool)>,
    upper: Option<(Num, bool)>,
}

impl NumRange {
    fn contains(&self, n: Num) -> bool {
        let above = self.lower.is_none_or(|(b, inclusive)| {
            matches!(
                (n.compare(b), inclusive),
                (Some(Ordering::Greater), _) | (Some(Ordering::Equal), true)
            )
        });
        let below = self.upper.is_none_or(|(b, inclusive)| {
            matches!(
                (n.compare(b), inclusive),
                (Some(Ordering::Less), _) | (Some(Ordering::Equal), true)
            )
        });
        above && below
    }
}

/// A scalar from the document, compared with attribute values of its own type (numbers with
/// integer and double attributes alike).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Scalar {
    Str(Box<str>),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn equals(&self, v: AttrValue<'_>) -> bool {
        match (self, v) {
            (Scalar::Str(a), AttrValue::Str(b)) => &**a == b,
            (Scalar::Bool(a), AttrValue::Bool(b)) => *a == b,
            (Scalar::Int(a), v) => {
                Num::of(v).and_then(|n| n.compare(Num::Int(*a))) == Some(Ordering::Equal)
            }
            (Scalar::Float(a), v) => {
                Num::of(v).and_then(|n| n.compare(Num::Float(*a))) == Some(Ordering::Equal)
            }
            _ => false,
        }
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Str(s) => write!(f, "`{s}`"),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.into()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(i64::try_from(v).map_or(Scalar::Float(v as f64), Scalar::Int))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// The values of an attribute `in` test, by type.
#[derive(Debug)]
pub(crate) struct ScalarSet {
    /// Sorted, for binary search.
    strs: Box<[Box<str>]>,
    nums: Box<[Num]>,
    bools: [bool; 2],
}

impl ScalarSet {
    fn new(values: Vec<Scalar>) -> Self {
        let mut strs = Vec::new();
        let mut nums = Vec::new();
        let mut bools = [false; 2];
        for v in values {
            match v {
                Scalar::Str(s) => strs.push(s),
                Scalar::Int(i) => nums.push(Num::Int(i)),
                Scalar::Float(f) => nums.push(Num::Float(f)),
                Scalar::Bool(b) => bools[usize::from(b)] = true,
            }
        }
        strs.sort_unstable();
        strs.dedup();
        Self {
            strs: strs.into(),
            nums: nums.into(),
            bools,
        }
    }

    fn contains(&self, v: AttrValue<'_>) -> bool {
        match v {
            AttrValue::Str(s) => self.strs.binary_search_by(|x| (**x).cmp(s)).is_ok(),
            AttrValue::Bool(b) => self.bools[usize::from(b)],
            AttrValue::Int(_) | AttrValue::Double(_) => Num::of(v).is_some_and(|n| {
                self.nums
                    .iter()
                    .any(|x| n.compare(*x) == Some(Ordering::Equal))
            }),
            AttrValue::Other => false,
        }
    }
}

/// The longest regular expression accepted, in bytes.
pub(crate) const MAX_PATTERN_BYTES: usize = 4096;
/// The most memory one compiled regular expression may take (the regex crate's default is
/// 10 MiB): documents come from API clients too, and a few nested repetitions would otherwise
/// cost seconds of CPU and megabytes each to compile.
pub(crate) const MAX_COMPILED_PATTERN_BYTES: usize = 1 << 20;

/// A regular expression, compiled as it is read so that a bad one is refused with its path.
/// Matching is unanchored, as in the Collector: write `^...$` to match a whole value.
pub(crate) struct Pattern(Regex);

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() > MAX_PATTERN_BYTES {
            return Err(de::Error::custom(format!(
                "the regular expression is {} bytes long: at most {MAX_PATTERN_BYTES}",
                s.len()
            )));
        }
        let compiled = regex::RegexBuilder::new(&s)
            .size_limit(MAX_COMPILED_PATTERN_BYTES)
            .build();
        compiled.map(Pattern).map_err(|e| {
            // The syntax error is drawn over several lines; its last one says what is wrong.
            let text = e.to_string();
            let why = text
                .lines()
                .rev()
                .find_map(|l| l.strip_prefix("error: "))
                .unwrap_or(&text)
                .replace('\n', " ");
            de::Error::custom(format!("invalid regular expression `{s}`: {why}"))
        })
    }
}

/// A span kind, by name (`server`, `SPAN_KIND_SERVER`) or number.
pub(crate) struct SpanKind(i32);

const SPAN_KINDS: [&str; 6] = [
    "unspecified",
    "internal",
    "server",
    "client",
    "producer",
    "consumer",
];

impl<'de> Deserialize<'de> for SpanKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        code(d, "span kind", &SPAN_KINDS, "SPAN_KIND_").map(SpanKind)
    }
}

/// A status code, by name (`error`, `STATUS_CODE_ERROR`) or number.
pub(crate) struct StatusCode(i32);

const STATUS_CODES: [&str; 3] = ["unset", "ok", "error"];

impl<'de> Deserialize<'de> for StatusCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        code(d, "status code", &STATUS_CODES, "STATUS_CODE_").map(StatusCode)
    }
}

/// Reads an enum code by its name (case-insensitive, with or without the protobuf prefix) or
/// its number.
fn code<'de, D: Deserializer<'de>>(
    d: D,
    what: &str,
    names: &[&str],
    prefix: &str,
) -> Result<i32, D::Error> {
    let hint = || {
        format!(
            "use one of {} (or their numbers 0 to {})",
            names.join(", "),
            names.len() - 1
        )
    };
    match Scalar::deserialize(d)? {
        Scalar::Str(s) => {
            let lower = s.to_ascii_lowercase();
            let bare = lower
                .strip_prefix(&prefix.to_ascii_lowercase())
                .unwrap_or(&lower);
            names
                .iter()
                .position(|n| *n == bare)
                .map(|i| i as i32)
                .ok_or_else(|| de::Error::custom(format!("unknown {what} `{s}`: {}", hint())))
        }
        Scalar::Int(i) if (0..names.len() as i64).contains(&i) => Ok(i as i32),
        other => Err(de::Error::custom(format!(
            "{other} is not a {what}: {}",
            hint()
        ))),
    }
}

/// A duration with a unit ("200ms", "1.5s"), in nanoseconds.
pub(crate) struct Nanos(u64);

impl<'de> Deserialize<'de> for Nanos {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Scalar::deserialize(d)? {
            Scalar::Str(s) => humantime::parse_duration(&s)
                .map(|d| Nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)))
                .map_err(|e| {
                    de::Error::custom(format!(
                        "`{s}` is not a duration ({e}); use e.g. \"200ms\", \"1s\""
                    ))
                }),
            other => Err(de::Error::custom(format!(
                "{other} is not a duration: give a unit, e.g. \"200ms\", \"1s\""
            ))),
        }
    }
}

/// A field test's value: a bare value (equality) or a map of operators.
enum Spec<V, O> {
    Is(V),
    Ops(O),
}

impl<'de, V: Deserialize<'de>, O: Deserialize<'de>> Deserialize<'de> for Spec<V, O> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vis<V, O>(PhantomData<(V, O)>);
        impl<'de, V: Deserialize<'de>, O: Deserialize<'de>> Visitor<'de> for Vis<V, O> {
            type Value = Spec<V, O>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value, or a map of operators such as { in: [...] }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                V::deserialize(v.into_deserializer()).map(Spec::Is)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                V::deserialize(v.into_deserializer()).map(Spec::Is)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                V::deserialize(v.into_deserializer()).map(Spec::Is)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                V::deserialize(v.into_deserializer()).map(Spec::Is)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                V::deserialize(v.into_deserializer()).map(Spec::Is)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                O::deserialize(de::value::MapAccessDeserializer::new(map)).map(Spec::Ops)
            }
        }
        d.deserialize_any(Vis(PhantomData))
    }
}

/// Operators of the span and scope name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TextOps {
    eq: Option<String>,
    #[serde(rename = "in")]
    in_: Option<Vec<String>>,
    prefix: Option<String>,
    regex: Option<Pattern>,
}

/// Operators of span kind and status.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, bound(deserialize = "T: Deserialize<'de>"))]
struct CodeOps<T> {
    eq: Option<T>,
    #[serde(rename = "in")]
    in_: Option<Vec<T>>,
}

/// Operators of the duration.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DurationOps {
    gt: Option<Nanos>,
    gte: Option<Nanos>,
    lt: Option<Nanos>,
    lte: Option<Nanos>,
}

/// A bare duration is refused (`duration: 200ms` reads as "longer than" to some and
/// "exactly" to others): this type has no values.
enum NoBareDuration {}

impl<'de> Deserialize<'de> for NoBareDuration {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(de::Error::custom(
            "give a comparison, e.g. { gt: 200ms } or { gte: 100ms, lt: 1s }",
        ))
    }
}

/// A condition as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCondition {
    all: Option<Vec<Condition>>,
    any: Option<Vec<Condition>>,
    not: Option<Box<Condition>>,
    resource: Option<String>,
    span_attribute: Option<String>,
    eq: Option<Scalar>,
    #[serde(rename = "in")]
    in_: Option<Vec<Scalar>>,
    prefix: Option<String>,
    regex: Option<Pattern>,
    gt: Option<Num>,
    gte: Option<Num>,
    lt: Option<Num>,
    lte: Option<Num>,
    exists: Option<bool>,
    span_name: Option<Spec<String, TextOps>>,
    scope_name: Option<Spec<String, TextOps>>,
    tenant: Option<Spec<String, TextOps>>,
    span_kind: Option<Spec<SpanKind, CodeOps<SpanKind>>>,
    status: Option<Spec<StatusCode, CodeOps<StatusCode>>>,
    duration: Option<Spec<NoBareDuration, DurationOps>>,
    root: Option<bool>,
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RawCondition::deserialize(d)?
            .compile()
            .map_err(de::Error::custom)
    }
}

const OPERATORS: &str = "eq, in, prefix, regex, exists, gt, gte, lt or lte";
const OPERATOR_KEYS: [&str; 9] = [
    "eq", "in", "prefix", "regex", "exists", "gt", "gte", "lt", "lte",
];

impl RawCondition {
    /// The keys present, in declaration order.
    fn keys(&self) -> Vec<&'static str> {
        [
            ("all", self.all.is_some()),
            ("any", self.any.is_some()),
            ("not", self.not.is_some()),
            ("resource", self.resource.is_some()),
            ("span_attribute", self.span_attribute.is_some()),
            ("eq", self.eq.is_some()),
            ("in", self.in_.is_some()),
            ("prefix", self.prefix.is_some()),
            ("regex", self.regex.is_some()),
            ("gt", self.gt.is_some()),
            ("gte", self.gte.is_some()),
            ("lt", self.lt.is_some()),
            ("lte", self.lte.is_some()),
            ("exists", self.exists.is_some()),
            ("span_name", self.span_name.is_some()),
            ("scope_name", self.scope_name.is_some()),
            ("tenant", self.tenant.is_some()),
            ("span_kind", self.span_kind.is_some()),
            ("status", self.status.is_some()),
            ("duration", self.duration.is_some()),
            ("root", self.root.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, present)| present.then_some(k))
        .collect()
    }

    fn compile(self) -> Result<Condition, String> {
        let keys = self.keys();
        let Some(first) = keys.first().copied() else {
            return Err(
                "an empty condition: write e.g. { span_name: \"GET /health\" }, \
                 { resource: service.name, eq: checkout } or { all: [...] }"
                    .into(),
            );
        };
        let is_operator = |k: &str| OPERATOR_KEYS.contains(&k);
        if matches!(first, "resource" | "span_attribute") {
            let other = keys
                .iter()
                .find(|k| !is_operator(k) && !matches!(**k, "resource" | "span_attribute"));
            if let Some(other) = other {
                return Err(format!(
                    "`{first}` and `{other}` cannot share one condition: list them under `all: [...]` or `any: [...]`"
                ));
            }
        } else if is_operator(first) {
            return Err(format!(
                "`{first}` tests an attribute: name it with `resource: KEY` or `span_attribute: KEY`"
            ));
        } else if let Some(second) = keys.get(1) {
            return Err(format!(
                "`{first}` and `{second}` cannot share one condition: list them under `all: [...]` or `any: [...]`"
            ));
        }
        Ok(match self {
            RawCondition { all: Some(all), .. } => Condition::All(all.into()),
            RawCondition { any: Some(any), .. } => Condition::Any(any.into()),
            RawCondition { not: Some(not), .. } => Condition::Not(not),
            RawCondition {
                span_name: Some(spec),
                ..
            } => Condition::SpanName(text_test("span_name", spec)?),
            RawCondition {
                scope_name: Some(spec),
                ..
            } => Condition::ScopeName(text_test("scope_name", spec)?),
            RawCondition {
                tenant: Some(spec), ..
            } => Condition::Tenant(text_test("tenant", spec)?),
            RawCondition {
                span_kind: Some(spec),
                ..
            } => Condition::SpanKind(code_set("span_kind", spec, |k| k.0)?),
            RawCondition {
                status: Some(spec), ..
            } => Condition::Status(code_set("status", spec, |s| s.0)?),
            RawCondition {
                duration: Some(spec),
                ..
            } => match spec {
                Spec::Is(never) => match never {},
                Spec::Ops(ops) => duration_range(ops)?,
            },
            RawCondition { root: Some(r), .. } => Condition::Root(r),
            raw => raw.attribute_test()?,
        })
    }

    /// `{ resource: KEY, OP: VALUE }` or `{ span_attribute: KEY, OP: VALUE }`.
    fn attribute_test(self) -> Result<Condition, String> {
        let (subject, key) = match (self.resource, self.span_attribute) {
            (Some(_), Some(_)) => {
                return Err(
                    "`resource` and `span_attribute` cannot share one condition: list them under `all: [...]`"
                        .into(),
                );
            }
            (Some(k), None) => ("resource", k),
            (None, Some(k)) => ("span_attribute", k),
            (None, None) => {
                return Err(
                    "an operator needs the attribute it tests: add `resource: KEY` \
                     or `span_attribute: KEY`"
                        .into(),
                );
            }
        };
        if key.is_empty() {
            return Err(format!("`{subject}` needs an attribute key"));
        }
        let ranges = [&self.gt, &self.gte, &self.lt, &self.lte]
            .iter()
            .filter(|b| b.is_some())
            .count();
        let others = [
            self.eq.is_some(),
            self.in_.is_some(),
            self.prefix.is_some(),
            self.regex.is_some(),
            self.exists.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if others + ranges == 0 {
            return Err(format!("`{subject}: {key}` needs an operator: {OPERATORS}"));
        }
        if others > 1 || (others == 1 && ranges > 0) {
            return Err(format!(
                "`{subject}: {key}` has more than one operator: use one of {OPERATORS} \
                 (only a lower and an upper bound combine), or `all: [...]`"
            ));
        }
        let test = if let Some(v) = self.eq {
            ValueTest::Eq(v)
        } else if let Some(values) = self.in_ {
            if values.is_empty() {
                return Err("`in` needs at least one value".into());
            }
            ValueTest::In(ScalarSet::new(values))
        } else if let Some(p) = self.prefix {
            ValueTest::Prefix(p.into())
        } else if let Some(r) = self.regex {
            ValueTest::Regex(r.0)
        } else if let Some(e) = self.exists {
            ValueTest::Exists(e)
        } else {
            ValueTest::Range(NumRange {
                lower: bound(self.gt, self.gte, "gt", "gte")?,
                upper: bound(self.lt, self.lte, "lt", "lte")?,
            })
        };
        let key = key.into_boxed_str();
        Ok(if subject == "resource" {
            Condition::Resource(key, test)
        } else {
            Condition::SpanAttribute(key, test)
        })
    }
}

/// One bound from its exclusive and inclusive forms, at most one of which may be given.
fn bound(
    exclusive: Option<Num>,
    inclusive: Option<Num>,
    ex: &str,
    inc: &str,
) -> Result<Option<(Num, bool)>, String> {
    match (exclusive, inclusive) {
        (Some(_), Some(_)) => Err(format!("give `{ex}` or `{inc}`, not both")),
        (Some(n), None) => Ok(Some((n, false))),
        (None, Some(n)) => Ok(Some((n, true))),
        (None, None) => Ok(None),
    }
}

fn text_test(field: &str, spec: Spec<String, TextOps>) -> Result<TextTest, String> {
    let ops = match spec {
        Spec::Is(s) => return Ok(TextTest::Eq(s.into())),
        Spec::Ops(ops) => ops,
    };
    Ok(match (ops.eq, ops.in_, ops.prefix, ops.regex) {
        (Some(v), None, None, None) => TextTest::Eq(v.into()),
        (None, Some(values), None, None) if !values.is_empty() => {
            let mut values: Vec<Box<str>> =
                values.into_iter().map(String::into_boxed_str).collect();
            values.sort_unstable();
            values.dedup();
            TextTest::In(values.into())
        }
        (None, None, Some(p), None) => TextTest::Prefix(p.into()),
        (None, None, None, Some(r)) => TextTest::Regex(r.0),
        _ => {
            return Err(format!(
                "`{field}` takes exactly one of eq, in (with at least one value), prefix, regex; \
                 use `all`/`any` to combine"
            ));
        }
    })
}

fn code_set<T>(
    field: &str,
    spec: Spec<T, CodeOps<T>>,
    code: impl Fn(&T) -> i32,
) -> Result<CodeSet, String> {
    let values = match spec {
        Spec::Is(v) => vec![v],
        Spec::Ops(CodeOps {
            eq: Some(v),
            in_: None,
        }) => vec![v],
        Spec::Ops(CodeOps {
            eq: None,
            in_: Some(values),
        }) if !values.is_empty() => values,
        Spec::Ops(_) => {
            return Err(format!(
                "`{field}` takes exactly one of eq, in (with at least one value)"
            ));
        }
    };
    Ok(CodeSet(values.iter().fold(0, |m, v| m | 1 << code(v))))
}

fn duration_range(ops: DurationOps) -> Result<Condition, String> {
    let both = |a: &Option<Nanos>, b: &Option<Nanos>| a.is_some() && b.is_some();
    if both(&ops.gt, &ops.gte) || both(&ops.lt, &ops.lte) {
        return Err("`duration`: give gt or gte, and lt or lte, not both of a pair".into());
    }
    let min = match (ops.gt, ops.gte) {
        (Some(Nanos(n)), _) => n.saturating_add(1),
        (_, Some(Nanos(n))) => n,
        _ => 0,
    };
    let max = match (ops.lt, ops.lte) {
        (Some(Nanos(n)), _) => n
            .checked_sub(1)
            .ok_or("`duration`: `lt: 0s` matches nothing")?,
        (_, Some(Nanos(n))) => n,
        _ => u64::MAX,
    };
    if min == 0 && max == u64::MAX {
        return Err("`duration` needs a comparison: gt, gte, lt or lte".into());
    }
    if min > max {
        return Err("`duration`: the lower bound is above the upper bound".into());
    }
    Ok(Condition::Duration(min, max))
}

#[cfg(test)]
mod tests {
    use super::super::span::testing::{TestSpan, Val};
    use super::*;

    fn cond(yaml: &str) -> Condition {
        serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
    }

    fn cond_err(yaml: &str) -> String {
        let de = serde_yaml_ng::Deserializer::from_str(yaml);
        match serde_path_to_error::deserialize::<_, Condition>(de) {
            Ok(_) => panic!("{yaml} should be refused"),
            Err(e) => {
                let path = e.path().to_string();
                let message = e.into_inner().to_string();
                format!(
                    "{path}: {}",
                    super::super::without_yaml_path(&path, &message)
                )
            }
        }
    }

    fn span() -> TestSpan {
        TestSpan::new("checkout", "GET /cart")
            .attr("http.status_code", Val::Int(503))
            .attr("http.route", Val::Str("/api/cart".into()))
            .attr("ratio", Val::Double(0.25))
            .attr("cached", Val::Bool(false))
            .attr("blob", Val::Bytes)
            .res("deployment.environment", Val::Str("prod".into()))
    }

    fn check(yaml: &str, want: bool) {
        assert_eq!(cond(yaml).matches(&span()), want, "{yaml}");
    }

    #[test]
    fn resource_attributes() {
        check("{ resource: service.name, eq: checkout }", true);
        check("{ resource: service.name, eq: cart }", false);
        check("{ resource: service.name, in: [a, checkout] }", true);
        check("{ resource: service.name, prefix: check }", true);
        check("{ resource: service.name, regex: '^ch.*t$' }", true);
        check("{ resource: service.name, regex: '^heck' }", false);
        check("{ resource: deployment.environment, exists: true }", true);
        check("{ resource: k8s.namespace.name, exists: true }", false);
        check("{ resource: k8s.namespace.name, exists: false }", true);
        check("{ resource: k8s.namespace.name, eq: x }", false);
    }

    #[test]
    fn span_attributes_by_type() {
        check("{ span_attribute: http.status_code, eq: 503 }", true);
        check("{ span_attribute: http.status_code, eq: 503.0 }", true);
        check("{ span_attribute: http.status_code, eq: '503' }", false);
        check("{ span_attribute: http.status_code, gte: 500 }", true);
        check("{ span_attribute: http.status_code, gt: 503 }", false);
        check(
            "{ span_attribute: http.status_code, gte: 500, lt: 600 }",
            true,
        );
        check(
            "{ span_attribute: http.status_code, gte: 400, lt: 500 }",
            false,
        );
        check("{ span_attribute: http.status_code, lte: 503 }", true);
        check("{ span_attribute: http.status_code, lt: 503.5 }", true);
        check(
            "{ span_attribute: http.status_code, in: [500, 502, 503] }",
            true,
        );
        check("{ span_attribute: http.status_code, in: ['503'] }", false);
        check("{ span_attribute: ratio, gt: 0.2 }", true);
        check("{ span_attribute: ratio, eq: 0.25 }", true);
        check("{ span_attribute: cached, eq: false }", true);
        check("{ span_attribute: cached, in: [true] }", false);
        check("{ span_attribute: http.route, prefix: /api/ }", true);
        check("{ span_attribute: http.route, gt: 1 }", false);
        check("{ span_attribute: blob, exists: true }", true);
        check("{ span_attribute: blob, eq: x }", false);
        check("{ span_attribute: http.status_code, prefix: '5' }", false);
    }

    #[test]
    fn tenant() {
        let mut s = span();
        s.tenant = Some("team-payments".into());
        for (yaml, want) in [
            ("{ tenant: team-payments }", true),
            ("{ tenant: { eq: team-search } }", false),
            ("{ tenant: { in: [team-search, team-payments] } }", true),
            ("{ tenant: { prefix: team- } }", true),
            ("{ tenant: { regex: '^team-p' } }", true),
            ("{ not: { tenant: team-payments } }", false),
        ] {
            assert_eq!(cond(yaml).matches(&s), want, "{yaml}");
        }
    }

    #[test]
    fn span_fields() {
        check("{ span_name: GET /cart }", true);
        check("{ span_name: { eq: GET /carts } }", false);
        check("{ span_name: { in: [GET /health, GET /cart] } }", true);
        check("{ span_name: { prefix: 'GET ' } }", true);
        check("{ span_name: { regex: '/c[a-z]+t$' } }", true);
        check("{ scope_name: { prefix: io.opentelemetry } }", true);
        check("{ scope_name: other }", false);
        // Without authentication a span has no tenant: no tenant test matches, not even `.*`.
        check("{ tenant: { regex: '.*' } }", false);
        check("{ span_kind: server }", true);
        check("{ span_kind: SPAN_KIND_SERVER }", true);
        check("{ span_kind: 2 }", true);
        check("{ span_kind: { in: [client, consumer] } }", false);
        check("{ status: unset }", true);
        check("{ status: error }", false);
        check("{ status: { in: [ok, STATUS_CODE_UNSET] } }", true);
        check("{ root: false }", true);
        check("{ root: true }", false);
        // The span lasts exactly 10ms.
        check("{ duration: { gt: 5ms } }", true);
        check("{ duration: { gt: 10ms } }", false);
        check("{ duration: { gte: 10ms } }", true);
        check("{ duration: { lt: 10ms } }", false);
        check("{ duration: { lte: 10ms } }", true);
        check("{ duration: { gte: 1ms, lt: 1s } }", true);
    }

    #[test]
    fn combinators() {
        check(
            "{ all: [ { resource: service.name, eq: checkout }, { span_kind: server } ] }",
            true,
        );
        check(
            "{ all: [ { resource: service.name, eq: checkout }, { span_kind: client } ] }",
            false,
        );
        check(
            "{ any: [ { span_kind: client }, { span_attribute: http.status_code, gte: 500 } ] }",
            true,
        );
        check(
            "{ any: [ { span_kind: client }, { status: error } ] }",
            false,
        );
        check("{ not: { span_kind: client } }", true);
        check("{ not: { span_kind: server } }", false);
        check("{ all: [] }", true);
        check("{ any: [] }", false);
        check(
            "{ not: { any: [ { span_name: x }, { all: [ { root: false }, { status: unset } ] } ] } }",
            false,
        );
    }

    #[test]
    fn duration_saturates_when_end_precedes_start() {
        let mut s = span();
        s.end = s.start - 5;
        assert!(cond("{ duration: { lt: 1ns } }").matches(&s));
    }

    #[test]
    fn refused_conditions_name_their_key() {
        let cases = [
            (
                "{ span_attribute: a, regex: '(' }",
                "regex: invalid regular expression",
            ),
            (
                "{ span_name: { regex: '[' } }",
                "span_name.regex: invalid regular expression",
            ),
            (
                "{ span_kind: serverr }",
                "span_kind: unknown span kind `serverr`",
            ),
            ("{ span_kind: 9 }", "span_kind: 9 is not a span kind"),
            (
                "{ span_kind: { in: [server, nope] } }",
                "span_kind.in[1]: unknown span kind",
            ),
            ("{ status: failed }", "status: unknown status code"),
            (
                "{ span_kind: { prefix: s } }",
                "span_kind.prefix: unknown field `prefix`",
            ),
            ("{ duration: 200ms }", "duration: give a comparison"),
            (
                "{ duration: { gt: soon } }",
                "duration.gt: `soon` is not a duration",
            ),
            (
                "{ duration: { gt: 5 } }",
                "duration.gt: 5 is not a duration",
            ),
            (
                "{ span_attribute: a, gt: high }",
                "gt: `high` is not a number",
            ),
            ("{ spanname: x }", "spanname: unknown field `spanname`"),
            (
                "{ all: [ { root: true }, { nme: x } ] }",
                "all[1].nme: unknown field",
            ),
            ("{}", ".: an empty condition"),
            (
                "{ span_name: x, root: true }",
                ".: `span_name` and `root` cannot share",
            ),
            ("{ eq: 5 }", ".: `eq` tests an attribute"),
            ("{ resource: a }", ".: `resource: a` needs an operator"),
            (
                "{ resource: a, eq: 1, prefix: b }",
                "more than one operator",
            ),
            (
                "{ resource: a, gt: 1, gte: 2 }",
                "give `gt` or `gte`, not both",
            ),
            (
                "{ resource: a, span_attribute: b, eq: 1 }",
                "cannot share one condition",
            ),
            ("{ resource: a, in: [] }", "`in` needs at least one value"),
            (
                "{ resource: a, eq: 1, span_name: x }",
                "`resource` and `span_name` cannot share",
            ),
            (
                "{ span_name: { in: [] } }",
                "`span_name` takes exactly one of",
            ),
            ("{ all: [ { not: {} } ] }", "all[0].not: an empty condition"),
            ("{ duration: { gt: 1s, lt: 1ms } }", "lower bound is above"),
        ];
        for (yaml, want) in cases {
            let e = cond_err(yaml);
            assert!(e.contains(want), "{yaml}: got `{e}`, want `{want}`");
        }
    }
}
