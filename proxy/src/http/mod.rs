//! The request pipeline: every request from a client enters [`handle`], which picks one of
//! three paths — forward (absolute-form), connect (CONNECT tunnel) or local (a request for the
//! proxy itself) — and makes sure each transaction is logged exactly once.

pub mod connect;
pub mod forward;
pub mod headers;
mod local;
pub mod pages;
pub mod pinned;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::{CONTENT_TYPE, PROXY_AUTHENTICATE};
use http::{Request, Response};
use hyper::body::Incoming;
use portcullis_policy::{Action, AuthRequirement, Decision, TimeoutProfile};

use crate::access_log::{PolicyNote, Record};
use crate::activity::InFlight;
use crate::auth::Outcome as AuthOutcome;
use crate::body::{CountedBody, OnBodyDone, ProxyBody};
use crate::error::ProxyError;
use crate::server::{ConnCtx, Proxy};

/// Entry point for every request hyper parses on a client connection:
/// route → authenticate → forward | tunnel.
pub async fn handle(
    proxy: Arc<Proxy>,
    conn: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let in_flight = conn.activity.begin_request();
    let mut txn = Txn::new(&conn, &req);
    let is_connect = req.method() == http::Method::CONNECT;
    if !is_connect && req.uri().scheme().is_none() {
        // Requests for the proxy's own pages need no credentials.
        return local::handle(&proxy, &conn, txn, in_flight, req);
    }
    // A target the decision cannot be made for is malformed: the handlers below answer 400.
    let mut decision = decide(&proxy, &conn, &req, None);
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
        // Boxed: the authentication future is large (Negotiate's GSSAPI step) and would
        // otherwise be part of every request's future, which hyper moves by value.
        let authenticated =
            Box::pin(auth.authenticate(&conn.auth, conn.client.ip(), exempt, req.headers()));
        match authenticated.await {
            AuthOutcome::Exempt => {}
            AuthOutcome::Authenticated { user, reply } => {
                txn.user = Some(user.to_string());
                auth_reply = reply;
            }
            AuthOutcome::Challenge {
                cause,
                negotiate_token,
            } => {
                let mut page = pages::auth_required(cause);
                for challenge in auth.challenges(negotiate_token.as_deref()) {
                    page.headers_mut().append(PROXY_AUTHENTICATE, challenge);
                }
                let outcome = Outcome {
                    result: "TCP_DENIED",
                    error: Some(cause),
                    ..Outcome::LOCAL
                };
                return txn.respond(&proxy, in_flight, page, outcome);
            }
        }
        if txn.user.is_some() && proxy.policy.uses_identity() {
            // `user` / `group` rules can only be evaluated now; the exemption stays as it was.
            if let Some(with_user) = decide(&proxy, &conn, &req, txn.user.as_deref()) {
                decision = Some(with_user);
            }
        }
    }
    if let Some(decision) = &decision {
        txn.decided(decision);
        if let Action::Deny { reason } = &decision.action {
            let err = ProxyError::Denied {
                reason: reason.to_string(),
                rule: decision.rule.name.to_string(),
            };
            return txn.fail(&proxy, in_flight, err);
        }
    }
    let mut response = if is_connect {
        connect::handle(&proxy, &conn, txn, in_flight, req, decision).await
    } else {
        forward::handle(&proxy, &conn, txn, in_flight, req).await
    };
    if let Some(reply) = auth_reply {
        // Negotiate mutual authentication: the client verifies the proxy with this token.
        response.headers_mut().insert(PROXY_AUTHENTICATE, reply);
    }
    response
}

/// The policy's decision for a CONNECT or an absolute-form request; `None` when the target
/// has no host (the handler refuses it with 400).
fn decide(
    proxy: &Proxy,
    conn: &ConnCtx,
    req: &Request<Incoming>,
    user: Option<&str>,
) -> Option<Decision> {
    let uri = req.uri();
    let host = uri.host().filter(|h| !h.is_empty())?;
    let user_agent = req
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let identity = user.map(|name| portcullis_policy::Identity { name, groups: &[] });
    let client = conn.client.ip();
    let decision = if req.method() == http::Method::CONNECT {
        let facts = portcullis_policy::ConnectFacts::new(host, uri.port_u16()?, client)
            .with_user_agent(user_agent)
            .with_user(identity);
        proxy.policy.decide_connect(&facts)
    } else {
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let port = uri.port_u16().unwrap_or(80);
        let facts =
            portcullis_policy::RequestFacts::new(req.method().as_str(), host, port, path, client)
                .with_user_agent(user_agent)
                .with_user(identity);
        proxy.policy.decide_request(&facts)
    };
    tracing::debug!(client = %client, %host, decision = %decision, "policy decision");
    Some(decision)
}

/// Maps an error from a round trip (pooled client or tunnel session) to what the user is told,
/// looking through its whole source chain.
pub fn classify_error(err: &(dyn std::error::Error + 'static)) -> ProxyError {
    let mut source = Some(err);
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

/// What the access log needs to know about one transaction, gathered as it goes.
#[derive(Debug, Clone)]
pub struct Txn {
    start: Instant,
    client: IpAddr,
    method: String,
    url: String,
    user: Option<String>,
    policy: Option<PolicyNote>,
    /// The policy gave this transaction Outlook's long timeouts.
    long_poll: bool,
}

/// How a transaction ended, for the access log.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub result: &'static str,
    pub hierarchy: &'static str,
    pub peer: Option<IpAddr>,
    pub error: Option<&'static str>,
}

impl Outcome {
    pub const LOCAL: Outcome = Outcome {
        result: "NONE",
        hierarchy: "HIER_NONE",
        peer: None,
        error: None,
    };

    pub fn direct(peer: Option<IpAddr>) -> Outcome {
        Outcome {
            result: "TCP_MISS",
            hierarchy: "HIER_DIRECT",
            peer,
            error: None,
        }
    }

    fn failed(err: &ProxyError) -> Outcome {
        Outcome {
            result: if err.status() == http::StatusCode::FORBIDDEN {
                "TCP_DENIED"
            } else {
                "TCP_MISS"
            },
            hierarchy: "HIER_NONE",
            peer: None,
            error: Some(err.cause()),
        }
    }
}

impl Txn {
    /// A request decrypted from an intercepted tunnel, logged with its full `https://` URL and
    /// the user who opened the tunnel.
    pub fn intercepted(
        client: IpAddr,
        method: &http::Method,
        url: String,
        user: Option<String>,
    ) -> Txn {
        Txn {
            start: Instant::now(),
            client,
            method: method.as_str().to_owned(),
            url,
            user,
            policy: None,
            long_poll: false,
        }
    }

    fn new(conn: &ConnCtx, req: &Request<Incoming>) -> Txn {
        Txn {
            start: Instant::now(),
            client: conn.client.ip(),
            method: req.method().as_str().to_owned(),
            url: uri_text(req.uri()),
            user: None,
            policy: None,
            long_poll: false,
        }
    }

    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Records the policy's decision for the log line and picks the timeouts it asks for.
    pub fn decided(&mut self, decision: &Decision) {
        self.policy = Some(PolicyNote::new(decision));
        self.long_poll = decision.timeouts == TimeoutProfile::LongPoll;
    }

    pub fn long_poll(&self) -> bool {
        self.long_poll
    }

    pub fn record(
        self,
        outcome: Outcome,
        status: u16,
        bytes: u64,
        content_type: Option<String>,
    ) -> Record {
        Record {
            time: SystemTime::now(),
            elapsed_ms: self.start.elapsed().as_millis() as u64,
            client: self.client,
            result: outcome.result,
            status,
            bytes,
            bytes_in: 0,
            method: self.method,
            url: self.url,
            user: self.user,
            hierarchy: outcome.hierarchy,
            peer: outcome.peer,
            content_type,
            error: outcome.error,
            policy: self.policy,
        }
    }

    /// Sends `response` to the client; the access log line is written once its body is done.
    pub fn respond(
        self,
        proxy: &Proxy,
        in_flight: InFlight,
        response: Response<ProxyBody>,
        outcome: Outcome,
    ) -> Response<ProxyBody> {
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            // Squid logs the media type alone, without parameters.
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
        let start = self.start;
        let done = LogWhenDone {
            proxy_log: proxy.access_log.clone(),
            start,
            record: Some(self.record(outcome, status, 0, content_type)),
            _in_flight: in_flight,
        };
        response.map(|body| CountedBody::new(body, Box::new(done)).boxed_unsync_body())
    }

    /// Sends a response whose transaction is logged elsewhere (a tunnel logs when it ends).
    pub fn respond_unlogged(
        in_flight: InFlight,
        response: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        let done = LogWhenDone {
            proxy_log: crate::access_log::AccessLog::disabled(),
            start: Instant::now(),
            record: None,
            _in_flight: in_flight,
        };
        response.map(|body| CountedBody::new(body, Box::new(done)).boxed_unsync_body())
    }

    /// Answers with the error page for `err`.
    pub fn fail(self, proxy: &Proxy, in_flight: InFlight, err: ProxyError) -> Response<ProxyBody> {
        tracing::debug!(client = %self.client, url = %self.url, error = %err, "request failed");
        let page = pages::error_page(&err, &self.url);
        self.respond(proxy, in_flight, page, Outcome::failed(&err))
    }
}

/// The request target as received, for the log: `Uri`'s `Display` without the formatting
/// machinery (this runs for every request).
fn uri_text(uri: &http::Uri) -> String {
    let scheme = uri.scheme_str();
    let authority = uri.authority().map(http::uri::Authority::as_str);
    let path = uri.path();
    let query = uri.query();
    let mut url = String::with_capacity(
        scheme.map_or(0, |s| s.len() + 3)
            + authority.map_or(0, str::len)
            + path.len()
            + query.map_or(0, |q| q.len() + 1),
    );
    if let Some(scheme) = scheme {
        url.push_str(scheme);
        url.push_str("://");
    }
    if let Some(authority) = authority {
        url.push_str(authority);
    }
    url.push_str(path);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}

struct LogWhenDone {
    proxy_log: crate::access_log::AccessLog,
    start: Instant,
    record: Option<Record>,
    _in_flight: InFlight,
}

impl OnBodyDone for LogWhenDone {
    fn done(mut self: Box<Self>, bytes: u64, _complete: bool) {
        if let Some(mut record) = self.record.take() {
            record.bytes = bytes;
            record.time = SystemTime::now();
            record.elapsed_ms = self.start.elapsed().as_millis() as u64;
            self.proxy_log.log(record);
        }
    }
}

trait BoxedUnsync {
    fn boxed_unsync_body(self) -> ProxyBody;
}

impl BoxedUnsync for CountedBody {
    fn boxed_unsync_body(self) -> ProxyBody {
        http_body_util::BodyExt::boxed_unsync(self)
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    #[test]
    fn uri_text_matches_display() {
        for target in [
            "http://example.test/a/b?c=d&e",
            "http://example.test:8080/",
            "http://[2001:db8::1]:80/x",
            "https://outlook.office365.com/mapi/emsmdb/?MailboxId=x",
            "example.test:443",
            "/local/page?x",
            "*",
        ] {
            let uri: http::Uri = target.parse().unwrap();
            assert_eq!(super::uri_text(&uri), uri.to_string(), "{target}");
        }
    }
}
