//! Listeners, the accept loop, per-connection limits and deadlines, and graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::{AccessLog, Record};
use crate::activity::{now_ms, Activity, ActivityIo, Verdict};
use crate::config::Config;
use crate::upstream::{http_client, Dialer, HttpClient, Resolver};

/// Everything a request needs, shared by all connections.
pub struct Proxy {
    pub config: Arc<Config>,
    pub dialer: Arc<Dialer>,
    pub client: HttpClient,
    pub access_log: AccessLog,
    /// Connection and tunnel tasks, awaited (up to the grace period) on shutdown.
    pub tasks: TaskTracker,
    pub listen_addrs: Vec<SocketAddr>,
}

impl Proxy {
    pub fn listen_label(&self) -> String {
        self.listen_addrs
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One client connection. Tunnels keep a clone, so the connection's slot under
/// `max_connections` stays taken until the tunnel ends.
pub struct ConnCtx {
    pub client: SocketAddr,
    pub local: SocketAddr,
    pub activity: Arc<Activity>,
    _slot: OwnedSemaphorePermit,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(#[from] std::io::Error),
}

/// Binds the listeners, serves until `shutdown` is cancelled, then drains in-flight requests for
/// up to `timeouts.shutdown_grace`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    let config = Arc::new(config);
    let mut listeners = Vec::new();
    for addr in &config.server.listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Listen {
                addr: *addr,
                source,
            })?;
        listeners.push(listener);
    }
    let listen_addrs: Vec<SocketAddr> = listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<Result<_, _>>()?;

    let resolver = Resolver::new(&config)?;
    let dialer = Arc::new(Dialer::new(
        resolver,
        config.timeouts.upstream_connect,
        listen_addrs.clone(),
    ));
    let (access_log, log_writer) = AccessLog::start(&config.access_log)?;
    spawn_reopen_on_sigusr1(access_log.clone(), shutdown.clone());

    let proxy = Arc::new(Proxy {
        client: http_client(&config, Arc::clone(&dialer)),
        dialer,
        access_log,
        tasks: TaskTracker::new(),
        listen_addrs: listen_addrs.clone(),
        config: Arc::clone(&config),
    });
    let slots = Arc::new(Semaphore::new(config.server.max_connections));

    let mut accept_loops = Vec::new();
    for (listener, addr) in listeners.into_iter().zip(&listen_addrs) {
        tracing::info!("listening on {addr}");
        accept_loops.push(tokio::spawn(accept_loop(
            Arc::clone(&proxy),
            listener,
            Arc::clone(&slots),
            shutdown.clone(),
        )));
    }

    shutdown.cancelled().await;
    for accept in accept_loops {
        let _ = accept.await;
    }
    let grace = config.timeouts.shutdown_grace;
    tracing::info!(
        open = proxy.tasks.len(),
        "shutting down: no new connections, draining for up to {}",
        humantime::format_duration(grace)
    );
    proxy.tasks.close();
    if tokio::time::timeout(grace, proxy.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = proxy.tasks.len(),
            "grace period over; closing remaining connections"
        );
    }
    drop(proxy);
    // The writer ends when the last handle is gone; give it a moment to flush.
    let _ = tokio::time::timeout(Duration::from_secs(2), log_writer).await;
    tracing::info!("stopped");
    Ok(())
}

fn spawn_reopen_on_sigusr1(log: AccessLog, shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
        tracing::warn!("cannot install the SIGUSR1 handler; access log reopen is unavailable");
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                got = usr1.recv() => {
                    if got.is_none() { break }
                    log.reopen();
                }
                () = shutdown.cancelled() => break,
            }
        }
    });
}

async fn accept_loop(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let local = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let (stream, client) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%client, "max_connections reached; refusing a connection");
            proxy.tasks.spawn(refuse_busy(stream));
            continue;
        };
        let ctx = Arc::new(ConnCtx {
            client,
            local: local.unwrap_or(client),
            activity: Activity::new(),
            _slot: slot,
        });
        proxy.tasks.spawn(serve_connection(
            Arc::clone(&proxy),
            stream,
            ctx,
            shutdown.clone(),
        ));
    }
}

async fn refuse_busy(mut stream: TcpStream) {
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
X-Portcullis-Error: too-many-connections\r\nContent-Length: 31\r\nConnection: close\r\n\r\n\
proxy is at max_connections.\r\n";
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(BUSY).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn serve_connection(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    ctx: Arc<ConnCtx>,
    shutdown: CancellationToken,
) {
    let server = &proxy.config.server;
    let timeouts = proxy.config.timeouts.clone();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .max_header_size(server.max_header_bytes)
        // The read buffer must hold a maximal head; beyond it hyper answers 431 as well.
        .max_buf_size(server.max_header_bytes + 1024)
        .max_headers(server.max_headers)
        .preserve_header_case(true);
    let io = TokioIo::new(ActivityIo::new(stream, Arc::clone(&ctx.activity)));
    let service = {
        let proxy = Arc::clone(&proxy);
        let ctx = Arc::clone(&ctx);
        service_fn(move |req| {
            let proxy = Arc::clone(&proxy);
            let ctx = Arc::clone(&ctx);
            async move { Ok::<_, Infallible>(crate::http::handle(proxy, ctx, req).await) }
        })
    };
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let mut draining = false;
    let result = loop {
        let now = now_ms();
        let wait = match ctx
            .activity
            .verdict(now, timeouts.client_header, timeouts.client_idle)
        {
            Verdict::WaitUntil(at) => Duration::from_millis(at - now),
            Verdict::HeaderTimeout => {
                tracing::debug!(client = %ctx.client, "request head not received in time; closing");
                log_connection_error(&proxy, &ctx, 408, "error:request-head-timeout");
                return;
            }
            Verdict::Idle => {
                tracing::trace!(client = %ctx.client, "idle keep-alive connection closed");
                return;
            }
        };
        tokio::select! {
            result = conn.as_mut() => break result,
            () = shutdown.cancelled(), if !draining => {
                // Finish the request in flight, if any, then close.
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            () = tokio::time::sleep(wait) => {}
            () = ctx.activity.head_started() => {}
        }
    };
    if let Err(e) = result {
        if e.is_parse_too_large() {
            log_connection_error(&proxy, &ctx, 431, "error:request-too-large");
        } else if e.is_parse() {
            log_connection_error(&proxy, &ctx, 400, "error:invalid-request");
        } else {
            tracing::debug!(client = %ctx.client, error = %e, "client connection ended with an error");
        }
    }
}

/// Squid logs requests it could not parse as `NONE/400 … error:invalid-request`; so do we.
fn log_connection_error(proxy: &Proxy, ctx: &ConnCtx, status: u16, url: &str) {
    proxy.access_log.log(&Record {
        time: std::time::SystemTime::now(),
        elapsed_ms: 0,
        client: ctx.client.ip(),
        result: "NONE",
        status,
        bytes: 0,
        bytes_in: 0,
        method: "NONE".into(),
        url: url.into(),
        user: None,
        hierarchy: "HIER_NONE",
        peer: None,
        content_type: None,
        error: None,
    });
}
