//! A small keep-alive HTTP/1.1 client: just enough to POST OTLP bodies and read the replies
//! (Content-Length, chunked, or close-delimited bodies), with bounds on what it reads.

use std::io;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The largest response header block read.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// The largest response body read.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// The error message of a connection that ended before any byte of the reply.
pub const CLOSED_BEFORE_REPLY: &str = "connection closed before the reply";

/// Where OTLP/HTTP requests go: `http://host:port[/path]`, the path defaulting to `/v1/traces`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpTarget {
    /// `host:port`, for connecting and for the `Host` header.
    pub authority: String,
    /// The request path.
    pub path: String,
}

impl HttpTarget {
    /// Parses an `http://` endpoint URL.
    pub fn parse(endpoint: &str) -> anyhow::Result<Self> {
        let Some(rest) = endpoint.strip_prefix("http://") else {
            bail!("--endpoint {endpoint:?}: only plain http:// endpoints are supported");
        };
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, ""),
        };
        if authority.is_empty() || !authority.contains(':') {
            bail!("--endpoint {endpoint:?}: give host and port, e.g. http://127.0.0.1:4318");
        }
        let path = if path.is_empty() || path == "/" {
            "/v1/traces"
        } else {
            path
        };
        Ok(Self {
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }
}

/// What the server answered.
#[derive(Debug, Default)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The `Content-Type` header, lowercased ("" when absent).
    pub content_type: String,
    /// Whether the connection may carry another request.
    pub keep_alive: bool,
    /// The body, decoded from chunked encoding when needed.
    pub body: Vec<u8>,
}

/// One open connection.
#[derive(Debug)]
pub struct HttpConnection {
    stream: BufReader<TcpStream>,
    request: Vec<u8>,
}

impl HttpConnection {
    /// Opens a TCP connection to the target.
    pub async fn open(target: &HttpTarget) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(&target.authority)
            .await
            .with_context(|| {
                format!(
                    "cannot connect to {}: is the gateway listening?",
                    target.authority
                )
            })?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream: BufReader::new(stream),
            request: Vec::new(),
        })
    }

    /// POSTs `body` and reads the whole response.
    pub async fn post(
        &mut self,
        target: &HttpTarget,
        content_type: &str,
        content_encoding: Option<&str>,
        body: &[u8],
    ) -> io::Result<HttpResponse> {
        // One write for headers and body: two small writes would cost a second syscall.
        self.request.clear();
        self.request.extend_from_slice(
            format!(
                "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
                target.path,
                target.authority,
                content_type,
                body.len()
            )
            .as_bytes(),
        );
        if let Some(encoding) = content_encoding {
            self.request
                .extend_from_slice(format!("Content-Encoding: {encoding}\r\n").as_bytes());
        }
        self.request.extend_from_slice(b"\r\n");
        self.request.extend_from_slice(body);
        self.stream.get_mut().write_all(&self.request).await?;
        read_response(&mut self.stream).await
    }
}

fn bad(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Reads one response (skipping `100 Continue`-style interim responses).
pub async fn read_response<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> io::Result<HttpResponse> {
    let mut first = true;
    loop {
        let mut header_bytes = 0;
        let status_line = match read_line(reader, &mut header_bytes).await {
            Err(e) if first && header_bytes == 0 && e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    CLOSED_BEFORE_REPLY,
                ));
            }
            other => other?,
        };
        first = false;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
        if !version.starts_with("HTTP/1.") {
            return Err(bad(format!("bad status line {status_line:?}")));
        }
        let mut response = HttpResponse {
            status,
            keep_alive: version == "HTTP/1.1",
            ..Default::default()
        };
        let mut content_length = None;
        let mut chunked = false;
        loop {
            let line = read_line(reader, &mut header_bytes).await?;
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(bad(format!("bad header line {line:?}")));
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => {
                    content_length = Some(
                        value
                            .parse::<usize>()
                            .map_err(|_| bad("bad Content-Length"))?,
                    )
                }
                "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
                "content-type" => response.content_type = value.to_ascii_lowercase(),
                "connection" => {
                    let value = value.to_ascii_lowercase();
                    if value.contains("close") {
                        response.keep_alive = false;
                    } else if value.contains("keep-alive") {
                        response.keep_alive = true;
                    }
                }
                _ => {}
            }
        }
        if (100..200).contains(&status) {
            continue;
        }
        if status == 204 || status == 304 {
            return Ok(response);
        }
        if chunked {
            response.body = read_chunked(reader, &mut header_bytes).await?;
        } else if let Some(length) = content_length {
            if length > MAX_BODY_BYTES {
                return Err(bad(format!("response body of {length} bytes is too large")));
            }
            response.body = vec![0; length];
            reader.read_exact(&mut response.body).await?;
        } else {
            // Delimited by the end of the connection.
            response.keep_alive = false;
            reader
                .take(MAX_BODY_BYTES as u64)
                .read_to_end(&mut response.body)
                .await?;
        }
        return Ok(response);
    }
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    budget_used: &mut usize,
) -> io::Result<String> {
    let mut line = Vec::new();
    let limit = (MAX_HEADER_BYTES - (*budget_used).min(MAX_HEADER_BYTES)) as u64;
    let n = reader.take(limit).read_until(b'\n', &mut line).await?;
    *budget_used += n;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    if line.last() != Some(&b'\n') {
        return Err(bad("response header is too large"));
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| bad("response header is not UTF-8"))
}

async fn read_chunked<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    budget_used: &mut usize,
) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        *budget_used = 0;
        let size_line = read_line(reader, budget_used).await?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| bad("bad chunk size"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(reader, budget_used).await?.is_empty() {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY_BYTES {
            return Err(bad("chunked response body is too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..]).await?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf).await?;
        if &crlf != b"\r\n" {
            return Err(bad("chunk not followed by CRLF"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(raw: &[u8]) -> io::Result<HttpResponse> {
        let mut reader = BufReader::new(raw);
        read_response(&mut reader).await
    }

    #[test]
    fn targets_parse() {
        let t = HttpTarget::parse("http://127.0.0.1:4318").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("127.0.0.1:4318", "/v1/traces")
        );
        let t = HttpTarget::parse("http://[::1]:9/custom/path").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("[::1]:9", "/custom/path")
        );
        assert!(HttpTarget::parse("https://127.0.0.1:4318").is_err());
        assert!(HttpTarget::parse("http://localhost").is_err());
    }

    #[tokio::test]
    async fn content_length_and_keep_alive() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 3\r\n\r\nabcNEXT").await.unwrap();
        assert_eq!(
            (r.status, r.keep_alive, r.body.as_slice()),
            (200, true, &b"abc"[..])
        );
        assert_eq!(r.content_type, "application/x-protobuf");
        let r = parse(
            b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\ncontent-length: 0\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!((r.status, r.keep_alive), (503, false));
    }

    #[tokio::test]
    async fn chunked_and_interim_responses() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: 1\r\n\r\n";
        let r = parse(raw).await.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abcde"[..]));
    }

    #[tokio::test]
    async fn close_delimited_and_broken_responses() {
        let r = parse(b"HTTP/1.0 200 OK\r\n\r\nall of it").await.unwrap();
        assert_eq!(
            (r.keep_alive, r.body.as_slice()),
            (false, &b"all of it"[..])
        );
        assert!(parse(b"garbage\r\n\r\n").await.is_err());
        assert!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
                .await
                .is_err()
        );
        assert!(parse(b"").await.is_err());
    }
}
