//! The request pipeline. Every request a client connection parses enters [`handle`]:
//!
//! route → decide → authenticate → forward | tunnel | inspect → log
//!
//! - route: origin-form requests are for the proxy itself (`local.rs`); `CONNECT` goes to
//!   `connect.rs`; absolute-form to `forward.rs`;
//! - decide: the policy (`portcullis_policy`) on the target, before credentials are asked for;
//! - authenticate: `crate::auth`, unless the decision exempts the destination;
//! - a CONNECT to inspect continues in `inspect.rs` after its `200`, which serves the decrypted
//!   requests through `forward.rs` again;
//! - every path ends in [`Txn::respond`] / [`Txn::fail`] (`txn.rs`), which logs it once.

mod adapt;
mod connect;
mod forward;
mod inspect;
mod linger;
mod local;
mod max_forwards;
mod pages;
pub(crate) mod target;
mod transparent;
mod txn;
pub(crate) mod upgrade;

pub(crate) use inspect::serve_transparent as serve_transparent_tls;
pub(crate) use txn::{Outcome, Txn};

use std::net::IpAddr;
use std::sync::Arc;

use http::header::PROXY_AUTHENTICATE;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use portcullis_policy::{Action, AuthRequirement, ConnectFacts, Decision, Identity};

use crate::activity::InFlight;
use crate::auth::{Auth, Outcome as AuthOutcome};
use crate::body::ProxyBody;
use crate::context::{ConnCtx, Proxy};
use crate::error::ProxyError;
use crate::record::ResultCode;
use crate::upstream::Resolution;

/// Entry point for every request hyper parses on a client connection.
pub(crate) async fn handle(
    proxy: Arc<Proxy>,
    conn: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    if let Some(dst) = conn.original_dst {
        // A transparent HTTP listener: origin-form requests for the original destination.
        return Box::pin(transparent::handle(proxy, conn, req, dst.addr)).await;
    }
    let in_flight = conn.activity.begin_request();
    let mut txn = Txn::new(&conn, &req);
    if let Err(e) = crate::headers::check_transfer_coding(req.headers()) {
        return refuse_framing(&proxy, txn, in_flight, e);
    }
    let is_connect = req.method() == http::Method::CONNECT;
    if !is_connect && req.uri().scheme().is_none() {
        // Requests for the proxy's own pages need no credentials.
        return local::handle(&proxy, &conn, txn, in_flight, req);
    }
    // A target the decision cannot be made for is malformed: the handlers below answer 400.
    let Judged {
        mut decision,
        resolution,
        resolved,
    } = judge_target(&proxy, &conn, &req, is_connect).await;
    // A refusal that no user could change is answered before asking for credentials.
    let final_denial = decision
        .as_ref()
        .is_some_and(|d| matches!(d.action, Action::Deny { .. }))
        && !proxy.policy.uses_identity();
    let mut auth_reply = None;
    if let Some(auth) = proxy.auth.as_ref().filter(|_| !final_denial) {
        let exempt = decision
            .as_ref()
            .is_some_and(|d| d.auth == AuthRequirement::Exempt);
        match authenticate(auth, &conn, exempt, &req).await {
            Authenticated::Exempt => {}
            Authenticated::User { name, reply } => {
                txn.set_user(name);
                auth_reply = reply;
            }
            Authenticated::Challenge(challenge) => {
                return Box::pin(answer_challenge(
                    &proxy, &conn, txn, in_flight, req, challenge,
                ))
                .await;
            }
        }
        if let (Some(user), Some(groups)) = (txn.user(), &proxy.groups) {
            // Resolved for the authenticated user only; a cached answer never waits.
            let resolved_groups = groups.resolve(user, &proxy.metrics).await;
            txn.set_groups(resolved_groups);
        }
        if txn.user().is_some() && proxy.policy.uses_identity() {
            // `user` / `group` rules can only be evaluated now; the exemption stays as it was.
            let identity = txn.identity();
            if let Some(with_user) = decide(&proxy, &conn, &req, identity, resolved.as_deref()) {
                decision = Some(with_user);
            }
        }
    }
    if let Some(decision) = &decision {
        txn.decided(decision);
        if let Some(err) = ProxyError::denial(decision) {
            let response = txn.fail(&proxy, in_flight, err);
            let (head, body) = req.into_parts();
            linger::discard_body(&proxy, &conn, &head.headers, body);
            return response;
        }
    }
    // The rarer paths (transparent, 407, CONNECT, ICAP) are boxed: inline, each would make
    // every request's future as large as its own (23.6 KiB in all, 6.8 KiB without them;
    // release build), and hyper moves that future by value once per request.
    let mut response = if is_connect {
        Box::pin(connect::handle(
            &proxy, &conn, txn, in_flight, req, decision, resolution,
        ))
        .await
    } else {
        let route = decision.map_or(portcullis_policy::Route::Direct, |d| d.route);
        forward::handle(&proxy, &conn, txn, in_flight, req, (resolution, route)).await
    };
    if let Some(reply) = auth_reply {
        // Negotiate mutual authentication: the client verifies the proxy with this token.
        response.headers_mut().insert(PROXY_AUTHENTICATE, reply);
    }
    response
}

/// Answers a request whose body framing is ambiguous with 400 and closes its connection,
/// before the body is read: nothing after it on the connection can be trusted to start where
/// the proxy thinks it does.
pub(crate) fn refuse_framing(
    proxy: &Proxy,
    txn: Txn,
    in_flight: crate::activity::InFlight,
    err: ProxyError,
) -> Response<ProxyBody> {
    let mut response = txn.fail(proxy, in_flight, err);
    response
        .headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    response
}

enum Authenticated {
    Exempt,
    User {
        name: String,
        /// Negotiate's mutual-authentication token for the response.
        reply: Option<HeaderValue>,
    },
    Challenge(Challenge),
}

/// The 407 page (with every scheme's challenge), its cause, and how long to hold it.
struct Challenge {
    page: Response<ProxyBody>,
    cause: &'static str,
    delay: std::time::Duration,
}

/// Answers 407. The answer is committed (its log line is written when it is sent, or when it
/// is dropped) before a throttled client is held back, so one that leaves during the delay is
/// still logged; a body still arriving is drained so the client can read the answer.
async fn answer_challenge(
    proxy: &Arc<Proxy>,
    conn: &Arc<ConnCtx>,
    txn: Txn,
    in_flight: InFlight,
    req: Request<Incoming>,
    challenge: Challenge,
) -> Response<ProxyBody> {
    let outcome = Outcome {
        result: ResultCode::TcpDenied,
        error: Some(challenge.cause),
        ..Outcome::LOCAL
    };
    let response = txn.respond(proxy, in_flight, challenge.page, outcome);
    let (head, body) = req.into_parts();
    linger::discard_body(proxy, conn, &head.headers, body);
    if !challenge.delay.is_zero() {
        tokio::time::sleep(challenge.delay).await;
    }
    response
}

/// The first decision on a request's target, and what it was decided on.
struct Judged {
    decision: Option<Decision>,
    /// The target's addresses, when the decision depended on them: dialled exactly as judged.
    resolution: Option<Resolution>,
    resolved: Option<Vec<IpAddr>>,
}

/// Decides on the target; when the decision depends on the target's addresses (whether an
/// `autodiscover.*` name is Microsoft's), resolves it now, before credentials are asked for,
/// and decides again on them.
async fn judge_target(
    proxy: &Proxy,
    conn: &ConnCtx,
    req: &Request<Incoming>,
    is_connect: bool,
) -> Judged {
    let mut decision = decide(proxy, conn, req, None, None);
    let resolution = match &decision {
        Some(d) if d.needs_resolution => resolve_target(proxy, req, is_connect).await,
        _ => None,
    };
    let resolved: Option<Vec<IpAddr>> = resolution.as_ref().map(|r| match r {
        Ok(addrs) => addrs.iter().map(|a| a.ip()).collect(),
        Err(_) => Vec::new(),
    });
    if let Some(ips) = &resolved {
        if let Some(with_addresses) = decide(proxy, conn, req, None, Some(ips)) {
            tracing::debug!(?ips, decision = %with_addresses, "decided again on the resolved addresses");
            decision = Some(with_addresses);
        }
    }
    Judged {
        decision,
        resolution,
        resolved,
    }
}

async fn authenticate(
    auth: &Auth,
    conn: &ConnCtx,
    exempt: bool,
    req: &Request<Incoming>,
) -> Authenticated {
    // Boxed: the authentication future is large (Negotiate's GSSAPI step) and would otherwise
    // be part of every request's future, which hyper moves by value.
    let outcome = Box::pin(auth.authenticate(&conn.auth, conn.client.ip(), exempt, req.headers()));
    match outcome.await {
        AuthOutcome::Exempt => Authenticated::Exempt,
        AuthOutcome::Authenticated { user, reply } => Authenticated::User {
            name: String::from(&*user),
            reply,
        },
        AuthOutcome::Challenge {
            cause,
            negotiate_token,
            delay,
        } => {
            let mut page = pages::auth_required(cause);
            for challenge in auth.challenges(negotiate_token.as_ref()) {
                page.headers_mut().append(PROXY_AUTHENTICATE, challenge);
            }
            Authenticated::Challenge(Challenge { page, cause, delay })
        }
    }
}

/// The facts of a CONNECT to `target`: at the CONNECT itself (`sni` unknown), and again once
/// the ClientHello named `sni`. One function for both decision points, so they cannot disagree
/// about the destination: `host` conditions see the CONNECT target — or, for a bare-IP target,
/// the SNI name — and `dest_ip` is always the target's own address, in `Host`'s one spelling.
pub(crate) fn connect_facts<'a>(
    target: &'a target::Target,
    sni: Option<&'a str>,
    client: std::net::IpAddr,
) -> ConnectFacts<'a> {
    let mut facts = ConnectFacts::new(judged_host(target, sni), target.port, client).with_sni(sni);
    facts.dest_ip = target.ip();
    facts
}

/// The target's addresses, for a decision that depends on them; `None` when the target is
/// malformed (the handler refuses it with 400 without any lookup).
async fn resolve_target(
    proxy: &Proxy,
    req: &Request<Incoming>,
    is_connect: bool,
) -> Option<Resolution> {
    let authority = req.uri().authority()?;
    let default_port = if is_connect { None } else { Some(80) };
    let target = target::Target::parse(authority.as_str(), default_port).ok()?;
    Some(proxy.dialer.resolve(&target.host, target.port).await)
}

/// The host a CONNECT is judged by: its target — or, for a bare-IP target, the SNI name once
/// the ClientHello gave one.
pub(crate) fn judged_host<'a>(target: &'a target::Target, sni: Option<&'a str>) -> &'a str {
    match (target.ip(), sni) {
        (Some(_), Some(sni)) => sni,
        _ => target.host.as_str(),
    }
}

/// The policy's decision for a CONNECT or an absolute-form request; `None` when the target
/// has no host (the handler refuses it with 400). `resolved`: the target's addresses, when the
/// first decision asked for them.
fn decide(
    proxy: &Proxy,
    conn: &ConnCtx,
    req: &Request<Incoming>,
    identity: Option<Identity<'_>>,
    resolved: Option<&[IpAddr]>,
) -> Option<Decision> {
    let uri = req.uri();
    let host = uri.host().filter(|h| !h.is_empty())?;
    let user_agent = crate::headers::user_agent(req.headers());
    let client = conn.client.ip();
    let decision = if req.method() == http::Method::CONNECT {
        // The target exactly as the tunnel will see it (a malformed one is refused later).
        let target = target::Target::parse(uri.authority()?.as_str(), None).ok()?;
        let facts = connect_facts(&target, None, client)
            .with_user_agent(user_agent)
            .with_user(identity)
            .with_resolved(resolved);
        proxy.policy.decide_connect(&facts)
    } else {
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let port = uri.port_u16().unwrap_or(80);
        let facts =
            portcullis_policy::RequestFacts::new(req.method().as_str(), host, port, path, client)
                .with_user_agent(user_agent)
                .with_user(identity)
                .with_resolved(resolved);
        proxy.policy.decide_request(&facts)
    };
    tracing::debug!(decision = %decision, "policy decision");
    Some(decision)
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::target::Target;
    use super::*;

    /// A `dest_ip` rule sees the same address at the CONNECT and at the SNI re-decision,
    /// whatever spelling the client used for the target.
    #[test]
    fn connect_and_sni_decisions_agree_on_dest_ip() {
        let raw: portcullis_policy::RawPolicy = toml::from_str(
            "[[rules]]\nname = \"lab-net\"\ndest_ip = [\"203.0.113.0/24\"]\naction = \"deny\"\nreason = \"no\"\n",
        )
        .unwrap();
        let policy = portcullis_policy::Policy::compile(&raw).unwrap();
        let client = "10.0.0.1".parse().unwrap();
        let want: std::net::IpAddr = "203.0.113.9".parse().unwrap();
        for spelling in [
            "[::ffff:203.0.113.9]:443",
            "[::FFFF:cb00:7109]:443",
            "203.0.113.9:443",
        ] {
            let target = Target::parse(spelling, None).unwrap();
            let at_connect = connect_facts(&target, None, client);
            let at_sni = connect_facts(&target, Some("www.example.com"), client);
            assert_eq!(at_connect.dest_ip, Some(want), "{spelling}");
            assert_eq!(at_sni.dest_ip, Some(want), "{spelling}");
            // The bare-IP target is judged by its SNI name at the second decision.
            assert_eq!(at_sni.host, "www.example.com");
            let first = policy.decide_connect(&at_connect);
            let second = policy.decide_connect(&at_sni);
            assert!(
                matches!(first.action, Action::Deny { .. }),
                "{spelling}: {first}"
            );
            assert_eq!(first.action, second.action, "{spelling}");
            assert_eq!(&*first.rule.name, "lab-net");
        }
    }
}
