//! CONNECT tunnels relayed with splice(2): socket → pipe → socket inside the kernel, so the
//! payload is never copied through user space. Tunnels are the path Outlook's traffic takes
//! by default, often hundreds of MiB (OST downloads, attachments), so this is where the proxy's
//! CPU per byte matters most.
//!
//! Same contract as [`crate::tunnel::relay`]: both directions until both have ended (an EOF is
//! passed on as a half-close), an error, or `idle` without a byte either way.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use nix::fcntl::{splice, OFlag, SpliceFFlags};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::{until_idle, RelayStats};
use crate::activity::now_ms;

/// Bytes moved per splice: the default pipe capacity (16 pages), so a read never finds the
/// pipe full.
const CHUNK: usize = 64 * 1024;

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        Ok(Pipe { read, write })
    }
}

/// The pipes a spliced tunnel needs, created before the tunnel starts so that running out of
/// descriptors means falling back to the copying relay rather than failing the tunnel.
pub(crate) struct Pipes([Pipe; 2]);

impl Pipes {
    pub(crate) fn new() -> io::Result<Pipes> {
        Ok(Pipes([Pipe::new()?, Pipe::new()?]))
    }
}

/// Relays `client` ↔ `upstream`; `prefix` (bytes already read from the client) goes upstream
/// first.
pub(crate) async fn relay(
    client: TcpStream,
    prefix: Bytes,
    upstream: TcpStream,
    idle: Duration,
    pipes: Pipes,
) -> RelayStats {
    let from_client = AtomicU64::new(0);
    let to_client = AtomicU64::new(0);
    let last = AtomicU64::new(now_ms());
    let (client_read, client_write) = client.into_split();
    let (upstream_read, mut upstream_write) = upstream.into_split();
    let [up, down] = pipes.0;
    let both = async {
        if !prefix.is_empty() {
            upstream_write.write_all(&prefix).await?;
            from_client.fetch_add(prefix.len() as u64, Ordering::Relaxed);
        }
        tokio::try_join!(
            pump(client_read, upstream_write, up, &from_client, &last),
            pump(upstream_read, client_write, down, &to_client, &last),
        )
    };
    let end = until_idle(both, &last, idle).await;
    RelayStats {
        from_client: from_client.load(Ordering::Relaxed),
        to_client: to_client.load(Ordering::Relaxed),
        end,
    }
}

/// One direction: splice what `from` has into the pipe, then all of it out to `to`; at EOF,
/// half-close `to`.
async fn pump(
    from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    pipe: Pipe,
    moved: &AtomicU64,
    last: &AtomicU64,
) -> io::Result<()> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let from: &TcpStream = from.as_ref();
    loop {
        let n = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                splice(from.as_fd(), None, pipe.write.as_fd(), None, CHUNK, flags)
                    .map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        let mut left = n;
        while left > 0 {
            let out: &TcpStream = to.as_ref();
            out.writable().await?;
            match out.try_io(Interest::WRITABLE, || {
                splice(pipe.read.as_fd(), None, out.as_fd(), None, left, flags)
                    .map_err(io::Error::from)
            }) {
                Ok(m) => {
                    left -= m;
                    moved.fetch_add(m as u64, Ordering::Relaxed);
                    last.store(now_ms(), Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::tunnel::RelayEnd;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A connected pair of loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn relays_both_ways_with_prefix_half_close_and_counts() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut origin) = pair().await;
        let relay = tokio::spawn(relay(
            client_side,
            Bytes::from_static(b"hello "),
            upstream_side,
            Duration::from_secs(5),
            Pipes::new().unwrap(),
        ));
        // More than one pipe's worth, so the loop turns.
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let to_send = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&to_send).await.unwrap();
            client.shutdown().await.unwrap(); // half-close: the origin must see EOF
            client
        });
        let mut got = Vec::new();
        origin.read_to_end(&mut got).await.unwrap();
        assert_eq!(&got[..6], b"hello ");
        assert_eq!(&got[6..], &payload[..]);
        // The other direction still flows after the client's half-close.
        origin.write_all(b"late response").await.unwrap();
        origin.shutdown().await.unwrap();
        let mut client = writer.await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"late response");
        let stats = relay.await.unwrap();
        assert_eq!(stats.from_client, 6 + payload.len() as u64);
        assert_eq!(stats.to_client, 13);
        assert_eq!(stats.end, RelayEnd::Closed);
    }

    #[tokio::test]
    async fn idle_tunnel_ends() {
        let (_client, client_side) = pair().await;
        let (upstream_side, _origin) = pair().await;
        let stats = relay(
            client_side,
            Bytes::new(),
            upstream_side,
            Duration::from_millis(50),
            Pipes::new().unwrap(),
        )
        .await;
        assert_eq!(stats.end, RelayEnd::Idle);
    }

    #[tokio::test]
    async fn reset_by_the_origin_is_an_error() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, origin) = pair().await;
        // Linger 0: closing sends RST instead of FIN.
        origin.set_zero_linger().unwrap();
        drop(origin);
        let relay = tokio::spawn(relay(
            client_side,
            Bytes::new(),
            upstream_side,
            Duration::from_secs(5),
            Pipes::new().unwrap(),
        ));
        // Writing towards the reset origin fails the relay.
        for _ in 0..50 {
            if client.write_all(&[0u8; 65536]).await.is_err() {
                break;
            }
            if relay.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stats = relay.await.unwrap();
        assert!(matches!(stats.end, RelayEnd::Error(_)), "{:?}", stats.end);
    }
}
