//! What a request runs with: [`Proxy`], the immutable snapshot of the configuration and what
//! was built from it, and [`ConnCtx`], the state of one client connection.
//!
//! Both sit below every handler: `http/`, interception, tunnels, reload and the Microsoft 365
//! feed read them, and this module imports none of those.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::AccessLog;
use crate::activity::Activity;
use crate::auth::{Auth, ConnAuth};
use crate::config::Config;
use crate::intercept::Interceptor;
use crate::limits::ClientSlot;
use crate::metrics::{ActiveGuard, Metrics};
use crate::upstream::{Dialer, HttpClient};

/// Everything a request needs: one immutable snapshot of the configuration and what was built
/// from it. A reload builds a new one (`reload::assemble`); each request and tunnel keeps the
/// snapshot it started with.
pub(crate) struct Proxy {
    pub(crate) config: Arc<Config>,
    pub(crate) dialer: Arc<Dialer>,
    pub(crate) client: HttpClient,
    /// Parent proxies (`[[upstream.parents]]`): their pools and health.
    pub(crate) parents: Arc<crate::parents::Parents>,
    pub(crate) access_log: AccessLog,
    /// Proxy authentication; `None` when no scheme is enabled.
    pub(crate) auth: Option<Arc<Auth>>,
    /// Group membership for `group` rules; `None` when `[auth.groups]` names no source. Kept
    /// across reloads while `[auth.groups]` is unchanged (its cache with it).
    pub(crate) groups: Option<Arc<crate::groups::Groups>>,
    /// What to inspect, tunnel, refuse or exempt from authentication (`[policy]`).
    pub(crate) policy: Arc<portcullis_policy::Policy>,
    /// TLS inspection; `None` when `tls.inspect` is off.
    pub(crate) interceptor: Option<Arc<Interceptor>>,
    /// Cancelled on SIGTERM/SIGINT: connections finish their request in flight and close.
    pub(crate) shutdown: CancellationToken,
    /// Connection and tunnel tasks, awaited (up to the grace period) on shutdown.
    pub(crate) tasks: TaskTracker,
    pub(crate) listen_addrs: Vec<SocketAddr>,
    /// The process's metrics, shared by every snapshot. Interception reports through it:
    /// `tls_intercepted`, `tls_tunnelled(reason)`, `tls_handshake_failed(side)`.
    pub(crate) metrics: Arc<Metrics>,
    /// Content adaptation services (`[[icap.services]]`), kept across reloads while `[icap]`
    /// is unchanged (their pools and OPTIONS caches with them).
    pub(crate) icap: Arc<crate::icap::Icap>,
    /// Our `Via` entries, rendered from `server.via_pseudonym`.
    pub(crate) via: crate::headers::Via,
}

impl Proxy {
    pub(crate) fn listen_label(&self) -> String {
        self.listen_addrs
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// How long a tunnel or upgraded connection may sit idle: Outlook's long polls
    /// (`long_poll`) get `timeouts.long_poll_idle`, everything else `timeouts.tunnel_idle`.
    pub(crate) fn tunnel_idle(&self, long_poll: bool) -> std::time::Duration {
        let t = &self.config.timeouts;
        if long_poll {
            t.long_poll_idle
        } else {
            t.tunnel_idle
        }
    }

    /// How long to wait for an origin's response head: ActiveSync Ping and MAPI
    /// NotificationWait hold it back for minutes by design.
    pub(crate) fn response_timeout(&self, long_poll: bool) -> std::time::Duration {
        let t = &self.config.timeouts;
        if long_poll {
            t.long_poll_idle
        } else {
            t.upstream_response
        }
    }
}

/// One client connection. Tunnels keep a clone, so the connection's slot under
/// `max_connections` stays taken until the tunnel ends.
pub(crate) struct ConnCtx {
    pub(crate) client: SocketAddr,
    /// `client`'s address as a header value, for `X-Forwarded-For`.
    pub(crate) client_address: http::HeaderValue,
    pub(crate) local: SocketAddr,
    pub(crate) activity: Arc<Activity>,
    /// The authenticated user of this connection (Negotiate) and handshake state.
    pub(crate) auth: ConnAuth,
    /// This connection's private origin connection after NTLM/Negotiate to an origin.
    pub(crate) pinned: crate::pinned::PinnedOrigin,
    /// Set on a transparent listener: where netfilter's redirect says the client was going.
    pub(crate) original_dst: Option<crate::original_dst::OriginalDst>,
    _slot: OwnedSemaphorePermit,
    _client_slot: ClientSlot,
    /// Keeps `portcullis_active_client_connections` raised while the connection (or a tunnel
    /// holding this context) lives.
    _active: ActiveGuard,
    /// Set when a CONNECT or upgrade succeeded; since the tunnel task holds this context until
    /// the tunnel ends, `portcullis_active_tunnels` drops exactly then.
    tunnel: OnceLock<ActiveGuard>,
}

impl ConnCtx {
    /// A connection admitted under both connection limits (`slot`, `client_slot`).
    pub(crate) fn new(
        client: SocketAddr,
        local: SocketAddr,
        slot: OwnedSemaphorePermit,
        client_slot: ClientSlot,
        metrics: &Metrics,
    ) -> ConnCtx {
        ConnCtx {
            client,
            client_address: crate::headers::client_address_value(client.ip()),
            local,
            activity: Activity::new(),
            auth: ConnAuth::default(),
            pinned: Default::default(),
            original_dst: None,
            _slot: slot,
            _client_slot: client_slot,
            _active: metrics.connection_opened(),
            tunnel: OnceLock::new(),
        }
    }

    /// A connection a transparent listener accepted, redirected from `original_dst`.
    pub(crate) fn with_original_dst(
        mut self,
        original_dst: Option<crate::original_dst::OriginalDst>,
    ) -> ConnCtx {
        self.original_dst = original_dst;
        self
    }

    /// The connection now carries a tunnel (CONNECT or upgrade) until it is dropped.
    pub(crate) fn tunnel_opened(&self, metrics: &Metrics) {
        let _ = self.tunnel.set(metrics.tunnel_opened());
    }
}
