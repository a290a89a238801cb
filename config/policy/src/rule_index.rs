//! Which rules can match a span, found by lookups rather than by testing every rule in turn.
//!
//! When a policy is compiled, each rule's condition yields a *guard* (`Condition::guard`): a
//! few facts, one of which a span must show for the rule to match at all — an attribute with a
//! given string value, an attribute that is present, a span name or name prefix, a span kind
//! or status code. The index maps every such fact to the rules it guards. Per span it reads
//! the span's attributes once, its name and codes, and collects the rules whose facts hold
//! into a bit set; the rules with no guard are always in it. Evaluation then tests only those
//! candidates, in document order, so the first rule that matches is the same as a plain scan
//! would find. A resource's attributes are looked up once per resource, not once per span.
//!
//! With 100 rules that a span's attributes do not mention, a span costs a hash lookup per
//! attribute and per distinct name-prefix length, instead of 100 condition tests.

use super::matcher::{Atom, Condition};
use super::span::{KeyFilter, SpanView};
use smallvec::SmallVec;
use std::collections::HashMap;

/// Rule sets up to this many words (64 rules each) live on the stack.
const INLINE_WORDS: usize = 8;

/// Span-attribute keys up to this many are searched for in a request's bytes
/// ([`RuleIndex::span_keys_may_occur`]); with more, every span's attributes are read.
const MAX_SEARCHED_KEYS: usize = 8;

type Map<V> = HashMap<Box<[u8]>, V, foldhash::fast::RandomState>;

/// A set of rule numbers, one bit each.
pub(crate) type RuleBits = SmallVec<[u64; INLINE_WORDS]>;

/// The rules guarded by facts about one attribute key.
#[derive(Debug, Default)]
struct KeyRules {
    /// Rules that need the key to be present.
    present: Box<[u16]>,
    /// Rules that need the key to hold one of these string values.
    values: Map<Box<[u16]>>,
}

/// Attribute facts of one subject (resource or span), by key.
#[derive(Debug, Default)]
struct AttributeIndex {
    keys: Map<KeyRules>,
    /// The keys, checked before hashing: most of a span's attributes are not in any rule,
    /// and this tells so in a few instructions, before their values are even read.
    filter: KeyFilter,
}

impl AttributeIndex {
    #[inline]
    fn add(&self, bits: &mut [u64], key: &[u8], text: Option<&[u8]>) {
        if !self.filter.may_contain(key) {
            return;
        }
        let Some(rules) = self.keys.get(key) else {
            return;
        };
        set(bits, &rules.present);
        if let Some(text) = text
            && let Some(rules) = rules.values.get(text)
        {
            set(bits, rules);
        }
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The rules of a policy (sampling rules, then routing rules), indexed by their guards.
#[derive(Debug, Default)]
pub(crate) struct RuleIndex {
    /// Words per rule set.
    words: usize,
    /// Rules without a guard: candidates for every span.
    always: RuleBits,
    resource: AttributeIndex,
    span: AttributeIndex,
    /// Searchers for `span`'s keys, when there are at most `MAX_SEARCHED_KEYS` of them.
    span_key_finders: Option<Box<[memchr::memmem::Finder<'static>]>>,
    names: Map<Box<[u16]>>,
    /// `names`' keys, checked before hashing a span's name.
    names_filter: KeyFilter,
    name_prefixes: Map<Box<[u16]>>,
    /// The first bytes of `name_prefixes`' keys (as one-byte keys, which the filter tells
    /// apart exactly), checked before hashing prefixes.
    prefix_first_bytes: KeyFilter,
    /// The distinct lengths of `name_prefixes`' keys, ascending.
    prefix_lengths: Box<[usize]>,
    /// Rules by span kind code, then by status code (codes below 64).
    kinds: Box<[Box<[u16]>]>,
    statuses: Box<[Box<[u16]>]>,
    /// Rules that need a span to last at least so many nanoseconds, by ascending threshold.
    min_durations: Box<[(u64, u16)]>,
}

/// Collects `(fact, rule)` pairs into rule lists.
#[derive(Default)]
struct Lists(HashMap<String, Vec<u16>>);

impl Lists {
    fn push(&mut self, key: &str, rule: u16) {
        let rules = self.0.entry(key.to_string()).or_default();
        if rules.last() != Some(&rule) {
            rules.push(rule);
        }
    }

    fn build(self) -> Map<Box<[u16]>> {
        self.0
            .into_iter()
            .map(|(k, v)| (k.into_bytes().into(), v.into_boxed_slice()))
            .collect()
    }
}

#[derive(Default)]
struct KeyLists {
    present: Vec<u16>,
    values: Lists,
}

fn attribute_index(lists: HashMap<String, KeyLists>) -> AttributeIndex {
    let mut filter = KeyFilter::default();
    for key in lists.keys() {
        filter.insert(key.as_bytes());
    }
    AttributeIndex {
        filter,
        keys: lists
            .into_iter()
            .map(|(k, l)| {
                let rules = KeyRules {
                    present: l.present.into(),
                    values: l.values.build(),
                };
                (k.into_bytes().into(), rules)
            })
            .collect(),
    }
}

fn code_lists(lists: Vec<Vec<u16>>) -> Box<[Box<[u16]>]> {
    let used = lists
        .iter()
        .rposition(|l| !l.is_empty())
        .map_or(0, |i| i + 1);
    lists
        .into_iter()
        .take(used)
        .map(Vec::into_boxed_slice)
        .collect()
}

impl RuleIndex {
    /// Indexes rules given their conditions in document order (at most 65536 of them).
    pub(crate) fn new<'a>(conditions: impl IntoIterator<Item = &'a Condition>) -> Self {
        let mut count = 0;
        let mut always = Vec::new();
        let mut attrs: [HashMap<String, KeyLists>; 2] = Default::default();
        let (mut names, mut prefixes) = (Lists::default(), Lists::default());
        let mut kinds = vec![Vec::new(); 64];
        let mut min_durations: Vec<(u64, u16)> = Vec::new();
        let mut statuses = vec![Vec::new(); 64];
        for (i, condition) in conditions.into_iter().enumerate() {
            count = i + 1;
            // Compilation caps a policy at 65535 rules.
            let rule = i as u16;
            let Some(guard) = condition.guard() else {
                always.push(rule);
                continue;
            };
            for atom in guard {
                match atom {
                    Atom::Attribute { on, key, value } => {
                        let lists = attrs[on as usize].entry(key.to_string()).or_default();
                        match value {
                            Some(v) => lists.values.push(v, rule),
                            None if lists.present.last() != Some(&rule) => lists.present.push(rule),
                            None => {}
                        }
                    }
                    Atom::Name(name) => names.push(name, rule),
                    Atom::MinDuration(min) => min_durations.push((min, rule)),
                    Atom::NamePrefix(prefix) => prefixes.push(prefix, rule),
                    Atom::Kind(codes) | Atom::Status(codes) => {
                        let lists = match atom {
                            Atom::Kind(_) => &mut kinds,
                            _ => &mut statuses,
                        };
                        for code in codes.codes() {
                            let l = &mut lists[code as usize];
                            if l.last() != Some(&rule) {
                                l.push(rule);
                            }
                        }
                    }
                }
            }
        }
        let words = count.div_ceil(64);
        let mut always_bits = RuleBits::from_elem(0, words);
        set(&mut always_bits, &always);
        let name_prefixes = prefixes.build();
        let mut prefix_first_bytes = KeyFilter::default();
        for key in name_prefixes.keys() {
            prefix_first_bytes.insert(&key[..key.len().min(1)]);
        }
        let names = names.build();
        let mut names_filter = KeyFilter::default();
        for key in names.keys() {
            names_filter.insert(key);
        }
        let mut prefix_lengths: Vec<usize> = name_prefixes.keys().map(|k| k.len()).collect();
        prefix_lengths.sort_unstable();
        prefix_lengths.dedup();
        let [resource, span] = attrs;
        min_durations.sort_unstable();
        let span_key_finders = (span.len() <= MAX_SEARCHED_KEYS).then(|| {
            span.keys()
                .map(|k| memchr::memmem::Finder::new(k.as_bytes()).into_owned())
                .collect()
        });
        Self {
            span_key_finders,
            words,
            always: always_bits,
            resource: attribute_index(resource),
            span: attribute_index(span),
            names,
            names_filter,
            name_prefixes,
            prefix_first_bytes,
            prefix_lengths: prefix_lengths.into(),
            kinds: code_lists(kinds),
            min_durations: min_durations.into(),
            statuses: code_lists(statuses),
        }
    }

    /// The candidates that a resource's attributes make: the rules without a guard, and those
    /// guarded by one of these attributes. Computed once per resource.
    pub(crate) fn resource_candidates<'a>(
        &self,
        attributes: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    ) -> RuleBits {
        let mut bits = RuleBits::from_slice(&self.always);
        if !self.resource.is_empty() {
            for (key, value) in attributes {
                self.resource.add(&mut bits, key, value);
            }
        }
        bits
    }

    /// Like [`RuleIndex::resource_candidates`], reading the attributes through a span.
    pub(crate) fn resource_candidates_of<S: SpanView + ?Sized>(&self, span: &S) -> RuleBits {
        let mut bits = RuleBits::from_slice(&self.always);
        if !self.resource.is_empty() {
            span.for_each_resource_attribute(&mut |key, value| {
                self.resource.add(&mut bits, key, value)
            });
        }
        bits
    }

    /// False when no span of a request with these (protobuf) bytes can have an attribute
    /// that a rule's guard names: none of the keys occurs in the bytes at all. A search of
    /// the request for a few keys costs less than reading every span's attributes.
    pub(crate) fn span_keys_may_occur(&self, body: &[u8]) -> bool {
        if self.span.is_empty() {
            return false;
        }
        match &self.span_key_finders {
            Some(finders) => finders.iter().any(|f| f.find(body).is_some()),
            None => true,
        }
    }

    /// The rules that can match `span`, given its resource's candidates; its attributes are
    /// read only when `span_keys` (see [`RuleIndex::span_keys_may_occur`]).
    #[cfg(test)]
    pub(crate) fn candidates<S: SpanView + ?Sized>(
        &self,
        resource: &RuleBits,
        span: &S,
        span_keys: bool,
    ) -> RuleBits {
        self.with_candidates(resource, span, span_keys, RuleBits::from_slice)
    }

    /// Calls `f` with the rules that can match `span` (see [`RuleIndex::candidates`]), kept
    /// on the stack for up to `INLINE_WORDS` words.
    #[inline]
    pub(crate) fn with_candidates<S: SpanView + ?Sized, R>(
        &self,
        resource: &RuleBits,
        span: &S,
        span_keys: bool,
        f: impl FnOnce(&[u64]) -> R,
    ) -> R {
        if resource.len() != self.words {
            // Candidates made by another policy's index: try every rule rather than guess.
            return f(&RuleBits::from_elem(u64::MAX, self.words));
        }
        if self.words <= INLINE_WORDS {
            let mut buf = [0u64; INLINE_WORDS];
            let bits = &mut buf[..self.words];
            bits.copy_from_slice(resource);
            self.add_span_facts(bits, span, span_keys);
            f(bits)
        } else {
            let mut bits = resource.to_vec();
            self.add_span_facts(&mut bits, span, span_keys);
            f(&bits)
        }
    }

    /// Adds to `bits` the rules that `span`'s own facts make candidates.
    fn add_span_facts<S: SpanView + ?Sized>(&self, bits: &mut [u64], span: &S, span_keys: bool) {
        if span_keys && !self.span.is_empty() {
            span.for_each_span_attribute(&self.span.filter, &mut |key, value| {
                self.span.add(bits, key, value)
            });
        }
        if !self.names.is_empty() || !self.prefix_lengths.is_empty() {
            let name = span.name_bytes();
            if self.names_filter.may_contain(name)
                && let Some(rules) = self.names.get(name)
            {
                set(bits, rules);
            }
            // An empty prefix has no first byte: it is a guard no name escapes, kept apart.
            let first_may_match = name.is_empty()
                || self.prefix_first_bytes.may_contain(&name[..1])
                || self.prefix_lengths.first() == Some(&0);
            if first_may_match {
                for &len in self.prefix_lengths.iter() {
                    if len > name.len() {
                        break;
                    }
                    // A prefix of the bytes that cuts a character matches no (UTF-8) key.
                    if let Some(rules) = self.name_prefixes.get(&name[..len]) {
                        set(bits, rules);
                    }
                }
            }
        }
        // Kind and status are read only when some rule needs them: reading them may cost
        // a pass over the span.
        if !self.kinds.is_empty() {
            set_code(bits, &self.kinds, span.kind());
        }
        if !self.statuses.is_empty() {
            set_code(bits, &self.statuses, span.status_code());
        }
        if !self.min_durations.is_empty() {
            let d = span
                .end_time_unix_nano()
                .saturating_sub(span.start_time_unix_nano());
            for &(min, rule) in self.min_durations.iter() {
                if min > d {
                    break;
                }
                set(bits, &[rule]);
            }
        }
    }
}

fn set_code(bits: &mut [u64], lists: &[Box<[u16]>], code: i32) {
    if let Some(rules) = usize::try_from(code).ok().and_then(|c| lists.get(c)) {
        set(bits, rules);
    }
}

fn set(bits: &mut [u64], rules: &[u16]) {
    for &r in rules {
        let r = usize::from(r);
        bits[r / 64] |= 1 << (r % 64);
    }
}

/// The first rule in `range` (document order) that is a candidate and for which `matches`
/// says it matches.
pub(crate) fn first_match(
    bits: &[u64],
    range: std::ops::Range<usize>,
    mut matches: impl FnMut(usize) -> bool,
) -> Option<usize> {
    let (start, end) = (range.start, range.end.min(bits.len() * 64));
    let mut w = start / 64;
    while w * 64 < end {
        let mut word = bits[w];
        if w == start / 64 {
            word &= u64::MAX << (start % 64);
        }
        while word != 0 {
            let i = w * 64 + word.trailing_zeros() as usize;
            if i >= end {
                return None;
            }
            if matches(i) {
                return Some(i);
            }
            word &= word - 1;
        }
        w += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::testing::{TestSpan, Val};

    fn index(yaml: &[&str]) -> (Vec<Condition>, RuleIndex) {
        let cs: Vec<Condition> = yaml
            .iter()
            .map(|y| serde_yaml_ng::from_str(y).unwrap())
            .collect();
        let idx = RuleIndex::new(&cs);
        (cs, idx)
    }

    fn candidates(idx: &RuleIndex, s: &TestSpan) -> Vec<usize> {
        let bits = idx.candidates(&idx.resource_candidates_of(s), s, true);
        let mut seen = Vec::new();
        first_match(&bits, 0..usize::MAX, |i| {
            seen.push(i);
            false
        });
        seen
    }

    #[test]
    fn guards_select_the_rules_a_span_can_match() {
        let (_, idx) = index(&[
            "{ resource: service.name, eq: a }",
            "{ all: [ { span_kind: server }, { resource: service.name, in: [a, b] } ] }",
            "{ any: [ { span_name: { prefix: GET } }, { span_attribute: http.route, eq: /x } ] }",
            "{ any: [ { resource: service.name, eq: c }, { duration: { gt: 1s } } ] }",
            "{ not: { resource: service.name, eq: a } }",
            "{ span_attribute: retries, gte: 3 }",
            "{ status: error }",
            "{ span_attribute: k, exists: false }",
            "{ any: [] }",
            "{ span_name: { in: [PUT, POST] } }",
        ]);
        let s = TestSpan::new("a", "op");
        assert_eq!(candidates(&idx, &s), [0, 1, 4, 7]);
        let s = TestSpan::new("b", "GET /a").attr("http.route", Val::Str("/y".into()));
        assert_eq!(candidates(&idx, &s), [1, 2, 4, 7]);
        let mut s = TestSpan::new("z", "POST").attr("retries", Val::Int(1));
        s.status = 2;
        assert_eq!(candidates(&idx, &s), [4, 5, 6, 7, 9]);
        let s = TestSpan::new("z", "x").attr("http.route", Val::Str("/x".into()));
        assert_eq!(candidates(&idx, &s), [2, 4, 7]);
        // Rule 3's branches are guarded by the service and by the duration.
        let mut s = TestSpan::new("z", "x");
        s.end = s.start + 2_000_000_000;
        assert_eq!(candidates(&idx, &s), [3, 4, 7]);
        assert_eq!(candidates(&idx, &TestSpan::new("c", "x")), [3, 4, 7]);
    }

    #[test]
    fn candidates_are_a_superset_of_matches() {
        let (cs, idx) = index(&[
            "{ all: [ { span_attribute: a, eq: x }, { span_name: { prefix: ab } } ] }",
            "{ any: [ { span_name: { prefix: abc } }, { span_attribute: b, lt: 2 } ] }",
            "{ span_name: { regex: \"^a.c$\" } }",
            "{ all: [ { span_kind: { in: [client] } }, { status: { in: [error, ok] } } ] }",
            "{ resource: tier, in: [gold, silver] }",
            "{ span_name: \"\" }",
            "{ span_name: { prefix: \"\" } }",
            "{ all: [ { duration: { gt: 2ms } }, { span_name: { regex: \"b\" } } ] }",
            "{ any: [ { duration: { gte: 1ms, lt: 3ms } }, { span_kind: server } ] }",
            "{ duration: { lt: 2ms } }",
        ]);
        let names = ["", "a", "ab", "abc", "abd", "é", "aé"];
        let values = [None, Some(Val::Str("x".into())), Some(Val::Int(1))];
        for name in names {
            for a in &values {
                for b in &values {
                    for kind in 0..6 {
                        for tier in ["gold", "lead"] {
                            let mut s =
                                TestSpan::new("svc", name).res("tier", Val::Str(tier.into()));
                            s.kind = kind;
                            s.status = kind % 3;
                            // 0 to 5 ms, around the thresholds above.
                            s.start = 1_000;
                            s.end = 1_000 + u64::from(kind as u8) * 1_000_000;
                            if let Some(v) = a {
                                s = s.attr("a", v.clone());
                            }
                            if let Some(v) = b {
                                s = s.attr("b", v.clone());
                            }
                            let cands = candidates(&idx, &s);
                            for (i, c) in cs.iter().enumerate() {
                                if c.matches(&s) {
                                    assert!(
                                        cands.contains(&i),
                                        "rule {i} matches {s:?} but is not a candidate"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn first_match_keeps_document_order_within_a_range() {
        let mut bits = RuleBits::from_elem(0, 3);
        set(&mut bits, &[1, 63, 64, 130]);
        let all = |range| {
            let mut seen = Vec::new();
            first_match(&bits, range, |i| {
                seen.push(i);
                false
            });
            seen
        };
        assert_eq!(all(0..200), [1, 63, 64, 130]);
        assert_eq!(all(2..130), [63, 64]);
        assert_eq!(all(64..65), [64]);
        assert_eq!(all(131..200), Vec::<usize>::new());
        assert_eq!(first_match(&bits, 0..200, |i| i > 60), Some(63));
    }

    #[test]
    fn a_request_without_the_keys_rules_out_attribute_guards() {
        let (_, idx) = index(&[
            "{ span_attribute: http.route, eq: /pay }",
            "{ span_attribute: db.system, exists: true }",
            "{ resource: service.name, eq: a }",
        ]);
        assert!(idx.span_keys_may_occur(b"....http.route...."));
        assert!(idx.span_keys_may_occur(b"db.system"));
        assert!(!idx.span_keys_may_occur(b"http.rout db.syste"));
        assert!(!idx.span_keys_may_occur(b""));
        // Resource keys are not searched for: resources are read once each anyway.
        assert!(!idx.span_keys_may_occur(b"service.name"));
        // Without span-attribute guards there is nothing to find.
        let (_, none) = index(&["{ span_kind: server }"]);
        assert!(!none.span_keys_may_occur(b"anything"));
        // With more keys than are searched for, nothing is ruled out.
        let many: Vec<String> = (0..=MAX_SEARCHED_KEYS)
            .map(|i| format!("{{ span_attribute: k{i}, exists: true }}"))
            .collect();
        let (_, many) = index(&many.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(many.span_keys_may_occur(b"no key here"));
        // Ruled out, the attributes are not read: the guarded rules are no candidates even
        // for a span that has the keys.
        let s = TestSpan::default().attr("http.route", Val::Str("/pay".into()));
        let bits = idx.candidates(&idx.resource_candidates_of(&s), &s, false);
        assert!(bits.iter().all(|&w| w == 0));
        let bits = idx.candidates(&idx.resource_candidates_of(&s), &s, true);
        assert_eq!(bits[0], 1);
    }

    #[test]
    fn duration_thresholds_guard_their_rules() {
        let (_, idx) = index(&[
            "{ duration: { gt: 45ms } }",
            "{ all: [ { duration: { gte: 40ms } }, { root: true } ] }",
            "{ duration: { lt: 10ms } }",
            "{ all: [ { duration: { gt: 30ms } }, { span_kind: client } ] }",
        ]);
        let span = |ms: u64, kind: i32| {
            let mut s = TestSpan::new("svc", "op");
            s.start = 5;
            s.end = 5 + ms * 1_000_000;
            s.kind = kind;
            s
        };
        // No threshold below the span's duration: only the unguarded rule (2) is a candidate.
        assert_eq!(candidates(&idx, &span(20, 3)), [2, 3]);
        assert_eq!(candidates(&idx, &span(20, 1)), [2]);
        assert_eq!(candidates(&idx, &span(40, 1)), [1, 2]);
        assert_eq!(candidates(&idx, &span(46, 1)), [0, 1, 2]);
    }
}
