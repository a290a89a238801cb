//! Writing spans back out with a field replaced (the policy's new `trace_state`), and the
//! varint encoding the rewriters and the Kafka records use.

use super::unchecked::fields;

/// Writes span `bytes` with its `trace_state` replaced by `trace_state`: every other field is
/// copied as it came, the new `trace_state` (field 3) goes last.
pub fn write_span_with_trace_state(bytes: &[u8], trace_state: &str, out: &mut Vec<u8>) {
    for f in fields(bytes) {
        if f.number != 3 {
            out.extend_from_slice(&bytes[f.span.clone()]);
        }
    }
    if !trace_state.is_empty() {
        out.push(0x1a);
        put_varint(out, trace_state.len() as u64);
        out.extend_from_slice(trace_state.as_bytes());
    }
}

/// The encoded length of `write_span_with_trace_state`'s output.
pub fn span_with_trace_state_len(bytes: &[u8], trace_state: &str) -> usize {
    let old: usize = fields(bytes)
        .filter(|f| f.number == 3)
        .map(|f| f.span.len())
        .sum();
    let new = if trace_state.is_empty() {
        0
    } else {
        1 + varint_len(trace_state.len() as u64) + trace_state.len()
    };
    bytes.len() - old + new
}

/// Appends `v` as a protobuf varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The bytes `put_varint` writes for `v`.
#[inline]
pub fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::trace::v1::Span;
    use crate::test_support::sample_span;
    use prost::Message;

    #[test]
    fn rewrites_trace_state() {
        let mut sp = sample_span(1, 1);
        sp.trace_state = "ot=rv:abc".into();
        let bytes = sp.encode_to_vec();
        let mut out = Vec::new();
        write_span_with_trace_state(&bytes, "ot=rv:abc;th:8", &mut out);
        assert_eq!(
            out.len(),
            span_with_trace_state_len(&bytes, "ot=rv:abc;th:8")
        );
        let back = Span::decode(&out[..]).unwrap();
        assert_eq!(back.trace_state, "ot=rv:abc;th:8");
        assert_eq!(
            Span {
                trace_state: sp.trace_state.clone(),
                ..back
            },
            sp
        );
        for v in [0u64, 1, 127, 128, 16383, 16384, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
        }
    }
}
