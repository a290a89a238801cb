//! Bounded decompression of OTLP/HTTP bodies. The limit applies to the decompressed size and
//! decompression stops as soon as it is passed, so a decompression bomb costs at most the
//! limit in memory, never what it would inflate to.

use std::io::Read;

/// A `Content-Encoding` the HTTP receiver accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentEncoding {
    /// No encoding (`identity` or no header).
    Identity,
    /// `gzip` (or `x-gzip`).
    Gzip,
    /// `deflate`: zlib-wrapped as HTTP says; raw deflate is accepted too, as browsers do.
    Deflate,
    /// `zstd`.
    Zstd,
}

impl ContentEncoding {
    /// Parses a `Content-Encoding` header value; `None` for encodings we do not accept.
    pub fn parse(value: Option<&str>) -> Option<Self> {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("identity") => Some(Self::Identity),
            Some("gzip") | Some("x-gzip") => Some(Self::Gzip),
            Some("deflate") => Some(Self::Deflate),
            Some("zstd") => Some(Self::Zstd),
            Some(_) => None,
        }
    }
}

/// Why a body could not be decompressed.
#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    /// It inflates past the limit.
    #[error("the body decompresses to more than the limit of {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// It is not valid data for its encoding.
    #[error("the body is not valid {encoding:?} data: {reason}")]
    Corrupt {
        /// The declared encoding.
        encoding: ContentEncoding,
        /// The decoder's error.
        reason: String,
    },
}

/// Decompresses `body` (declared as `encoding`) into at most `limit` bytes.
pub fn decompress(
    body: bytes::Bytes,
    encoding: ContentEncoding,
    limit: usize,
) -> Result<bytes::Bytes, DecompressError> {
    let out = match encoding {
        ContentEncoding::Identity => {
            if body.len() > limit {
                return Err(DecompressError::TooLarge { limit });
            }
            return Ok(body);
        }
        ContentEncoding::Gzip => read_bounded(
            flate2::read::MultiGzDecoder::new(&body[..]),
            encoding,
            limit,
        )?,
        ContentEncoding::Deflate => {
            match read_bounded(flate2::read::ZlibDecoder::new(&body[..]), encoding, limit) {
                Err(DecompressError::Corrupt { .. }) => read_bounded(
                    flate2::read::DeflateDecoder::new(&body[..]),
                    encoding,
                    limit,
                )?,
                other => other?,
            }
        }
        ContentEncoding::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(&body[..]).map_err(|e| {
                DecompressError::Corrupt {
                    encoding,
                    reason: e.to_string(),
                }
            })?;
            read_bounded(decoder, encoding, limit)?
        }
    };
    Ok(out.into())
}

/// Reads at most `limit` bytes; one byte more means the body is too large.
fn read_bounded(
    reader: impl Read,
    encoding: ContentEncoding,
    limit: usize,
) -> Result<Vec<u8>, DecompressError> {
    let mut out = Vec::new();
    let take = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(take)
        .read_to_end(&mut out)
        .map_err(|e| DecompressError::Corrupt {
            encoding,
            reason: e.to_string(),
        })?;
    if out.len() > limit {
        return Err(DecompressError::TooLarge { limit });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> bytes::Bytes {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap().into()
    }

    #[test]
    fn round_trips_each_encoding() {
        let data = b"hello otlp".repeat(100);
        assert_eq!(
            &decompress(gzip(&data), ContentEncoding::Gzip, 1 << 20).unwrap()[..],
            &data[..]
        );
        let z = zstd::encode_all(&data[..], 3).unwrap();
        assert_eq!(
            &decompress(z.into(), ContentEncoding::Zstd, 1 << 20).unwrap()[..],
            &data[..]
        );
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&data).unwrap();
        let zlib: bytes::Bytes = e.finish().unwrap().into();
        assert_eq!(
            &decompress(zlib, ContentEncoding::Deflate, 1 << 20).unwrap()[..],
            &data[..]
        );
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&data).unwrap();
        let raw: bytes::Bytes = e.finish().unwrap().into();
        assert_eq!(
            &decompress(raw, ContentEncoding::Deflate, 1 << 20).unwrap()[..],
            &data[..]
        );
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 1 << 20);
        let e = decompress(bomb, ContentEncoding::Gzip, 1 << 20).unwrap_err();
        assert!(matches!(e, DecompressError::TooLarge { limit } if limit == 1 << 20));
    }

    #[test]
    fn corrupt_data_is_reported() {
        let e = decompress(
            bytes::Bytes::from_static(b"not gzip"),
            ContentEncoding::Gzip,
            1024,
        )
        .unwrap_err();
        assert!(matches!(e, DecompressError::Corrupt { .. }));
    }

    #[test]
    fn encodings_parse() {
        assert_eq!(
            ContentEncoding::parse(None),
            Some(ContentEncoding::Identity)
        );
        assert_eq!(
            ContentEncoding::parse(Some("GZIP")),
            Some(ContentEncoding::Gzip)
        );
        assert_eq!(ContentEncoding::parse(Some("br")), None);
    }
}
