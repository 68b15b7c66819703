//! Start-up and shutdown, the listeners' accept loops, and admission against the connection
//! limits. What happens on an admitted connection is [`crate::conn`]'s.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::AccessLog;
use crate::admin::AdminState;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::reload::{ConfigSource, LoadError, Reloader, Shared};

mod accept;
mod listen;

use accept::{start_accepting, Admission};

/// Why the proxy could not start. Every cause is part of its message and none is exposed as a
/// source as well, so the one line printed at exit says each reason once.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("cannot listen on {addr} ({key}): {error}{hint}", hint = listen_hint(.key, .error))]
    Listen {
        addr: SocketAddr,
        /// The setting the address comes from (`server.listen`, `admin.listen`, …).
        key: &'static str,
        error: std::io::Error,
    },
    #[error("{0}")]
    Setup(std::io::Error),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot set up metrics: {0}")]
    Metrics(prometheus::Error),
    #[error("cannot write the pid file {} (admin.pid_file): {error}", path.display())]
    PidFile {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl From<std::io::Error> for StartError {
    fn from(e: std::io::Error) -> Self {
        StartError::Setup(e)
    }
}

impl From<prometheus::Error> for StartError {
    fn from(e: prometheus::Error) -> Self {
        StartError::Metrics(e)
    }
}

/// What to do about an address in use: another proxy (or a second instance) holds it.
fn listen_hint(key: &str, error: &std::io::Error) -> String {
    if error.kind() != std::io::ErrorKind::AddrInUse {
        return String::new();
    }
    let option = match key {
        "admin.listen" => " (or --admin-listen ADDR, or --admin-listen off)",
        "server.listen" => " (or --listen ADDR)",
        _ => "",
    };
    format!("; another process uses this address: stop it or change {key}{option}")
}

/// Starts with `config` (already loaded from `source`), serves until `shutdown` is cancelled,
/// then drains in-flight requests for up to `timeouts.shutdown_grace`. `source` is what a
/// reload (SIGHUP, `POST /reload`) reads again.
///
/// Start-up order matters: the admin listener comes first, so `/healthz` answers and `/readyz`
/// says "not ready" while files are loaded; the proxy listeners are bound only once everything
/// they need is valid, so no client is ever accepted by a proxy that cannot serve it.
pub(crate) async fn run(
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
    let admin_addr = if config.admin.enabled {
        let addr = start_admin(&config, &admin, &shutdown).await?;
        own_addrs.push(addr);
        Some(addr)
    } else {
        None
    };
    listen::prepare_descriptors(config.server.max_connections);
    let loaded = load_files(&config, &metrics).await?;
    let listeners = bind_listeners(&config)?;
    let listen_addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.addr).collect();
    own_addrs.extend(&listen_addrs);

    let (access_log, log_writer) = AccessLog::start(&config.access_log)?;
    let access_log = access_log.with_metrics(Arc::clone(&metrics));
    spawn_reopen_on_sigusr1(access_log.clone(), shutdown.clone());
    let tasks = TaskTracker::new();
    let shared = Shared {
        access_log,
        tasks: tasks.clone(),
        shutdown: shutdown.clone(),
        listen_addrs,
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
    let pid_file = config.admin.pid_file.as_deref();
    if let Some(path) = pid_file {
        write_pid_file(path)?;
    }
    let admission = Admission::new(config.server.max_connections, shutdown.clone());
    let bound = listeners_summary(&listeners, admin_addr);
    let accept_loops = start_accepting(listeners, &reloader, &admission);
    admin.set_listeners_bound();
    tracing::info!("portcullis {} ready: {bound}", env!("CARGO_PKG_VERSION"));
    notify_ready();

    shutdown.cancelled().await;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    for accept in accept_loops {
        let _ = accept.await;
    }
    drain(&tasks, config.timeouts.shutdown_grace).await;
    // The snapshots hold the access log's handles; the reload task ends with `shutdown`.
    drop(admin);
    drop(reloader);
    // The writer ends when the last handle is gone; give it a moment to flush.
    let _ = tokio::time::timeout(Duration::from_secs(2), log_writer).await;
    remove_pid_file(pid_file);
    tracing::info!("stopped");
    Ok(())
}

/// Every bound address, as a person checking the start needs it: proxy listeners (PROXY
/// protocol ones marked) and the admin listener, with the ports the OS chose for `:0`.
fn listeners_summary(listeners: &[Bound], admin: Option<SocketAddr>) -> String {
    let mut parts: Vec<String> = listeners
        .iter()
        .map(|l| match (l.proxy_protocol, l.transparent) {
            (_, Some(kind)) => format!("{} {}", kind.as_str(), l.addr),
            (false, None) => format!("proxy {}", l.addr),
            (true, None) => format!("proxy {} (PROXY protocol)", l.addr),
        })
        .collect();
    parts.push(match admin {
        Some(addr) => format!("admin {addr}"),
        None => "admin off".to_owned(),
    });
    parts.join(", ")
}

/// Reads every file the configuration names (htpasswd, hosts file, CA, keytab) off the async
/// workers, exactly as a reload does.
async fn load_files(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> Result<crate::reload::Loaded, StartError> {
    let config = config.clone();
    let metrics = Arc::clone(metrics);
    let loaded = tokio::task::spawn_blocking(move || {
        crate::reload::load(config, None, &metrics, crate::reload::LoadMode::Serve)
    })
    .await
    .map_err(|e| LoadError::Task(e.to_string()))??;
    Ok(loaded)
}

/// systemd `Type=notify`: ready once the listeners are bound (a no-op without NOTIFY_SOCKET).
fn notify_ready() {
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot tell the service manager we are ready (NOTIFY_SOCKET)");
    }
}

fn write_pid_file(path: &Path) -> Result<(), StartError> {
    std::fs::write(path, format!("{}\n", std::process::id())).map_err(|error| StartError::PidFile {
        path: path.to_owned(),
        error,
    })
}

/// Binds the admin listener and serves it; returns its bound address.
async fn start_admin(
    config: &Config,
    admin: &Arc<AdminState>,
    shutdown: &CancellationToken,
) -> Result<SocketAddr, StartError> {
    let addr = config.admin.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|error| StartError::Listen {
            addr,
            key: "admin.listen",
            error,
        })?;
    let bound = listener.local_addr()?;
    crate::admin::log_bound(bound);
    tokio::spawn(crate::admin::serve(
        listener,
        Arc::clone(admin),
        shutdown.clone(),
    ));
    Ok(bound)
}

/// One bound proxy listener.
struct Bound {
    listener: TcpListener,
    addr: SocketAddr,
    /// Every connection starts with a PROXY protocol header naming the client.
    proxy_protocol: bool,
    /// A transparent listener: connections were redirected by netfilter.
    transparent: Option<crate::original_dst::TransparentKind>,
}

/// Binds `server.listen`, then `server.proxy_protocol_listen`, then the transparent listeners.
/// A netfilter `redirect` sends a connection to the incoming interface's address, so
/// transparent listeners usually listen on `0.0.0.0` and `[::]` together: theirs are made
/// v6-only, so both can hold the same port and each reads its own family's
/// original-destination option.
fn bind_listeners(config: &Config) -> Result<Vec<Bound>, StartError> {
    use crate::original_dst::TransparentKind::{Http, Tls};
    let server = &config.server;
    let kinds = [
        (&server.listen, "server.listen", false, None),
        (
            &server.proxy_protocol_listen,
            "server.proxy_protocol_listen",
            true,
            None,
        ),
        (
            &server.transparent_http_listen,
            "server.transparent_http_listen",
            false,
            Some(Http),
        ),
        (
            &server.transparent_tls_listen,
            "server.transparent_tls_listen",
            false,
            Some(Tls),
        ),
    ];
    let mut bound = Vec::new();
    for (addrs, key, proxy_protocol, transparent) in kinds {
        for addr in addrs {
            let v6_only = transparent.is_some();
            let listener =
                listen::bind(*addr, server.listen_backlog, v6_only).map_err(|error| {
                    StartError::Listen {
                        addr: *addr,
                        key,
                        error,
                    }
                })?;
            bound.push(Bound {
                addr: listener.local_addr()?,
                listener,
                proxy_protocol,
                transparent,
            });
        }
    }
    Ok(bound)
}

/// Waits up to `grace` for connections and tunnels to finish their work in flight.
async fn drain(tasks: &TaskTracker, grace: Duration) {
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
