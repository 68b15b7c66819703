//! The accept loops and admission: each accepted connection takes a slot under
//! `server.max_connections` and one under `max_connections_per_client` (none left: a canned
//! 503), then is served by [`crate::conn`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::{TimeVal, TimeValLike};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::Bound;
use crate::context::ConnCtx;
use crate::original_dst::{OriginalDst, TransparentKind};
use crate::reload::Reloader;
use crate::rewind::Rewind;

/// One accept loop per listener, each on a thread of its own (from the blocking pool): a
/// reconnect storm makes thousands of connection tasks runnable at once, and an accept loop
/// that were one more task among them would get its turn only after them — while the
/// kernel's accept queue overflows and drops SYNs (1 s retransmits for the clients). A thread
/// blocked in accept(2) is woken by the kernel and hands each connection to the runtime at once.
pub(super) fn start_accepting(
    listeners: Vec<Bound>,
    reloader: &Arc<Reloader>,
    admission: &Admission,
) -> Vec<tokio::task::JoinHandle<()>> {
    listeners
        .into_iter()
        .map(|bound| {
            if let Some(kind) = bound.transparent {
                tracing::info!("{} listener on {}", kind.as_str(), bound.addr);
            } else if bound.proxy_protocol {
                tracing::info!("PROXY protocol listener on {}", bound.addr);
            } else {
                tracing::info!("listening on {}", bound.addr);
            }
            let (reloader, admission) = (Arc::clone(reloader), admission.clone());
            tokio::task::spawn_blocking(move || accept_loop(&reloader, bound, &admission))
        })
        .collect()
}

/// How often a blocked accept(2) wakes to see whether the proxy is shutting down.
const SHUTDOWN_POLL: Duration = Duration::from_millis(100);

/// What every accepted connection is admitted against.
#[derive(Clone)]
pub(super) struct Admission {
    slots: Arc<Semaphore>,
    client_slots: Arc<crate::limits::ClientSlots>,
    shutdown: CancellationToken,
}

impl Admission {
    /// `max_connections` slots in all; accept loops stop when `shutdown` is cancelled.
    pub(super) fn new(max_connections: usize, shutdown: CancellationToken) -> Admission {
        Admission {
            slots: Arc::new(Semaphore::new(max_connections)),
            client_slots: Arc::new(crate::limits::ClientSlots::default()),
            shutdown,
        }
    }
}

/// Accepts connections; each starts with the snapshot current at its accept (for its
/// connection-level limits), and each request on it takes the snapshot current at its start.
/// On a PROXY protocol listener the header is read first (in the connection's own task, so a
/// slow load balancer delays nobody else) and names the client.
fn accept_loop(reloader: &Arc<Reloader>, bound: Bound, admission: &Admission) {
    let Bound {
        listener,
        addr: local,
        proxy_protocol,
        transparent,
    } = bound;
    let listener = match blocking(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(%local, error = %e, "cannot accept on this listener");
            return;
        }
    };
    while !admission.shutdown.is_cancelled() {
        let (mut stream, peer) = match accept(&listener) {
            // Shutting down: not served, as if the listener had already closed.
            Ok(Some(_)) if admission.shutdown.is_cancelled() => break,
            Ok(Some(pair)) => pair,
            Ok(None) => continue,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if let Some(kind) = transparent {
            if let Some(dst) = original_dst(reloader, &stream, peer, kind) {
                let stream = Rewind::new(Bytes::new(), stream);
                admit(reloader, stream, peer, local, admission, Some(dst));
            }
            continue;
        }
        if !proxy_protocol {
            let stream = Rewind::new(Bytes::new(), stream);
            admit(reloader, stream, peer, local, admission, None);
            continue;
        }
        let proxy = reloader.current();
        let (reloader, admission) = (Arc::clone(reloader), admission.clone());
        proxy.tasks.spawn(async move {
            let proxy = reloader.current();
            let server = &proxy.config.server;
            let wait = proxy.config.timeouts.client_header;
            match crate::proxy_protocol::read_header(&mut stream, peer, &server.proxy_protocol_trusted, wait).await {
                Ok((client, rest)) => {
                    tracing::trace!(%peer, %client, "PROXY protocol header");
                    admit(&reloader, Rewind::new(rest, stream), client, local, &admission, None);
                }
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "closing a connection on a PROXY protocol listener");
                }
            }
        });
    }
}

/// The listener as a blocking socket whose accept(2) gives up after [`SHUTDOWN_POLL`].
fn blocking(listener: TcpListener) -> std::io::Result<std::net::TcpListener> {
    let listener = listener.into_std()?;
    listener.set_nonblocking(false)?;
    let poll = TimeVal::microseconds(SHUTDOWN_POLL.as_micros().try_into().unwrap_or(100_000));
    setsockopt(&listener, sockopt::ReceiveTimeout, &poll).map_err(std::io::Error::from)?;
    Ok(listener)
}

/// One accepted connection, registered with the runtime; `None` when the wait timed out (or a
/// signal interrupted it).
fn accept(listener: &std::net::TcpListener) -> std::io::Result<Option<(TcpStream, SocketAddr)>> {
    match listener.accept() {
        Ok((stream, peer)) => {
            stream.set_nonblocking(true)?;
            Ok(Some((TcpStream::from_std(stream)?, peer)))
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Where a connection on a transparent listener was going; `None` (closed, with a warning)
/// when it was not redirected or would loop back into this proxy.
fn original_dst(
    reloader: &Reloader,
    stream: &TcpStream,
    peer: SocketAddr,
    kind: TransparentKind,
) -> Option<OriginalDst> {
    let proxy = reloader.current();
    let local = stream.local_addr().ok()?;
    match crate::original_dst::lookup(stream, local, &proxy.listen_addrs) {
        Ok(addr) => Some(OriginalDst { kind, addr }),
        Err(e) => {
            tracing::warn!(%peer, listener = kind.as_str(), error = %e, "closing a connection on a transparent listener");
            proxy.metrics.transparent_refused(kind);
            None
        }
    }
}

/// Admits one client connection against the limits and serves it; `transparent`: where a
/// redirected connection was going.
fn admit(
    reloader: &Arc<Reloader>,
    stream: Rewind<TcpStream>,
    client: SocketAddr,
    local: SocketAddr,
    admission: &Admission,
    transparent: Option<OriginalDst>,
) {
    let proxy = reloader.current();
    let Ok(slot) = Arc::clone(&admission.slots).try_acquire_owned() else {
        tracing::warn!(%client, "max_connections reached; refusing a connection");
        proxy.metrics.connection_refused();
        proxy.tasks.spawn(refuse_busy(stream, "max_connections"));
        return;
    };
    let per_client = proxy.config.server.max_connections_per_client;
    let Some(client_slot) = admission.client_slots.try_take(client.ip(), per_client) else {
        tracing::warn!(%client, limit = per_client, "max_connections_per_client reached; refusing a connection");
        proxy.metrics.connection_refused();
        proxy
            .tasks
            .spawn(refuse_busy(stream, "max_connections_per_client"));
        return;
    };
    let ctx = Arc::new(
        ConnCtx::new(client, local, slot, client_slot, &proxy.metrics)
            .with_original_dst(transparent),
    );
    let tasks = proxy.tasks.clone();
    tasks.spawn(crate::conn::serve(
        proxy,
        Arc::clone(reloader),
        stream,
        ctx,
        admission.shutdown.clone(),
    ));
}

async fn refuse_busy<S>(mut stream: S, limit: &'static str)
where
    S: tokio::io::AsyncWrite + Unpin,
{
    let body = format!("proxy is at {limit}.\r\n");
    let busy = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
         X-Portcullis-Error: too-many-connections\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(busy.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
