//! Forwarding requests to origins, streaming bodies both ways, and switching protocols
//! (WebSocket) when the origin agrees. One path for plain absolute-form requests (through the
//! pooled client) and for requests decrypted from an intercepted tunnel (through that tunnel's
//! origin session): same header rules, same errors, same logging.

use std::sync::Arc;

use http::header::{HeaderValue, EXPECT, HOST};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpInfo;
use hyper_util::rt::TokioIo;

use super::adapt;
use super::max_forwards;
use super::target::Target;
use super::upgrade;
use super::{Outcome, Txn};
use crate::activity::InFlight;
use crate::body::{self, ProxyBody};
use crate::context::{ConnCtx, Proxy};
use crate::error::classify_error;
use crate::error::ProxyError;
use crate::headers::{apply_forwarded_for, strip_hop_by_hop, via_names_us};
use crate::intercept::session::Session;
use crate::parents::Hop;
use crate::pinned::{send_once, starts_connection_auth};
use crate::ports::{self, PortRange};
use crate::tunnel::relay;
use crate::upstream::Resolution;
use portcullis_policy::Route as PolicyRoute;

/// Where a prepared request goes.
enum Route<'a> {
    /// The shared keep-alive pool (plain HTTP).
    Pooled,
    /// Plain HTTP decided on the addresses its host resolved to: a connection of its own to
    /// exactly those, never a pooled one another lookup opened.
    Resolved(&'a Resolution),
    /// The origin connection of an intercepted tunnel.
    Session(&'a Session),
    /// Through the route's parent proxies (their pools, or this client connection's own
    /// connection to a parent once it sent connection-oriented origin credentials).
    Parents(&'a PolicyRoute),
}

/// An absolute-form request from a proxy client; `resolution`: the host's addresses, when the
/// decision was made on them.
pub(super) async fn handle(
    proxy: &Arc<Proxy>,
    conn: &Arc<ConnCtx>,
    txn: Txn,
    in_flight: InFlight,
    mut req: Request<Incoming>,
    (resolution, way): (Option<Resolution>, PolicyRoute),
) -> Response<ProxyBody> {
    let local = max_forwards::apply(&mut req);
    if let Err(e) = target_plain(&mut req, &proxy.config.server.http_ports) {
        return txn.fail(proxy, in_flight, e);
    }
    if let Some(answer) = local {
        return txn.respond(proxy, in_flight, answer, Outcome::LOCAL);
    }
    let route = match (&way, resolution.as_ref()) {
        (PolicyRoute::Parents(_), _) => Route::Parents(&way),
        (PolicyRoute::Direct, Some(resolved)) => Route::Resolved(resolved),
        (PolicyRoute::Direct, None) => Route::Pooled,
    };
    send(proxy, conn, txn, in_flight, req, route).await
}

/// A request decrypted from an intercepted tunnel to `session`'s origin.
pub(super) async fn handle_intercepted(
    proxy: &Arc<Proxy>,
    conn: &Arc<ConnCtx>,
    txn: Txn,
    in_flight: InFlight,
    mut req: Request<Incoming>,
    session: &Session,
    host_header: &str,
) -> Response<ProxyBody> {
    let local = max_forwards::apply(&mut req);
    if let Err(e) = target_intercepted(&mut req, session.is_h2(), host_header) {
        return txn.fail(proxy, in_flight, e);
    }
    if let Some(answer) = local {
        return txn.respond(proxy, in_flight, answer, Outcome::LOCAL);
    }
    send(proxy, conn, txn, in_flight, req, Route::Session(session)).await
}

/// Absolute-form target: check the scheme, parse the one authority we will connect to, check
/// its port against `http_ports`, and set `Host` from it (RFC 9112 §3.2.2: the received Host
/// header is replaced).
fn target_plain(req: &mut Request<Incoming>, http_ports: &[PortRange]) -> Result<(), ProxyError> {
    let uri = req.uri();
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("ws") => {}
        Some(other) => return Err(ProxyError::UnsupportedScheme(other.to_owned())),
        None => {
            return Err(ProxyError::BadRequest(
                "request target is not absolute".into(),
            ))
        }
    }
    let authority = uri
        .authority()
        .ok_or_else(|| ProxyError::BadRequest("request target has no host".into()))?;
    let target = Target::parse(authority.as_str(), Some(80))?;
    // Before anything is dialled: a request body must not reach a mail or SSH server.
    if !ports::allows(http_ports, target.port) {
        return Err(ProxyError::PortNotAllowed {
            what: "HTTP",
            port: target.port,
            allowed: ports::describe(http_ports),
        });
    }
    let invalid = |e: http::Error| ProxyError::BadRequest(format!("invalid request target: {e}"));
    // The authority as received when it is already the one we connect to (the usual case):
    // no re-rendering and re-parsing per request.
    let as_received = authority.host() == target.host.as_str()
        && authority
            .port()
            .is_none_or(|p| p.as_str() == itoa::Buffer::new().format(target.port));
    let authority = if as_received {
        authority.clone()
    } else {
        http::uri::Authority::try_from(target.authority()).map_err(|e| invalid(e.into()))?
    };
    if as_received && target.port != 80 {
        set_host(req, authority.as_str())?;
    } else {
        set_host(req, &target.host_header(80))?;
    }
    // The pool and connector key on scheme + authority; the wire gets origin-form.
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    parts.path_and_query = Some(path_of(req.uri()));
    *req.uri_mut() = Uri::from_parts(parts).map_err(|e| invalid(e.into()))?;
    Ok(())
}

/// Inside a tunnel the origin is fixed; only the path comes from the request. HTTP/1.1 origins
/// get origin-form plus `Host`; HTTP/2 origins get the authority as `:authority`.
fn target_intercepted(req: &mut Request<Incoming>, h2: bool, host: &str) -> Result<(), ProxyError> {
    let path = path_of(req.uri());
    let invalid = |e: http::Error| ProxyError::BadRequest(format!("invalid request target: {e}"));
    if h2 {
        *req.uri_mut() = Uri::builder()
            .scheme(Scheme::HTTPS)
            .authority(host)
            .path_and_query(path)
            .build()
            .map_err(invalid)?;
        req.headers_mut().remove(HOST);
        *req.version_mut() = Version::HTTP_2;
        Ok(())
    } else {
        *req.uri_mut() = Uri::builder()
            .path_and_query(path)
            .build()
            .map_err(invalid)?;
        set_host(req, host)
    }
}

fn path_of(uri: &Uri) -> PathAndQuery {
    uri.path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

fn set_host(req: &mut Request<Incoming>, host: &str) -> Result<(), ProxyError> {
    let host =
        HeaderValue::from_str(host).map_err(|_| ProxyError::BadRequest("invalid host".into()))?;
    req.headers_mut().insert(HOST, host);
    Ok(())
}

/// Header rules, the round trip under `upstream_response`, and the response back.
async fn send(
    proxy: &Arc<Proxy>,
    conn: &Arc<ConnCtx>,
    mut txn: Txn,
    in_flight: InFlight,
    mut req: Request<Incoming>,
    route: Route<'_>,
) -> Response<ProxyBody> {
    if via_names_us(req.headers(), &proxy.config.server.via_pseudonym) {
        let err = ProxyError::Loop("the request already passed through this proxy".into());
        return txn.fail(proxy, in_flight, err);
    }
    let received = req.version();
    let offer = prepare(proxy, conn, &mut req, &route);
    let mut req = req.map(body::incoming);
    // Content adaptation sees the request as it will be forwarded (our header rules applied).
    let plan = adapt::Plan::new(proxy, &txn);
    if let Some(plan) = &plan {
        req = match Box::pin(adapt::reqmod(proxy, &mut txn, plan, req)).await {
            Ok(req) => req,
            Err(adapt::Stop::Respond(mut answer)) => {
                strip_hop_by_hop(answer.headers_mut(), false);
                *answer.version_mut() = received;
                return txn.respond(proxy, in_flight, answer, Outcome::LOCAL);
            }
            Err(adapt::Stop::Fail(e)) => return txn.fail(proxy, in_flight, e),
        };
    }
    let respmod_head = plan
        .as_ref()
        .filter(|p| p.has_respmod(proxy))
        .map(|p| (p, adapt::request_head(p, &req)));
    let client_upgrade = offer.is_some().then(|| hyper::upgrade::on(&mut req));
    let timeout = proxy.response_timeout(txn.long_poll());
    let (response, hop) =
        match tokio::time::timeout(timeout, round_trip(proxy, conn, req, route)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => return txn.fail(proxy, in_flight, e),
            Err(_) => return txn.fail(proxy, in_flight, ProxyError::ResponseTimeout(timeout)),
        };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let switch = Switch {
            client_upgrade,
            offer,
            hop,
        };
        return switch_protocols(proxy, conn, txn, in_flight, response, switch);
    }
    let (mut parts, body) = response.into_parts();
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and an intermediary removes
    // the Content-Length before forwarding. The body was decoded by its chunked framing; a
    // leftover length would make the client wait for bytes that never come, or worse.
    if parts.headers.contains_key(http::header::TRANSFER_ENCODING) {
        parts.headers.remove(http::header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(&mut parts.headers, false);
    proxy.via.append(&mut parts.headers, parts.version);
    // hyper frames the body for the client's own HTTP version.
    parts.version = received;
    let mut response = Response::from_parts(parts, body::incoming(body));
    if let Some((plan, head)) = &respmod_head {
        response = match Box::pin(adapt::respmod(
            proxy, &mut txn, plan, head, response, received,
        ))
        .await
        {
            Ok(response) => response,
            Err(e) => return txn.fail(proxy, in_flight, e),
        };
    }
    txn.respond(proxy, in_flight, response, Outcome::via(hop))
}

/// The request's header rules for the next hop; returns the protocol upgrade offered to the
/// origin, if any.
fn prepare(
    proxy: &Proxy,
    conn: &ConnCtx,
    req: &mut Request<Incoming>,
    route: &Route<'_>,
) -> Option<HeaderValue> {
    let server = &proxy.config.server;
    // Only the listed protocols are offered to the origin; any other Upgrade is stripped
    // below with the hop-by-hop headers, and the request goes on as an ordinary one.
    let offer = upgrade::allowed_offer(req.headers_mut(), &server.allowed_upgrades);
    let received = req.version();
    let h2_upstream = received == Version::HTTP_2 && matches!(route, Route::Session(_));
    if !h2_upstream {
        *req.version_mut() = Version::HTTP_11;
    }
    let headers = req.headers_mut();
    strip_hop_by_hop(headers, offer.is_some());
    // 100-continue was answered on the client hop when the body was first read.
    headers.remove(EXPECT);
    proxy.via.append(headers, received);
    apply_forwarded_for(headers, server.x_forwarded_for, &conn.client_address);
    offer
}

/// One request to its origin: through the pool, this connection's pinned origin connection
/// (connection-oriented origin auth), a connection of its own to addresses already judged,
/// an intercepted tunnel's session, or parent proxies. Returns the response and where it came
/// from.
async fn round_trip(
    proxy: &Proxy,
    conn: &ConnCtx,
    req: Request<ProxyBody>,
    route: Route<'_>,
) -> Result<(Response<Incoming>, Hop), ProxyError> {
    let pin = match route {
        Route::Pooled | Route::Resolved(_) | Route::Parents(_) => {
            starts_connection_auth(req.headers())
                || match req.uri().authority() {
                    Some(a) => conn.pinned.is_pinned_to(a).await,
                    None => false,
                }
        }
        Route::Session(_) => false,
    };
    // The pinned and session round trips are boxed: inline, their futures would make every
    // request's future several KiB larger, and hyper moves that future by value per request.
    let direct = |(response, peer)| (response, Hop::direct(peer));
    match route {
        Route::Pooled if pin => Box::pin(conn.pinned.send(&proxy.dialer, req, None))
            .await
            .map(direct),
        Route::Resolved(resolved) if pin => {
            Box::pin(conn.pinned.send(&proxy.dialer, req, Some(resolved)))
                .await
                .map(direct)
        }
        Route::Resolved(resolved) => Box::pin(send_once(&proxy.dialer, resolved, req))
            .await
            .map(direct),
        Route::Pooled => proxy
            .client
            .request(req)
            .await
            .map(|response| {
                let peer = response
                    .extensions()
                    .get::<HttpInfo>()
                    .map(|info| info.remote_addr().ip());
                (response, Hop::direct(peer))
            })
            .map_err(|e| classify_error(&e)),
        Route::Session(session) => Box::pin(session.send(req)).await.map(|r| (r, session.hop)),
        Route::Parents(way) => {
            if let Some(host) = req.uri().host() {
                proxy
                    .dialer
                    .check_literal(&portcullis_policy::Host::new(host))?;
            }
            if pin {
                Box::pin(conn.pinned.send_via(&proxy.parents, way, req)).await
            } else {
                Box::pin(proxy.parents.send(way, req)).await
            }
        }
    }
}

/// What a `101 Switching Protocols` needs from its request.
struct Switch {
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    offer: Option<HeaderValue>,
    hop: Hop,
}

/// An origin's `101`: accepted only for an upgrade the request offered, to that protocol;
/// then both connections are relayed as bytes.
fn switch_protocols(
    proxy: &Arc<Proxy>,
    conn: &Arc<ConnCtx>,
    txn: Txn,
    in_flight: InFlight,
    mut response: Response<Incoming>,
    switch: Switch,
) -> Response<ProxyBody> {
    let (Some(client_upgrade), Some(offer)) = (switch.client_upgrade, switch.offer) else {
        let err = ProxyError::UpstreamProtocol(
            "101 Switching Protocols without an Upgrade request".into(),
        );
        return txn.fail(proxy, in_flight, err);
    };
    if !upgrade::switched_to_offered(response.headers(), &offer) {
        let err = ProxyError::UpstreamProtocol(
            "101 Switching Protocols to a protocol the request did not offer".into(),
        );
        return txn.fail(proxy, in_flight, err);
    }
    let upstream_upgrade = hyper::upgrade::on(&mut response);
    let (mut parts, _) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, true);
    proxy.via.append(&mut parts.headers, parts.version);
    spawn_upgraded_relay(
        proxy,
        conn,
        txn,
        switch.hop,
        client_upgrade,
        upstream_upgrade,
    );
    Txn::respond_unlogged(in_flight, Response::from_parts(parts, body::empty()))
}

fn spawn_upgraded_relay(
    proxy: &Arc<Proxy>,
    conn: &Arc<ConnCtx>,
    txn: Txn,
    hop: Hop,
    client_upgrade: hyper::upgrade::OnUpgrade,
    upstream_upgrade: hyper::upgrade::OnUpgrade,
) {
    let idle = proxy.tunnel_idle(txn.long_poll());
    let log = proxy.access_log.clone();
    let conn = Arc::clone(conn);
    proxy.tasks.spawn(async move {
        let (client, upstream) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "protocol upgrade failed");
                return;
            }
        };
        let stats = relay(TokioIo::new(client), TokioIo::new(upstream), idle).await;
        tracing::debug!(?stats, "upgraded connection ended");
        let mut record = txn.record(Outcome::via(hop), 101, stats.to_client, None);
        record.bytes_in = stats.from_client;
        log.log(record);
        drop(conn);
    });
}
