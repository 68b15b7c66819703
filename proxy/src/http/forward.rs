//! Forwarding absolute-form requests (`GET http://host/path HTTP/1.1`) to origins through the
//! pooled client, streaming bodies both ways, and switching protocols (WebSocket) when the
//! origin agrees.

use std::error::Error as _;
use std::sync::Arc;

use http::header::{HeaderValue, EXPECT, HOST};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpInfo;
use hyper_util::rt::TokioIo;

use super::headers::{
    append_via, apply_forwarded_for, strip_hop_by_hop, via_names_us, wants_upgrade, Target,
};
use super::{Outcome, Txn};
use crate::activity::InFlight;
use crate::body::{self, ProxyBody};
use crate::error::ProxyError;
use crate::server::{ConnCtx, Proxy};
use crate::tunnel::relay;

pub(super) async fn handle(
    proxy: &Arc<Proxy>,
    conn: &Arc<ConnCtx>,
    txn: Txn,
    in_flight: InFlight,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let upgrade = wants_upgrade(req.headers());
    if let Err(e) = prepare(proxy, conn, &mut req, upgrade) {
        return txn.fail(proxy, in_flight, e);
    }
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let timeout = proxy.config.timeouts.upstream_response;
    let mut response = match tokio::time::timeout(timeout, proxy.client.request(req)).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => return txn.fail(proxy, in_flight, classify(&e)),
        Err(_) => return txn.fail(proxy, in_flight, ProxyError::ResponseTimeout(timeout)),
    };
    let peer = response
        .extensions()
        .get::<HttpInfo>()
        .map(|info| info.remote_addr().ip());
    let pseudonym = &proxy.config.server.via_pseudonym;

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            let err = ProxyError::UpstreamProtocol(
                "101 Switching Protocols without an Upgrade request".into(),
            );
            return txn.fail(proxy, in_flight, err);
        };
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let (mut parts, _) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers, true);
        append_via(&mut parts.headers, parts.version, pseudonym);
        spawn_upgraded_relay(proxy, conn, txn, peer, client_upgrade, upstream_upgrade);
        return Txn::respond_unlogged(in_flight, Response::from_parts(parts, body::empty()));
    }

    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    append_via(&mut parts.headers, parts.version, pseudonym);
    // hyper re-frames the body for the client's HTTP version.
    parts.version = Version::HTTP_11;
    txn.respond(
        proxy,
        in_flight,
        Response::from_parts(parts, body::incoming(body)),
        Outcome::direct(peer),
    )
}

/// Rewrites the client's request into the one sent upstream.
fn prepare(
    proxy: &Proxy,
    conn: &ConnCtx,
    req: &mut Request<Incoming>,
    upgrade: bool,
) -> Result<(), ProxyError> {
    let server = &proxy.config.server;
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
    if via_names_us(req.headers(), &server.via_pseudonym) {
        return Err(ProxyError::Loop(
            "the request already passed through this proxy".into(),
        ));
    }
    // The pool and connector key on scheme + authority; the wire gets origin-form.
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let upstream_uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(target.authority())
        .path_and_query(path)
        .build()
        .map_err(|e| ProxyError::BadRequest(format!("invalid request target: {e}")))?;
    let received = req.version();
    *req.uri_mut() = upstream_uri;
    *req.version_mut() = Version::HTTP_11;

    let headers = req.headers_mut();
    strip_hop_by_hop(headers, upgrade);
    // RFC 9112 §3.2.2: with an absolute-form target the Host header is replaced by its authority.
    let host = HeaderValue::from_str(&target.host_header(80))
        .map_err(|_| ProxyError::BadRequest("invalid host".into()))?;
    headers.insert(HOST, host);
    // 100-continue was answered on the client hop when the body was first read.
    headers.remove(EXPECT);
    append_via(headers, received, &server.via_pseudonym);
    apply_forwarded_for(headers, server.x_forwarded_for, conn.client.ip());
    Ok(())
}

fn spawn_upgraded_relay(
    proxy: &Arc<Proxy>,
    conn: &Arc<ConnCtx>,
    txn: Txn,
    peer: Option<std::net::IpAddr>,
    client_upgrade: hyper::upgrade::OnUpgrade,
    upstream_upgrade: hyper::upgrade::OnUpgrade,
) {
    let idle = proxy.config.timeouts.tunnel_idle;
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
        let mut record = txn.record(Outcome::direct(peer), 101, stats.to_client, None);
        record.bytes_in = stats.from_client;
        log.log(&record);
        drop(conn);
    });
}

/// Maps a client error to what the user is told.
fn classify(err: &hyper_util::client::legacy::Error) -> ProxyError {
    let mut source = err.source();
    while let Some(s) = source {
        if let Some(e) = s.downcast_ref::<ProxyError>() {
            return e.clone();
        }
        if let Some(e) = s.downcast_ref::<hyper::Error>() {
            if e.is_incomplete_message() {
                return ProxyError::UpstreamClosed;
            }
            if e.is_parse() || e.is_parse_status() {
                return ProxyError::UpstreamProtocol(e.to_string());
            }
            if e.is_user() {
                return ProxyError::ClientBody(e.to_string());
            }
        }
        if let Some(e) = s.downcast_ref::<std::io::Error>() {
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ) {
                return ProxyError::UpstreamReset;
            }
        }
        source = s.source();
    }
    ProxyError::Upstream(err.to_string())
}
