//! Which rules can match a span, by its `service.name`: most rules name the services they are
//! for, so a span is only tested against the rules of its own service and the rules that
//! name none, still in document order. With 100 per-service rules a span meets one or two
//! conditions instead of 100.

use super::matcher::Condition;
use std::collections::HashMap;

/// The rules of one section, indexed by the services they require.
#[derive(Debug, Default)]
pub(crate) struct RuleIndex {
    /// Rules any service can match, ascending.
    any_service: Box<[u16]>,
    /// Rules only the given service can match, ascending.
    by_service: HashMap<Box<str>, Vec<u16>>,
}

impl RuleIndex {
    /// Indexes rules given their conditions in document order.
    pub(crate) fn new<'a>(conditions: impl IntoIterator<Item = &'a Condition>) -> Self {
        let mut any_service = Vec::new();
        let mut by_service: HashMap<Box<str>, Vec<u16>> = HashMap::new();
        for (i, c) in conditions.into_iter().enumerate() {
            // Compilation caps a section at 65535 rules.
            let i = i as u16;
            match c.required_services() {
                None => any_service.push(i),
                Some(services) => {
                    for s in services {
                        let rules = by_service.entry(s.into()).or_default();
                        if rules.last() != Some(&i) {
                            rules.push(i);
                        }
                    }
                }
            }
        }
        Self {
            any_service: any_service.into(),
            by_service,
        }
    }

    /// True when some rule requires a service, so evaluation must look `service.name` up.
    pub(crate) fn uses_service(&self) -> bool {
        !self.by_service.is_empty()
    }

    /// The first rule, in document order, that a span of `service` can match and for which
    /// `matches` says it does.
    pub(crate) fn first(
        &self,
        service: Option<&str>,
        mut matches: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        let own: &[u16] = service
            .and_then(|s| self.by_service.get(s))
            .map_or(&[], Vec::as_slice);
        let any = &self.any_service;
        let (mut i, mut j) = (0, 0);
        loop {
            // Merge the two ascending lists; no rule is in both.
            let next = match (any.get(i), own.get(j)) {
                (Some(&a), Some(&b)) if a < b => {
                    i += 1;
                    a
                }
                (_, Some(&b)) => {
                    j += 1;
                    b
                }
                (Some(&a), None) => {
                    i += 1;
                    a
                }
                (None, None) => return None,
            };
            if matches(usize::from(next)) {
                return Some(usize::from(next));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conditions(yaml: &[&str]) -> Vec<Condition> {
        yaml.iter()
            .map(|y| serde_yaml::from_str(y).unwrap())
            .collect()
    }

    #[test]
    fn services_are_read_from_conditions() {
        let cs = conditions(&[
            "{ resource: service.name, eq: a }",
            "{ all: [ { span_kind: server }, { resource: service.name, in: [a, b] } ] }",
            "{ any: [ { resource: service.name, eq: c }, { resource: service.name, eq: a } ] }",
            "{ any: [ { resource: service.name, eq: c }, { span_kind: client } ] }",
            "{ not: { resource: service.name, eq: a } }",
            "{ resource: service.name, in: [a, 5] }",
            "{ resource: service.name, prefix: a }",
            "{ resource: other, eq: a }",
        ]);
        let idx = RuleIndex::new(&cs);
        assert!(idx.uses_service());
        let tried = |service: Option<&str>| {
            let mut seen = Vec::new();
            idx.first(service, |i| {
                seen.push(i);
                false
            });
            seen
        };
        assert_eq!(tried(Some("a")), [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(tried(Some("b")), [1, 3, 4, 5, 6, 7]);
        assert_eq!(tried(Some("c")), [2, 3, 4, 5, 6, 7]);
        assert_eq!(tried(Some("z")), [3, 4, 5, 6, 7]);
        assert_eq!(tried(None), [3, 4, 5, 6, 7]);
        assert_eq!(idx.first(Some("a"), |i| i >= 2), Some(2));
        assert_eq!(idx.first(Some("b"), |i| i == 0), None);
    }

    #[test]
    fn no_service_rules_no_lookup() {
        let cs = conditions(&["{ span_kind: server }", "{ root: true }"]);
        let idx = RuleIndex::new(&cs);
        assert!(!idx.uses_service());
        assert_eq!(idx.first(None, |i| i == 1), Some(1));
    }
}
