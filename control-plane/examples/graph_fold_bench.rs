//! How many span-metrics series per second one control plane folds into its graph windows,
//! and whether it keeps up with a fleet of gateways' flushes (issue 21).
//!
//! Builds the records a gateway flush writes (OTLP `MetricsData`, protobuf: calls and a
//! duration histogram per operation, calls, failures and a latency histogram per edge), one
//! per gateway, then times `fold_record` over all of them (decode included) on one thread,
//! and one `/api/v1/graph` computation over the result.
//!
//! ```sh
//! cargo run --release -p weir-control-plane --example graph_fold_bench -- \
//!     [gateways=200] [operations=1000] [edges=300] [rounds=5]
//! ```

use prost::Message;
use std::time::Instant;
use weir_control_plane::graph::records::fold_record;
use weir_control_plane::graph::windows::{Window, Windows};
use weir_control_plane::graph::{graph, now_secs};
use weir_proto::otlp::common::v1::{AnyValue, KeyValue, any_value};
use weir_proto::otlp::metrics::v1::{
    AggregationTemporality, Histogram, HistogramDataPoint, Metric, MetricsData, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use weir_proto::otlp::resource::v1::Resource;

/// The spanmetrics connector's default duration bounds, in ms.
const BOUNDS_MS: [f64; 16] = [
    2.0, 4.0, 6.0, 8.0, 10.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1000.0, 1400.0, 2000.0, 5000.0,
    10000.0, 15000.0,
];

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn sum(name: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        data: Some(metric::Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: AggregationTemporality::Delta as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

fn histogram(name: &str, points: Vec<HistogramDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        data: Some(metric::Data::Histogram(Histogram {
            data_points: points,
            aggregation_temporality: AggregationTemporality::Delta as i32,
        })),
        ..Default::default()
    }
}

fn count(attributes: Vec<KeyValue>, n: i64, time: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        time_unix_nano: time,
        value: Some(number_data_point::Value::AsInt(n)),
        ..Default::default()
    }
}

fn buckets(attributes: Vec<KeyValue>, seed: u64, time: u64) -> HistogramDataPoint {
    let counts: Vec<u64> = (0..=BOUNDS_MS.len() as u64)
        .map(|i| (seed + i) % 7)
        .collect();
    HistogramDataPoint {
        attributes,
        time_unix_nano: time,
        count: counts.iter().sum(),
        sum: Some(seed as f64 * 3.5),
        bucket_counts: counts,
        explicit_bounds: BOUNDS_MS.to_vec(),
        ..Default::default()
    }
}

/// One gateway's flush: `operations` operations over 100 services, `edges` edges.
fn flush(gateway: usize, operations: usize, edges: usize, time: u64) -> Vec<u8> {
    let op_attrs = |i: usize, error: bool| {
        vec![
            kv("service.name", &format!("svc-{}", i % 100)),
            kv("span.name", &format!("GET /route/{i}")),
            kv("span.kind", "SPAN_KIND_SERVER"),
            kv(
                "status.code",
                if error {
                    "STATUS_CODE_ERROR"
                } else {
                    "STATUS_CODE_UNSET"
                },
            ),
        ]
    };
    let edge_attrs = |i: usize| {
        vec![
            kv("client", &format!("svc-{}", i % 100)),
            kv("server", &format!("svc-{}", (i * 7 + 1) % 100)),
            kv("connection_type", ""),
        ]
    };
    let seed = gateway as u64;
    let metrics = vec![
        sum(
            "traces.span.metrics.calls",
            (0..operations)
                .map(|i| count(op_attrs(i, i % 10 == 0), 50, time))
                .collect(),
        ),
        histogram(
            "traces.span.metrics.duration",
            (0..operations)
                .map(|i| buckets(op_attrs(i, i % 10 == 0), seed + i as u64, time))
                .collect(),
        ),
        sum(
            "traces_service_graph_request_total",
            (0..edges).map(|i| count(edge_attrs(i), 40, time)).collect(),
        ),
        sum(
            "traces_service_graph_request_failed_total",
            (0..edges).map(|i| count(edge_attrs(i), 1, time)).collect(),
        ),
        histogram(
            "traces_service_graph_request_client_seconds",
            (0..edges)
                .map(|i| buckets(edge_attrs(i), seed + i as u64, time))
                .collect(),
        ),
    ];
    MetricsData {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", "weir-gateway"),
                    kv("service.instance.id", &format!("gw-{gateway}")),
                ],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

fn arg(args: &[String], i: usize, default: usize) -> usize {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let gateways = arg(&args, 0, 200);
    let operations = arg(&args, 1, 1000);
    let edges = arg(&args, 2, 300);
    let rounds = arg(&args, 3, 5);
    let now = now_secs();
    let time = now * 1_000_000_000;
    let records: Vec<Vec<u8>> = (0..gateways)
        .map(|g| flush(g, operations, edges, time))
        .collect();
    let bytes: usize = records.iter().map(Vec::len).sum();
    let points_per_flush = 2 * operations + 3 * edges;
    println!(
        "{gateways} gateways' flushes: {points_per_flush} data points each, {:.1} MB in all",
        bytes as f64 / 1e6
    );
    let windows = Windows::default();
    let mut best = f64::MAX;
    for round in 0..rounds {
        let started = Instant::now();
        let mut points = 0;
        for record in &records {
            let folded = fold_record(&windows, record, now).expect("a MetricsData record");
            points += folded.points;
        }
        let secs = started.elapsed().as_secs_f64();
        best = best.min(secs);
        println!(
            "round {round}: {points} points in {secs:.3} s: {:.0} points/s",
            points as f64 / secs
        );
    }
    let points = (gateways * points_per_flush) as f64;
    println!(
        "best: {:.0} series (data points) per second; one 15 s flush interval of {gateways} gateways takes {:.1}% of one core",
        points / best,
        100.0 * best / 15.0
    );
    let started = Instant::now();
    let g = graph(&windows, Window::FiveMinutes, now);
    let graph_secs = started.elapsed().as_secs_f64();
    println!(
        "/api/v1/graph?window=5m over {rounds} folded intervals: {} nodes, {} edges in {:.1} ms",
        g.nodes.len(),
        g.edges.len(),
        graph_secs * 1e3
    );
}
