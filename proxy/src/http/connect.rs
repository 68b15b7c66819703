//! CONNECT tunnels. The target is checked and dialled *before* answering, so that a refused
//! port, a DNS failure or an unreachable origin becomes a 403/502/504 page instead of a
//! "200 Connection established" followed by a dead socket.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use portcullis_policy::{Action, Decision, RuleSource};

use super::headers::{via_names_us, Target};
use super::Txn;
use crate::activity::InFlight;
use crate::body::{self, ProxyBody};
use crate::error::ProxyError;
use crate::metrics::TlsTunnelReason;
use crate::server::{ConnCtx, Proxy};
use crate::tunnel::{relay_and_log, TunnelClient};

/// What an inspected tunnel needs from its CONNECT to decide again on the SNI.
pub struct TunnelPlan {
    pub user_agent: Option<String>,
    /// `timeouts.tunnel_idle`, or `long_poll_idle` under the long_poll profile.
    pub idle: std::time::Duration,
}

/// Why a tunnel's TLS is relayed rather than inspected, for the metrics.
pub fn tunnel_reason(decision: &Decision) -> TlsTunnelReason {
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
) -> Response<ProxyBody> {
    let config = &proxy.config;
    let target = match req.uri().authority() {
        Some(authority) if req.uri().scheme().is_none() && req.uri().path_and_query().is_none() => {
            Target::parse(authority.as_str(), None)
        }
        _ => Err(ProxyError::BadRequest(
            "CONNECT needs an authority-form target (host:port)".into(),
        )),
    };
    let target = match target {
        Ok(t) => t,
        Err(e) => return txn.fail(proxy, in_flight, e),
    };
    if !config.server.connect_ports.contains(&target.port) {
        let allowed = config
            .server
            .connect_ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let err = ProxyError::PortNotAllowed {
            port: target.port,
            allowed,
        };
        return txn.fail(proxy, in_flight, err);
    }
    if via_names_us(req.headers(), &config.server.via_pseudonym) {
        let err = ProxyError::Loop("the request already passed through this proxy".into());
        return txn.fail(proxy, in_flight, err);
    }
    let upstream = match proxy.dialer.dial(&target.host, target.port).await {
        Ok(stream) => stream,
        Err(e) => return txn.fail(proxy, in_flight, e),
    };

    let user_agent = req
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let on_upgrade = hyper::upgrade::on(req);
    // The policy decided on the CONNECT target; with `inspect`, the SNI may still turn the
    // tunnel into a relay once the ClientHello is in.
    let mut inspect = proxy.interceptor.is_some()
        && decision
            .as_ref()
            .is_none_or(|d| d.action == Action::Inspect);
    if inspect
        && proxy
            .interceptor
            .as_ref()
            .is_some_and(|i| i.refusals.contains(conn.client.ip(), &target.host))
    {
        tracing::debug!(host = %target.host, "this client refused interception of this host; tunnelling untouched");
        proxy.metrics.tls_tunnelled(TlsTunnelReason::PinningFailure);
        inspect = false;
    } else if !inspect && proxy.interceptor.is_some() {
        if let Some(decision) = &decision {
            proxy.metrics.tls_tunnelled(tunnel_reason(decision));
        }
    }
    let idle = if txn.long_poll() {
        config.timeouts.long_poll_idle
    } else {
        config.timeouts.tunnel_idle
    };
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
            let plan = TunnelPlan { user_agent, idle };
            crate::intercept::run_tunnel(proxy_task, conn, txn, client, upstream, target, plan)
                .await;
            return;
        }
        let client = TunnelClient::new(client, bytes::Bytes::new());
        relay_and_log(&proxy_task, conn, txn, client, upstream, idle).await;
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
