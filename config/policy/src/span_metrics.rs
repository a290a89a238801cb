//! Span metrics: the `span_metrics` section of the policy document, compiled.
//!
//! Gateways count every span before sampling and routing drop any: calls, errors and a
//! duration histogram per (service, span name, span kind, status code); calls, failures and a
//! latency histogram per edge (from CLIENT and PRODUCER spans); and root spans over an SLA per
//! operation. This section says whether to, with which histogram buckets, which SLAs, how many
//! series an interval may hold, and where and how often to flush. The aggregation itself is the
//! gateway's (`gateway/src/spanmetrics/`); docs in `docs/span-metrics.md`.

use super::PolicyError;
use super::document::{Dur, ServiceName, TopicName};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// The spanmetrics connector's default duration buckets, in milliseconds.
const DEFAULT_DURATION_BUCKETS_MS: [u64; 16] = [
    2, 4, 6, 8, 10, 50, 100, 200, 400, 800, 1000, 1400, 2000, 5000, 10_000, 15_000,
];

/// Most buckets a histogram may have: each is a counter per series on the gateways.
const MAX_BUCKETS: usize = 64;

/// The `span_metrics` section as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SpanMetricsDoc {
    /// Whether gateways aggregate at all (a section can be kept and switched off).
    #[serde(default = "yes")]
    enabled: bool,
    /// The topic the metrics are flushed to.
    #[serde(default = "default_topic")]
    topic: TopicName,
    /// How often gateways flush (delta temporality: each flush covers the interval since the
    /// last one).
    #[serde(default = "default_flush_interval")]
    flush_interval: Dur,
    /// Upper bounds of the duration histogram's buckets (the last bucket is unbounded).
    #[serde(default)]
    duration_buckets: Option<Vec<Dur>>,
    /// Upper bounds of the edge latency histogram's buckets.
    #[serde(default)]
    edge_latency_buckets: Option<Vec<Dur>>,
    /// Distinct (service, span name, kind, status) series per gateway per interval; spans of
    /// further series are counted in one overflow series.
    #[serde(default = "default_max_series")]
    max_series: usize,
    /// Distinct (client, server, connection type) edges per gateway per interval.
    #[serde(default = "default_max_edges")]
    max_edges: usize,
    /// Root spans over an SLA counted per operation.
    #[serde(default)]
    root_sla: Option<RootSlaDoc>,
}

fn yes() -> bool {
    true
}
fn default_topic() -> TopicName {
    TopicName("weir.span_metrics".into())
}
fn default_flush_interval() -> Dur {
    Dur(Duration::from_secs(15))
}
fn default_max_series() -> usize {
    10_000
}
fn default_max_edges() -> usize {
    2_000
}

/// `span_metrics.root_sla`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RootSlaDoc {
    /// The SLA of root spans of services (or operations) not listed below; absent: only the
    /// listed ones are checked.
    #[serde(default)]
    default: Option<Dur>,
    /// Per service: its default, and per operation (span name).
    #[serde(default)]
    services: BTreeMap<ServiceName, ServiceSlaDoc>,
}

/// `span_metrics.root_sla.services.NAME`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSlaDoc {
    #[serde(default)]
    default: Option<Dur>,
    #[serde(default)]
    operations: BTreeMap<String, Dur>,
}

/// A histogram's bucket bounds, in nanoseconds (what spans are compared with, exactly) and in
/// the unit the metric is written in.
#[derive(Debug, PartialEq)]
pub struct Buckets {
    /// Upper bounds in nanoseconds, strictly increasing; a value equal to a bound is in its
    /// bucket (OTLP's explicit-bucket rule).
    pub nanos: Box<[u64]>,
}

impl Buckets {
    /// The index of the bucket `nanos` falls in: 0..=len (len: above the last bound).
    #[inline]
    pub fn index(&self, nanos: u64) -> usize {
        self.nanos.partition_point(|&b| b < nanos)
    }

    /// The bounds in milliseconds (the spanmetrics connector's unit).
    pub fn millis(&self) -> Vec<f64> {
        self.nanos.iter().map(|&n| n as f64 / 1e6).collect()
    }

    /// The bounds in seconds (the servicegraph connector's unit).
    pub fn seconds(&self) -> Vec<f64> {
        self.nanos.iter().map(|&n| n as f64 / 1e9).collect()
    }
}

/// The SLAs of one service.
#[derive(Debug, Default)]
struct ServiceSla {
    default: Option<u64>,
    operations: HashMap<String, u64>,
}

/// The compiled `span_metrics` section.
#[derive(Debug)]
pub struct SpanMetricsPolicy {
    /// The topic metrics are flushed to.
    pub topic: String,
    /// How often gateways flush.
    pub flush_interval: Duration,
    /// Duration histogram buckets of span series.
    pub duration_buckets: Arc<Buckets>,
    /// Latency histogram buckets of edges.
    pub edge_latency_buckets: Arc<Buckets>,
    /// Series per interval before the overflow series.
    pub max_series: usize,
    /// Edges per interval before the overflow edge.
    pub max_edges: usize,
    sla_default: Option<u64>,
    sla_services: HashMap<String, ServiceSla>,
}

impl SpanMetricsPolicy {
    /// `None` when the section is switched off (`enabled: false`).
    pub(crate) fn compile(doc: SpanMetricsDoc) -> Result<Option<SpanMetricsPolicy>, PolicyError> {
        const PATH: &str = "span_metrics";
        let interval = doc.flush_interval.0;
        if interval < Duration::from_millis(100) || interval > Duration::from_secs(300) {
            return Err(PolicyError::new(
                format!("{PATH}.flush_interval"),
                format!("{interval:?} is out of range: flush every 100ms to 5m (default 15s)"),
            ));
        }
        for (key, cap) in [("max_series", doc.max_series), ("max_edges", doc.max_edges)] {
            if !(1..=1_000_000).contains(&cap) {
                return Err(PolicyError::new(
                    format!("{PATH}.{key}"),
                    format!("{cap} is out of range: give 1 to 1000000 series per interval"),
                ));
            }
        }
        let duration_buckets = buckets(
            &format!("{PATH}.duration_buckets"),
            doc.duration_buckets.as_deref(),
        )?;
        let edge_latency_buckets = buckets(
            &format!("{PATH}.edge_latency_buckets"),
            doc.edge_latency_buckets.as_deref(),
        )?;
        let mut sla_default = None;
        let mut sla_services = HashMap::new();
        if let Some(sla) = doc.root_sla {
            let positive = |path: String, d: Dur| {
                if d.0.is_zero() {
                    Err(PolicyError::new(
                        path,
                        "an SLA of 0 counts every root span: give a duration above 0",
                    ))
                } else {
                    Ok(d.nanos())
                }
            };
            sla_default = sla
                .default
                .map(|d| positive(format!("{PATH}.root_sla.default"), d))
                .transpose()?;
            for (service, s) in sla.services {
                let at = format!("{PATH}.root_sla.services.{}", service.0);
                let default = s
                    .default
                    .map(|d| positive(format!("{at}.default"), d))
                    .transpose()?;
                let mut operations = HashMap::with_capacity(s.operations.len());
                for (op, d) in s.operations {
                    operations.insert(op.clone(), positive(format!("{at}.operations.{op}"), d)?);
                }
                if default.is_none() && operations.is_empty() {
                    return Err(PolicyError::new(
                        at,
                        "sets no SLA: give `default` or `operations`",
                    ));
                }
                sla_services.insert(
                    service.0,
                    ServiceSla {
                        default,
                        operations,
                    },
                );
            }
            if sla_default.is_none() && sla_services.is_empty() {
                return Err(PolicyError::new(
                    format!("{PATH}.root_sla"),
                    "sets no SLA: give `default` or `services`",
                ));
            }
        }
        if !doc.enabled {
            return Ok(None);
        }
        Ok(Some(SpanMetricsPolicy {
            topic: doc.topic.0,
            flush_interval: interval,
            duration_buckets: Arc::new(duration_buckets),
            edge_latency_buckets: Arc::new(edge_latency_buckets),
            max_series: doc.max_series,
            max_edges: doc.max_edges,
            sla_default,
            sla_services,
        }))
    }

    /// The SLA of a root span of `service` named `operation`, in nanoseconds: the operation's,
    /// else the service's default, else the section's default.
    #[inline]
    pub fn root_sla(&self, service: &str, operation: &str) -> Option<u64> {
        if let Some(s) = self.sla_services.get(service) {
            if let Some(&op) = s.operations.get(operation) {
                return Some(op);
            }
            if s.default.is_some() {
                return s.default;
            }
        }
        self.sla_default
    }

    /// Whether any SLA is set (root spans need no lookup otherwise).
    pub fn has_root_sla(&self) -> bool {
        self.sla_default.is_some() || !self.sla_services.is_empty()
    }
}

/// Compiled bucket bounds: the given ones (strictly increasing, above 0, at most
/// `MAX_BUCKETS`), or the spanmetrics connector's defaults.
fn buckets(path: &str, given: Option<&[Dur]>) -> Result<Buckets, PolicyError> {
    let nanos: Vec<u64> = match given {
        None => DEFAULT_DURATION_BUCKETS_MS
            .iter()
            .map(|ms| ms * 1_000_000)
            .collect(),
        Some(bounds) => bounds.iter().map(|d| d.nanos()).collect(),
    };
    if nanos.is_empty() || nanos.len() > MAX_BUCKETS {
        return Err(PolicyError::new(
            path,
            format!("give 1 to {MAX_BUCKETS} bucket bounds"),
        ));
    }
    if nanos[0] == 0 {
        return Err(PolicyError::new(
            format!("{path}[0]"),
            "a bound of 0 holds nothing: start above 0",
        ));
    }
    if let Some(i) = nanos.windows(2).position(|w| w[0] >= w[1]) {
        return Err(PolicyError::new(
            format!("{path}[{}]", i + 1),
            "bounds must increase strictly",
        ));
    }
    Ok(Buckets {
        nanos: nanos.into(),
    })
}

#[cfg(test)]
mod tests {
    use crate::Policy;

    fn section(text: &str) -> Result<Policy, crate::PolicyError> {
        Policy::parse(&format!("version: 1\nspan_metrics:\n{text}"))
    }

    #[test]
    fn defaults_follow_the_spanmetrics_connector() {
        let p = section("  enabled: true\n").unwrap();
        let m = p.span_metrics().unwrap();
        assert_eq!(m.topic, "weir.span_metrics");
        assert_eq!(m.flush_interval.as_secs(), 15);
        assert_eq!(m.duration_buckets.millis()[..3], [2.0, 4.0, 6.0]);
        assert_eq!(m.duration_buckets.nanos.len(), 16);
        assert!(!m.has_root_sla());
        assert!(
            Policy::parse("version: 1\n")
                .unwrap()
                .span_metrics()
                .is_none()
        );
        assert!(
            section("  enabled: false\n")
                .unwrap()
                .span_metrics()
                .is_none()
        );
    }

    #[test]
    fn bucket_index_is_upper_inclusive() {
        let p = section("  duration_buckets: [1ms, 10ms]\n").unwrap();
        let b = &p.span_metrics().unwrap().duration_buckets;
        assert_eq!(b.index(0), 0);
        assert_eq!(b.index(1_000_000), 0);
        assert_eq!(b.index(1_000_001), 1);
        assert_eq!(b.index(10_000_000), 1);
        assert_eq!(b.index(10_000_001), 2);
    }

    #[test]
    fn slas_resolve_operation_then_service_then_default() {
        let p = section(
            "  root_sla:\n    default: 2s\n    services:\n      shop:\n        default: 1s\n        operations:\n          checkout: 300ms\n      pay:\n        operations:\n          charge: 50ms\n",
        )
        .unwrap();
        let m = p.span_metrics().unwrap();
        assert_eq!(m.root_sla("shop", "checkout"), Some(300_000_000));
        assert_eq!(m.root_sla("shop", "list"), Some(1_000_000_000));
        assert_eq!(m.root_sla("pay", "charge"), Some(50_000_000));
        assert_eq!(m.root_sla("pay", "refund"), Some(2_000_000_000));
        assert_eq!(m.root_sla("other", "x"), Some(2_000_000_000));
    }

    #[test]
    fn refusals_name_the_key() {
        for (text, path) in [
            (
                "  duration_buckets: [10ms, 5ms]\n",
                "span_metrics.duration_buckets[1]",
            ),
            ("  duration_buckets: []\n", "span_metrics.duration_buckets"),
            (
                "  edge_latency_buckets: [0s]\n",
                "span_metrics.edge_latency_buckets[0]",
            ),
            ("  flush_interval: 1ms\n", "span_metrics.flush_interval"),
            ("  max_series: 0\n", "span_metrics.max_series"),
            ("  root_sla: {}\n", "span_metrics.root_sla"),
            (
                "  root_sla:\n    default: 0s\n",
                "span_metrics.root_sla.default",
            ),
            (
                "  root_sla:\n    services:\n      a: {}\n",
                "span_metrics.root_sla.services.a",
            ),
            ("  topic: 'no spaces'\n", "span_metrics.topic"),
            ("  nope: 1\n", "span_metrics.nope"),
        ] {
            let e = section(text).expect_err(text);
            assert_eq!(e.path(), path, "{text}: {e}");
        }
    }
}
