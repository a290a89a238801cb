//! Head sampling: the first rule whose condition matches gives the probability (else the
//! default), and the span's randomness decides, consistently for every span of a trace and
//! on every gateway (see `threshold.rs`).

use super::document::SamplingMode;
use super::matcher::Condition;
use super::rate_limit::RateLimiter;
use super::rule_index::first_match;
use super::span::SpanView;
use super::threshold::{OtSampling, Randomness, Threshold};

/// The compiled `sampling` section.
#[derive(Debug)]
pub(crate) struct Sampling {
    pub(crate) mode: SamplingMode,
    pub(crate) precision: u8,
    pub(crate) rules: Box<[SamplingRule]>,
    pub(crate) default: Chance,
    pub(crate) rate_limit: Option<RateLimiter>,
}

/// One compiled sampling rule.
#[derive(Debug)]
pub(crate) struct SamplingRule {
    pub(crate) condition: Condition,
    pub(crate) chance: Chance,
}

/// A probability and its threshold, computed once when the policy is compiled.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Chance {
    p: f64,
    /// `None` for probability 0: never kept.
    threshold: Option<Threshold>,
}

impl Chance {
    /// True for probability 1: the span is kept and its tracestate left as it is.
    pub(crate) fn is_always(&self) -> bool {
        self.threshold == Some(Threshold::ALWAYS)
    }

    pub(crate) fn new(p: f64, precision: u8) -> Self {
        Self {
            p,
            threshold: Threshold::from_probability(p, precision),
        }
    }
}

/// The outcome of probability sampling for one span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sampled {
    Out,
    /// Kept; `Some` when the span's tracestate must record this threshold.
    Kept(Option<Threshold>),
}

impl Sampling {
    /// The index of the first rule that matches, and its chance; the default when none does.
    /// `candidates` are the policy's rules that can match (sampling rules first).
    pub(crate) fn select<S: SpanView + ?Sized>(
        &self,
        span: &S,
        candidates: &[u64],
    ) -> (Option<usize>, Chance) {
        first_match(candidates, 0..self.rules.len(), |i| {
            self.rules[i].condition.matches(span)
        })
        .map_or((None, self.default), |i| (Some(i), self.rules[i].chance))
    }

    /// Applies `chance` to `span`.
    ///
    /// Probability 1 is not a sampling stage: the span is kept and its tracestate left as it
    /// is. Below 1, the randomness is `rv` from the span's `ot` tracestate entry when present,
    /// else the trace id's last 7 bytes; an arriving `th` that this randomness contradicts is
    /// ignored (the specification asks to erase it, which writing ours does). The threshold
    /// applied never goes below the arriving one: a downstream stage cannot raise a
    /// probability.
    pub(crate) fn sample<S: SpanView + ?Sized>(&self, chance: Chance, span: &S) -> Sampled {
        let Some(ours) = chance.threshold else {
            return Sampled::Out;
        };
        if ours == Threshold::ALWAYS {
            return Sampled::Kept(None);
        }
        let ot = OtSampling::parse(span.trace_state());
        let r = ot
            .rv
            .unwrap_or_else(|| Randomness::from_trace_id(span.trace_id()));
        let arriving = ot.th.filter(|t| t.keeps(r));
        let applied = match (self.mode, arriving) {
            (_, None) => ours,
            (SamplingMode::Proportional, Some(t)) => {
                match Threshold::from_probability(chance.p * t.probability(), self.precision) {
                    Some(product) => product.max(t),
                    // Below 2^-56: nothing can be kept.
                    None => return Sampled::Out,
                }
            }
            (SamplingMode::Equalizing, Some(t)) => ours.max(t),
        };
        if !applied.keeps(r) {
            return Sampled::Out;
        }
        Sampled::Kept((ot.th != Some(applied)).then_some(applied))
    }
}
