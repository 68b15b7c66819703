//! The proxy's error type: every failure a client can be told about, with its status code and a
//! short machine-readable cause (sent as `X-Portcullis-Error` and written to the access log).

use std::net::SocketAddr;

use http::StatusCode;

/// An error and its sources on one line, `context: cause: root cause`, for errors from crates
/// that keep the cause in [`std::error::Error::source`] (the certs crate, libgssapi) when they
/// are shown where only `Display` is printed (a log field, an admin answer, a wrapping error).
///
/// The proxy's own errors that wrap one print it through this and do not expose it as their
/// source again, so that `anyhow`'s `{:#}` at the binary's edge says each cause once.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

/// Which side of an intercepted connection a TLS handshake failed on (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Upstream,
}

#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("the {0} scheme is not supported by this proxy")]
    UnsupportedScheme(String),
    /// `what` is `CONNECT` (`server.connect_ports`) or `HTTP` (`server.http_ports`).
    #[error("{what} to port {port} is not allowed (allowed: {allowed})")]
    PortNotAllowed {
        what: &'static str,
        port: u16,
        allowed: String,
    },
    #[error("forwarding loop detected: {0}")]
    Loop(String),
    /// Refused by a policy rule; `reason` is the rule's, shown to the user as written.
    #[error("{reason} (rule {rule})")]
    Denied { reason: String, rule: String },
    /// The destination resolved to a network in `upstream.deny_networks`.
    #[error("{host} ({addr}) is on a network this proxy does not connect to")]
    DestinationDenied {
        host: String,
        addr: std::net::IpAddr,
    },
    #[error("cannot resolve {host}: {reason}")]
    Dns { host: String, reason: String },
    #[error("connection to {addr} refused")]
    Refused { addr: SocketAddr },
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("connecting to {host} timed out")]
    ConnectTimeout { host: String },
    #[error("the origin did not answer within {0:?}")]
    ResponseTimeout(std::time::Duration),
    #[error("the origin closed the connection before sending a response")]
    UpstreamClosed,
    #[error("the origin reset the connection")]
    UpstreamReset,
    #[error("the origin sent an invalid response: {0}")]
    UpstreamProtocol(String),
    #[error("the client's request body failed: {0}")]
    ClientBody(String),
    #[error("upstream error: {0}")]
    Upstream(String),
    #[error("the origin {host} cannot be trusted: {reason}")]
    UpstreamCertificate {
        cause: &'static str,
        host: String,
        reason: String,
    },
    #[error("TLS handshake with the origin failed: {0}")]
    UpstreamTls(String),
    // The client side of an intercepted tunnel. Never shown as a page (the client has no HTTP
    // connection to read one on); logged as the tunnel's cause.
    /// The client aborted the handshake with an alert: it pins its server's certificate, or
    /// the proxy's CA is not installed.
    #[error("the client refused the intercepted connection: {0}")]
    ClientTlsRefused(String),
    /// The client closed or broke the handshake without an alert.
    #[error("the client left during the intercepted handshake: {0}")]
    ClientTlsAborted(String),
    #[error("the client did not finish the intercepted handshake within {0:?}")]
    ClientTlsTimeout(std::time::Duration),
    /// No certificate could be minted for the tunnel (an expired CA, a name that cannot go in
    /// a certificate).
    #[error("cannot mint a certificate: {0}")]
    CertificateMint(String),
    /// Proxy authentication is on, and a transparently intercepted connection cannot be asked
    /// for credentials (the client does not know it is talking to a proxy).
    #[error("this network requires proxy authentication, which a connection without proxy settings cannot give: configure this device to use the proxy, or ask the administrator to exempt it (auth.exempt_clients)")]
    TransparentAuth,
    /// A parent proxy answered our request with 407: the credentials in
    /// `[[upstream.parents]]` are wrong. The admin's problem, never a 407 for the client.
    #[error("the parent proxy {parent} refused this proxy's credentials (407); check upstream.parents user and password_file")]
    ParentAuth { parent: String },
    /// No credentials could be made for a parent (no Kerberos ticket for its service).
    #[error("cannot authenticate to the parent proxy {parent}: {reason}")]
    ParentCredentials { parent: String, reason: String },
    /// A parent proxy refused the CONNECT with this status.
    #[error("the parent proxy {parent} refused the request with status {status}")]
    ParentRefused { parent: String, status: u16 },
    /// Every parent of the route is down (or in its back-off).
    #[error("no parent proxy of route {route} is available: {last}")]
    ParentsDown { route: String, last: String },
    /// A content adaptation service (`[[icap.services]]`) failed and its `bypass_on_error`
    /// is off: the message is not passed on unscanned.
    #[error("the content scanning service {service} failed: {reason}")]
    Icap { service: String, reason: String },
}

impl ProxyError {
    /// The refusal for a `deny` decision; `None` for any other action.
    pub(crate) fn denial(decision: &portcullis_policy::Decision) -> Option<ProxyError> {
        match &decision.action {
            portcullis_policy::Action::Deny { reason } => Some(ProxyError::Denied {
                reason: reason.to_string(),
                rule: decision.rule.name.to_string(),
            }),
            _ => None,
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::UnsupportedScheme(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::PortNotAllowed { .. }
            | ProxyError::Loop(_)
            | ProxyError::Denied { .. }
            | ProxyError::DestinationDenied { .. }
            | ProxyError::TransparentAuth => StatusCode::FORBIDDEN,
            ProxyError::ConnectTimeout { .. } | ProxyError::ResponseTimeout(_) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::Dns { .. }
            | ProxyError::Refused { .. }
            | ProxyError::Connect { .. }
            | ProxyError::UpstreamClosed
            | ProxyError::UpstreamReset
            | ProxyError::UpstreamProtocol(_)
            | ProxyError::Upstream(_)
            | ProxyError::UpstreamCertificate { .. }
            | ProxyError::UpstreamTls(_)
            | ProxyError::Icap { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::ClientTlsRefused(_)
            | ProxyError::ClientTlsAborted(_)
            | ProxyError::ClientTlsTimeout(_) => StatusCode::BAD_REQUEST,
            ProxyError::CertificateMint(_) => StatusCode::INTERNAL_SERVER_ERROR,
            // The parent's policy said no: as our own refusals.
            ProxyError::ParentRefused { status: 403, .. } => StatusCode::FORBIDDEN,
            ProxyError::ParentAuth { .. }
            | ProxyError::ParentCredentials { .. }
            | ProxyError::ParentRefused { .. }
            | ProxyError::ParentsDown { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The setting that refused the request, for refusals an administrator may mean to lift
    /// (a lab on localhost meets both): named on the error page and in `X-Portcullis-Error`.
    pub(crate) fn setting(&self) -> Option<&'static str> {
        match self {
            ProxyError::PortNotAllowed {
                what: "CONNECT", ..
            } => Some("server.connect_ports"),
            ProxyError::PortNotAllowed { .. } => Some("server.http_ports"),
            ProxyError::DestinationDenied { .. } => Some("upstream.deny_networks"),
            ProxyError::TransparentAuth => Some("server.transparent_auth"),
            _ => None,
        }
    }

    /// A stable, short name for the cause: the `X-Portcullis-Error` header value.
    pub(crate) fn cause(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad-request",
            ProxyError::UnsupportedScheme(_) => "unsupported-scheme",
            ProxyError::PortNotAllowed { .. } => "port-not-allowed",
            ProxyError::Loop(_) => "forwarding-loop",
            ProxyError::Denied { .. } => "policy-denied",
            ProxyError::DestinationDenied { .. } => "destination-denied",
            ProxyError::Dns { .. } => "dns-failure",
            ProxyError::Refused { .. } => "connection-refused",
            ProxyError::Connect { .. } => "connect-failed",
            ProxyError::ConnectTimeout { .. } => "connect-timeout",
            ProxyError::ResponseTimeout(_) => "response-timeout",
            ProxyError::UpstreamClosed => "upstream-closed",
            ProxyError::UpstreamReset => "upstream-reset",
            ProxyError::UpstreamProtocol(_) => "upstream-protocol-error",
            ProxyError::ClientBody(_) => "client-body-error",
            ProxyError::Upstream(_) => "upstream-error",
            ProxyError::UpstreamCertificate { cause, .. } => cause,
            ProxyError::UpstreamTls(_) => "upstream-tls-error",
            ProxyError::ClientTlsRefused(_) => "client-tls-refused",
            ProxyError::ClientTlsAborted(_) => "client-tls-aborted",
            ProxyError::ClientTlsTimeout(_) => "client-tls-timeout",
            ProxyError::CertificateMint(_) => "certificate-mint-failed",
            ProxyError::TransparentAuth => "transparent-auth-required",
            ProxyError::ParentAuth { .. } | ProxyError::ParentCredentials { .. } => {
                "parent-auth-failed"
            }
            ProxyError::ParentRefused { .. } => "parent-refused",
            ProxyError::ParentsDown { .. } => "parents-down",
            ProxyError::Icap { .. } => "icap-error",
        }
    }
}

/// Maps an error from a round trip (pooled client or tunnel session) to what the user is told,
/// looking through its whole source chain.
pub(crate) fn classify_error(err: &(dyn std::error::Error + 'static)) -> ProxyError {
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
