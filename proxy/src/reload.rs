//! Hot reload: SIGHUP or `POST /reload` re-reads the config file, the htpasswd file and the
//! hosts file (and the CA when `[tls]` or `server.data_dir` changed), validates all of it, and
//! swaps in a new [`Proxy`] snapshot at once.
//!
//! - Atomic: a snapshot is built completely off to the side and published with one
//!   [`ArcSwap::store`]; a request sees either the old snapshot or the new one, never a mix.
//! - Safe to get wrong: anything invalid (a typo, a broken htpasswd line, an unreadable hosts
//!   file) rejects the whole reload; the error is logged and the old snapshot stays.
//! - Gentle: each request takes the current snapshot when it starts and keeps it to the end, as
//!   does a tunnel, so in-flight work is never cut or changed half-way; a keep-alive connection
//!   picks up the new rules at its next request (Outlook holds connections for hours, and a
//!   revoked user or a new deny rule must not wait for it to reconnect).
//! - Shared across snapshots: the access-log writer, the metrics registry, the task tracker,
//!   and — when the upstream settings did not change — the pooled origin connections and the
//!   interceptor's certificate cache, so a reload costs no reconnects and no re-minting.
//! - Bound once: listener addresses, `server.max_connections`, `[admin]`, `[access_log]` and
//!   `[log]` are fixed at start. A change there is reported as needing a restart and the running
//!   value is kept (and shown by `/config`, which always shows what is in effect).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::AccessLog;
use crate::auth::{Auth, AuthSetupError};
use crate::config::{AdminListen, Config, ConfigError};
use crate::context::Proxy;
use crate::groups::Groups;
use crate::intercept::{CaInit, InterceptError, Interceptor};
use crate::metrics::{AuthCounters, CertCacheStats, Metrics};
use crate::parents::{ParentSpec, Parents};
use crate::upstream::{http_client, Dialer, Resolver};

/// Where the configuration comes from, so a reload reads the same file with the same
/// command-line overrides as the start did.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConfigSource {
    /// The config file; `None` means the embedded default.
    pub path: Option<PathBuf>,
    /// `--listen` addresses, replacing `server.listen` when not empty.
    pub listen: Vec<SocketAddr>,
    /// `--data-dir`, replacing `server.data_dir`.
    pub data_dir: Option<PathBuf>,
    /// `--admin-listen`, replacing `admin.listen` (or turning the admin listener off).
    pub admin_listen: Option<AdminListen>,
}

impl ConfigSource {
    /// Reads and validates the config, then applies the command-line overrides.
    pub(crate) fn load(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.path {
            Some(path) => Config::load(path)?,
            None => Config::embedded_default()?,
        };
        if !self.listen.is_empty() {
            config.server.listen = self.listen.clone();
        }
        if let Some(dir) = &self.data_dir {
            config.server.data_dir = dir.clone();
        }
        if let Some(choice) = self.admin_listen {
            config.admin.apply(choice);
        }
        Ok(config)
    }
}

/// Why a configuration could not be loaded (at start, on reload, or by `check-config`). Each
/// names the config file and the key to fix.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    /// The config file itself cannot be read or is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The config is valid, but a file it names (or the CA in its data directory) is missing or
    /// unusable.
    #[error("{origin}: key `{key}`: {error}", key = .error.key())]
    File { origin: String, error: FileError },
    #[error("the reload task failed: {0}")]
    Task(String),
}

/// A file named by a valid config that could not be used. The cause is part of the message
/// (not a source), so it is printed once wherever the error is shown.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FileError {
    #[error("{0}")]
    HostsFile(std::io::Error),
    #[error("{0}")]
    Auth(AuthSetupError),
    #[error("{0}")]
    Intercept(InterceptError),
    #[error("{0}")]
    Groups(crate::groups::GroupsSetupError),
    #[error("{0}")]
    ParentPassword(crate::parents::PasswordFileError),
}

impl FileError {
    /// The config key naming the file.
    pub(crate) fn key(&self) -> &'static str {
        match self {
            FileError::HostsFile(_) => "upstream.hosts_file",
            FileError::Auth(e) => e.key(),
            FileError::Intercept(e) => e.key(),
            FileError::Groups(e) => e.key(),
            FileError::ParentPassword(_) => "upstream.parents[].password_file",
        }
    }
}

/// What loading may do besides reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoadMode {
    /// Start or reload: a missing CA is created when `tls.auto_init_ca` says so.
    Serve,
    /// `check-config`: the same reads and checks, and nothing written.
    Check,
}

/// Everything a snapshot needs that is read from files: built off the async workers, and only
/// turned into a [`Proxy`] when all of it succeeded.
pub(crate) struct Loaded {
    config: Config,
    resolver: Resolver,
    auth: Option<Auth>,
    /// `None`: keep the previous snapshot's groups (`[auth.groups]` unchanged: its cache too).
    groups: Option<Option<Groups>>,
    policy: Arc<portcullis_policy::Policy>,
    /// Parent proxies with their password files read.
    parents: Vec<ParentSpec>,
    /// `None`: keep the previous snapshot's interceptor (TLS settings unchanged).
    interceptor: Option<Option<Interceptor>>,
}

/// Reads and validates every file the configuration names. Blocking (file reads, key parsing,
/// keytab access): call it on the blocking pool. Anything else a snapshot is built from (policy
/// files, include lists) belongs here too, so that start and reload validate it the same way.
pub(crate) fn load(
    config: Config,
    previous: Option<&Config>,
    metrics: &Metrics,
    mode: LoadMode,
) -> Result<Loaded, LoadError> {
    let file_error = |error| LoadError::File {
        origin: config.origin().to_owned(),
        error,
    };
    let resolver = Resolver::new(&config).map_err(|e| file_error(FileError::HostsFile(e)))?;
    let auth = Auth::new(&config.auth).map_err(|e| file_error(FileError::Auth(e)))?;
    let groups = if previous.is_some_and(|prev| prev.auth.groups == config.auth.groups) {
        None
    } else {
        Some(Groups::new(&config.auth.groups).map_err(|e| file_error(FileError::Groups(e)))?)
    };
    let parents = crate::parents::load_specs(&config)
        .map_err(|e| file_error(FileError::ParentPassword(e)))?;
    let m365 = crate::m365_cache::load_cached(&config);
    let policy = config.compiled_policy(&m365.sets)?;
    if let Some(version) = &m365.version {
        metrics.m365_loaded(&config.m365.instance, version);
        tracing::info!(
            %version,
            sets = m365.sets.len(),
            skipped = policy.m365_skipped().len(),
            "Microsoft 365 endpoint list loaded"
        );
    }
    // The CA and the certificate cache are kept unless something they are built from changed;
    // rebuilding would throw away every minted leaf.
    let tls_unchanged = previous.is_some_and(|prev| {
        prev.tls == config.tls && prev.server.data_dir == config.server.data_dir
    });
    let interceptor = if tls_unchanged {
        None
    } else {
        let init = match mode {
            LoadMode::Serve => CaInit::Write,
            LoadMode::Check => CaInit::DryRun,
        };
        Some(
            Interceptor::new(&config, init, metrics.cert_mint_observer())
                .map_err(|e| file_error(FileError::Intercept(e)))?,
        )
    };
    Ok(Loaded {
        config,
        resolver,
        auth,
        groups,
        policy,
        parents,
        interceptor,
    })
}

/// What every snapshot shares with the one before it.
pub(crate) struct Shared {
    pub access_log: AccessLog,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
    /// The proxy listeners' bound addresses.
    pub listen_addrs: Vec<SocketAddr>,
    /// Addresses the dialer refuses to connect to: the proxy listeners and the admin listener,
    /// so that a client cannot reach the admin endpoints through the proxy.
    pub own_addrs: Vec<SocketAddr>,
    pub metrics: Arc<Metrics>,
}

/// Turns loaded parts into a snapshot, reusing from `previous` (and its resolver) whatever did
/// not change. Adding a field to [`Proxy`] means deciding here whether a reload rebuilds it.
pub(crate) fn assemble(
    loaded: Loaded,
    shared: &Shared,
    previous: Option<(&Proxy, &Resolver)>,
) -> Proxy {
    let Loaded {
        config,
        resolver,
        auth,
        groups,
        policy,
        parents,
        interceptor,
    } = loaded;
    let upstream_unchanged = |prev: &Proxy, prev_resolver: &Resolver| {
        *prev_resolver == resolver
            && prev.config.upstream == config.upstream
            && prev.config.timeouts.upstream_connect == config.timeouts.upstream_connect
    };
    let (dialer, client) = match previous {
        Some((prev, prev_resolver)) if upstream_unchanged(prev, prev_resolver) => {
            (Arc::clone(&prev.dialer), prev.client.clone())
        }
        _ => {
            let dialer = Arc::new(
                Dialer::new(
                    resolver,
                    config.timeouts.upstream_connect,
                    shared.own_addrs.clone(),
                )
                .with_deny(config.upstream.deny_networks.clone())
                .with_metrics(Arc::clone(&shared.metrics)),
            );
            let client = http_client(&config, Arc::clone(&dialer));
            (dialer, client)
        }
    };
    let parents = match previous {
        Some((prev, _))
            if Arc::ptr_eq(&prev.dialer, &dialer) && prev.parents.reusable(&parents, &config) =>
        {
            Arc::clone(&prev.parents)
        }
        _ => Arc::new(Parents::new(
            parents,
            &config,
            Arc::clone(&dialer),
            Arc::clone(&shared.metrics),
        )),
    };
    let interceptor = match (interceptor, previous) {
        (Some(fresh), _) => fresh.map(Arc::new),
        (None, Some((prev, _))) => prev.interceptor.clone(),
        (None, None) => None,
    };
    let groups = match (groups, previous) {
        (Some(fresh), _) => fresh.map(Arc::new),
        (None, Some((prev, _))) => prev.groups.clone(),
        (None, None) => None,
    };
    let auth = auth.map(Arc::new);
    shared.metrics.watch_auth(
        auth.as_ref()
            .map(|a| Arc::clone(a) as Arc<dyn AuthCounters>),
    );
    shared.metrics.watch_cert_cache(
        interceptor
            .as_ref()
            .map(|i| Arc::clone(i) as Arc<dyn CertCacheStats>),
    );
    let icap = match previous {
        Some((prev, _)) if prev.config.icap == config.icap => Arc::clone(&prev.icap),
        _ => {
            let names: Vec<&str> = config
                .icap
                .services
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            shared.metrics.icap_services(&names);
            Arc::new(crate::icap::Icap::new(&config.icap))
        }
    };
    Proxy {
        via: crate::headers::Via::new(&config.server.via_pseudonym),
        icap,
        config: Arc::new(config),
        dialer,
        client,
        parents,
        access_log: shared.access_log.clone(),
        auth,
        groups,
        policy,
        interceptor,
        shutdown: shared.shutdown.clone(),
        tasks: shared.tasks.clone(),
        listen_addrs: shared.listen_addrs.clone(),
        metrics: Arc::clone(&shared.metrics),
    }
}

/// Keys fixed at start. A reloaded config gets the running values back, and the keys that
/// differed are returned, to be reported as needing a restart.
fn keep_restart_only(new: &mut Config, running: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! keep {
        ($key:literal, $($field:ident).+) => {
            if new.$($field).+ != running.$($field).+ {
                changed.push($key);
                new.$($field).+ = running.$($field).+.clone();
            }
        };
    }
    keep!("server.listen", server.listen);
    keep!("server.proxy_protocol_listen", server.proxy_protocol_listen);
    keep!("server.max_connections", server.max_connections);
    keep!("admin", admin);
    keep!("access_log", access_log);
    keep!("log", log);
    // MIT krb5 reads the keytab path from the environment, set once before threads start.
    keep!("auth.negotiate.keytab", auth.negotiate.keytab);
    changed
}

/// The outcome of a successful reload.
#[derive(Debug, Default)]
pub(crate) struct ReloadReport {
    /// Changed keys that only take effect after a restart.
    pub needs_restart: Vec<&'static str>,
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "reloaded")?;
        for key in &self.needs_restart {
            writeln!(
                f,
                "{key} changed: restart to apply it (the running value stays)"
            )?;
        }
        Ok(())
    }
}

/// Owns the current snapshot and replaces it on reload.
pub(crate) struct Reloader {
    source: ConfigSource,
    current: ArcSwap<Proxy>,
    shared: Shared,
    /// The current snapshot's resolver, to tell whether the dialer can be kept. The lock also
    /// makes reloads one at a time.
    resolver: tokio::sync::Mutex<Resolver>,
}

impl Reloader {
    /// Builds the first snapshot from `loaded`.
    pub(crate) fn start(source: ConfigSource, loaded: Loaded, shared: Shared) -> Reloader {
        let resolver = loaded.resolver.clone();
        let proxy = assemble(loaded, &shared, None);
        Reloader {
            source,
            current: ArcSwap::from_pointee(proxy),
            shared,
            resolver: tokio::sync::Mutex::new(resolver),
        }
    }

    /// The snapshot new connections and requests use.
    pub(crate) fn current(&self) -> Arc<Proxy> {
        self.current.load_full()
    }

    /// Where the configuration is read from (`portcullis doctor` loads it the same way).
    pub(crate) fn source(&self) -> &ConfigSource {
        &self.source
    }

    /// Re-reads and validates everything and swaps the snapshot; on error the old one stays.
    /// Logs the outcome (so SIGHUP and `/reload` report the same way) and counts it.
    pub(crate) async fn reload(&self) -> Result<ReloadReport, LoadError> {
        let mut resolver = self.resolver.lock().await;
        let running = self.current();
        let source = self.source.clone();
        let running_config = Arc::clone(&running.config);
        let metrics = Arc::clone(&self.shared.metrics);
        let running_groups = running.groups.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            // SIGHUP re-reads the group file even when unchanged (kept if `[auth.groups]` is).
            if let Some(groups) = &running_groups {
                groups.reload(true);
            }
            let mut config = source.load()?;
            let needs_restart = keep_restart_only(&mut config, &running_config);
            load(config, Some(&running_config), &metrics, LoadMode::Serve)
                .map(|loaded| (loaded, needs_restart))
        })
        .await
        .unwrap_or_else(|e| Err(LoadError::Task(e.to_string())));
        let (loaded, needs_restart) = match loaded {
            Ok(ok) => ok,
            Err(e) => {
                self.shared.metrics.config_reloaded(false);
                tracing::error!(error = %e, "configuration reload rejected; the previous configuration stays in use");
                return Err(e);
            }
        };
        let next_resolver = loaded.resolver.clone();
        let next = assemble(loaded, &self.shared, Some((&running, &resolver)));
        let new_pool = !Arc::ptr_eq(&next.dialer, &running.dialer);
        self.current.store(Arc::new(next));
        *resolver = next_resolver;
        self.shared.metrics.config_reloaded(true);
        tracing::info!(
            new_upstream_pool = new_pool,
            "configuration reloaded; new requests use it, requests in flight finish with the old one"
        );
        for key in &needs_restart {
            tracing::warn!(key, "{key} changed in the config file; it needs a restart to take effect, the running value stays");
        }
        Ok(ReloadReport { needs_restart })
    }
}

/// How often the htpasswd file is checked for changes between reloads.
const HTPASSWD_POLL: Duration = Duration::from_secs(2);

/// Reloads everything on SIGHUP, and re-reads a changed htpasswd file every two seconds, so
/// adding a user needs no signal at all.
///
/// `hup` is created by the caller before anything slow happens at start, because SIGHUP's
/// default action would terminate the process.
pub(crate) fn spawn_triggers(
    reloader: Arc<Reloader>,
    mut hup: Option<tokio::signal::unix::Signal>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HTPASSWD_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let current = reloader.current();
                    let (auth, groups) = (current.auth.clone(), current.groups.clone());
                    // File reads and parsing stay off the async workers.
                    let _ = tokio::task::spawn_blocking(move || {
                        if let Some(auth) = auth {
                            auth.reload(false);
                        }
                        if let Some(groups) = groups {
                            groups.reload(false);
                        }
                    })
                    .await;
                }
                Some(()) = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    tracing::info!("SIGHUP received; reloading the configuration");
                    let _ = reloader.reload().await;
                }
                () = shutdown.cancelled() => break,
            }
        }
    });
}

#[cfg(test)]
mod tests;
