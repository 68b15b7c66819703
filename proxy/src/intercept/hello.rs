//! The client's first bytes in an intercepted tunnel: TLS or not, and the whole ClientHello
//! (kept, so the tunnel can still be relayed untouched after rustls has read it).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;

/// Longest ClientHello we buffer (post-quantum key shares make them ~2 KB; 64 KiB is generous).
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// What the client sent first.
pub(crate) enum FirstBytes {
    Tls(BytesMut),
    /// Not TLS (or nothing, or the origin spoke first): relay untouched, replaying these bytes.
    Other(Bytes),
}

/// Reads the client's first bytes. Gives up waiting when the origin speaks first (SMTP, IMAP
/// banners) or after `wait`; either way the tunnel is then relayed untouched. `upstream` is
/// `None` on a transparent connection, whose origin is not dialled before the decision.
pub(crate) async fn peek<C: AsyncRead + Unpin>(
    client: &mut C,
    upstream: Option<&TcpStream>,
    wait: Duration,
) -> FirstBytes {
    let mut buf = BytesMut::with_capacity(4096);
    let mut probe = [0u8; 1];
    let origin_spoke = async {
        match upstream {
            Some(upstream) => {
                let _ = upstream.peek(&mut probe).await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        read = tokio::time::timeout(wait, client.read_buf(&mut buf)) => match read {
            Ok(Ok(n)) if n > 0 && buf[0] == 0x16 => FirstBytes::Tls(buf),
            _ => FirstBytes::Other(buf.freeze()),
        },
        () = origin_spoke => FirstBytes::Other(buf.freeze()),
    }
}

/// Feeds the client's bytes to a rustls `Acceptor` until the ClientHello is complete, keeping a
/// copy so the tunnel can still be relayed untouched. Not a ClientHello: the bytes come back.
pub(crate) async fn read_client_hello<R>(
    client: &mut R,
    mut seen: BytesMut,
    wait: Duration,
) -> Result<(rustls::server::Accepted, BytesMut), Bytes>
where
    R: AsyncRead + Unpin,
{
    let mut acceptor = rustls::server::Acceptor::default();
    let mut fed = 0;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        while fed < seen.len() {
            match acceptor.read_tls(&mut &seen[fed..]) {
                Ok(0) => break,
                Ok(n) => fed += n,
                Err(_) => return Err(seen.freeze()),
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => return Ok((accepted, seen)),
            Ok(None) => {}
            Err(_) => return Err(seen.freeze()),
        }
        if seen.len() >= MAX_CLIENT_HELLO {
            return Err(seen.freeze());
        }
        match tokio::time::timeout_at(deadline, client.read_buf(&mut seen)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Err(seen.freeze()),
        }
    }
}
