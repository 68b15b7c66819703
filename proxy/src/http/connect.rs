//! CONNECT tunnels. The target is checked and dialled *before* answering, so that a refused
//! port, a DNS failure or an unreachable origin becomes a 403/502/504 page instead of a
//! "200 Connection established" followed by a dead socket. After the `200` the tunnel is either
//! relayed untouched here ([`relay_and_log`]) or inspected (`inspect.rs`).

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use portcullis_policy::{Action, Decision, Route, RuleSource};
use tokio::net::TcpStream;

use super::target::Target;
use super::{Outcome, Txn};
use crate::activity::InFlight;
use crate::body::{self, ProxyBody};
use crate::context::{ConnCtx, Proxy};
use crate::error::ProxyError;
use crate::headers::via_names_us;
use crate::metrics::TlsTunnelReason;
use crate::parents::Hop;
use crate::record::ResultCode;
use crate::tunnel::{relay_tunnel, RelayEnd, TunnelClient};
use crate::upstream::Resolution;

/// What an inspected tunnel needs from its CONNECT to decide again on the SNI.
pub(super) struct TunnelPlan {
    pub(super) user_agent: Option<String>,
    /// `timeouts.tunnel_idle`, or `long_poll_idle` under the long_poll profile.
    pub(super) idle: Duration,
    /// Where the tunnel's upstream connection goes (directly, or a parent), for the log.
    pub(super) hop: Hop,
    /// The route it was dialled by: an origin reconnection inside an inspected tunnel goes
    /// the same way.
    pub(super) route: Route,
}

/// Why a tunnel's TLS is relayed rather than inspected, for the metrics.
pub(super) fn tunnel_reason(decision: &Decision) -> TlsTunnelReason {
    match decision.rule.source {
        RuleSource::Outlook
        | RuleSource::Exchange
        | RuleSource::M365
        | RuleSource::OutlookUserAgent => TlsTunnelReason::OutlookProfile,
        _ => TlsTunnelReason::BypassRule,
    }
}

pub(super) async fn handle(
    proxy: &Arc<Proxy>,
    conn: &Arc<ConnCtx>,
    txn: Txn,
    in_flight: InFlight,
    req: Request<Incoming>,
    decision: Option<Decision>,
    resolution: Option<Resolution>,
) -> Response<ProxyBody> {
    let target = match checked_target(proxy, &req) {
        Ok(t) => t,
        Err(e) => return txn.fail(proxy, in_flight, e),
    };
    // `deny` was settled before this point: a route never opens what the policy refused.
    let route = decision.as_ref().map_or(Route::Direct, |d| d.route.clone());
    let (upstream, hop) = match dial(proxy, &target, &route, resolution.as_ref()).await {
        Ok(pair) => pair,
        Err(e) => return txn.fail(proxy, in_flight, e),
    };
    let user_agent = crate::headers::user_agent(req.headers()).map(str::to_owned);
    let on_upgrade = hyper::upgrade::on(req);
    let inspect = should_inspect(proxy, decision.as_ref());
    let idle = proxy.tunnel_idle(txn.long_poll());
    let proxy_task = Arc::clone(proxy);
    let conn = Arc::clone(conn);
    proxy.tasks.spawn(async move {
        let client = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "CONNECT upgrade failed");
                return;
            }
        };
        if inspect {
            let plan = TunnelPlan {
                user_agent,
                idle,
                hop,
                route,
            };
            // Boxed, so that a relayed tunnel's task does not reserve room for it. `run` boxes
            // the interception proper (TLS handshakes, the decrypted connection) only once the
            // ClientHello is in, so a client that has not spoken yet holds a few KiB.
            Box::pin(super::inspect::run(
                proxy_task, conn, txn, client, upstream, target, plan,
            ))
            .await;
            return;
        }
        let client = TunnelClient::upgraded(client, bytes::Bytes::new());
        relay_and_log(&proxy_task, conn, txn, client, upstream, (idle, hop)).await;
    });
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::OK;
    // Squid's wording; some clients log or even check it.
    response
        .extensions_mut()
        .insert(hyper::ext::ReasonPhrase::from_static(
            b"Connection established",
        ));
    Txn::respond_unlogged(in_flight, response)
}

/// The upstream connection for a CONNECT: to the origin itself, at the addresses the decision
/// was made on if it resolved them (no second lookup that could answer differently), or a
/// tunnel through the route's parents (which resolve the name themselves; an address literal
/// is still held to `upstream.deny_networks`).
async fn dial(
    proxy: &Proxy,
    target: &Target,
    route: &Route,
    resolution: Option<&Resolution>,
) -> Result<(TcpStream, Hop), ProxyError> {
    let (host, port) = (&target.host, target.port);
    let stream = match (route, resolution) {
        (Route::Parents(_), _) => {
            proxy.dialer.check_literal(host)?;
            return proxy.parents.tunnel(route, &target.authority()).await;
        }
        (Route::Direct, Some(resolved)) => proxy.dialer.dial_resolved(host, port, resolved).await?,
        (Route::Direct, None) => proxy.dialer.dial(host, port).await?,
    };
    let peer = stream.peer_addr().ok().map(|a| a.ip());
    Ok((stream, Hop::direct(peer)))
}

/// The authority-form target, on an allowed port, not looping back through us.
fn checked_target(proxy: &Proxy, req: &Request<Incoming>) -> Result<Target, ProxyError> {
    let server = &proxy.config.server;
    let target = match req.uri().authority() {
        Some(authority) if req.uri().scheme().is_none() && req.uri().path_and_query().is_none() => {
            Target::parse(authority.as_str(), None)?
        }
        _ => {
            return Err(ProxyError::BadRequest(
                "CONNECT needs an authority-form target (host:port)".into(),
            ))
        }
    };
    if !server.connect_ports.contains(&target.port) {
        let allowed = server
            .connect_ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        return Err(ProxyError::PortNotAllowed {
            what: "CONNECT",
            port: target.port,
            allowed,
        });
    }
    if via_names_us(req.headers(), &server.via_pseudonym) {
        return Err(ProxyError::Loop(
            "the request already passed through this proxy".into(),
        ));
    }
    Ok(target)
}

/// Whether the tunnel's TLS is intercepted. The policy decided on the CONNECT target; with
/// `inspect`, the SNI may still turn the tunnel into a relay once the ClientHello is in, and
/// so may a refusal of this host by this client (`tls.tunnel_after_refusal`) — both decided in
/// `inspect.rs`, after the SNI re-decision, so a refusal never opens a host the SNI denies.
fn should_inspect(proxy: &Proxy, decision: Option<&Decision>) -> bool {
    if proxy.interceptor.is_none() {
        return false;
    }
    let inspect = decision.is_none_or(|d| d.action == Action::Inspect);
    if !inspect {
        if let Some(decision) = decision {
            proxy.metrics.tls_tunnelled(tunnel_reason(decision));
        }
    }
    inspect
}

/// Relays a CONNECT tunnel untouched and logs it as Squid does (`TCP_TUNNEL/200`, bytes to the
/// client and from it). `conn` is held to the end: the client connection's slot stays taken
/// while its tunnel lives.
pub(super) async fn relay_and_log(
    proxy: &Proxy,
    conn: Arc<ConnCtx>,
    txn: Txn,
    client: TunnelClient,
    upstream: TcpStream,
    (idle, hop): (Duration, Hop),
) {
    let stats = relay_tunnel(client, upstream, idle).await;
    if let RelayEnd::Error(e) = &stats.end {
        tracing::debug!(error = %e, "tunnel ended with an error");
    }
    let outcome = Outcome {
        result: ResultCode::TcpTunnel,
        ..Outcome::via(hop)
    };
    let mut record = txn.record(outcome, 200, stats.to_client, None);
    record.bytes_in = stats.from_client;
    proxy.access_log.log(record);
    drop(conn);
}
