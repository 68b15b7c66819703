//! Listeners, the accept loop, per-connection limits and deadlines, and graceful shutdown.

use std::convert::Infallible;

use bytes::Bytes;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
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
use crate::admin::AdminState;
use crate::auth::{Auth, ConnAuth};
use crate::config::Config;
use crate::intercept::Interceptor;
use crate::metrics::{ActiveGuard, Metrics};
use crate::reload::{ConfigSource, LoadError, Reloader, Shared};
use crate::rewind::Rewind;
use crate::upstream::{Dialer, HttpClient};

/// Everything a request needs: one immutable snapshot of the configuration and what was built
/// from it. A reload builds a new one (`reload::assemble`); each request and tunnel keeps the
/// snapshot it started with.
pub struct Proxy {
    pub config: Arc<Config>,
    pub dialer: Arc<Dialer>,
    pub client: HttpClient,
    pub access_log: AccessLog,
    /// Proxy authentication; `None` when no scheme is enabled.
    pub auth: Option<Arc<Auth>>,
    /// What to inspect, tunnel, refuse or exempt from authentication (`[policy]`).
    pub policy: Arc<portcullis_policy::Policy>,
    /// TLS inspection; `None` when `tls.inspect` is off.
    pub interceptor: Option<Arc<Interceptor>>,
    /// Cancelled on SIGTERM/SIGINT: connections finish their request in flight and close.
    pub shutdown: CancellationToken,
    /// Connection and tunnel tasks, awaited (up to the grace period) on shutdown.
    pub tasks: TaskTracker,
    pub listen_addrs: Vec<SocketAddr>,
    /// The process's metrics, shared by every snapshot. Interception reports through it:
    /// `tls_intercepted`, `tls_tunnelled(reason)`, `tls_handshake_failed(side)`.
    pub metrics: Arc<Metrics>,
    /// Our `Via` entries, rendered from `server.via_pseudonym`.
    pub via: crate::http::headers::Via,
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
    /// `client`'s address as a header value, for `X-Forwarded-For`.
    pub client_address: http::HeaderValue,
    pub local: SocketAddr,
    pub activity: Arc<Activity>,
    /// The authenticated user of this connection (Negotiate) and handshake state.
    pub auth: ConnAuth,
    /// This connection's private origin connection after NTLM/Negotiate to an origin.
    pub pinned: crate::http::pinned::PinnedOrigin,
    _slot: OwnedSemaphorePermit,
    _client_slot: crate::limits::ClientSlot,
    /// Keeps `portcullis_active_client_connections` raised while the connection (or a tunnel
    /// holding this context) lives.
    _active: ActiveGuard,
    /// Set when a CONNECT or upgrade succeeded; since the tunnel task holds this context until
    /// the tunnel ends, `portcullis_active_tunnels` drops exactly then.
    tunnel: OnceLock<ActiveGuard>,
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
    #[error("invalid config: key `{0}`: {1}")]
    Config(&'static str, String),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot write the pid file {path}: {source}")]
    PidFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Starts with `config` (already loaded from `source`), serves until `shutdown` is cancelled,
/// then drains in-flight requests for up to `timeouts.shutdown_grace`. `source` is what a
/// reload (SIGHUP, `POST /reload`) reads again.
///
/// Start-up order matters: the admin listener comes first, so `/healthz` answers and `/readyz`
/// says "not ready" while files are loaded; the proxy listeners are bound only once everything
/// they need is valid, so no client is ever accepted by a proxy that cannot serve it.
pub async fn run(
    config: Config,
    source: ConfigSource,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    // Before anything slow: SIGHUP's default action would terminate the process.
    let hup = signal(SignalKind::hangup())
        .inspect_err(|e| tracing::warn!(error = %e, "cannot install the SIGHUP handler; reload with `portcullis reload` instead"))
        .ok();
    let metrics = Arc::new(Metrics::new()?);
    let admin = Arc::new(AdminState::new(Arc::clone(&metrics)));
    let mut own_addrs = Vec::new();
    if config.admin.enabled {
        let addr = config.admin.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Listen { addr, source })?;
        let bound = listener.local_addr()?;
        own_addrs.push(bound);
        crate::admin::log_bound(bound);
        tokio::spawn(crate::admin::serve(
            listener,
            Arc::clone(&admin),
            shutdown.clone(),
        ));
    }

    // Files (htpasswd, hosts file, CA, keytab) are read off the async workers.
    let loaded = {
        let config = config.clone();
        let metrics = Arc::clone(&metrics);
        tokio::task::spawn_blocking(move || crate::reload::load(config, None, &metrics))
            .await
            .map_err(|e| LoadError::Task(e.to_string()))??
    };

    // PROXY protocol listeners come after the plain ones.
    let plain = config.server.listen.len();
    let mut listeners = Vec::new();
    for addr in config
        .server
        .listen
        .iter()
        .chain(&config.server.proxy_protocol_listen)
    {
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
    own_addrs.extend(&listen_addrs);

    let (access_log, log_writer) = AccessLog::start(&config.access_log)?;
    let access_log = access_log.with_metrics(Arc::clone(&metrics));
    spawn_reopen_on_sigusr1(access_log.clone(), shutdown.clone());
    let tasks = TaskTracker::new();
    let shared = Shared {
        access_log,
        tasks: tasks.clone(),
        shutdown: shutdown.clone(),
        listen_addrs: listen_addrs.clone(),
        own_addrs,
        metrics,
    };
    let reloader = Arc::new(Reloader::start(source, loaded, shared));
    crate::reload::spawn_triggers(Arc::clone(&reloader), hup, shutdown.clone());
    tokio::spawn(crate::m365_feed::run(
        Arc::clone(&reloader),
        shutdown.clone(),
    ));
    admin.set_reloader(Arc::clone(&reloader));
    let slots = Arc::new(Semaphore::new(config.server.max_connections));
    let client_slots = Arc::new(crate::limits::ClientSlots::default());
    let pid_file = config.admin.pid_file.as_deref();
    if let Some(path) = pid_file {
        std::fs::write(path, format!("{}\n", std::process::id())).map_err(|source| {
            StartError::PidFile {
                path: path.to_owned(),
                source,
            }
        })?;
    }

    let mut accept_loops = Vec::new();
    for (i, (listener, addr)) in listeners.into_iter().zip(&listen_addrs).enumerate() {
        let proxy_protocol = i >= plain;
        if proxy_protocol {
            tracing::info!("PROXY protocol listener on {addr}");
        } else {
            tracing::info!("listening on {addr}");
        }
        accept_loops.push(tokio::spawn(accept_loop(
            Arc::clone(&reloader),
            listener,
            proxy_protocol,
            Admission {
                slots: Arc::clone(&slots),
                client_slots: Arc::clone(&client_slots),
                shutdown: shutdown.clone(),
            },
        )));
    }
    admin.set_listeners_bound();
    // systemd Type=notify: ready once the listeners are bound (a no-op without NOTIFY_SOCKET).
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot tell the service manager we are ready (NOTIFY_SOCKET)");
    }

    shutdown.cancelled().await;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    for accept in accept_loops {
        let _ = accept.await;
    }
    let grace = config.timeouts.shutdown_grace;
    tracing::info!(
        open = tasks.len(),
        "shutting down: no new connections, draining for up to {}",
        humantime::format_duration(grace)
    );
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        tracing::warn!(
            open = tasks.len(),
            "grace period over; closing remaining connections"
        );
    }
    // The snapshots hold the access log's handles; the reload task ends with `shutdown`.
    drop(admin);
    drop(reloader);
    // The writer ends when the last handle is gone; give it a moment to flush.
    let _ = tokio::time::timeout(Duration::from_secs(2), log_writer).await;
    remove_pid_file(pid_file);
    tracing::info!("stopped");
    Ok(())
}

fn remove_pid_file(path: Option<&Path>) {
    if let Some(path) = path {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the pid file");
        }
    }
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

/// What every accepted connection is admitted against.
#[derive(Clone)]
struct Admission {
    slots: Arc<Semaphore>,
    client_slots: Arc<crate::limits::ClientSlots>,
    shutdown: CancellationToken,
}

/// Accepts connections; each starts with the snapshot current at its accept (for its
/// connection-level limits), and each request on it takes the snapshot current at its start.
/// On a PROXY protocol listener the header is read first (in the connection's own task, so a
/// slow load balancer delays nobody else) and names the client.
async fn accept_loop(
    reloader: Arc<Reloader>,
    listener: TcpListener,
    proxy_protocol: bool,
    admission: Admission,
) {
    let local = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = admission.shutdown.cancelled() => break,
        };
        let (mut stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let local = local.unwrap_or(peer);
        if !proxy_protocol {
            admit(
                &reloader,
                Rewind::new(Bytes::new(), stream),
                peer,
                local,
                &admission,
            );
            continue;
        }
        let proxy = reloader.current();
        let (reloader, admission) = (Arc::clone(&reloader), admission.clone());
        proxy.tasks.spawn(async move {
            let proxy = reloader.current();
            let server = &proxy.config.server;
            let wait = proxy.config.timeouts.client_header;
            match crate::proxy_protocol::read_header(&mut stream, peer, &server.proxy_protocol_trusted, wait).await {
                Ok((client, rest)) => {
                    tracing::trace!(%peer, %client, "PROXY protocol header");
                    admit(&reloader, Rewind::new(rest, stream), client, local, &admission);
                }
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "closing a connection on a PROXY protocol listener");
                }
            }
        });
    }
}

/// Admits one client connection against the limits and serves it.
fn admit(
    reloader: &Arc<Reloader>,
    stream: Rewind<TcpStream>,
    client: SocketAddr,
    local: SocketAddr,
    admission: &Admission,
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
    let ctx = Arc::new(ConnCtx {
        client,
        client_address: crate::http::headers::client_address_value(client.ip()),
        local,
        activity: Activity::new(),
        auth: ConnAuth::default(),
        pinned: Default::default(),
        _slot: slot,
        _client_slot: client_slot,
        _active: proxy.metrics.connection_opened(),
        tunnel: OnceLock::new(),
    });
    let tasks = proxy.tasks.clone();
    tasks.spawn(serve_connection(
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

async fn serve_connection(
    proxy: Arc<Proxy>,
    reloader: Arc<Reloader>,
    stream: Rewind<TcpStream>,
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
        let ctx = Arc::clone(&ctx);
        service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            // The snapshot is taken per request, so a reload applies to a keep-alive
            // connection's next request while this one finishes with what it started with.
            let proxy = reloader.current();
            let ctx = Arc::clone(&ctx);
            async move {
                let connect = req.method() == http::Method::CONNECT;
                let metrics = Arc::clone(&proxy.metrics);
                let response = crate::http::handle(proxy, Arc::clone(&ctx), req).await;
                let status = response.status();
                if (connect && status.is_success())
                    || status == http::StatusCode::SWITCHING_PROTOCOLS
                {
                    let _ = ctx.tunnel.set(metrics.tunnel_opened());
                }
                Ok::<_, Infallible>(response)
            }
        })
    };
    let conn = builder.serve_connection(io, service).with_upgrades();
    let result = drive(
        conn,
        &ctx.activity,
        timeouts.client_header,
        timeouts.client_idle,
        &shutdown,
    )
    .await;
    match result {
        Err(Closed::HeaderTimeout) => {
            tracing::debug!(client = %ctx.client, "request head not received in time; closing");
            log_connection_error(&proxy, &ctx, 408, "error:request-head-timeout");
        }
        Err(Closed::Idle) => {
            tracing::trace!(client = %ctx.client, "idle keep-alive connection closed");
        }
        Err(Closed::Hyper(e)) if e.is_parse_too_large() => {
            log_connection_error(&proxy, &ctx, 431, "error:request-too-large");
        }
        Err(Closed::Hyper(e)) if e.is_parse() => {
            log_connection_error(&proxy, &ctx, 400, "error:invalid-request");
        }
        Err(Closed::Hyper(e)) => {
            tracing::debug!(client = %ctx.client, error = %e, "client connection ended with an error");
        }
        Ok(()) => {}
    }
}

/// How a served connection ended other than normally.
#[derive(Debug, thiserror::Error)]
pub enum Closed {
    #[error("request head not received within the header timeout")]
    HeaderTimeout,
    #[error("idle")]
    Idle,
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
}

/// A hyper server connection that can be asked to finish its in-flight work and close.
pub trait GracefulConnection: std::future::Future<Output = Result<(), hyper::Error>> {
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>);
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<I, B, S> GracefulConnection for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
    Self: std::future::Future<Output = Result<(), hyper::Error>>,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<I, B, S, E> GracefulConnection for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
    Self: std::future::Future<Output = Result<(), hyper::Error>>,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        hyper::server::conn::http2::Connection::graceful_shutdown(self);
    }
}

/// Drives a connection under the client deadlines kept in `activity` (head within `header` of
/// its first byte; closed after `idle` with nothing in flight) and drains it on shutdown.
pub async fn drive<C: GracefulConnection>(
    conn: C,
    activity: &Activity,
    header: Duration,
    idle: Duration,
    shutdown: &CancellationToken,
) -> Result<(), Closed> {
    tokio::pin!(conn);
    // The watchdog's futures live as long as the connection: this loop turns once per request
    // (a head starting wakes it), and re-creating a timer and two waiter registrations each
    // time showed up in profiles.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let head_started = activity.head_started();
    tokio::pin!(head_started);
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    // When the timer is due, on the `now_ms` clock; 0 = not armed.
    let mut timer_at = 0;
    let mut draining = false;
    loop {
        let now = now_ms();
        let at = match activity.verdict(now, header, idle) {
            Verdict::WaitUntil(at) => at,
            Verdict::HeaderTimeout => return Err(Closed::HeaderTimeout),
            Verdict::Idle => return Err(Closed::Idle),
        };
        // A deadline that moved later needs no new timer: the old one fires early, and the
        // verdict then re-arms it for the later time.
        if timer_at == 0 || at < timer_at {
            timer
                .as_mut()
                .reset(tokio::time::Instant::now() + Duration::from_millis(at - now));
            timer_at = at;
        }
        tokio::select! {
            result = conn.as_mut() => return result.map_err(Closed::Hyper),
            () = cancelled.as_mut(), if !draining => {
                // Finish the request in flight, if any, then close.
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            () = timer.as_mut(), if timer_at != 0 => timer_at = 0,
            () = head_started.as_mut() => head_started.set(activity.head_started()),
        }
    }
}

/// Squid logs requests it could not parse as `NONE/400 … error:invalid-request`; so do we.
fn log_connection_error(proxy: &Proxy, ctx: &ConnCtx, status: u16, url: &str) {
    proxy.access_log.log(Record {
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
        policy: None,
    });
}
