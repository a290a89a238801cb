//! The per-rule counters of a policy (`weir_policy_*_spans_total`), made once per policy
//! version and counted once per run of equal decisions rather than once per span.

use metrics::Counter;
use weir_policy::{Decision, Outcome, Policy};

/// Counter handles per rule, made once per policy version so evaluation does not look
/// metrics up by name for every span.
pub(super) struct RuleCounters {
    /// Per rule index, then one slot for "default".
    matched: Vec<Counter>,
    sampled: Vec<Counter>,
    sampled_out: Vec<Counter>,
    rate_limited: Vec<Counter>,
    routed_to_drop: Vec<Counter>,
}

impl RuleCounters {
    /// The counters of every rule of `policy`, and of its default.
    pub(super) fn new(policy: &Policy) -> Self {
        let mut labels: Vec<(&'static str, String)> = policy
            .rules()
            .iter()
            .map(|r| (r.section.as_str(), r.name.clone()))
            .collect();
        labels.push(("default", "default".to_string()));
        let make = |name: &'static str| -> Vec<Counter> {
            labels
                .iter()
                .map(|(section, rule)| metrics::counter!(name, "section" => *section, "rule" => rule.clone()))
                .collect()
        };
        Self {
            matched: make("weir_policy_matched_spans_total"),
            sampled: make("weir_policy_sampled_spans_total"),
            sampled_out: make("weir_policy_sampled_out_spans_total"),
            rate_limited: make("weir_policy_rate_limited_spans_total"),
            routed_to_drop: make("weir_policy_dropped_spans_total"),
        }
    }

    /// Counts `n` spans that met decision `d`.
    pub(super) fn count(&self, d: &Counted, n: u64) {
        let default = self.matched.len() - 1;
        let sampling = d.sampling_rule.map_or(default, usize::from);
        if d.sampling_rule.is_some() {
            self.matched[sampling].increment(n);
        }
        if let Some(r) = d.routing_rule {
            self.matched[usize::from(r)].increment(n);
        }
        match d.outcome {
            Outcome::SampledOut => self.sampled_out[sampling].increment(n),
            Outcome::RateLimited => {
                self.sampled[sampling].increment(n);
                self.rate_limited[sampling].increment(n);
            }
            Outcome::RoutedToDrop => {
                self.sampled[sampling].increment(n);
                self.routed_to_drop[d.routing_rule.map_or(default, usize::from)].increment(n);
            }
            Outcome::Kept => self.sampled[sampling].increment(n),
        }
    }
}

/// The part of a decision the rule counters count.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Counted {
    pub(super) sampling_rule: Option<u16>,
    pub(super) routing_rule: Option<u16>,
    pub(super) outcome: Outcome,
}

/// A request's decisions, counted as runs of equal ones: the shared (atomic) counters are
/// touched once per run and at the end, not once per span.
pub(super) struct Tally<'c> {
    counters: &'c RuleCounters,
    run: Option<(Counted, u64)>,
}

impl<'c> Tally<'c> {
    /// A tally that counts into `counters`.
    pub(super) fn new(counters: &'c RuleCounters) -> Self {
        Self {
            counters,
            run: None,
        }
    }

    /// Counts one span's decision.
    #[inline]
    pub(super) fn add(&mut self, d: &Decision) {
        let counted = Counted {
            sampling_rule: d.sampling_rule,
            routing_rule: d.routing_rule,
            outcome: d.outcome,
        };
        match &mut self.run {
            Some((c, n)) if *c == counted => *n += 1,
            run => {
                if let Some((c, n)) = run.replace((counted, 1)) {
                    self.counters.count(&c, n);
                }
            }
        }
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        if let Some((c, n)) = self.run.take() {
            self.counters.count(&c, n);
        }
    }
}
