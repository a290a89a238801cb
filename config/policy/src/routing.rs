//! Routing: the first rule whose condition matches sends the span to its topics or drops it;
//! spans no rule matches go to the default topic.

use super::matcher::Condition;
use super::rule_index::first_match;
use super::span::SpanView;

/// A destination topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// The gateway's configured trace topic (`kafka.traces.topic`).
    Default,
    /// `Policy::topics()[i]`.
    Named(u16),
}

/// The topics of one decision, as a range of `Policy::topic_set`; `Copy` and allocation-free.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TopicSet {
    start: u16,
    len: u16,
}

impl TopicSet {
    /// No topic: the span is not sent.
    pub const EMPTY: TopicSet = TopicSet { start: 0, len: 0 };

    /// True when the span goes nowhere.
    pub fn is_empty(self) -> bool {
        self.len == 0
    }

    /// How many topics.
    pub fn len(self) -> usize {
        usize::from(self.len)
    }
}

/// The compiled `routing` section.
#[derive(Debug)]
pub(crate) struct Routing {
    pub(crate) rules: Box<[RoutingRule]>,
    /// Distinct topic names, in order of first mention.
    pub(crate) topics: Box<[String]>,
    /// The topic sets, end to end.
    pub(crate) sets: Box<[Topic]>,
    /// Where spans no rule matches go.
    pub(crate) default: TopicSet,
}

/// One compiled routing rule.
#[derive(Debug)]
pub(crate) struct RoutingRule {
    pub(crate) condition: Condition,
    pub(crate) action: RuleAction,
}

/// What a routing rule does.
#[derive(Clone, Copy, Debug)]
pub(crate) enum RuleAction {
    Drop,
    Send(TopicSet),
}

impl Routing {
    /// The index of the first rule that matches. `candidates` are the policy's rules that can
    /// match, numbered from the first sampling rule: routing rules start at `first`.
    pub(crate) fn select<S: SpanView + ?Sized>(
        &self,
        span: &S,
        candidates: &[u64],
        first: usize,
    ) -> Option<usize> {
        first_match(candidates, first..first + self.rules.len(), |i| {
            self.rules[i - first].condition.matches(span)
        })
        .map(|i| i - first)
    }

    /// The topics of `set`.
    pub(crate) fn set(&self, set: TopicSet) -> &[Topic] {
        let start = usize::from(set.start);
        self.sets
            .get(start..start + usize::from(set.len))
            .unwrap_or(&[])
    }
}

/// Collects topic names and sets while a policy is compiled.
#[derive(Default)]
pub(crate) struct RoutingBuilder {
    topics: Vec<String>,
    sets: Vec<Topic>,
}

impl RoutingBuilder {
    /// The topic named `name`, registering it on first mention.
    pub(crate) fn topic(&mut self, name: &str) -> Result<Topic, String> {
        let i = match self.topics.iter().position(|t| t == name) {
            Some(i) => i,
            None => {
                self.topics.push(name.to_string());
                self.topics.len() - 1
            }
        };
        u16::try_from(i)
            .map(Topic::Named)
            .map_err(|_| "more than 65535 distinct topics".to_string())
    }

    /// Stores a set of topics.
    pub(crate) fn set(&mut self, topics: &[Topic]) -> Result<TopicSet, String> {
        let too_many = || "the routing rules list more than 65535 topics in all".to_string();
        let start = u16::try_from(self.sets.len()).map_err(|_| too_many())?;
        let len = u16::try_from(topics.len()).map_err(|_| too_many())?;
        if usize::from(start) + usize::from(len) > usize::from(u16::MAX) {
            return Err(too_many());
        }
        self.sets.extend_from_slice(topics);
        Ok(TopicSet { start, len })
    }

    pub(crate) fn build(self, rules: Vec<RoutingRule>, default: TopicSet) -> Routing {
        Routing {
            rules: rules.into(),
            topics: self.topics.into(),
            sets: self.sets.into(),
            default,
        }
    }
}
