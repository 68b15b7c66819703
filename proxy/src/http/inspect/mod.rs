//! An intercepted CONNECT tunnel, after `200 Connection established`: the client's first bytes
//! decide. A TLS ClientHello is intercepted (unless the policy, deciding again with the SNI,
//! says tunnel or deny); anything else — or a server that speaks first — is relayed untouched.
//!
//! An intercepted tunnel connects to the origin *first*, verifying its certificate; only then
//! is a leaf minted (copying the origin's subjectAltNames) and the client handshake finished
//! with the ALPN the origin chose. A bad origin certificate is never laundered: the client gets
//! a certificate for the name it asked for and, inside that connection, a 502 page naming the
//! problem. The decrypted requests are served by hyper and go through `forward.rs`, the same
//! header, error and log code as plain HTTP. The TLS machinery itself is `crate::intercept`.
//!
//! `mod.rs` settles what happens to the tunnel once the ClientHello is in; `handshake.rs` does
//! the two handshakes; `decrypted.rs` serves the requests inside.

mod decrypted;
mod handshake;

use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use portcullis_policy::{Action, Decision, Identity};
use tokio::net::TcpStream;
use tokio_rustls::StartHandshake;

use super::connect::{relay_and_log, tunnel_reason, TunnelPlan};
use super::target::Target;
use super::{Outcome, Txn};
use crate::context::{ConnCtx, Proxy};
use crate::error::ProxyError;
use crate::intercept::hello::{peek, read_client_hello, FirstBytes};
use crate::intercept::Interceptor;
use crate::metrics::TlsTunnelReason;
use crate::parents::Hop;
use crate::record::ResultCode;
use crate::tunnel::TunnelClient;
use handshake::{connect_origin, handshake_client, log_failed_interception};

/// One CONNECT being intercepted, from its ClientHello on.
struct Interception<'a> {
    proxy: &'a Proxy,
    interceptor: &'a Interceptor,
    conn: &'a ConnCtx,
    target: &'a Target,
    /// What the ClientHello named, and the protocols it offered.
    sni: Option<String>,
    alpn: Vec<Vec<u8>>,
    /// How long the client may take to finish its handshake.
    wait: Duration,
    /// The CONNECT's plan: its route and hop matter to the origin session.
    plan: &'a TunnelPlan,
}

/// What happens to a tunnel once its ClientHello is in.
enum Settled {
    /// Relay it untouched: the SNI decided `tunnel`, or this client refused interception of
    /// this (listed) host lately.
    Relay {
        reason: TlsTunnelReason,
        idle: Duration,
    },
    /// Intercept it. `denied`: show this 403 inside instead of reaching the origin.
    /// `remember_refusal`: the host a refused handshake is remembered for.
    Inspect {
        denied: Option<ProxyError>,
        remember_refusal: Option<String>,
    },
}

/// Runs one CONNECT tunnel whose decision is "inspect", after the 200 has been sent.
pub(super) async fn run(
    proxy: Arc<Proxy>,
    conn: Arc<ConnCtx>,
    mut txn: Txn,
    client: Upgraded,
    upstream: TcpStream,
    target: Target,
    plan: TunnelPlan,
) {
    let Some(interceptor) = proxy.interceptor.clone() else {
        return;
    };
    // A silent client gets no longer than a silent tunnel would.
    let wait = proxy.config.timeouts.client_header.min(plan.idle);
    let mut client = TokioIo::new(client);
    let hello = match peek(&mut client, &upstream, wait).await {
        FirstBytes::Tls(bytes) => read_client_hello(&mut client, bytes, wait).await,
        FirstBytes::Other(bytes) => Err(bytes),
    };
    let (accepted, seen) = match hello {
        Ok(pair) => pair,
        Err(bytes) => {
            let client = TunnelClient::new(client.into_inner(), bytes);
            let reason = TlsTunnelReason::NonTls;
            let relay = (plan.idle, plan.hop);
            return relay_untouched(&proxy, conn, txn, client, upstream, relay, reason).await;
        }
    };
    let hello = accepted.client_hello();
    let tls = Interception {
        proxy: &proxy,
        interceptor: &interceptor,
        conn: &conn,
        target: &target,
        sni: hello.server_name().map(str::to_owned),
        alpn: hello
            .alpn()
            .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
            .unwrap_or_default(),
        wait,
        plan: &plan,
    };
    let (denied, remember_refusal) = match tls.settle(&mut txn, &plan) {
        Settled::Relay { reason, idle } => {
            // rustls has seen the ClientHello; the origin gets the same bytes.
            let client = TunnelClient::new(client.into_inner(), seen.freeze());
            let relay = (idle, plan.hop);
            return relay_untouched(&proxy, conn, txn, client, upstream, relay, reason).await;
        }
        Settled::Inspect {
            denied,
            remember_refusal,
        } => (denied, remember_refusal),
    };
    let start = StartHandshake::from_parts(accepted, client);
    let origin = connect_origin(&tls, upstream, denied).await;
    let handshake = handshake_client(&tls, start, &origin, remember_refusal.as_deref()).await;
    let client_tls = match handshake {
        Ok(tls) => tls,
        Err(failure) => return log_failed_interception(&proxy, txn, &origin, plan.hop, failure),
    };
    let sni = tls.sni;
    proxy.metrics.tls_intercepted();
    // Squid logs an intercepted CONNECT as `NONE/200 0 CONNECT host:port`, then each decrypted
    // request on its own line.
    txn.inspected();
    let user = txn.user().map(str::to_owned);
    let outcome = Outcome {
        result: ResultCode::None,
        ..Outcome::via(plan.hop)
    };
    proxy.access_log.log(txn.record(outcome, 200, 0, None));
    let tunnel = decrypted::Tunnel::new(&target, sni, user, origin);
    decrypted::serve(proxy, conn, client_tls, Arc::new(tunnel), plan.idle).await;
}

/// Relays the tunnel as bytes, counted under `reason`, and logs it when it ends.
async fn relay_untouched(
    proxy: &Proxy,
    conn: Arc<ConnCtx>,
    txn: Txn,
    client: TunnelClient,
    upstream: TcpStream,
    relay: (Duration, Hop),
    reason: TlsTunnelReason,
) {
    proxy.metrics.tls_tunnelled(reason);
    relay_and_log(proxy, conn, txn, client, upstream, relay).await;
}

impl Interception<'_> {
    /// Decides what happens now the ClientHello is known: the SNI re-decision first, and only
    /// for a tunnel the policy still inspects, an earlier refusal of this host by this client
    /// (`tls.tunnel_after_refusal`, listed hosts only) — never for a host the policy denies or
    /// does not inspect.
    fn settle(&self, txn: &mut Txn, plan: &TunnelPlan) -> Settled {
        let mut denied = None;
        if let Some(decision) = self.decide_on_sni(txn, plan) {
            txn.decided(&decision);
            match &decision.action {
                Action::Inspect => {}
                Action::Tunnel => {
                    tracing::debug!(sni = ?self.sni, decision = %decision, "tunnelling untouched on the SNI");
                    let idle = if txn.long_poll() {
                        self.proxy.tunnel_idle(true)
                    } else {
                        plan.idle
                    };
                    let reason = tunnel_reason(&decision);
                    return Settled::Relay { reason, idle };
                }
                // The 200 is already sent: finish the handshake and show the page inside.
                Action::Deny { .. } => denied = ProxyError::denial(&decision),
            }
        }
        if denied.is_some() {
            // A refusal of a page the policy denies is no reason to stop inspecting.
            return Settled::Inspect {
                denied,
                remember_refusal: None,
            };
        }
        let judged = super::judged_host(self.target, self.sni.as_deref()).to_owned();
        if self
            .interceptor
            .refusals
            .contains(self.conn.client.ip(), &judged)
        {
            tracing::debug!(host = %judged, "this client refused interception of this host; tunnelling untouched");
            txn.tunnelled_after_refusal();
            return Settled::Relay {
                reason: TlsTunnelReason::PinningFailure,
                idle: plan.idle,
            };
        }
        Settled::Inspect {
            denied: None,
            remember_refusal: Some(judged),
        }
    }

    /// The CONNECT decided again with what the ClientHello says, when that can change anything:
    /// a CONNECT to a bare IP is judged by its SNI name (only inspect/tunnel/deny: authentication
    /// was settled on the target itself, so a forged SNI earns no exemption, and a tunnel it earns
    /// carries only what the client could have sent anyway), and `sni` rules need the SNI.
    fn decide_on_sni(&self, txn: &Txn, plan: &TunnelPlan) -> Option<Decision> {
        let sni = self.sni.as_deref()?;
        if self.target.ip().is_none() && !self.proxy.policy.uses_sni() {
            return None;
        }
        let facts = super::connect_facts(self.target, Some(sni), self.conn.client.ip())
            .with_user_agent(plan.user_agent.as_deref())
            .with_user(txn.user().map(Identity::named));
        Some(self.proxy.policy.decide_connect(&facts))
    }
}
