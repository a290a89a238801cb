//! Consistent probability sampling, as the OpenTelemetry specification "TraceState:
//! Probability Sampling" defines it: a 56-bit randomness value `R` (the trace id's last 7
//! bytes, or `rv` from the span's `ot` tracestate entry), a 56-bit rejection threshold `T`
//! derived from the probability, keep iff `R >= T`, and `T` recorded in the tracestate as
//! `ot=th:<hex>`.
//!
//! Probabilities become thresholds as the Collector's `pkg/sampling`
//! (`ProbabilityToThresholdWithPrecision`) computes them, which reproduces the
//! specification's table: `T = 2^56 - round(p * 2^56)`, rounded to `precision` significant
//! hex digits, with one more digit for each leading `f` or `0` so that probabilities near 0
//! or 1 keep their relative precision.

use std::fmt;

/// 2^56: the number of randomness values.
const MAX_ADJUSTED_COUNT: u64 = 1 << 56;

/// The smallest probability a threshold can express, 2^-56.
pub const MIN_PROBABILITY: f64 = 1.0 / MAX_ADJUSTED_COUNT as f64;

/// Hex digits in a 56-bit value.
const HEX_DIGITS: u32 = 14;

/// A rejection threshold: a span is kept when its randomness is at least the threshold.
/// Always below 2^56; 0 keeps everything (`th:0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Threshold(u64);

impl Threshold {
    /// Keeps every span: probability 1, `th:0`.
    pub const ALWAYS: Threshold = Threshold(0);

    /// The threshold for probability `p` with `precision` significant hex digits (1 to 14;
    /// the Collector and the specification recommend 4). `None` when `p` is not in
    /// `[2^-56, 1]`: probability 0 is not probability sampling and has no threshold.
    pub fn from_probability(p: f64, precision: u8) -> Option<Threshold> {
        if !(MIN_PROBABILITY..=1.0).contains(&p) {
            return None;
        }
        if p == 1.0 {
            return Some(Threshold::ALWAYS);
        }
        // One more digit per leading hex `f` (p near 0) or `0` (p near 1). The exponent is
        // <= 0, and integer division truncates as Go's does.
        let extra = |x: f64| -binary_exponent(x) / 4;
        let precision = i32::from(precision.clamp(1, HEX_DIGITS as u8));
        let precision = (precision + extra(p).max(extra(1.0 - p))).min(HEX_DIGITS as i32);

        // Scaling by a power of two is exact; `round` rounds half away from zero, as Go's.
        let scaled = (p * MAX_ADJUSTED_COUNT as f64).round() as u64;
        let mut t = MAX_ADJUSTED_COUNT - scaled;
        let shift = 4 * (HEX_DIGITS - precision as u32);
        if shift != 0 {
            let rounded = ((t + (1 << (shift - 1))) >> shift) << shift;
            // Rounding up past the last threshold would mean "never": truncate instead.
            t = if rounded < MAX_ADJUSTED_COUNT {
                rounded
            } else {
                (t >> shift) << shift
            };
        }
        Some(Threshold(t))
    }

    /// A threshold from its 56-bit integer value; `None` at 2^56 or above.
    pub fn from_rejection(value: u64) -> Option<Threshold> {
        (value < MAX_ADJUSTED_COUNT).then_some(Threshold(value))
    }

    /// The 56-bit integer value: how many of 2^56 randomness values are rejected.
    pub fn rejection(self) -> u64 {
        self.0
    }

    /// The probability of keeping a span, `(2^56 - T) / 2^56`.
    pub fn probability(self) -> f64 {
        (MAX_ADJUSTED_COUNT - self.0) as f64 / MAX_ADJUSTED_COUNT as f64
    }

    /// True when a span with randomness `r` is kept.
    pub fn keeps(self, r: Randomness) -> bool {
        r.0 >= self.0
    }

    /// Parses a `th` value: 1 to 14 hex digits, trailing zeros implied.
    pub fn parse(th: &str) -> Option<Threshold> {
        if th.is_empty()
            || th.len() > HEX_DIGITS as usize
            || !th.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return None;
        }
        let v = u64::from_str_radix(th, 16).ok()?;
        Some(Threshold(v << (4 * (HEX_DIGITS - th.len() as u32))))
    }

    /// The `th` value: lowercase hex, trailing zeros removed, `0` for [`Threshold::ALWAYS`].
    /// Written to a stack buffer, without allocating.
    pub fn encode(self) -> ThValue {
        let mut buf = [b'0'; HEX_DIGITS as usize];
        for (i, b) in buf.iter_mut().enumerate() {
            let nibble = (self.0 >> (4 * (HEX_DIGITS as usize - 1 - i))) & 0xf;
            *b = b"0123456789abcdef"[nibble as usize];
        }
        let len = buf.iter().rposition(|&b| b != b'0').map_or(1, |i| i + 1);
        ThValue {
            buf,
            len: len as u8,
        }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.encode().as_str())
    }
}

/// The binary exponent `e` of `x = m * 2^e` with `m` in `[0.5, 1)` (C's `frexp`), for
/// positive normal `x`.
fn binary_exponent(x: f64) -> i32 {
    ((x.to_bits() >> 52) & 0x7ff) as i32 - 1022
}

/// An encoded `th` value, held on the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThValue {
    buf: [u8; HEX_DIGITS as usize],
    len: u8,
}

impl ThValue {
    /// The hex digits.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written to `buf`.
        std::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or("0")
    }
}

/// 56 bits of randomness that all spans of a trace share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Randomness(u64);

impl Randomness {
    /// The trace id's last 7 bytes, big-endian (W3C Trace Context Level 2).
    pub fn from_trace_id(id: &[u8; 16]) -> Randomness {
        let mut b = [0u8; 8];
        b[1..].copy_from_slice(&id[9..]);
        Randomness(u64::from_be_bytes(b))
    }

    /// Parses an `rv` value: exactly 14 hex digits.
    pub fn parse(rv: &str) -> Option<Randomness> {
        if rv.len() != HEX_DIGITS as usize || !rv.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(rv, 16).ok().map(Randomness)
    }

    /// The 56-bit value.
    pub fn value(self) -> u64 {
        self.0
    }
}

/// The sampling fields of a tracestate's `ot` entry. Values that do not parse count as
/// absent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OtSampling {
    /// Explicit randomness, `rv`.
    pub rv: Option<Randomness>,
    /// The threshold earlier stages applied, `th`.
    pub th: Option<Threshold>,
}

impl OtSampling {
    /// Reads `rv` and `th` from a W3C tracestate, without allocating.
    pub fn parse(tracestate: &str) -> OtSampling {
        let mut out = OtSampling::default();
        let Some(ot) = members(tracestate).find(|m| m.key == "ot") else {
            return out;
        };
        for (key, value) in sub_keys(ot.value) {
            match key {
                "rv" if out.rv.is_none() => out.rv = Randomness::parse(value),
                "th" if out.th.is_none() => out.th = Threshold::parse(value),
                _ => {}
            }
        }
        out
    }
}

/// One `key=value` member of a W3C tracestate, trimmed of optional whitespace.
struct Member<'a> {
    key: &'a str,
    value: &'a str,
    whole: &'a str,
}

/// The non-empty members of a tracestate, in order.
fn members(tracestate: &str) -> impl Iterator<Item = Member<'_>> {
    tracestate
        .split(',')
        .map(|m| m.trim_matches([' ', '\t']))
        .filter(|m| !m.is_empty())
        .map(|whole| {
            let (key, value) = whole.split_once('=').unwrap_or((whole, ""));
            Member { key, value, whole }
        })
}

/// The `key:value` sub-keys of an `ot` value.
fn sub_keys(ot: &str) -> impl Iterator<Item = (&str, &str)> {
    ot.split(';')
        .filter(|s| !s.is_empty())
        .map(|s| s.split_once(':').unwrap_or((s, "")))
}

/// Writes into `out` (cleared first) the tracestate `old` with the `ot` entry's `th` set to
/// `th`, as the Collector's `probabilistic_sampler` does: the `ot` entry comes first, with
/// `rv` (kept as it was), then `th`, then its other sub-keys in their order; the other
/// vendors' entries follow in their order. Empty members and whitespace around members are
/// dropped.
pub fn tracestate_with_threshold(old: &str, th: &Threshold, out: &mut String) {
    out.clear();
    let ot = members(old).find(|m| m.key == "ot").map_or("", |m| m.value);
    out.push_str("ot=");
    let body = out.len();
    let sep = |out: &mut String| {
        if out.len() > body {
            out.push(';');
        }
    };
    if let Some(rv) = ot.split(';').find(|s| s.split(':').next() == Some("rv")) {
        sep(out);
        out.push_str(rv);
    }
    sep(out);
    out.push_str("th:");
    out.push_str(th.encode().as_str());
    for sub in ot.split(';').filter(|s| !s.is_empty()) {
        if !matches!(sub.split(':').next(), Some("rv" | "th")) {
            sep(out);
            out.push_str(sub);
        }
    }
    for m in members(old).filter(|m| m.key != "ot") {
        out.push(',');
        out.push_str(m.whole);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn th(p: f64, precision: u8) -> String {
        Threshold::from_probability(p, precision)
            .unwrap()
            .to_string()
    }

    #[test]
    fn thresholds_match_the_specification_table() {
        // 1-in-N rows of the table in tracestate-probability-sampling.md: precision 3, 4, 5.
        let rows: &[(f64, [&str; 3])] = &[
            (1.0, ["0", "0", "0"]),
            (0.5, ["8", "8", "8"]),
            (1.0 / 3.0, ["aab", "aaab", "aaaab"]),
            (0.25, ["c", "c", "c"]),
            (0.2, ["ccd", "cccd", "ccccd"]),
            (0.125, ["e", "e", "e"]),
            (0.1, ["e66", "e666", "e6666"]),
            (0.0625, ["f", "f", "f"]),
            (0.01, ["fd71", "fd70a", "fd70a4"]),
            (0.001, ["ffbe7", "ffbe77", "ffbe76d"]),
            (0.0001, ["fff972", "fff9724", "fff97247"]),
            (0.00001, ["ffff584", "ffff583a", "ffff583a5"]),
            (0.000001, ["ffffef4", "ffffef39", "ffffef391"]),
        ];
        for (p, want) in rows {
            for (precision, want) in [3, 4, 5].into_iter().zip(want) {
                assert_eq!(th(*p, precision), *want, "p={p} precision={precision}");
            }
        }
    }

    #[test]
    fn full_precision_and_leading_zeros() {
        // The Collector's examples: full precision, and precision counted after leading 0s.
        assert_eq!(th(1.0 / 3.0, 14), "aaaaaaaaaaaaac");
        assert_eq!(th(0.1, 14), "e6666666666666");
        assert_eq!(th(1.0 - f64::from(0x456789a) / 2f64.powi(28), 6), "45678a");
        assert_eq!(th(1.0 - f64::from(0x456789a) / 2f64.powi(40), 2), "00045");
        assert_eq!(th(1.0 - 0x789abcdef_u64 as f64 / 2f64.powi(40), 2), "079");
        assert_eq!(th(MIN_PROBABILITY, 3), "ffffffffffffff");
        assert_eq!(th(2.0 / 3.0, 3), "555");
    }

    #[test]
    fn out_of_range_probabilities_have_no_threshold() {
        for p in [0.0, -0.1, 1.5, f64::NAN, MIN_PROBABILITY / 2.0] {
            assert_eq!(Threshold::from_probability(p, 4), None, "{p}");
        }
    }

    #[test]
    fn th_values_round_trip() {
        for s in ["0", "8", "e666", "fd70a4", "aaaaaaaaaaaaac", "00045"] {
            assert_eq!(Threshold::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(Threshold::parse("8").unwrap().rejection(), 1 << 55);
        assert_eq!(Threshold::parse("E666"), Threshold::parse("e666"));
        for bad in ["", "g", "123456789abcdef", "8 "] {
            assert_eq!(Threshold::parse(bad), None, "{bad:?}");
        }
        assert!((Threshold::parse("c").unwrap().probability() - 0.25).abs() < 1e-15);
    }

    #[test]
    fn randomness_is_the_last_seven_bytes() {
        let mut id = [0xffu8; 16];
        id[9..].copy_from_slice(&[0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07]);
        assert_eq!(
            Randomness::from_trace_id(&id).value(),
            0x01020304050607,
            "bytes 0..9 must not count"
        );
        assert_eq!(
            Randomness::parse("0102030405060a").unwrap().value(),
            0x0102030405060a
        );
        assert_eq!(Randomness::parse("0102030405060"), None);
        let r = Randomness::parse("80000000000000").unwrap();
        assert!(Threshold::parse("8").unwrap().keeps(r));
        assert!(!Threshold::parse("80000000000001").unwrap().keeps(r));
    }

    #[test]
    fn ot_sampling_is_read_from_the_ot_entry() {
        let s = OtSampling::parse("vendor=x:1, ot=th:c;rv:0123456789abcd;k:v ,other=1");
        assert_eq!(s.th, Threshold::parse("c"));
        assert_eq!(s.rv, Randomness::parse("0123456789abcd"));
        assert_eq!(OtSampling::parse(""), OtSampling::default());
        assert_eq!(OtSampling::parse("vendor=th:8"), OtSampling::default());
        let bad = OtSampling::parse("ot=th:xyz;rv:short");
        assert_eq!(bad, OtSampling::default());
    }

    #[test]
    fn tracestate_rewrites() {
        let c = Threshold::parse("c").unwrap();
        let cases = [
            ("", "ot=th:c"),
            ("ot=th:8", "ot=th:c"),
            ("ot=th:8;rv:0123456789abcd", "ot=rv:0123456789abcd;th:c"),
            (
                "ot=rv:0123456789abcd;th:8;x:y,vendor=abc",
                "ot=rv:0123456789abcd;th:c;x:y,vendor=abc",
            ),
            ("vendor=abc, ot=th:8", "ot=th:c,vendor=abc"),
            ("a=1,b=2", "ot=th:c,a=1,b=2"),
            (",, a=b ,,", "ot=th:c,a=b"),
            ("ot=foo:bar", "ot=th:c;foo:bar"),
            ("ot=", "ot=th:c"),
        ];
        let mut out = String::from("stale");
        for (old, want) in cases {
            tracestate_with_threshold(old, &c, &mut out);
            assert_eq!(out, want, "from {old:?}");
            assert_eq!(OtSampling::parse(&out).th, Some(c));
        }
        tracestate_with_threshold("ot=th:8", &Threshold::ALWAYS, &mut out);
        assert_eq!(out, "ot=th:0");
    }
}
