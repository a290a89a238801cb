//! OTLP protobuf metrics and logs requests through what the gateway does with them: `prost`
//! decoding, the id checks of `weir_proto::wire::validate`, and record building (grouping by resource,
//! splitting by size) in both encodings, with the records no larger than what was charged for
//! them before they were built. The first byte picks the signal; the rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use weir_config::gateway::Encoding;
use weir_exporters::kafka::{Batch, OutputLimit, data_points, logs_batch, metrics_batch};
use weir_proto::otlp::collector::logs::v1::ExportLogsServiceRequest;
use weir_proto::otlp::collector::metrics::v1::ExportMetricsServiceRequest;
use weir_proto::otlp::logs::v1::LogsData;
use weir_proto::otlp::metrics::v1::MetricsData;
use weir_proto::wire::validate;

/// A usual record limit and a small one that splits most requests.
const MAX_MESSAGE_SIZES: [usize; 2] = [1 << 20, 600];

/// The key and framing bytes the exporter keeps free in a record (`RECORD_OVERHEAD`).
const RECORD_OVERHEAD: usize = 128;

fuzz_target!(|input: &[u8]| {
    let Some((&selector, body)) = input.split_first() else {
        return;
    };
    if selector & 1 == 0 {
        metrics(body);
    } else {
        logs(body);
    }
});

fn metrics(body: &[u8]) {
    let Ok(req) = ExportMetricsServiceRequest::decode(body) else {
        return;
    };
    if validate::metrics_request(&req).is_err() {
        return;
    }
    let points: u64 = req
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(data_points)
        .sum();
    for max in MAX_MESSAGE_SIZES {
        for encoding in [Encoding::OtlpProto, Encoding::OtlpJson] {
            let mut budget = OutputLimit::new(usize::MAX);
            let batch = metrics_batch(req.clone(), &"metrics".into(), encoding, max, &mut budget)
                .expect("an unlimited budget refuses nothing");
            weir_fuzz::check_charge(&batch, budget.charged(), encoding);
            check(&batch, points, encoding, max);
            if encoding == Encoding::OtlpProto {
                let sent: u64 = batch
                    .records
                    .iter()
                    .map(|r| {
                        let data = MetricsData::decode(&r.value[..])
                            .expect("a metrics record is a valid MetricsData");
                        let n: u64 = data
                            .resource_metrics
                            .iter()
                            .flat_map(|r| &r.scope_metrics)
                            .flat_map(|s| &s.metrics)
                            .map(data_points)
                            .sum();
                        assert_eq!(n, r.items, "a record holds the points it counts");
                        n
                    })
                    .sum();
                assert_eq!(sent + batch.rejected, points);
            }
        }
    }
}

fn logs(body: &[u8]) {
    let Ok(req) = ExportLogsServiceRequest::decode(body) else {
        return;
    };
    if validate::logs_request(&req).is_err() {
        return;
    }
    let records: u64 = req
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len() as u64)
        .sum();
    for max in MAX_MESSAGE_SIZES {
        for encoding in [Encoding::OtlpProto, Encoding::OtlpJson] {
            let mut budget = OutputLimit::new(usize::MAX);
            let batch = logs_batch(req.clone(), &"logs".into(), encoding, max, &mut budget)
                .expect("an unlimited budget refuses nothing");
            weir_fuzz::check_charge(&batch, budget.charged(), encoding);
            check(&batch, records, encoding, max);
            if encoding == Encoding::OtlpProto {
                for r in &batch.records {
                    let data =
                        LogsData::decode(&r.value[..]).expect("a logs record is a valid LogsData");
                    let n: u64 = data
                        .resource_logs
                        .iter()
                        .flat_map(|r| &r.scope_logs)
                        .map(|s| s.log_records.len() as u64)
                        .sum();
                    assert_eq!(n, r.items, "a record holds the log records it counts");
                }
            }
        }
    }
}

/// Nothing is lost or invented: every item is in a record or counted as rejected; records
/// are not empty, and protobuf ones keep within `max` less key and framing.
fn check(batch: &Batch, items: u64, encoding: Encoding, max: usize) {
    let sent: u64 = batch.records.iter().map(|r| r.items).sum();
    assert_eq!(
        sent + batch.rejected,
        items,
        "every item is sent or rejected"
    );
    assert_eq!(batch.rejected > 0, batch.reject_reason.is_some());
    for r in &batch.records {
        assert!(r.items > 0, "no empty record");
        if encoding == Encoding::OtlpProto {
            let budget = max.saturating_sub(r.key.len() + RECORD_OVERHEAD).max(1);
            assert!(
                r.value.len() <= budget,
                "a record of {} bytes is over its budget of {budget}",
                r.value.len()
            );
        }
    }
}
