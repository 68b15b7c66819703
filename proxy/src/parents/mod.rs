//! Parent proxies: chaining to a corporate or cloud proxy (`[[upstream.parents]]`).
//!
//! A decision's [`Route`] names the parents to try, in order. A parent that refuses the
//! connection, times out, or answers a CONNECT with 502/503 is marked down for
//! `upstream.parent_backoff` and the next one is tried before the client sees anything; with
//! all of them down the client gets a 502 page naming the route. A parent's 407 is our
//! configuration's fault, not the client's: it becomes a 502 page for the admin ("the parent
//! refused our credentials"), never a 407 the client would answer with its own password.
//!
//! `handshake.rs` speaks CONNECT to a parent; `plain.rs` sends plain HTTP through a parent's
//! pool of keep-alive connections.

mod credentials;
mod handshake;
mod plain;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) use credentials::Credentials;
use portcullis_policy::{Host, Route};
use tokio::net::TcpStream;

use crate::config::{Config, ParentConfig};
use crate::error::ProxyError;
use crate::metrics::{Metrics, ParentFailure};
use crate::record::Hierarchy;
use crate::upstream::Dialer;

/// Where a transaction's upstream connection went: the access log's hierarchy and peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hop {
    pub(crate) hierarchy: Hierarchy,
    pub(crate) peer: Option<IpAddr>,
}

impl Hop {
    pub(crate) fn direct(peer: Option<IpAddr>) -> Hop {
        Hop {
            hierarchy: Hierarchy::Direct,
            peer,
        }
    }
}

/// A parent as read from the config and its password file: what decides whether a reload
/// keeps the running pools and health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParentSpec {
    name: Arc<str>,
    host: Host,
    port: u16,
    credentials: Credentials,
}

/// Why a parent's password file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("parent {parent:?}: cannot use password file {file}: {reason}")]
pub(crate) struct PasswordFileError {
    pub(super) parent: String,
    pub(super) file: String,
    pub(super) reason: String,
}

/// Reads every parent's password file: blocking, called where the other files are read.
pub(crate) fn load_specs(config: &Config) -> Result<Vec<ParentSpec>, PasswordFileError> {
    config.upstream.parents.iter().map(spec).collect()
}

fn spec(p: &ParentConfig) -> Result<ParentSpec, PasswordFileError> {
    let (host, port) = p.host_port().ok_or_else(|| PasswordFileError {
        parent: p.name.clone(),
        file: "-".into(),
        reason: format!("invalid address {:?}", p.address),
    })?;
    let credentials = match (&p.user, &p.password_file) {
        (Some(user), Some(file)) => credentials::basic(&p.name, user, file)?,
        _ if p.negotiate => Credentials::Negotiate {
            service: p
                .service_principal
                .clone()
                .unwrap_or_else(|| format!("HTTP@{}", host.as_str())),
        },
        _ => Credentials::None,
    };
    Ok(ParentSpec {
        name: p.name.as_str().into(),
        host,
        port,
        credentials,
    })
}

/// One parent at run time: where it is, its credentials, its health and its connection pool.
pub(crate) struct Parent {
    spec: ParentSpec,
    /// Skipped until then, after a failure.
    down_until: Mutex<Option<Instant>>,
    pool: plain::ParentClient,
}

impl Parent {
    pub(crate) fn name(&self) -> &str {
        &self.spec.name
    }

    fn is_down(&self) -> bool {
        let mut down = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        match *down {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                // The back-off is over: the next request tries it again.
                *down = None;
                false
            }
            None => false,
        }
    }
}

/// A parent connection of one client connection's own ([`Parents::connect_plain`]).
pub(crate) struct PrivateConn {
    pub(crate) stream: TcpStream,
    pub(crate) hop: Hop,
    pub(crate) parent: PrivateParent,
}

/// Which parent a private connection goes to, and what each request on it must carry.
#[derive(Debug, Clone)]
pub(crate) struct PrivateParent {
    pub(crate) name: Arc<str>,
    pub(crate) credentials: Credentials,
}

/// Every configured parent of one snapshot.
pub(crate) struct Parents {
    list: Vec<Arc<Parent>>,
    backoff: Duration,
    /// `timeouts.upstream_connect`: the whole CONNECT exchange with a parent is bounded by it.
    connect_timeout: Duration,
    dialer: Arc<Dialer>,
    metrics: Arc<Metrics>,
}

/// How one attempt through one parent failed.
pub(super) enum Attempt {
    /// The parent is unusable (refused, timed out, 502/503): mark it down, try the next.
    Failover(ProxyError),
    /// The parent answered, and the answer is the transaction's (its 407, its 403).
    Fatal(ProxyError),
}

impl Parents {
    pub(crate) fn new(
        specs: Vec<ParentSpec>,
        config: &Config,
        dialer: Arc<Dialer>,
        metrics: Arc<Metrics>,
    ) -> Parents {
        let list = specs
            .into_iter()
            .map(|spec| {
                metrics.parent_health(&spec.name, true);
                let pool = plain::client(config, Arc::clone(&dialer), &spec);
                Arc::new(Parent {
                    spec,
                    down_until: Mutex::new(None),
                    pool,
                })
            })
            .collect();
        Parents {
            list,
            backoff: config.upstream.parent_backoff,
            connect_timeout: config.timeouts.upstream_connect,
            dialer,
            metrics,
        }
    }

    /// The running parents when nothing they are built from changed, so a reload keeps their
    /// pools and health.
    pub(crate) fn reusable(&self, specs: &[ParentSpec], config: &Config) -> bool {
        self.backoff == config.upstream.parent_backoff
            && self.connect_timeout == config.timeouts.upstream_connect
            && self.list.len() == specs.len()
            && self.list.iter().zip(specs).all(|(p, s)| p.spec == *s)
    }

    /// Parents currently marked down, with how long until they are tried again (`/readyz`).
    pub(crate) fn down(&self) -> Vec<(String, Duration)> {
        let now = Instant::now();
        self.list
            .iter()
            .filter_map(|p| {
                let until = (*p.down_until.lock().unwrap_or_else(|e| e.into_inner()))?;
                (until > now).then(|| (p.name().to_owned(), until - now))
            })
            .collect()
    }

    /// The `/readyz` line: failing only when every parent is down, since a proxy with one
    /// parent left (or direct routes) still serves.
    pub(crate) fn readiness(&self) -> Result<String, String> {
        if self.list.is_empty() {
            return Ok("none configured".to_owned());
        }
        let down = self.down();
        let listed = down
            .iter()
            .map(|(name, left)| format!("{name} (retried in {}s)", left.as_secs() + 1))
            .collect::<Vec<_>>()
            .join(", ");
        match down.len() {
            0 => Ok(format!("{} up", self.list.len())),
            n if n == self.list.len() => Err(format!("all down: {listed}")),
            _ => Ok(format!("down: {listed}")),
        }
    }

    fn route(&self, route: &Route) -> Vec<&Arc<Parent>> {
        // Validation made sure every name exists; an unknown one is skipped, never a panic.
        route
            .parents()
            .iter()
            .filter_map(|name| self.list.iter().find(|p| *p.spec.name == **name))
            .collect()
    }

    /// The hierarchy code a transaction through `route` is logged with, as Squid writes it:
    /// `DEFAULT_PARENT` for a route of one parent, `FIRSTUP_PARENT` for a failover list.
    fn hierarchy(route: &Route) -> Hierarchy {
        if route.parents().len() == 1 {
            Hierarchy::DefaultParent
        } else {
            Hierarchy::FirstUpParent
        }
    }

    fn failed(&self, parent: &Parent, err: &ProxyError) {
        tracing::warn!(parent = parent.name(), error = %err, backoff = ?self.backoff, "parent proxy marked down");
        *parent.down_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + self.backoff);
        self.metrics
            .parent_failed(parent.name(), ParentFailure::of(err));
        self.metrics.parent_health(parent.name(), false);
    }

    fn succeeded(&self, parent: &Parent) {
        self.metrics.parent_request(parent.name());
        self.metrics.parent_health(parent.name(), true);
    }

    /// A tunnel to `authority` (`host:port`) through the first parent of `route` that takes
    /// it; the stream is ready for the client's bytes (or our TLS to the origin).
    pub(crate) async fn tunnel(
        &self,
        route: &Route,
        authority: &str,
    ) -> Result<(TcpStream, Hop), ProxyError> {
        let mut last = None;
        for parent in self.route(route) {
            if parent.is_down() {
                continue;
            }
            let attempt =
                handshake::connect(&self.dialer, &parent.spec, authority, self.connect_timeout);
            match attempt.await {
                Ok(stream) => {
                    self.succeeded(parent);
                    let peer = stream.peer_addr().ok().map(|a| a.ip());
                    let hierarchy = Self::hierarchy(route);
                    return Ok((stream, Hop { hierarchy, peer }));
                }
                Err(Attempt::Failover(e)) => {
                    self.failed(parent, &e);
                    last = Some(e);
                }
                Err(Attempt::Fatal(e)) => {
                    self.metrics
                        .parent_failed(parent.name(), ParentFailure::of(&e));
                    return Err(e);
                }
            }
        }
        Err(self.all_down(route, last))
    }

    /// A connection of its own to the first parent of `route` that can be connected to, for a
    /// client connection that sends connection-oriented origin credentials (NTLM/Negotiate):
    /// the parent pins its origin connection to this one, so it must never be pooled. Returns
    /// the credentials every request on it must carry.
    pub(crate) async fn connect_plain(&self, route: &Route) -> Result<PrivateConn, ProxyError> {
        let mut last = None;
        for parent in self.route(route) {
            if parent.is_down() {
                continue;
            }
            match self
                .dialer
                .dial_parent(&parent.spec.host, parent.spec.port)
                .await
            {
                Ok(stream) => {
                    self.succeeded(parent);
                    let peer = stream.peer_addr().ok().map(|a| a.ip());
                    let hop = Hop {
                        hierarchy: Self::hierarchy(route),
                        peer,
                    };
                    return Ok(PrivateConn {
                        stream,
                        hop,
                        parent: PrivateParent {
                            name: Arc::clone(&parent.spec.name),
                            credentials: parent.spec.credentials.clone(),
                        },
                    });
                }
                Err(e) => {
                    self.failed(parent, &e);
                    last = Some(e);
                }
            }
        }
        Err(self.all_down(route, last))
    }

    fn all_down(&self, route: &Route, last: Option<ProxyError>) -> ProxyError {
        ProxyError::ParentsDown {
            route: route.to_string(),
            last: last.map_or_else(
                || "every parent is in its back-off after a failure".to_owned(),
                |e| e.to_string(),
            ),
        }
    }
}
