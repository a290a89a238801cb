//! OTLP protobuf trace requests (the body of a gRPC `TraceService/Export` call or of a
//! `POST /v1/traces` with `application/x-protobuf`) through the gateway's trace path:
//! validation, span field reads, policies, record building. See `weir_fuzz::trace_path`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    weir_fuzz::trace_path(body);
});
