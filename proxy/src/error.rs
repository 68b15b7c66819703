//! The proxy's error type: every failure a client can be told about, with its status code and a
//! short machine-readable cause (sent as `X-Portcullis-Error` and written to the access log).

use std::net::SocketAddr;

use http::StatusCode;

/// Which side of the proxy an error came from (for logs, and later metric labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Internal,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("the {0} scheme is not supported by this proxy")]
    UnsupportedScheme(String),
    #[error("CONNECT to port {port} is not allowed (allowed: {allowed})")]
    PortNotAllowed { port: u16, allowed: String },
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
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::UnsupportedScheme(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::PortNotAllowed { .. }
            | ProxyError::Loop(_)
            | ProxyError::Denied { .. }
            | ProxyError::DestinationDenied { .. } => StatusCode::FORBIDDEN,
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
            | ProxyError::UpstreamTls(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// A stable, short name for the cause: the `X-Portcullis-Error` header value.
    pub fn cause(&self) -> &'static str {
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
        }
    }

    pub fn side(&self) -> Side {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::UnsupportedScheme(_)
            | ProxyError::PortNotAllowed { .. }
            | ProxyError::Loop(_)
            | ProxyError::Denied { .. }
            | ProxyError::DestinationDenied { .. }
            | ProxyError::ClientBody(_) => Side::Client,
            _ => Side::Upstream,
        }
    }
}
