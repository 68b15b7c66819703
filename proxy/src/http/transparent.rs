//! Requests on a transparent HTTP listener (redirected port 80), and the two rules every
//! transparent connection follows (the TLS listener's are in `inspect/transparent.rs`):
//!
//! - **The original destination is where the connection goes.** The name the client gave
//!   (`Host`, or the SNI) is used for decisions only when the proxy's own resolver maps it to
//!   that address ([`names_destination`]); otherwise the transaction is decided on the address
//!   alone, so a forged name earns no name-based tunnel, exemption or allowance. Either way the
//!   proxy connects to the original destination and nowhere else (Squid's
//!   `host_verify_strict off`, without its trust in the name).
//! - **No credentials can be asked for** ([`auth_refusal`]): with proxy authentication on, only
//!   `auth.exempt_clients`, destinations the policy exempts, or `server.transparent_auth =
//!   "exempt"` pass; anything else is refused with a page that says why.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use portcullis_policy::{AuthRequirement, Decision, Host, RequestFacts};

use super::{forward, linger, Txn};
use crate::body::ProxyBody;
use crate::config::TransparentAuth;
use crate::context::{ConnCtx, Proxy};
use crate::error::ProxyError;

/// Whether `name` (a Host header's or an SNI's) resolves, through the proxy's own resolver, to
/// `dst`'s address: only then may decisions use it.
pub(crate) async fn names_destination(proxy: &Proxy, name: &str, dst: SocketAddr) -> bool {
    let host = Host::new(name);
    if let Some(ip) = host.ip() {
        return ip == dst.ip();
    }
    match proxy.dialer.resolve(&host, dst.port()).await {
        Ok(addrs) => addrs.iter().any(|a| a.ip().to_canonical() == dst.ip()),
        Err(e) => {
            tracing::debug!(%host, error = %e, "cannot resolve the name a transparent client gave");
            false
        }
    }
}

/// Why a transparent transaction the policy allows is still refused: proxy authentication is
/// on and neither the client, the destination nor `server.transparent_auth` exempts it.
pub(crate) fn auth_refusal(
    proxy: &Proxy,
    conn: &ConnCtx,
    decision: &Decision,
) -> Option<ProxyError> {
    let auth = proxy.auth.as_ref()?;
    let passes = decision.auth == AuthRequirement::Exempt
        || auth.is_exempt_client(conn.client.ip())
        || proxy.config.server.transparent_auth == TransparentAuth::Exempt;
    (!passes).then_some(ProxyError::TransparentAuth)
}

/// One origin-form request redirected from `dst`: made absolute from its `Host`, decided, and
/// forwarded to `dst` itself.
pub(super) async fn handle(
    proxy: Arc<Proxy>,
    conn: Arc<ConnCtx>,
    mut req: Request<Incoming>,
    dst: SocketAddr,
) -> Response<ProxyBody> {
    let in_flight = conn.activity.begin_request();
    let mut txn = Txn::new(&conn, &req);
    if let Err(e) = crate::headers::check_transfer_coding(req.headers()) {
        return super::refuse_framing(&proxy, txn, in_flight, e);
    }
    if req.method() == http::Method::CONNECT {
        let err = ProxyError::BadRequest(
            "CONNECT on a transparent listener: set this device's proxy to the proxy's address instead".into(),
        );
        return txn.fail(&proxy, in_flight, err);
    }
    let claimed = claimed_host(&req);
    let verified = match &claimed {
        Some(name) => names_destination(&proxy, name, dst).await,
        None => false,
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    // The client's name stays in the URL (and so in `Host` upstream: virtual hosts need it);
    // the port, and the address connected to, are the original destination's.
    let uri = claimed
        .as_deref()
        .and_then(|name| absolute(&Host::new(name).to_uri_host(), dst.port(), &path))
        .or_else(|| {
            absolute(
                &Host::new(&dst.ip().to_string()).to_uri_host(),
                dst.port(),
                &path,
            )
        });
    let Some(uri) = uri else {
        let err = ProxyError::BadRequest(format!("invalid request target {path:?}"));
        return txn.fail(&proxy, in_flight, err);
    };
    txn.set_url(uri.to_string());
    *req.uri_mut() = uri;
    let decision = decide(
        &proxy,
        &conn,
        &req,
        verified.then_some(claimed).flatten(),
        dst,
        &path,
    );
    txn.decided(&decision);
    let refusal = ProxyError::denial(&decision).or_else(|| auth_refusal(&proxy, &conn, &decision));
    if let Some(err) = refusal {
        let response = txn.fail(&proxy, in_flight, err);
        let (head, body) = req.into_parts();
        linger::discard_body(&proxy, &conn, &head.headers, body);
        return response;
    }
    // Always to the original destination: transparent requests are not routed to parents.
    let way = (Some(Ok(vec![dst])), portcullis_policy::Route::Direct);
    forward::handle(&proxy, &conn, txn, in_flight, req, way).await
}

/// The host part of what the client named: the `Host` header, or an absolute-form target's.
fn claimed_host(req: &Request<Incoming>) -> Option<String> {
    let authority = match req.uri().authority() {
        Some(a) => a.as_str().to_owned(),
        None => req
            .headers()
            .get(http::header::HOST)?
            .to_str()
            .ok()?
            .to_owned(),
    };
    let authority: http::uri::Authority = authority.parse().ok()?;
    Some(authority.host().to_owned()).filter(|h| !h.is_empty())
}

fn absolute(host: &str, port: u16, path: &str) -> Option<Uri> {
    let text = if port == 80 {
        format!("http://{host}{path}")
    } else {
        format!("http://{host}:{port}{path}")
    };
    text.parse().ok()
}

/// The request decided as a proxied one would be, on facts that hold for `dst`: the verified
/// name (else the address), `dest_ip` and the resolved addresses both `dst`'s.
fn decide(
    proxy: &Proxy,
    conn: &ConnCtx,
    req: &Request<Incoming>,
    verified: Option<String>,
    dst: SocketAddr,
    path: &str,
) -> Decision {
    let ip: [IpAddr; 1] = [dst.ip()];
    let by_address = Host::new(&dst.ip().to_string());
    let host = verified.as_deref().unwrap_or(by_address.as_str());
    let mut facts = RequestFacts::new(
        req.method().as_str(),
        host,
        dst.port(),
        path,
        conn.client.ip(),
    )
    .with_user_agent(crate::headers::user_agent(req.headers()))
    .with_resolved(Some(&ip));
    facts.dest_ip = Some(dst.ip());
    let decision = proxy.policy.decide_request(&facts);
    tracing::debug!(%host, %dst, decision = %decision, "transparent HTTP decision");
    decision
}
