//! OTLP/JSON request bodies (`POST /v1/traces|metrics|logs` with `application/json`) through
//! `weir_proto::json`: decoding, then the round trip the `otlp_json` Kafka encoding relies on
//! (what decoded, encoded and decoded again, is the same message: compared by its encoding,
//! since NaN doubles are not equal to themselves), then what the gateway does with a decoded
//! trace request (encoded to protobuf, it joins the protobuf trace path).
//! The first byte picks the signal; the rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use weir_proto::json;
use weir_proto::otlp::logs::v1::LogsData;
use weir_proto::otlp::metrics::v1::MetricsData;
use weir_proto::otlp::trace::v1::TracesData;

fuzz_target!(|input: &[u8]| {
    let Some((&selector, body)) = input.split_first() else {
        return;
    };
    match selector % 3 {
        0 => traces(body),
        1 => metrics(body),
        _ => logs(body),
    }
});

fn traces(body: &[u8]) {
    let Ok(req) = json::decode_trace_request(body) else {
        return;
    };
    let data = TracesData {
        resource_spans: req.resource_spans,
    };
    let mut first = Vec::new();
    json::encode_traces_data(&data, &mut first);
    let again = json::decode_trace_request(&first)
        .unwrap_or_else(|e| panic!("our own OTLP/JSON must decode: {e}"));
    let mut second = Vec::new();
    json::encode_traces_data(
        &TracesData {
            resource_spans: again.resource_spans,
        },
        &mut second,
    );
    assert_eq!(
        String::from_utf8_lossy(&first),
        String::from_utf8_lossy(&second),
        "decode(encode(x)) == x"
    );
    // The gateway's JSON trace path: re-encoded as protobuf, then the byte-level path.
    weir_fuzz::trace_path(&data.encode_to_vec());
}

fn metrics(body: &[u8]) {
    let Ok(req) = json::decode_metrics_request(body) else {
        return;
    };
    let data = MetricsData {
        resource_metrics: req.resource_metrics,
    };
    let mut first = Vec::new();
    json::encode_metrics_data(&data, &mut first);
    let again = json::decode_metrics_request(&first)
        .unwrap_or_else(|e| panic!("our own OTLP/JSON must decode: {e}"));
    let mut second = Vec::new();
    json::encode_metrics_data(
        &MetricsData {
            resource_metrics: again.resource_metrics,
        },
        &mut second,
    );
    assert_eq!(
        String::from_utf8_lossy(&first),
        String::from_utf8_lossy(&second),
        "decode(encode(x)) == x"
    );
}

fn logs(body: &[u8]) {
    let Ok(req) = json::decode_logs_request(body) else {
        return;
    };
    let data = LogsData {
        resource_logs: req.resource_logs,
    };
    let mut first = Vec::new();
    json::encode_logs_data(&data, &mut first);
    let again = json::decode_logs_request(&first)
        .unwrap_or_else(|e| panic!("our own OTLP/JSON must decode: {e}"));
    let mut second = Vec::new();
    json::encode_logs_data(
        &LogsData {
            resource_logs: again.resource_logs,
        },
        &mut second,
    );
    assert_eq!(
        String::from_utf8_lossy(&first),
        String::from_utf8_lossy(&second),
        "decode(encode(x)) == x"
    );
}
