//! CONNECT to a parent: open the TCP connection, ask for a tunnel with our credentials, and
//! read the answer's head without reading past it (the bytes after it are the origin's).

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{Attempt, ParentSpec};
use crate::error::ProxyError;
use crate::upstream::Dialer;

/// The largest CONNECT answer head we read; real proxies send a few hundred bytes.
const MAX_HEAD: usize = 16 * 1024;

/// A tunnel to `authority` through `parent`, the whole exchange bounded by `deadline`.
pub(super) async fn connect(
    dialer: &Dialer,
    parent: &ParentSpec,
    authority: &str,
    deadline: Duration,
) -> Result<TcpStream, Attempt> {
    let name = &parent.name;
    // Credentials first: without a ticket for the parent there is nothing to connect for. Not
    // under the parent's deadline: a slow KDC is not the parent's failure (MIT krb5 bounds
    // its own KDC exchanges).
    let credentials = parent
        .credentials
        .header(name)
        .await
        .map_err(Attempt::Fatal)?;
    let exchange = async {
        let mut stream = dialer
            .dial_parent(&parent.host, parent.port)
            .await
            .map_err(Attempt::Failover)?;
        let mut head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
        if let Some(credentials) = credentials {
            // A scheme and base64: ASCII by construction.
            head.push_str("Proxy-Authorization: ");
            head.push_str(credentials.to_str().unwrap_or_default());
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let broken = |e: std::io::Error| {
            Attempt::Failover(ProxyError::Upstream(format!(
                "parent proxy {name}: connection failed during CONNECT: {e}"
            )))
        };
        stream.write_all(head.as_bytes()).await.map_err(broken)?;
        let answer = read_head(&stream).await.map_err(broken)?;
        judge(name, &answer)?;
        Ok(stream)
    };
    match tokio::time::timeout(deadline, exchange).await {
        Ok(result) => result,
        Err(_) => Err(Attempt::Failover(ProxyError::ConnectTimeout {
            host: format!("parent proxy {name} ({}:{})", parent.host, parent.port),
        })),
    }
}

/// The parent's verdict on our CONNECT, from its answer's head.
fn judge(name: &str, head: &[u8]) -> Result<(), Attempt> {
    let status = status_of(head).ok_or_else(|| {
        Attempt::Failover(ProxyError::Upstream(format!(
            "parent proxy {name} sent an invalid answer to CONNECT"
        )))
    })?;
    match status {
        200..=299 => Ok(()),
        407 => Err(Attempt::Fatal(ProxyError::ParentAuth {
            parent: name.to_owned(),
        })),
        502 | 503 => Err(Attempt::Failover(ProxyError::ParentRefused {
            parent: name.to_owned(),
            status,
        })),
        _ => Err(Attempt::Fatal(ProxyError::ParentRefused {
            parent: name.to_owned(),
            status,
        })),
    }
}

/// Reads up to and including the blank line ending the head, and not a byte more: the bytes
/// are peeked first, and only the head's are consumed.
async fn read_head(stream: &TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let start = head.len();
        head.extend_from_slice(&buf[..n]);
        // Search from a few bytes back: the terminator may straddle two reads.
        let from = start.saturating_sub(3);
        if let Some(end) = find_end(&head[from..]) {
            let end = from + end;
            consume(stream, end - start).await?;
            head.truncate(end);
            return Ok(head);
        }
        consume(stream, n).await?;
        if head.len() > MAX_HEAD {
            return Err(std::io::Error::other("answer head too large"));
        }
    }
}

/// The end (exclusive) of the first `\r\n\r\n` in `bytes`.
fn find_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// Reads exactly `n` bytes already peeked (and so already there).
async fn consume(stream: &TcpStream, mut n: usize) -> std::io::Result<()> {
    let mut sink = [0u8; 2048];
    while n > 0 {
        stream.readable().await?;
        match stream.try_read(&mut sink[..n.min(2048)]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(read) => n -= read,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `HTTP/1.x NNN reason` → NNN.
fn status_of(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?;
    (status.len() == 3).then_some(())?;
    status.parse().ok()
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn status_lines() {
        assert_eq!(
            status_of(b"HTTP/1.1 200 Connection established\r\n\r\n"),
            Some(200)
        );
        assert_eq!(
            status_of(b"HTTP/1.0 407 Proxy Authentication Required\r\n"),
            Some(407)
        );
        assert_eq!(status_of(b"HTTP/1.1 503\r\n\r\n"), Some(503));
        assert_eq!(status_of(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_of(b"HTTP/1.1 20 x\r\n"), None);
    }

    #[test]
    fn verdicts() {
        assert!(judge("p", b"HTTP/1.1 200 OK\r\n\r\n").is_ok());
        for (head, failover) in [
            (&b"HTTP/1.1 502 Bad Gateway\r\n\r\n"[..], true),
            (b"HTTP/1.1 503 Unavailable\r\n\r\n", true),
            (b"garbage\r\n\r\n", true),
            (b"HTTP/1.1 407 Auth\r\n\r\n", false),
            (b"HTTP/1.1 403 Forbidden\r\n\r\n", false),
        ] {
            let got = matches!(judge("p", head), Err(Attempt::Failover(_)));
            assert_eq!(got, failover, "{}", String::from_utf8_lossy(head));
        }
    }

    /// The head is consumed in pieces, the terminator split across reads, and the origin's
    /// first bytes after it stay in the socket.
    #[tokio::test]
    async fn reads_exactly_the_head() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            for piece in [
                &b"HTTP/1.1 200 OK\r\nX: y\r"[..],
                b"\n\r",
                b"\nSSH-2.0-origin",
            ] {
                s.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let mut client = TcpStream::connect(addr).await.unwrap();
        let head = read_head(&client).await.unwrap();
        assert_eq!(head, b"HTTP/1.1 200 OK\r\nX: y\r\n\r\n");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"SSH-2.0-origin");
        server.await.unwrap();
    }
}
