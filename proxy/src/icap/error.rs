//! Why an exchange with an ICAP service failed.

use std::time::Duration;

/// A failed exchange with an ICAP service. With `bypass_on_error` the message goes on
/// unadapted; otherwise the client gets a 502 `icap-error` page.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IcapError {
    #[error("cannot connect to the ICAP service: {0}")]
    Connect(#[source] std::io::Error),
    #[error("the ICAP service did not connect within {0:?}")]
    ConnectTimeout(Duration),
    /// Every one of `max_connections` stayed busy for the service's `timeout`.
    #[error("no connection to the ICAP service became free within {0:?} (max_connections)")]
    Busy(Duration),
    #[error("the ICAP service did not answer within {0:?}")]
    Timeout(Duration),
    #[error("ICAP connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// `icaps://`: the trust could not be loaded or the handshake failed (certificate).
    #[error("TLS to the ICAP service failed: {0}")]
    Tls(String),
    #[error("the ICAP service closed the connection")]
    Closed,
    #[error("ICAP protocol error: {0}")]
    Protocol(String),
    /// An ICAP status other than 100, 200 or 204 (e.g. 500, 503 overloaded).
    #[error("the ICAP service answered {0}")]
    Status(u16),
    #[error("the message body failed while it was sent to the ICAP service: {0}")]
    Body(String),
}

impl IcapError {
    pub(crate) fn protocol(what: impl Into<String>) -> IcapError {
        IcapError::Protocol(what.into())
    }
}
