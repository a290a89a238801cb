//! Validation of OTLP metrics requests: decoding with `prost` checks the bytes; what it cannot
//! check is the trace context an exemplar may carry, which must be well-formed when set.

use super::{SPAN_ID_LEN, TRACE_ID_LEN, check_id};
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
                            m.name
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
