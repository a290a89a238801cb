//! Signed decision records: a gateway with `tail.signing_key` adds the HMAC-SHA256 of the
//! record value under that key as the Kafka header [`SIGNATURE_HEADER`]; a router with
//! `decisions.signing_key` merges only records whose header verifies. The value itself is
//! unchanged, so readers that do not verify read signed records as before.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The Kafka record header that carries a decision record's signature (32 raw bytes).
pub const SIGNATURE_HEADER: &str = "weir-decision-hmac-sha256";

/// The HMAC-SHA256 of `value` under `key`.
pub fn sign(key: &[u8], value: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return [0; 32];
    };
    mac.update(value);
    mac.finalize().into_bytes().into()
}

/// True when `signature` is the HMAC-SHA256 of `value` under `key` (compared in constant
/// time).
pub fn verify(key: &[u8], value: &[u8], signature: &[u8]) -> bool {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return false;
    };
    mac.update(value);
    mac.verify_slice(signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_with_the_key_and_the_value() {
        // RFC 4231 test case 2.
        let mac = sign(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            mac[..4],
            [0x5b, 0xdc, 0xc1, 0x46],
            "HMAC-SHA256 as RFC 4231 gives it"
        );
        assert!(verify(b"Jefe", b"what do ya want for nothing?", &mac));
        assert!(!verify(b"Jeff", b"what do ya want for nothing?", &mac));
        assert!(!verify(b"Jefe", b"what do ya want for nothing!", &mac));
        assert!(!verify(
            b"Jefe",
            b"what do ya want for nothing?",
            &mac[..31]
        ));
    }
}
