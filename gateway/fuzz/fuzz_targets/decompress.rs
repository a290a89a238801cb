//! The OTLP/HTTP receiver's bounded decompression (gzip, deflate, zstd, identity). Two
//! properties: on any body and limit, the output never exceeds the limit and nothing panics;
//! and data compressed by the reference encoders comes back unchanged when it fits the limit,
//! and is refused as too large when it does not.
//! Input: byte 0 picks the encoding and the mode, bytes 1..3 the limit, the rest is the body
//! (or, in round-trip mode, the data to compress).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Write;
use weir_gateway::receivers::decompress::{ContentEncoding, DecompressError, decompress};

const ENCODINGS: [ContentEncoding; 4] = [
    ContentEncoding::Identity,
    ContentEncoding::Gzip,
    ContentEncoding::Deflate,
    ContentEncoding::Zstd,
];

fuzz_target!(|input: &[u8]| {
    let [selector, l0, l1, rest @ ..] = input else {
        return;
    };
    let encoding = ENCODINGS[usize::from(selector & 3)];
    // Limits from 0 to 64 KiB: small enough that bombs and near misses are cheap to find.
    let limit = usize::from(u16::from_le_bytes([*l0, *l1]));
    if selector & 4 == 0 {
        any_body(rest, encoding, limit);
    } else {
        round_trip(rest, encoding, selector & 8 != 0, limit);
    }
});

fn any_body(body: &[u8], encoding: ContentEncoding, limit: usize) {
    match decompress(bytes::Bytes::copy_from_slice(body), encoding, limit) {
        Ok(out) => {
            assert!(
                out.len() <= limit,
                "{} bytes out, over the limit of {limit}",
                out.len()
            );
            if encoding == ContentEncoding::Identity {
                assert_eq!(&out[..], body);
            }
        }
        Err(DecompressError::TooLarge { limit: reported }) => assert_eq!(reported, limit),
        Err(DecompressError::Corrupt {
            encoding: reported, ..
        }) => assert_eq!(reported, encoding),
    }
}

fn round_trip(data: &[u8], encoding: ContentEncoding, raw_deflate: bool, limit: usize) {
    let compressed = match encoding {
        ContentEncoding::Identity => data.to_vec(),
        ContentEncoding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).expect("writing to a Vec");
            e.finish().expect("writing to a Vec")
        }
        ContentEncoding::Deflate if raw_deflate => {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).expect("writing to a Vec");
            e.finish().expect("writing to a Vec")
        }
        ContentEncoding::Deflate => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).expect("writing to a Vec");
            e.finish().expect("writing to a Vec")
        }
        ContentEncoding::Zstd => zstd::encode_all(data, 1).expect("zstd into a Vec"),
    };
    match decompress(compressed.into(), encoding, limit) {
        Ok(out) => {
            assert!(
                data.len() <= limit,
                "{} bytes accepted over the limit of {limit}",
                data.len()
            );
            assert_eq!(&out[..], data, "{encoding:?} round trip");
        }
        Err(DecompressError::TooLarge { .. }) => assert!(
            data.len() > limit,
            "{} bytes refused as too large for a limit of {limit}",
            data.len()
        ),
        Err(e) => panic!("valid {encoding:?} data refused: {e}"),
    }
}
