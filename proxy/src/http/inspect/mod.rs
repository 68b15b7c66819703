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
mod transparent;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use portcullis_policy::{Action, Decision};
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
use crate::tunnel::{ClientStream, TunnelClient};
use handshake::{connect_origin, handshake_client, log_failed_interception};
pub(crate) use transparent::serve as serve_transparent;

/// One CONNECT (or transparent TLS connection) being intercepted, from its ClientHello on.
struct Interception<'a> {
    proxy: &'a Arc<Proxy>,
    interceptor: &'a Interceptor,
    conn: &'a ConnCtx,
    target: &'a Target,
    /// What the ClientHello named, and the protocols it offered.
    sni: Option<String>,
    alpn: Vec<Vec<u8>>,
    /// The name decisions may use: the SNI — except on a transparent connection, where it counts
    /// only when the proxy's resolver maps it to the original destination.
    name: Option<String>,
    /// How long the client may take to finish its handshake.
    wait: Duration,
    /// The tunnel's plan: its idle timeout, and its route and hop (a CONNECT's, or direct to a
    /// transparent connection's original destination), which matter to the origin session.
    plan: &'a TunnelPlan,
}

impl<'a> Interception<'a> {
    fn new(
        proxy: &'a Arc<Proxy>,
        interceptor: &'a Interceptor,
        conn: &'a ConnCtx,
        target: &'a Target,
        hello: &rustls::server::ClientHello<'_>,
        wait: Duration,
        plan: &'a TunnelPlan,
    ) -> Interception<'a> {
        let sni = hello.server_name().map(str::to_owned);
        Interception {
            proxy,
            interceptor,
            conn,
            target,
            name: sni.clone(),
            sni,
            alpn: hello
                .alpn()
                .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
                .unwrap_or_default(),
            wait,
            plan,
        }
    }
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

/// The client's complete ClientHello: rustls' view of it, and its bytes (for a relay).
struct Hello {
    accepted: rustls::server::Accepted,
    seen: BytesMut,
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
    let mut client = ClientStream::Upgraded(TokioIo::new(client));
    let hello = match peek(&mut client, Some(&upstream), wait).await {
        FirstBytes::Tls(bytes) => read_client_hello(&mut client, bytes, wait).await,
        FirstBytes::Other(bytes) => Err(bytes),
    };
    let (accepted, seen) = match hello {
        Ok(pair) => pair,
        Err(bytes) => {
            let client = TunnelClient::new(client, bytes);
            let reason = TlsTunnelReason::NonTls;
            let relay = (plan.idle, plan.hop);
            return relay_untouched(&proxy, conn, txn, client, upstream, relay, reason);
        }
    };
    let tls = Interception::new(
        &proxy,
        &interceptor,
        &conn,
        &target,
        &accepted.client_hello(),
        wait,
        &plan,
    );
    let decision = tls.decide_on_sni(&txn, &plan);
    let settled = tls.settle(&mut txn, &plan, decision);
    let hello = Hello { accepted, seen };
    // Boxed: the handshakes' and the decrypted connection's state is several times what
    // waiting for the ClientHello needs, and a tunnel's task would otherwise reserve room for
    // it from the CONNECT on — for every client that has not spoken yet, too.
    Box::pin(conclude(
        &tls,
        &conn,
        txn,
        hello,
        client,
        Some(upstream),
        settled,
    ))
    .await;
}

/// Carries out what [`Interception::settle`] decided: relay the bytes, or finish the
/// handshakes and serve the decrypted requests (or the 403 page). `upstream`: the origin
/// connection already dialled (a CONNECT's, by the plan's hop); `None` dials the target now,
/// unless denied.
async fn conclude(
    tls: &Interception<'_>,
    conn: &Arc<ConnCtx>,
    mut txn: Txn,
    hello: Hello,
    client: ClientStream,
    upstream: Option<TcpStream>,
    settled: Settled,
) {
    let proxy = tls.proxy;
    // A connection given was dialled by the plan's hop (direct or a parent); one dialled here
    // goes straight to the original destination.
    let given = upstream.as_ref().map(|_| tls.plan.hop);
    let direct = |upstream: &TcpStream| Hop::direct(upstream.peer_addr().ok().map(|a| a.ip()));
    let (denied, remember_refusal) = match settled {
        Settled::Relay { reason, idle } => {
            let upstream = match upstream {
                Some(upstream) => upstream,
                None => match tls.dial().await {
                    Ok(upstream) => upstream,
                    Err(e) => return log_unreachable(proxy, txn, &e),
                },
            };
            let hop = given.unwrap_or_else(|| direct(&upstream));
            // rustls has seen the ClientHello; the origin gets the same bytes.
            let client = TunnelClient::new(client, hello.seen.freeze());
            let conn = Arc::clone(conn);
            let relay = (idle, hop);
            return relay_untouched(proxy, conn, txn, client, upstream, relay, reason);
        }
        Settled::Inspect {
            denied,
            remember_refusal,
        } => (denied, remember_refusal),
    };
    let upstream = match (denied, upstream) {
        (Some(denied), _) => Err(denied),
        (None, Some(upstream)) => Ok(upstream),
        (None, None) => tls.dial().await,
    };
    let hop = given.or_else(|| upstream.as_ref().ok().map(direct));
    let start = StartHandshake::from_parts(hello.accepted, client);
    let origin = connect_origin(tls, upstream, hop.unwrap_or(Hop::direct(None))).await;
    let handshake = handshake_client(tls, start, &origin, remember_refusal.as_deref()).await;
    let client_tls = match handshake {
        Ok(tls) => tls,
        Err(failure) => {
            let hop = hop.unwrap_or(Hop::direct(None));
            return log_failed_interception(proxy, txn, &origin, hop, failure);
        }
    };
    proxy.metrics.tls_intercepted();
    // Squid logs an intercepted CONNECT as `NONE/200 0 CONNECT host:port`, then each decrypted
    // request on its own line.
    txn.inspected();
    let user = (txn.user().map(str::to_owned), txn.groups().cloned());
    let outcome = match hop {
        Some(hop) => Outcome {
            result: ResultCode::None,
            ..Outcome::via(hop)
        },
        // Refused before any origin was reached (a transparent connection's denial).
        None => Outcome::LOCAL,
    };
    proxy.access_log.log(txn.record(outcome, 200, 0, None));
    let tunnel = decrypted::Tunnel::new(tls.target, tls.sni.clone(), user, origin);
    // In a task of its own, as an untouched relay is: the handshakes' state is freed instead
    // of being held for as long as the decrypted connection stays open.
    let serve = decrypted::serve(
        Arc::clone(proxy),
        Arc::clone(conn),
        client_tls,
        Arc::new(tunnel),
        tls.plan.idle,
    );
    proxy.tasks.spawn(serve);
}

/// The one line of a tunnel whose origin could not be reached before anything was relayed.
fn log_unreachable(proxy: &Proxy, txn: Txn, err: &ProxyError) {
    tracing::info!(error = %err, "cannot reach the original destination");
    let status = err.status().as_u16();
    proxy
        .access_log
        .log(txn.record(Outcome::failed(err), status, 0, None));
}

/// Relays the tunnel as bytes, counted under `reason`, and logs it when it ends — in a task of
/// its own, so the interception's state (sized for TLS handshakes and a decrypted connection,
/// about 12 KiB) is freed instead of being held for the hours a tunnel may idle.
fn relay_untouched(
    proxy: &Arc<Proxy>,
    conn: Arc<ConnCtx>,
    txn: Txn,
    client: TunnelClient,
    upstream: TcpStream,
    relay: (Duration, Hop),
    reason: TlsTunnelReason,
) {
    proxy.metrics.tls_tunnelled(reason);
    let proxy_task = Arc::clone(proxy);
    proxy.tasks.spawn(async move {
        relay_and_log(&proxy_task, conn, txn, client, upstream, relay).await;
    });
}

impl Interception<'_> {
    /// Decides what happens now the ClientHello is known: the SNI re-decision first, and only
    /// for a tunnel the policy still inspects, an earlier refusal of this host by this client
    /// (`tls.tunnel_after_refusal`, listed hosts only) — never for a host the policy denies or
    /// does not inspect.
    fn settle(&self, txn: &mut Txn, plan: &TunnelPlan, decision: Option<Decision>) -> Settled {
        let mut denied = None;
        if let Some(decision) = decision {
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
        let judged = super::judged_host(self.target, self.name.as_deref()).to_owned();
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
        let sni = self.name.as_deref()?;
        if self.target.ip().is_none() && !self.proxy.policy.uses_sni() {
            return None;
        }
        let facts = super::connect_facts(self.target, Some(sni), self.conn.client.ip())
            .with_user_agent(plan.user_agent.as_deref())
            .with_user(txn.identity());
        Some(self.proxy.policy.decide_connect(&facts))
    }

    /// Connects to the target (a transparent connection's original destination), with the
    /// dialler's checks: our own listeners, `upstream.deny_networks`, the connect deadline.
    async fn dial(&self) -> Result<TcpStream, ProxyError> {
        self.proxy
            .dialer
            .dial(&self.target.host, self.target.port)
            .await
    }
}
