//! The client's first bytes in an intercepted tunnel: TLS or not, and the whole ClientHello
//! (kept, so the tunnel can still be relayed untouched after rustls has read it).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;

/// Longest ClientHello we buffer (post-quantum key shares make them ~2 KB; 64 KiB is generous).
const MAX_CLIENT_HELLO: usize = 64 * 1024;
/// The first read: enough to tell a TLS record from anything else.
const FIRST_READ: usize = 64;
/// The buffer a ClientHello is read into once it has begun (grown if one is larger).
const HELLO_BUFFER: usize = 4096;

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
    // The first read goes to a few bytes inside this future; the buffer for the rest of the
    // ClientHello is taken once they have arrived. A tunnel whose client has not spoken yet —
    // thousands of them right after a reconnect burst — then holds no buffer at all.
    let mut first = [0u8; FIRST_READ];
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
        read = tokio::time::timeout(wait, client.read(&mut first)) => match read {
            Ok(Ok(n)) if n > 0 && first[0] == 0x16 => {
                let mut buf = BytesMut::with_capacity(HELLO_BUFFER);
                buf.extend_from_slice(&first[..n]);
                FirstBytes::Tls(buf)
            }
            Ok(Ok(n)) => FirstBytes::Other(Bytes::copy_from_slice(&first[..n])),
            _ => FirstBytes::Other(Bytes::new()),
        },
        () = origin_spoke => FirstBytes::Other(Bytes::new()),
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
    // Boxed: rustls' connection state is large, and this future lives in the tunnel's task.
    let mut acceptor = Box::new(rustls::server::Acceptor::default());
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

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use std::sync::Arc;

    /// A real ClientHello for `name`, as rustls writes it (well over `FIRST_READ` bytes).
    fn client_hello(name: &str) -> Vec<u8> {
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut bytes = Vec::new();
        client.write_tls(&mut bytes).unwrap();
        bytes
    }

    #[tokio::test]
    async fn a_client_hello_longer_than_the_first_read_arrives_whole() {
        let hello = client_hello("mail.example.com");
        assert!(hello.len() > FIRST_READ * 2, "{} bytes", hello.len());
        let mut reader: &[u8] = &hello;
        let FirstBytes::Tls(first) = peek(&mut reader, None, Duration::from_secs(1)).await else {
            panic!("a ClientHello was not taken for TLS");
        };
        assert!(first.len() <= FIRST_READ);
        let (accepted, seen) = read_client_hello(&mut reader, first, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(
            accepted.client_hello().server_name(),
            Some("mail.example.com")
        );
        // Every byte is kept, in order, for a relay that replays them.
        assert_eq!(&seen[..], &hello[..]);
    }

    #[tokio::test]
    async fn other_first_bytes_come_back_and_the_rest_stays_unread() {
        let text =
            b"EHLO client.example.com\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n";
        assert!(text.len() > FIRST_READ);
        let mut reader: &[u8] = text;
        let FirstBytes::Other(first) = peek(&mut reader, None, Duration::from_secs(1)).await else {
            panic!("plain text was taken for TLS");
        };
        // What peek read plus what is still unread is the whole stream: nothing lost.
        let mut all = first.to_vec();
        all.extend_from_slice(reader);
        assert_eq!(&all[..], &text[..]);
    }

    #[tokio::test]
    async fn a_silent_client_gives_up_after_the_wait_with_nothing() {
        let (mut client, _peer) = tokio::io::duplex(64);
        let started = tokio::time::Instant::now();
        let FirstBytes::Other(first) = peek(&mut client, None, Duration::from_millis(50)).await
        else {
            panic!("silence was taken for TLS");
        };
        assert!(first.is_empty());
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
