//! The span attribute limits, beside the gateway's other limits (`limits:` in the config):
//! what the caps are (`max_span_attributes`, `max_attribute_value_size`) and what happens to a
//! span over them (`attribute_limit_action`). The span bytes are measured and rewritten by
//! `weir_proto::wire`, which takes the caps as a parameter.

use weir_config::gateway::{AttributeLimitAction, Limits};
use weir_exporters::kafka::TracePlan;
use weir_proto::wire::{self, AttributeLimits, TraceRequestView};

/// The attribute caps of every span and what to do with a span over them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttributeLimitPolicy {
    /// The caps (`u32::MAX` / `usize::MAX` where the config sets none).
    pub caps: AttributeLimits,
    /// Truncate the span within the caps, or reject it.
    pub action: AttributeLimitAction,
}

impl AttributeLimitPolicy {
    /// The policy of the `limits:` section, or `None` when it caps neither the count nor the
    /// value size (then spans are not measured at all).
    pub fn from_config(l: &Limits) -> Option<Self> {
        (l.max_span_attributes.is_some() || l.max_attribute_value_size.is_some()).then(|| Self {
            caps: AttributeLimits {
                max_count: l.max_span_attributes.unwrap_or(u32::MAX),
                max_value_size: l
                    .max_attribute_value_size
                    .map_or(usize::MAX, |s| s.as_usize()),
            },
            action: l.attribute_limit_action,
        })
    }

    /// Holds every span of the request to the caps: spans over them are rewritten within them
    /// (`truncate`) or taken out of the plan (`reject`). Returns, for `reject`, how many spans
    /// were refused and why, for `partial_success`.
    pub fn apply(
        &self,
        body: &[u8],
        view: &TraceRequestView,
        plan: &mut TracePlan,
    ) -> Option<(u64, String)> {
        let limits = self.caps;
        let mut over: Vec<u32> = Vec::new();
        for (i, entry) in view.spans.iter().enumerate() {
            // A span the policy rewrote (a new trace_state) is limited in its rewritten form.
            let rewritten = plan
                .replaced
                .iter()
                .rev()
                .find(|(s, _)| *s as usize == i)
                .map(|(_, range)| range.clone());
            let bytes = match rewritten {
                Some(range) => &plan.rewritten[range],
                None => &body[entry.range()],
            };
            let excess = wire::attribute_excess(bytes, &limits);
            if excess.is_empty() {
                continue;
            }
            match self.action {
                AttributeLimitAction::Truncate => {
                    // Copy first: `rewritten` may hold the bytes being read.
                    let source = bytes.to_vec();
                    let start = plan.rewritten.len();
                    wire::write_span_within_limits(&source, &limits, &mut plan.rewritten);
                    plan.replaced.push((i as u32, start..plan.rewritten.len()));
                    metrics::counter!("weir_receiver_attribute_limited_spans_total", "action" => "truncate")
                        .increment(1);
                    metrics::counter!("weir_receiver_dropped_attributes_total")
                        .increment(u64::from(excess.dropped));
                    metrics::counter!("weir_receiver_truncated_attribute_values_total")
                        .increment(u64::from(excess.truncated));
                }
                AttributeLimitAction::Reject => over.push(i as u32),
            }
        }
        if over.is_empty() {
            return None;
        }
        plan.routes
            .retain(|(_, span)| over.binary_search(span).is_err());
        metrics::counter!("weir_receiver_attribute_limited_spans_total", "action" => "reject")
            .increment(over.len() as u64);
        let cap = |v: Option<String>| v.unwrap_or_else(|| "none".into());
        let reason = format!(
            "{} span(s) over the attribute limits (at most {} attributes, values of at most {} bytes) were rejected",
            over.len(),
            cap((limits.max_count != u32::MAX).then(|| limits.max_count.to_string())),
            cap((limits.max_value_size != usize::MAX).then(|| limits.max_value_size.to_string())),
        );
        Some((over.len() as u64, reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_config::units::ByteSize;

    #[test]
    fn no_cap_configured_means_no_policy() {
        assert_eq!(AttributeLimitPolicy::from_config(&Limits::default()), None);
    }

    #[test]
    fn an_absent_cap_is_unbounded() {
        let limits = Limits {
            max_span_attributes: Some(64),
            attribute_limit_action: AttributeLimitAction::Reject,
            ..Limits::default()
        };
        let policy = AttributeLimitPolicy::from_config(&limits).expect("a count cap is set");
        assert_eq!(
            policy.caps,
            AttributeLimits {
                max_count: 64,
                max_value_size: usize::MAX
            }
        );
        assert_eq!(policy.action, AttributeLimitAction::Reject);
        let limits = Limits {
            max_attribute_value_size: Some(ByteSize(1024)),
            ..Limits::default()
        };
        let policy = AttributeLimitPolicy::from_config(&limits).expect("a size cap is set");
        assert_eq!(
            (policy.caps.max_count, policy.caps.max_value_size),
            (u32::MAX, 1024)
        );
        assert_eq!(policy.action, AttributeLimitAction::Truncate);
    }
}
