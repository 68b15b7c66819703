//! A connection on a transparent TLS listener (redirected port 443): treated exactly as a
//! CONNECT to its original destination's address whose ClientHello is then read — the same
//! facts (`connect_facts`: the SNI name as the host, `dest_ip` the address), the same
//! settling, handshakes and decrypted requests. What differs, because no CONNECT came first:
//!
//! - there is one decision, after the ClientHello, and the SNI counts only when the proxy's
//!   resolver maps it to the original destination (`names_destination`); otherwise the
//!   connection is decided on the address alone;
//! - the origin is dialled only after the decision (a denial never touches it); a `deny`, or
//!   an authentication the connection cannot give, is the 403 page inside TLS (or, without a
//!   CA to mint with, a closed connection), and an unreachable origin a 502/504 page inside;
//! - no credentials are read or asked for (`auth_refusal`).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use portcullis_policy::{Action, Decision, Route};
use tokio::net::TcpStream;

use super::{conclude, relay_untouched, Hello, Interception, Settled};
use crate::context::{ConnCtx, Proxy};
use crate::error::ProxyError;
use crate::http::connect::{tunnel_reason, TunnelPlan};
use crate::http::target::Target;
use crate::http::transparent::{auth_refusal, names_destination};
use crate::http::{Outcome, Txn};
use crate::intercept::hello::{peek, read_client_hello, FirstBytes};
use crate::metrics::TlsTunnelReason;
use crate::parents::Hop;
use crate::rewind::Rewind;
use crate::tunnel::{ClientStream, TunnelClient};

/// Serves one redirected TLS connection whose client was going to `dst`.
pub(crate) async fn serve(
    proxy: Arc<Proxy>,
    conn: Arc<ConnCtx>,
    stream: Rewind<TcpStream>,
    dst: SocketAddr,
) {
    let Ok(target) = Target::parse(&dst.to_string(), None) else {
        return;
    };
    let mut txn = Txn::transparent_tls(&conn, target.authority());
    // Always to the original destination: transparent connections are not routed to parents.
    let plan = TunnelPlan {
        user_agent: None,
        idle: proxy.tunnel_idle(false),
        hop: Hop::direct(Some(dst.ip())),
        route: Route::Direct,
    };
    conn.tunnel_opened(&proxy.metrics);
    let wait = proxy.config.timeouts.client_header.min(plan.idle);
    let mut client = ClientStream::Accepted(stream);
    let hello = match peek(&mut client, None, wait).await {
        FirstBytes::Tls(bytes) => read_client_hello(&mut client, bytes, wait).await,
        FirstBytes::Other(bytes) => Err(bytes),
    };
    let (accepted, seen) = match hello {
        Ok(pair) => pair,
        Err(bytes) => {
            // Not TLS (or nothing in time): decided on the address, relayed untouched.
            let decision = decide(&proxy, &conn, &target, None);
            let reason = TlsTunnelReason::NonTls;
            let relay = Relay::new(&proxy, conn, &target, plan.idle, reason);
            return relay.or_refuse(txn, decision, client, bytes).await;
        }
    };
    let Some(interceptor) = proxy.interceptor.clone() else {
        // No CA to mint with: a tunnel is relayed, anything else closed.
        let sni = accepted.client_hello().server_name().map(str::to_owned);
        let name = verified(&proxy, sni, dst).await;
        set_url(&mut txn, name.as_deref(), &target);
        let decision = decide(&proxy, &conn, &target, name.as_deref());
        let reason = tunnel_reason(&decision);
        let relay = Relay::new(&proxy, conn, &target, plan.idle, reason);
        return relay.or_refuse(txn, decision, client, seen.freeze()).await;
    };
    let mut tls = Interception::new(
        &proxy,
        &interceptor,
        &conn,
        &target,
        &accepted.client_hello(),
        wait,
        &plan,
    );
    tls.name = verified(&proxy, tls.sni.clone(), dst).await;
    set_url(&mut txn, tls.name.as_deref(), &target);
    let decision = decide(&proxy, &conn, &target, tls.name.as_deref());
    let settled = match auth_refusal(&proxy, &conn, &decision) {
        Some(refusal) if ProxyError::denial(&decision).is_none() => {
            txn.decided(&decision);
            Settled::Inspect {
                denied: Some(refusal),
                remember_refusal: None,
            }
        }
        _ => tls.settle(&mut txn, &plan, Some(decision)),
    };
    let hello = Hello { accepted, seen };
    conclude(&tls, &conn, txn, hello, client, None, settled).await;
}

/// The SNI, when the proxy's resolver maps it to the original destination.
async fn verified(proxy: &Proxy, sni: Option<String>, dst: SocketAddr) -> Option<String> {
    let sni = sni?;
    if names_destination(proxy, &sni, dst).await {
        return Some(sni);
    }
    tracing::debug!(%sni, %dst, "the SNI does not resolve to the original destination; deciding on the address");
    None
}

/// The log names the connection by its verified name when it has one.
fn set_url(txn: &mut Txn, name: Option<&str>, target: &Target) {
    if let Some(name) = name {
        txn.set_url(format!("{name}:{}", target.port));
    }
}

/// The one decision: a CONNECT to the address, judged by the verified name if there is one.
fn decide(proxy: &Proxy, conn: &ConnCtx, target: &Target, name: Option<&str>) -> Decision {
    let facts = crate::http::connect_facts(target, name, conn.client.ip());
    let decision = proxy.policy.decide_connect(&facts);
    tracing::debug!(?name, dst = %target.authority(), decision = %decision, "transparent TLS decision");
    decision
}

/// A connection relayed without interception, or refused.
struct Relay<'a> {
    proxy: &'a Arc<Proxy>,
    conn: Arc<ConnCtx>,
    target: &'a Target,
    idle: std::time::Duration,
    reason: TlsTunnelReason,
}

impl<'a> Relay<'a> {
    fn new(
        proxy: &'a Arc<Proxy>,
        conn: Arc<ConnCtx>,
        target: &'a Target,
        idle: std::time::Duration,
        reason: TlsTunnelReason,
    ) -> Relay<'a> {
        Relay {
            proxy,
            conn,
            target,
            idle,
            reason,
        }
    }

    /// Refused (logged `TCP_DENIED`, closed: there is no way to show a page) when the policy
    /// denies or authentication would be needed; otherwise the origin is dialled and the bytes
    /// (`prefix` first) relayed.
    async fn or_refuse(
        self,
        mut txn: Txn,
        decision: Decision,
        client: ClientStream,
        prefix: Bytes,
    ) {
        let proxy = self.proxy;
        txn.decided(&decision);
        let refusal =
            ProxyError::denial(&decision).or_else(|| auth_refusal(proxy, &self.conn, &decision));
        if matches!(decision.action, Action::Inspect | Action::Tunnel) && refusal.is_none() {
            match proxy.dialer.dial(&self.target.host, self.target.port).await {
                Ok(upstream) => {
                    let client = TunnelClient::new(client, prefix);
                    let (conn, reason) = (self.conn, self.reason);
                    let peer = upstream.peer_addr().ok().map(|a| a.ip());
                    let relay = (self.idle, Hop::direct(peer));
                    return relay_untouched(proxy, conn, txn, client, upstream, relay, reason);
                }
                Err(e) => return super::log_unreachable(proxy, txn, &e),
            }
        }
        if let Some(err) = refusal {
            tracing::info!(error = %err, "transparent TLS connection refused; closing it");
            let status = err.status().as_u16();
            proxy
                .access_log
                .log(txn.record(Outcome::failed(&err), status, 0, None));
        }
    }
}
