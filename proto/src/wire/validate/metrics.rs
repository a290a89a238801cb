//! Validation of OTLP metrics requests: decoding with `prost` checks the bytes; what it cannot
//! check is the trace context an exemplar may carry, which must be well-formed when set.

use super::{SPAN_ID_LEN, TRACE_ID_LEN, check_id};
use crate::echo::echoed_name;
use crate::otlp::collector::metrics::v1::ExportMetricsServiceRequest;
use crate::otlp::metrics::v1::{Exemplar, metric::Data};
use crate::wire::reader::Result;

/// Checks the ids of every exemplar's trace context: each empty, or of the right length.
pub fn metrics_request(req: &ExportMetricsServiceRequest) -> Result<()> {
    for (ri, r) in req.resource_metrics.iter().enumerate() {
        for (si, s) in r.scope_metrics.iter().enumerate() {
            for (mi, m) in s.metrics.iter().enumerate() {
                let exemplars: Box<dyn Iterator<Item = &Exemplar>> = match &m.data {
                    Some(Data::Gauge(g)) => {
                        Box::new(g.data_points.iter().flat_map(|p| &p.exemplars))
                    }
                    Some(Data::Sum(g)) => Box::new(g.data_points.iter().flat_map(|p| &p.exemplars)),
                    Some(Data::Histogram(g)) => {
                        Box::new(g.data_points.iter().flat_map(|p| &p.exemplars))
                    }
                    Some(Data::ExponentialHistogram(g)) => {
                        Box::new(g.data_points.iter().flat_map(|p| &p.exemplars))
                    }
                    Some(Data::Summary(_)) | None => Box::new(std::iter::empty()),
                };
                for e in exemplars {
                    let at = || {
                        format!(
                            "resource_metrics[{ri}].scope_metrics[{si}].metrics[{mi}] ({}) exemplar",
                            echoed_name(&m.name)
                        )
                    };
                    check_id(&e.trace_id, TRACE_ID_LEN, false, || {
                        format!("{}.trace_id", at())
                    })?;
                    check_id(&e.span_id, SPAN_ID_LEN, false, || {
                        format!("{}.span_id", at())
                    })?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::metrics::v1::{Gauge, Metric, NumberDataPoint};
    use crate::test_support::resource_metrics;

    fn req(name: &str) -> ExportMetricsServiceRequest {
        let point = NumberDataPoint {
            exemplars: vec![Exemplar {
                trace_id: vec![1; 15],
                ..Default::default()
            }],
            ..Default::default()
        };
        let metric = Metric {
            name: name.into(),
            data: Some(Data::Gauge(Gauge {
                data_points: vec![point],
            })),
            ..Default::default()
        };
        ExportMetricsServiceRequest {
            resource_metrics: vec![resource_metrics(None, None, vec![metric])],
        }
    }

    #[test]
    fn bad_exemplar_ids_name_the_metric() {
        let e = metrics_request(&req("http.server.duration"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "resource_metrics[0].scope_metrics[0].metrics[0] (http.server.duration) exemplar.trace_id: must be 16 bytes or empty, got 15 bytes"
        );
    }

    /// Issue 16, item 7: a metric named with a megabyte is quoted by its first bytes only.
    #[test]
    fn long_metric_names_are_quoted_cut() {
        let e = metrics_request(&req(&"m".repeat(1_000_000)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("… (1000000 bytes)) exemplar.trace_id"), "{e}");
        assert!(e.len() < 300, "{}", e.len());
    }
}
