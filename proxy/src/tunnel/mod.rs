//! Relaying bytes both ways for CONNECT tunnels and upgraded (WebSocket) connections, with an
//! idle timeout and byte counts. A byte pump only: what a tunnel means (its log line, its
//! decision) is the CONNECT handler's.

mod splice;

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::activity::{now_ms, ActivityIo};
use crate::rewind::Rewind;

/// The I/O type the client listener hands hyper, recovered from an upgraded connection.
type ClientIo = TokioIo<ActivityIo<Rewind<TcpStream>>>;

/// The client side of a tunnel: hyper's upgraded connection (a CONNECT), or the socket a
/// transparent TLS listener accepted (no HTTP ever ran on it).
pub(crate) enum ClientStream {
    Upgraded(TokioIo<Upgraded>),
    Accepted(Rewind<TcpStream>),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Upgraded(io) => Pin::new(io).poll_read(cx, buf),
            ClientStream::Accepted(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Upgraded(io) => Pin::new(io).poll_write(cx, buf),
            ClientStream::Accepted(io) => Pin::new(io).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Upgraded(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            ClientStream::Accepted(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Upgraded(io) => io.is_write_vectored(),
            ClientStream::Accepted(io) => io.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Upgraded(io) => Pin::new(io).poll_flush(cx),
            ClientStream::Accepted(io) => Pin::new(io).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Upgraded(io) => Pin::new(io).poll_shutdown(cx),
            ClientStream::Accepted(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

/// The client end of a tunnel, and the bytes already read from it (a peeked ClientHello),
/// which go to the origin first.
pub(crate) struct TunnelClient {
    client: ClientStream,
    prefix: Bytes,
}

impl TunnelClient {
    pub(crate) fn new(client: ClientStream, prefix: Bytes) -> TunnelClient {
        TunnelClient { client, prefix }
    }

    /// A CONNECT's upgraded connection.
    pub(crate) fn upgraded(upgraded: Upgraded, prefix: Bytes) -> TunnelClient {
        TunnelClient::new(ClientStream::Upgraded(TokioIo::new(upgraded)), prefix)
    }
}

/// Per-direction buffer: large enough for bulk transfers to run at memory speed, small enough
/// that thousands of idle tunnels stay cheap (buffers exist only while copying).
const BUF: usize = 32 * 1024;

#[derive(Debug, Default)]
pub(crate) struct RelayStats {
    /// Client → origin payload bytes.
    pub(crate) from_client: u64,
    /// Origin → client payload bytes.
    pub(crate) to_client: u64,
    pub(crate) end: RelayEnd,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) enum RelayEnd {
    /// Both sides closed (half-closes were passed on).
    #[default]
    Closed,
    /// Nothing moved either way for the idle timeout.
    Idle,
    /// A socket error ended the relay.
    Error(String),
}

#[derive(Debug, Default)]
struct Counters {
    from_client: AtomicU64,
    to_client: AtomicU64,
    last: AtomicU64,
}

pin_project_lite::pin_project! {
    struct Counted<T> {
        #[pin]
        inner: T,
        counters: Arc<Counters>,
    }
}

impl<T: AsyncRead> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            this.counters.from_client.fetch_add(n, Ordering::Relaxed);
            this.counters.last.store(now_ms(), Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            this.counters
                .to_client
                .fetch_add(*n as u64, Ordering::Relaxed);
            this.counters.last.store(now_ms(), Ordering::Relaxed);
        }
        polled
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// A tunnel between two TCP sockets is spliced ([`splice`]); the copying relay is the
/// fallback when the client's socket cannot be recovered.
pub(crate) async fn relay_tunnel(
    client: TunnelClient,
    upstream: TcpStream,
    idle: Duration,
) -> RelayStats {
    let (prefix, tcp) = match client.client {
        ClientStream::Upgraded(io) => match io.into_inner().downcast::<ClientIo>() {
            Ok(parts) => {
                // In the order the client sent them: what was peeked (which starts with
                // hyper's buffered bytes), what is left of hyper's buffer, what the listener's
                // rewind still holds.
                let (unread, tcp) = parts.io.into_inner().into_inner().into_parts();
                (concat([client.prefix, parts.read_buf, unread]), tcp)
            }
            Err(upgraded) => {
                let client = Rewind::new(client.prefix, TokioIo::new(upgraded));
                return relay(client, upstream, idle).await;
            }
        },
        ClientStream::Accepted(rewind) => {
            let (unread, tcp) = rewind.into_parts();
            (concat([client.prefix, unread]), tcp)
        }
    };
    splice::relay(tcp, prefix, upstream, idle).await
}

/// The non-empty pieces, in order, as one buffer.
fn concat<const N: usize>(pieces: [Bytes; N]) -> Bytes {
    pieces
        .into_iter()
        .filter(|b| !b.is_empty())
        .fold(bytes::BytesMut::new(), |mut all, b| {
            all.extend_from_slice(&b);
            all
        })
        .freeze()
}

/// Drives `relay` to its end, or stops it once nothing has moved (`last`, on the [`now_ms`]
/// clock) for `idle`. Shared by the copying and the spliced relay.
pub(crate) async fn until_idle<T>(
    relay: impl std::future::Future<Output = io::Result<T>>,
    last: &AtomicU64,
    idle: Duration,
) -> RelayEnd {
    tokio::pin!(relay);
    let idle_ms = idle.as_millis() as u64;
    loop {
        let wait = (last.load(Ordering::Relaxed) + idle_ms).saturating_sub(now_ms());
        tokio::select! {
            result = &mut relay => {
                return match result {
                    Ok(_) => RelayEnd::Closed,
                    Err(e) => RelayEnd::Error(e.to_string()),
                };
            }
            () = tokio::time::sleep(Duration::from_millis(wait)) => {
                if now_ms() >= last.load(Ordering::Relaxed) + idle_ms {
                    return RelayEnd::Idle;
                }
            }
        }
    }
}

/// Copies both ways until both directions have ended, an error occurs, or nothing has moved
/// for `idle`. An EOF from one side is passed on as a half-close (shutdown of the other side's
/// write half) while the other direction keeps flowing.
pub(crate) async fn relay<C, U>(client: C, upstream: U, idle: Duration) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let counters = Arc::new(Counters {
        last: AtomicU64::new(now_ms()),
        ..Counters::default()
    });
    let mut client = Counted {
        inner: client,
        counters: Arc::clone(&counters),
    };
    let mut upstream = upstream;
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUF, BUF);
    let end = until_idle(copy, &counters.last, idle).await;
    RelayStats {
        from_client: counters.from_client.load(Ordering::Relaxed),
        to_client: counters.to_client.load(Ordering::Relaxed),
        end,
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn half_close_delivers_in_flight_data_then_ends() {
        let (client_side, mut client) = tokio::io::duplex(1024);
        let (upstream_side, mut origin) = tokio::io::duplex(1024);
        let relay = tokio::spawn(relay(client_side, upstream_side, Duration::from_secs(5)));
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap(); // client half-closes
        let mut got = Vec::new();
        origin.read_to_end(&mut got).await.unwrap(); // origin sees EOF after the data
        assert_eq!(got, b"request");
        origin.write_all(b"late response").await.unwrap();
        origin.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"late response");
        let stats = relay.await.unwrap();
        assert_eq!((stats.from_client, stats.to_client), (7, 13));
        assert_eq!(stats.end, RelayEnd::Closed);
    }

    #[tokio::test]
    async fn idle_relay_ends() {
        let (client_side, _client) = tokio::io::duplex(64);
        let (upstream_side, _origin) = tokio::io::duplex(64);
        let stats = relay(client_side, upstream_side, Duration::from_millis(50)).await;
        assert_eq!(stats.end, RelayEnd::Idle);
    }
}
