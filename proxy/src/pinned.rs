//! Connection-oriented origin authentication on plain HTTP (Squid's "connection-auth").
//!
//! NTLM, and Negotiate as Exchange and IIS use it, authenticate a *TCP connection*, not a
//! request: the three legs of NTLM must reach the same origin connection, and everything after
//! them is only authorised on that connection. Once a client sends `Authorization: NTLM …` or
//! `Negotiate …` to an origin, its client connection gets a private origin connection for that
//! origin for the rest of its life, outside the shared pool, so no other client can ever be
//! served on an authenticated origin connection either. Intercepted tunnels need nothing of
//! this: each already has its own origin connection ([`crate::intercept::session`]).

use std::net::IpAddr;

use std::sync::atomic::{AtomicBool, Ordering};

use http::header::{AUTHORIZATION, PROXY_AUTHORIZATION};
use http::{HeaderMap, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::sync::Mutex;

use crate::error::classify_error;
use portcullis_policy::Host;

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::parents::{Hop, Parents, PrivateParent};
use crate::upstream::{Dialer, Resolution};
use portcullis_policy::Route;

/// The private origin connection of one client connection, if it has one.
#[derive(Default)]
pub(crate) struct PinnedOrigin {
    slot: Mutex<Option<Pin>>,
    /// Set once the slot is first filled, so that the connections that never pin (nearly all)
    /// skip the lock and the key on every request.
    used: AtomicBool,
}

struct Pin {
    /// `host:port` of the origin.
    authority: String,
    sender: http1::SendRequest<ProxyBody>,
    peer: Option<IpAddr>,
    /// Set when the connection goes to a parent proxy: where it went, and the credentials
    /// each request must carry to it.
    parent: Option<(Hop, PrivateParent)>,
}

/// Whether the request carries connection-oriented origin credentials.
pub(crate) fn starts_connection_auth(headers: &HeaderMap) -> bool {
    headers.get_all(AUTHORIZATION).iter().any(|v| {
        let v = v.as_bytes();
        let scheme = v.split(|&b| b == b' ').next().unwrap_or_default();
        scheme.eq_ignore_ascii_case(b"NTLM") || scheme.eq_ignore_ascii_case(b"Negotiate")
    })
}

impl PinnedOrigin {
    /// Whether requests to `authority` go through this connection's pinned origin connection.
    pub(crate) async fn is_pinned_to(&self, authority: &http::uri::Authority) -> bool {
        if !self.used.load(Ordering::Acquire) {
            return false;
        }
        let authority = authority_key(authority);
        self.slot
            .lock()
            .await
            .as_ref()
            .is_some_and(|p| p.authority == authority)
    }

    /// Sends `req` (absolute-form, `Host` set) over the pinned connection to its origin,
    /// opening it first if there is none for this origin (or the old one closed: the client's
    /// next NTLM handshake then starts on the new one, as it would with a direct connection).
    /// `resolved`: the addresses a new connection must go to (the request was decided on them).
    pub(crate) async fn send(
        &self,
        dialer: &Dialer,
        mut req: Request<ProxyBody>,
        resolved: Option<&Resolution>,
    ) -> Result<(Response<Incoming>, Option<IpAddr>), ProxyError> {
        let (host, port) = to_origin_form(&mut req)?;
        let authority = format!("{host}:{port}");
        self.used.store(true, Ordering::Release);
        let mut slot = self.slot.lock().await;
        let reusable = match slot.as_mut() {
            Some(pin) if pin.authority == authority && pin.parent.is_none() => {
                pin.sender.ready().await.is_ok()
            }
            _ => false,
        };
        if !reusable {
            let (sender, peer) = open(dialer, &host, port, resolved).await?;
            tracing::debug!(%authority, "client connection pinned to its own origin connection (connection-oriented origin auth)");
            *slot = Some(Pin {
                authority,
                sender,
                peer,
                parent: None,
            });
        }
        let Some(pin) = slot.as_mut() else {
            return Err(ProxyError::Upstream("no pinned connection".into()));
        };
        let peer = pin.peer;
        let response = pin
            .sender
            .send_request(req)
            .await
            .map_err(|e| classify_error(&e))?;
        Ok((response, peer))
    }
}

impl PinnedOrigin {
    /// As [`PinnedOrigin::send`], through the first parent of `route` that can be reached: the
    /// request stays in absolute-form and carries the parent's credentials. The parent pins its
    /// origin connection to ours, so ours is this client connection's alone.
    pub(crate) async fn send_via(
        &self,
        parents: &Parents,
        route: &Route,
        mut req: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, Hop), ProxyError> {
        let authority = req
            .uri()
            .authority()
            .map(authority_key)
            .ok_or_else(|| ProxyError::BadRequest("request target has no host".into()))?;
        self.used.store(true, Ordering::Release);
        let mut slot = self.slot.lock().await;
        let reusable = match slot.as_mut() {
            Some(pin) if pin.authority == authority && pin.parent.is_some() => {
                pin.sender.ready().await.is_ok()
            }
            _ => false,
        };
        if !reusable {
            let conn = parents.connect_plain(route).await?;
            let sender = handshake(conn.stream).await?;
            tracing::debug!(%authority, "client connection pinned to its own parent connection (connection-oriented origin auth)");
            *slot = Some(Pin {
                authority,
                sender,
                peer: conn.hop.peer,
                parent: Some((conn.hop, conn.parent)),
            });
        }
        let Some(pin) = slot.as_mut() else {
            return Err(ProxyError::Upstream("no pinned connection".into()));
        };
        let Some((hop, parent)) = pin.parent.clone() else {
            return Err(ProxyError::Upstream("no pinned parent connection".into()));
        };
        match parent.credentials.header(&parent.name).await? {
            Some(value) => req.headers_mut().insert(PROXY_AUTHORIZATION, value),
            None => req.headers_mut().remove(PROXY_AUTHORIZATION),
        };
        let response = pin
            .sender
            .send_request(req)
            .await
            .map_err(|e| classify_error(&e))?;
        if response.status() == http::StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            return Err(ProxyError::ParentAuth {
                parent: parent.name.to_string(),
            });
        }
        Ok((response, hop))
    }
}

/// The origin an absolute-form request names; the request is left in origin-form, as it goes
/// on the wire to any origin.
fn to_origin_form(req: &mut Request<ProxyBody>) -> Result<(Host, u16), ProxyError> {
    let uri = req.uri();
    let host = uri
        .host()
        .map(Host::new)
        .ok_or_else(|| ProxyError::BadRequest("request target has no host".into()))?;
    let port = uri.port_u16().unwrap_or(80);
    let path = uri
        .path_and_query()
        .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
    *req.uri_mut() = path;
    Ok((host, port))
}

/// A new HTTP/1.1 connection to `host:port` (at `resolved`, if given), driven in the
/// background, upgrades allowed.
async fn open(
    dialer: &Dialer,
    host: &Host,
    port: u16,
    resolved: Option<&Resolution>,
) -> Result<(http1::SendRequest<ProxyBody>, Option<IpAddr>), ProxyError> {
    let tcp = match resolved {
        Some(resolved) => dialer.dial_resolved(host, port, resolved).await?,
        None => dialer.dial(host, port).await?,
    };
    let peer = tcp.peer_addr().ok().map(|a| a.ip());
    Ok((handshake(tcp).await?, peer))
}

/// HTTP/1.1 over `tcp`, driven in the background, upgrades allowed.
async fn handshake(
    tcp: tokio::net::TcpStream,
) -> Result<http1::SendRequest<ProxyBody>, ProxyError> {
    let (sender, conn) = http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| classify_error(&e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "private origin connection ended with an error");
        }
    });
    Ok(sender)
}

/// Sends `req` (absolute-form, `Host` set) over a connection of its own to the addresses it
/// was decided on; the connection closes when the exchange is over.
pub(crate) async fn send_once(
    dialer: &Dialer,
    resolved: &Resolution,
    mut req: Request<ProxyBody>,
) -> Result<(Response<Incoming>, Option<IpAddr>), ProxyError> {
    let (host, port) = to_origin_form(&mut req)?;
    let (mut sender, peer) = open(dialer, &host, port, Some(resolved)).await?;
    let response = sender
        .send_request(req)
        .await
        .map_err(|e| classify_error(&e))?;
    Ok((response, peer))
}

/// `host:port` as origins are keyed here.
fn authority_key(a: &http::uri::Authority) -> String {
    format!("{}:{}", Host::new(a.host()), a.port_u16().unwrap_or(80))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntlm_and_negotiate_pin_basic_does_not() {
        let h = |v: &'static str| {
            let mut m = HeaderMap::new();
            m.insert(AUTHORIZATION, http::HeaderValue::from_static(v));
            m
        };
        assert!(starts_connection_auth(&h("NTLM TlRMTVNTUAABAAAA")));
        assert!(starts_connection_auth(&h("negotiate YIIG")));
        assert!(!starts_connection_auth(&h("Basic YWxpY2U6cHc=")));
        assert!(!starts_connection_auth(&h("Bearer eyJ")));
        assert!(!starts_connection_auth(&HeaderMap::new()));
    }
}
