//! [`Txn`]: what the access log needs to know about one transaction, gathered as it goes, and
//! the one way a transaction ends — [`Txn::respond`] or [`Txn::fail`] — so that each is logged
//! exactly once, when hyper has finished sending its body.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::CONTENT_TYPE;
use http::{Request, Response};
use hyper::body::Incoming;
use portcullis_policy::{Decision, Identity, TimeoutProfile};

use super::pages;
use crate::access_log::AccessLog;
use crate::activity::InFlight;
use crate::body::{CountedBody, OnBodyDone, ProxyBody};
use crate::context::{ConnCtx, Proxy};
use crate::error::ProxyError;
use crate::original_dst::TransparentKind;
use crate::record::{Channel, Hierarchy, PolicyNote, Record, ResultCode};

/// What the access log needs to know about one transaction, gathered as it goes.
#[derive(Debug, Clone)]
pub(crate) struct Txn {
    start: Instant,
    client: IpAddr,
    channel: Channel,
    method: String,
    url: String,
    user: Option<String>,
    /// The user's groups (`[auth.groups]`); `None` when no group source is configured.
    groups: Option<Arc<[String]>>,
    policy: Option<PolicyNote>,
    /// The policy gave this transaction Outlook's long timeouts.
    long_poll: bool,
    /// Came through a transparent listener: the origin is logged as `ORIGINAL_DST`.
    transparent: Option<TransparentKind>,
    /// ICAP outcomes, in the order the services were asked.
    icap: Vec<crate::icap::IcapNote>,
    /// The decision's ICAP services (`icap` of the rule that decided).
    icap_services: Arc<[Arc<str>]>,
}

/// How a transaction ended, for the access log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome {
    pub(crate) result: ResultCode,
    pub(crate) hierarchy: Hierarchy,
    pub(crate) peer: Option<IpAddr>,
    pub(crate) error: Option<&'static str>,
}

impl Outcome {
    pub(crate) const LOCAL: Outcome = Outcome {
        result: ResultCode::None,
        hierarchy: Hierarchy::None,
        peer: None,
        error: None,
    };

    #[allow(dead_code, reason = "kept for handlers that know they went direct")]
    pub(crate) fn direct(peer: Option<IpAddr>) -> Outcome {
        Outcome {
            result: ResultCode::TcpMiss,
            hierarchy: Hierarchy::Direct,
            peer,
            error: None,
        }
    }

    /// Forwarded, directly or through a parent proxy, as `hop` says.
    pub(crate) fn via(hop: crate::parents::Hop) -> Outcome {
        Outcome {
            result: ResultCode::TcpMiss,
            hierarchy: hop.hierarchy,
            peer: hop.peer,
            error: None,
        }
    }

    pub(crate) fn failed(err: &ProxyError) -> Outcome {
        Outcome {
            result: if err.status() == http::StatusCode::FORBIDDEN {
                ResultCode::TcpDenied
            } else {
                ResultCode::TcpMiss
            },
            hierarchy: Hierarchy::None,
            peer: None,
            error: Some(err.cause()),
        }
    }
}

impl Txn {
    /// A request decrypted from an intercepted tunnel, logged with its full `https://` URL and
    /// the user who opened the tunnel.
    pub(crate) fn intercepted(
        conn: &ConnCtx,
        method: &http::Method,
        url: String,
        user: Option<String>,
        groups: Option<Arc<[String]>>,
    ) -> Txn {
        Txn {
            start: Instant::now(),
            client: conn.client.ip(),
            channel: Channel::Inspected,
            method: method.as_str().to_owned(),
            url,
            user,
            groups,
            policy: None,
            long_poll: false,
            transparent: conn.original_dst.map(|d| d.kind),
            icap: Vec::new(),
            icap_services: Arc::from([]),
        }
    }

    /// A connection on a transparent TLS listener, logged as the CONNECT it stands for
    /// (`CONNECT host:port`) until the ClientHello says more.
    pub(crate) fn transparent_tls(conn: &ConnCtx, authority: String) -> Txn {
        Txn {
            start: Instant::now(),
            client: conn.client.ip(),
            channel: Channel::Tunnel,
            method: "CONNECT".to_owned(),
            url: authority,
            user: None,
            groups: None,
            policy: None,
            long_poll: false,
            transparent: conn.original_dst.map(|d| d.kind),
            icap: Vec::new(),
            icap_services: Arc::from([]),
        }
    }

    pub(super) fn new(conn: &ConnCtx, req: &Request<Incoming>) -> Txn {
        let channel = if req.method() == http::Method::CONNECT {
            Channel::Tunnel
        } else {
            Channel::Plain
        };
        Txn {
            start: Instant::now(),
            client: conn.client.ip(),
            channel,
            method: req.method().as_str().to_owned(),
            url: uri_text(req.uri()),
            user: None,
            groups: None,
            policy: None,
            long_poll: false,
            transparent: conn.original_dst.map(|d| d.kind),
            icap: Vec::new(),
            icap_services: Arc::from([]),
        }
    }

    pub(crate) fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    pub(crate) fn groups(&self) -> Option<&Arc<[String]>> {
        self.groups.as_ref()
    }

    pub(super) fn set_groups(&mut self, groups: Arc<[String]>) {
        self.groups = Some(groups);
    }

    /// The authenticated user with their groups, for `user` and `group` rules.
    pub(crate) fn identity(&self) -> Option<Identity<'_>> {
        let groups = self.groups.as_deref().unwrap_or_default();
        self.user
            .as_deref()
            .map(|name| Identity::with_groups(name, groups))
    }

    /// Replaces the logged URL (the proxy's own pages: origin-form targets made absolute).
    pub(crate) fn set_url(&mut self, url: String) {
        self.url = url;
    }

    pub(super) fn set_user(&mut self, user: String) {
        self.user = Some(user);
    }

    /// The CONNECT's TLS is being intercepted: its line and its metrics say `inspect`.
    pub(super) fn inspected(&mut self) {
        self.channel = Channel::Inspected;
    }

    /// The CONNECT's inspection was overridden by an earlier refusal of this host by this
    /// client: its line says `tunnel/refusal:<rule>`.
    pub(super) fn tunnelled_after_refusal(&mut self) {
        self.policy = self.policy.as_ref().map(PolicyNote::after_refusal);
    }

    /// Records the policy's decision for the log line and picks the timeouts it asks for.
    pub(crate) fn decided(&mut self, decision: &Decision) {
        self.policy = Some(PolicyNote::new(decision));
        self.long_poll = decision.timeouts == TimeoutProfile::LongPoll;
        self.icap_services = Arc::clone(&decision.icap);
    }

    /// The ICAP services the decision named.
    pub(crate) fn icap_services(&self) -> Arc<[Arc<str>]> {
        Arc::clone(&self.icap_services)
    }

    /// Records one ICAP service's part in this transaction.
    pub(crate) fn icap(&mut self, note: crate::icap::IcapNote) {
        self.icap.push(note);
    }

    /// The authenticated user (for the ICAP services' `X-Authenticated-User`).
    pub(crate) fn client(&self) -> IpAddr {
        self.client
    }

    /// The URL as logged: absolute, `https://` for inspected requests.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn long_poll(&self) -> bool {
        self.long_poll
    }

    pub(crate) fn record(
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
            groups: self.groups,
            // A transparent connection's origin is its original destination, always.
            hierarchy: match (outcome.hierarchy, self.transparent) {
                (Hierarchy::Direct, Some(_)) => Hierarchy::OriginalDst,
                (hierarchy, _) => hierarchy,
            },
            peer: outcome.peer,
            content_type,
            error: outcome.error,
            channel: self.channel,
            policy: self.policy,
            transparent: self.transparent,
            icap: self.icap,
        }
    }

    /// Sends `response` to the client; the access log line is written once its body is done.
    pub(crate) fn respond(
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
    pub(crate) fn respond_unlogged(
        in_flight: InFlight,
        response: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        let done = LogWhenDone {
            proxy_log: AccessLog::disabled(),
            start: Instant::now(),
            record: None,
            _in_flight: in_flight,
        };
        response.map(|body| CountedBody::new(body, Box::new(done)).boxed_unsync_body())
    }

    /// Answers with the error page for `err`.
    pub(crate) fn fail(
        self,
        proxy: &Proxy,
        in_flight: InFlight,
        err: ProxyError,
    ) -> Response<ProxyBody> {
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
    proxy_log: AccessLog,
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
