//! A necessary condition for a span to match any of a few rules, tested in a handful of mask
//! operations before the rule index and the conditions are consulted.
//!
//! Tail rules are conjunctions (`error: true` and `slower_than: 200ms` and `span_kind:
//! client`...), and most spans fail the cheap conjuncts of every rule: they are neither errors
//! nor slow. The prefilter keeps, per rule, what those conjuncts need of a span's fixed fields
//! (its kind, status code, root-ness and least duration), as masks over the rules (at most 64),
//! so that one pass of ANDs says which rules a span could still match. A rule whose guard (see
//! `rule_index.rs`) is only span attributes is also ruled out for a whole request whose bytes
//! hold none of the index's span-attribute keys. A clear mask means no rule can match; a set
//! bit only means "maybe", and the exact evaluation decides.

use super::matcher::{Atom, Condition, Subject};
use super::span::SpanView;

/// At most this many rules: one bit each in a word.
const MAX_RULES: usize = 64;

/// The masks of one code field (span kind, status code).
#[derive(Debug)]
struct CodeMasks {
    /// The rules each code allows, for codes below the table's length.
    by_code: Box<[u64]>,
    /// The rules that allow any code (no conjunct on this field).
    unrestricted: u64,
}

impl CodeMasks {
    /// Masks for rules that allow the codes `allowed[i]` (bit c: code c; all bits: any).
    fn new(allowed: &[u64]) -> Self {
        let restricted = allowed.iter().filter(|&&a| a != u64::MAX);
        let len = 64 - restricted.fold(0u64, |acc, a| acc | a).leading_zeros() as usize;
        CodeMasks {
            by_code: (0..len)
                .map(|code| rules_where(allowed.iter().map(|a| a & (1 << code) != 0)))
                .collect(),
            unrestricted: rules_where(allowed.iter().map(|&a| a == u64::MAX)),
        }
    }

    #[inline]
    fn allowed(&self, code: i32) -> u64 {
        usize::try_from(code)
            .ok()
            .and_then(|c| self.by_code.get(c))
            .copied()
            .unwrap_or(self.unrestricted)
    }
}

/// What each of up to 64 rules needs of a span's fixed fields; see the module's text.
#[derive(Debug)]
pub(crate) struct Prefilter {
    /// Every rule that can match at all.
    all: u64,
    kinds: CodeMasks,
    statuses: CodeMasks,
    /// Rules that need a root span, and rules that need a span with a parent.
    roots_only: u64,
    children_only: u64,
    /// `(d, every rule whose least duration is at most d)`, by ascending `d`; the first step
    /// is at 0 and holds the rules that need no least duration.
    durations: Box<[(u64, u64)]>,
    /// Rules whose guard is span attributes only: ruled out when the request's bytes hold
    /// none of the index's span-attribute keys.
    need_span_keys: u64,
}

/// What one rule needs, gathered from its conjuncts.
struct Needs {
    kinds: u64,
    statuses: u64,
    root: Option<bool>,
    min_duration: u64,
    /// The rule's guard is span attributes only.
    span_keys_only: bool,
    /// Conjuncts that contradict each other (a root span that has a parent): never matches.
    never: bool,
}

impl Needs {
    fn of(condition: &Condition) -> Self {
        let mut needs = Needs {
            kinds: u64::MAX,
            statuses: u64::MAX,
            root: None,
            min_duration: 0,
            span_keys_only: only_span_attributes(condition),
            never: false,
        };
        needs.add(condition);
        needs
    }

    /// Adds what `condition` needs, a conjunct at a time.
    fn add(&mut self, condition: &Condition) {
        let needs = self;
        match condition {
            Condition::All(parts) => parts.iter().for_each(|p| needs.add(p)),
            Condition::SpanKind(codes) => needs.kinds &= codes.bits(),
            Condition::Status(codes) => needs.statuses &= codes.bits(),
            Condition::Root(root) => match needs.root {
                Some(r) if r != *root => needs.never = true,
                _ => needs.root = Some(*root),
            },
            Condition::Duration(min, _) => needs.min_duration = needs.min_duration.max(*min),
            // Disjunctions, negations and the rest are the exact evaluation's.
            _ => {}
        }
    }
}

impl Prefilter {
    /// The prefilter of rules with these conditions, in order; `None` for more than
    /// [`MAX_RULES`] rules or none.
    pub(crate) fn new(conditions: &[&Condition]) -> Option<Self> {
        if conditions.is_empty() || conditions.len() > MAX_RULES {
            return None;
        }
        let needs: Vec<Needs> = conditions.iter().map(|c| Needs::of(c)).collect();
        let mask = |f: &dyn Fn(&Needs) -> bool| rules_where(needs.iter().map(f));
        let mut mins: Vec<u64> = needs.iter().map(|n| n.min_duration).collect();
        mins.push(0);
        mins.sort_unstable();
        mins.dedup();
        let durations = mins
            .into_iter()
            .map(|d| (d, mask(&|n| n.min_duration <= d)))
            .collect();
        let codes = |f: fn(&Needs) -> u64| CodeMasks::new(&needs.iter().map(f).collect::<Vec<_>>());
        Some(Prefilter {
            all: mask(&|n| !n.never),
            kinds: codes(|n| n.kinds),
            statuses: codes(|n| n.statuses),
            roots_only: mask(&|n| n.root == Some(true)),
            children_only: mask(&|n| n.root == Some(false)),
            durations,
            need_span_keys: mask(&|n| n.span_keys_only),
        })
    }

    /// The rules that `span` could match (bit i: rule i), given whether the request's bytes
    /// may hold a span-attribute key of the index (`span_keys`). Every field is read and every
    /// mask applied, without a branch on the span: whether a span is slow, an error or a root
    /// is not predictable, and a wrong guess costs more than the few loads it would save.
    #[inline]
    pub(crate) fn candidates<S: SpanView + ?Sized>(&self, span: &S, span_keys: bool) -> u64 {
        let keys = if span_keys {
            u64::MAX
        } else {
            !self.need_span_keys
        };
        let d = span
            .end_time_unix_nano()
            .saturating_sub(span.start_time_unix_nano());
        // The last step the span reaches; the first (at 0) it always reaches. A count rather
        // than a binary search: a few steps, compared without a branch.
        let reached = self.durations.iter().filter(|&&(min, _)| min <= d).count();
        let durations = self.durations[reached.max(1) - 1].1;
        let parentage = if span.is_root() {
            !self.children_only
        } else {
            !self.roots_only
        };
        self.all
            & keys
            & durations
            & parentage
            & self.statuses.allowed(span.status_code())
            & self.kinds.allowed(span.kind())
    }
}

/// The mask of the rules (bit i: rule i) whose flag is true.
fn rules_where(flags: impl IntoIterator<Item = bool>) -> u64 {
    flags
        .into_iter()
        .enumerate()
        .fold(0, |m, (i, f)| m | u64::from(f) << i)
}

/// True when `condition`'s guard is span-attribute facts only: without one of those keys in
/// the request, the rule cannot match.
fn only_span_attributes(condition: &Condition) -> bool {
    condition.guard().is_some_and(|atoms| {
        !atoms.is_empty()
            && atoms.iter().all(|a| {
                matches!(
                    a,
                    Atom::Attribute {
                        on: Subject::Span,
                        ..
                    }
                )
            })
    })
}
