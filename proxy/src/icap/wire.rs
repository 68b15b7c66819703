//! ICAP/1.0 on the wire (RFC 3507): request heads, response heads with their `Encapsulated`
//! offsets, the encapsulated HTTP heads, and the chunked body framing both ways. Nothing here
//! trusts the service: every length is bounded and every parse failure is an [`IcapError`].

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::IcapError;

/// Upper bound for an ICAP response head and for each encapsulated HTTP head.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Largest piece of a body chunk handed on at once (a chunk may be larger: it is split).
const MAX_PIECE: usize = 64 * 1024;

/// The head of an ICAP response.
#[derive(Debug)]
pub(crate) struct IcapHead {
    pub(crate) status: u16,
    /// Names lower-cased; obsolete line folding (c-icap's `X-Violations-Found`) unfolded.
    pub(crate) headers: Vec<(String, String)>,
}

impl IcapHead {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `Encapsulated` sections in order, e.g. `[("res-hdr", 0), ("res-body", 120)]`.
    pub(crate) fn encapsulated(&self) -> Result<Vec<(String, usize)>, IcapError> {
        let Some(value) = self.header("encapsulated") else {
            return Ok(Vec::new());
        };
        let mut out: Vec<(String, usize)> = Vec::new();
        for part in value.split(',') {
            let (name, offset) = part
                .trim()
                .split_once('=')
                .ok_or_else(|| IcapError::protocol(format!("Encapsulated: {value:?}")))?;
            let offset: usize = offset
                .trim()
                .parse()
                .map_err(|_| IcapError::protocol(format!("Encapsulated: {value:?}")))?;
            if out.last().is_some_and(|(_, prev)| *prev > offset) || offset > MAX_HEAD * 2 {
                return Err(IcapError::protocol(format!("Encapsulated: {value:?}")));
            }
            out.push((name.trim().to_ascii_lowercase(), offset));
        }
        Ok(out)
    }
}

/// Reads one head (lines up to an empty line), at most [`MAX_HEAD`] bytes.
async fn read_head_bytes<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Vec<u8>, IcapError> {
    let mut head = Vec::with_capacity(512);
    loop {
        let before = head.len();
        let n = (&mut *r)
            .take((MAX_HEAD - before) as u64 + 1)
            .read_until(b'\n', &mut head)
            .await?;
        if n == 0 {
            return Err(IcapError::Closed);
        }
        if head.len() > MAX_HEAD {
            return Err(IcapError::protocol("head too large"));
        }
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            if before == 0 {
                // Stray CRLF before a head (tolerated, as HTTP parsers do).
                head.clear();
                continue;
            }
            return Ok(head);
        }
    }
}

/// Reads and parses an ICAP response head.
pub(crate) async fn read_icap_head<R: AsyncBufRead + Unpin>(
    r: &mut R,
) -> Result<IcapHead, IcapError> {
    let bytes = read_head_bytes(r).await?;
    parse_icap_head(&bytes)
}

pub(crate) fn parse_icap_head(bytes: &[u8]) -> Result<IcapHead, IcapError> {
    let text = std::str::from_utf8(bytes).map_err(|_| IcapError::protocol("head is not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let status_line = lines.next().unwrap_or_default();
    let mut words = status_line.splitn(3, ' ');
    let (Some("ICAP/1.0"), Some(code)) = (words.next(), words.next()) else {
        return Err(IcapError::protocol(format!("status line {status_line:?}")));
    };
    let status = code
        .parse::<u16>()
        .ok()
        .filter(|c| (100..600).contains(c))
        .ok_or_else(|| IcapError::protocol(format!("status line {status_line:?}")))?;
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        if line.starts_with([' ', '\t']) {
            let Some((_, value)) = headers.last_mut() else {
                return Err(IcapError::protocol("continuation line before any header"));
            };
            value.push(' ');
            value.push_str(line.trim());
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| IcapError::protocol(format!("header line {line:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    Ok(IcapHead { status, headers })
}

/// An encapsulated HTTP response head.
pub(crate) struct HttpResponseHead {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
}

/// An encapsulated HTTP request head.
pub(crate) struct HttpRequestHead {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
}

fn header_map(parsed: &[httparse::Header<'_>]) -> Result<HeaderMap, IcapError> {
    let mut map = HeaderMap::with_capacity(parsed.len());
    for h in parsed {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| IcapError::protocol(format!("header name {:?}", h.name)))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| IcapError::protocol(format!("value of {:?}", h.name)))?;
        map.append(name, value);
    }
    Ok(map)
}

pub(crate) fn parse_http_response(bytes: &[u8]) -> Result<HttpResponseHead, IcapError> {
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut res = httparse::Response::new(&mut slots);
    let mut config = httparse::ParserConfig::default();
    config.allow_obsolete_multiline_headers_in_responses(true);
    match config.parse_response(&mut res, bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(IcapError::protocol(
                "encapsulated response head is cut short",
            ))
        }
        Err(e) => return Err(IcapError::protocol(format!("encapsulated response: {e}"))),
    }
    let status = res
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| IcapError::protocol("encapsulated response status"))?;
    Ok(HttpResponseHead {
        status,
        headers: header_map(res.headers)?,
    })
}

pub(crate) fn parse_http_request(bytes: &[u8]) -> Result<HttpRequestHead, IcapError> {
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(IcapError::protocol(
                "encapsulated request head is cut short",
            ))
        }
        Err(e) => return Err(IcapError::protocol(format!("encapsulated request: {e}"))),
    }
    let method = req
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .ok_or_else(|| IcapError::protocol("encapsulated request method"))?;
    let uri = req
        .path
        .and_then(|p| p.parse::<Uri>().ok())
        .ok_or_else(|| IcapError::protocol("encapsulated request target"))?;
    Ok(HttpRequestHead {
        method,
        uri,
        headers: header_map(req.headers)?,
    })
}

/// Reads exactly `n` bytes of encapsulated head.
pub(crate) async fn read_exact_head<R: AsyncBufRead + Unpin>(
    r: &mut R,
    n: usize,
) -> Result<Vec<u8>, IcapError> {
    if n > MAX_HEAD {
        return Err(IcapError::protocol("encapsulated head too large"));
    }
    let mut buf = vec![0; n];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

/// `METHOD uri HTTP/1.1` and headers, as encapsulated in a request to the service.
pub(crate) fn request_head(method: &Method, uri: &str, headers: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(uri.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    headers_into(&mut out, headers);
    out
}

/// `HTTP/1.1 status reason` and headers.
pub(crate) fn response_head(status: StatusCode, headers: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    headers_into(&mut out, headers);
    out
}

fn headers_into(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes one chunk (nothing for an empty one: that would end the body).
pub(crate) async fn write_chunk<W: AsyncWrite + Unpin>(
    w: &mut W,
    data: &[u8],
) -> Result<(), IcapError> {
    if data.is_empty() {
        return Ok(());
    }
    let mut size = format!("{:x}\r\n", data.len()).into_bytes();
    if data.len() <= 16 * 1024 {
        size.extend_from_slice(data);
        size.extend_from_slice(b"\r\n");
        w.write_all(&size).await?;
    } else {
        w.write_all(&size).await?;
        w.write_all(data).await?;
        w.write_all(b"\r\n").await?;
    }
    Ok(())
}

/// Decodes the chunked body the service sends, one piece at a time.
pub(crate) struct ChunkReader {
    /// Bytes left in the current chunk.
    left: u64,
    done: bool,
}

impl ChunkReader {
    pub(crate) fn new() -> ChunkReader {
        ChunkReader {
            left: 0,
            done: false,
        }
    }

    /// The next piece of body, `None` after the last chunk (and its trailer) was read.
    pub(crate) async fn next<R: AsyncBufRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> Result<Option<Bytes>, IcapError> {
        if self.done {
            return Ok(None);
        }
        if self.left == 0 {
            let line = read_line(r).await?;
            let size = line.split(';').next().unwrap_or_default().trim();
            self.left = u64::from_str_radix(size, 16)
                .map_err(|_| IcapError::protocol(format!("chunk size {line:?}")))?;
            if self.left == 0 {
                // Trailer lines until the empty one.
                while !read_line(r).await?.is_empty() {}
                self.done = true;
                return Ok(None);
            }
        }
        let want = self.left.min(MAX_PIECE as u64) as usize;
        let mut buf = BytesMut::zeroed(want);
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Err(IcapError::Closed);
        }
        buf.truncate(n);
        self.left -= n as u64;
        if self.left == 0 && !read_line(r).await?.is_empty() {
            return Err(IcapError::protocol("chunk not followed by CRLF"));
        }
        Ok(Some(buf.freeze()))
    }
}

/// One CRLF-terminated line without its terminator; at most 1 KiB.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<String, IcapError> {
    let mut line = Vec::with_capacity(16);
    let n = (&mut *r).take(1025).read_until(b'\n', &mut line).await?;
    if n == 0 {
        return Err(IcapError::Closed);
    }
    if line.last() != Some(&b'\n') {
        return Err(IcapError::protocol("line too long"));
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| IcapError::protocol("line is not UTF-8"))
}

#[cfg(test)]
mod tests;
