//! PROXY protocol v1 and v2 (HAProxy's) on listeners behind a load balancer, so that logs,
//! policy, throttling and per-client limits see the real client address.
//!
//! Only connections from `server.proxy_protocol_trusted` may carry the header; anyone else could
//! claim any address. On a PROXY protocol listener every connection must start with a header:
//! an untrusted source, a missing or malformed header, or one that does not arrive within
//! `timeouts.client_header` closes the connection with a log line. A `LOCAL` header (the load
//! balancer's own health check) keeps the load balancer's address.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt};

/// A v2 header is 16 bytes plus at most 65535; real ones (addresses and a few TLVs) are far
/// smaller, and a v1 header is at most 107 bytes.
const MAX_HEADER: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ProxyHeaderError {
    #[error("{0} is not in server.proxy_protocol_trusted")]
    Untrusted(IpAddr),
    #[error("no PROXY protocol header within {0:?}")]
    Timeout(Duration),
    #[error("the connection closed before a complete PROXY protocol header")]
    Closed,
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(String),
}

/// Reads the header from `stream` (whose peer is `peer`). Returns the client address it
/// names and the bytes read past it, which belong to the HTTP request.
pub(crate) async fn read_header<S>(
    stream: &mut S,
    peer: SocketAddr,
    trusted: &[ipnet::IpNet],
    wait: Duration,
) -> Result<(SocketAddr, Bytes), ProxyHeaderError>
where
    S: AsyncRead + Unpin,
{
    if !trusted
        .iter()
        .any(|net| net.contains(&peer.ip().to_canonical()))
    {
        return Err(ProxyHeaderError::Untrusted(peer.ip()));
    }
    let mut buf = BytesMut::with_capacity(512);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if !buf.is_empty() {
            if let Some(parsed) = parse(&buf, peer)? {
                let (client, used) = parsed;
                let rest = buf.split_off(used).freeze();
                return Ok((client, rest));
            }
        }
        if buf.len() >= MAX_HEADER {
            return Err(ProxyHeaderError::Invalid("header too long".into()));
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Err(_) => return Err(ProxyHeaderError::Timeout(wait)),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(ProxyHeaderError::Closed),
            Ok(Ok(_)) => {}
        }
    }
}

/// `Ok(None)`: more bytes needed. `Ok(Some((client, header length)))`: complete.
fn parse(buf: &[u8], peer: SocketAddr) -> Result<Option<(SocketAddr, usize)>, ProxyHeaderError> {
    let result = HeaderResult::parse(buf);
    if result.is_incomplete() {
        return Ok(None);
    }
    let invalid = |e: &dyn std::fmt::Display| ProxyHeaderError::Invalid(e.to_string());
    match result {
        HeaderResult::V1(Ok(header)) => {
            let client = match header.addresses {
                v1::Addresses::Tcp4(a) => SocketAddr::from((a.source_address, a.source_port)),
                v1::Addresses::Tcp6(a) => SocketAddr::from((a.source_address, a.source_port)),
                v1::Addresses::Unknown => peer,
            };
            Ok(Some((client, header.header.len())))
        }
        HeaderResult::V2(Ok(header)) => {
            let client = match (header.command, header.addresses) {
                (v2::Command::Local, _) => peer,
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    SocketAddr::from((a.source_address, a.source_port))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    SocketAddr::from((a.source_address, a.source_port))
                }
                (v2::Command::Proxy, _) => {
                    return Err(ProxyHeaderError::Invalid(
                        "not a TCP over IPv4/IPv6 connection".into(),
                    ))
                }
            };
            Ok(Some((client, header.len())))
        }
        HeaderResult::V1(Err(e)) => Err(invalid(&e)),
        HeaderResult::V2(Err(e)) => Err(invalid(&e)),
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn lb() -> SocketAddr {
        "10.0.0.2:40000".parse().unwrap()
    }

    fn trusted() -> Vec<ipnet::IpNet> {
        vec!["10.0.0.0/8".parse().unwrap()]
    }

    async fn read(bytes: &[u8]) -> Result<(SocketAddr, Bytes), ProxyHeaderError> {
        let mut reader = bytes;
        read_header(&mut reader, lb(), &trusted(), Duration::from_secs(1)).await
    }

    #[tokio::test]
    async fn v1_and_v2_name_the_client_and_keep_what_follows() {
        let (client, rest) =
            read(b"PROXY TCP4 192.0.2.7 10.0.0.9 51234 3128\r\nGET / HTTP/1.1\r\n")
                .await
                .unwrap();
        assert_eq!(client, "192.0.2.7:51234".parse().unwrap());
        assert_eq!(&rest[..], b"GET / HTTP/1.1\r\n");
        let (client, _) = read(b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 3128\r\n")
            .await
            .unwrap();
        assert_eq!(client, "[2001:db8::7]:4000".parse().unwrap());

        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        v2.extend([
            0x21, 0x11, 0, 12, 192, 0, 2, 8, 10, 0, 0, 9, 0xc8, 0x33, 0x0c, 0x38,
        ]);
        v2.extend(b"CONNECT x:443 HTTP/1.1\r\n");
        let (client, rest) = read(&v2).await.unwrap();
        assert_eq!(client, "192.0.2.8:51251".parse().unwrap());
        assert_eq!(&rest[..], b"CONNECT x:443 HTTP/1.1\r\n");

        // LOCAL: the load balancer's own health check keeps its address.
        let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(read(&local).await.unwrap().0, lb());
    }

    #[tokio::test]
    async fn untrusted_missing_and_malformed_headers_are_refused() {
        let mut reader: &[u8] = b"PROXY TCP4 192.0.2.7 10.0.0.9 51234 3128\r\n";
        let stranger: SocketAddr = "192.0.2.99:5555".parse().unwrap();
        assert_eq!(
            read_header(&mut reader, stranger, &trusted(), Duration::from_secs(1)).await,
            Err(ProxyHeaderError::Untrusted(stranger.ip()))
        );
        assert!(matches!(
            read(b"GET http://x/ HTTP/1.1\r\n\r\n").await,
            Err(ProxyHeaderError::Invalid(_))
        ));
        assert!(matches!(
            read(b"PROXY TCP4 999.0.2.7 10.0.0.9 1 2\r\n").await,
            Err(ProxyHeaderError::Invalid(_))
        ));
        assert_eq!(
            read(b"PROXY TCP4 192.0.2.7").await,
            Err(ProxyHeaderError::Closed)
        );
    }
}
