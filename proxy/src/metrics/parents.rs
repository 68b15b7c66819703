//! Per-parent-proxy series (`[[upstream.parents]]`): requests carried, failures by kind, and
//! whether each parent is up. The `parent` label is a configured name, so the number of series
//! is bounded by the config file.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use super::Metrics;
use crate::error::ProxyError;

/// Why a parent failed one attempt: the `kind` label of `parent_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParentFailure {
    /// The parent refused the TCP connection or could not be reached.
    Connect,
    /// Connecting or the CONNECT exchange took longer than `timeouts.upstream_connect`.
    Timeout,
    /// It answered a CONNECT with 502/503, or something that was not HTTP.
    Unavailable,
    /// It refused our credentials (407).
    Auth,
    /// It refused the request for another reason (403, ...).
    Refused,
}

impl ParentFailure {
    pub(crate) fn of(err: &ProxyError) -> ParentFailure {
        match err {
            ProxyError::ConnectTimeout { .. } => ParentFailure::Timeout,
            ProxyError::Refused { .. } | ProxyError::Connect { .. } | ProxyError::Dns { .. } => {
                ParentFailure::Connect
            }
            ProxyError::ParentAuth { .. } | ProxyError::ParentCredentials { .. } => {
                ParentFailure::Auth
            }
            ProxyError::ParentRefused {
                status: 502 | 503, ..
            } => ParentFailure::Unavailable,
            ProxyError::ParentRefused { .. } => ParentFailure::Refused,
            _ => ParentFailure::Unavailable,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            ParentFailure::Connect => "connect",
            ParentFailure::Timeout => "timeout",
            ParentFailure::Unavailable => "unavailable",
            ParentFailure::Auth => "auth",
            ParentFailure::Refused => "refused",
        }
    }
}

pub(super) struct ParentFamilies {
    requests: IntCounterVec,
    failures: IntCounterVec,
    up: IntGaugeVec,
}

impl ParentFamilies {
    pub(super) fn register(r: &Registry) -> prometheus::Result<ParentFamilies> {
        let requests = IntCounterVec::new(
            Opts::new(
                "parent_requests_total",
                "Requests and tunnels a parent proxy took, by parent.",
            ),
            &["parent"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "parent_failures_total",
                "Failed attempts through a parent proxy, by parent and kind (connect, timeout, unavailable, auth, refused).",
            ),
            &["parent", "kind"],
        )?;
        let up = IntGaugeVec::new(
            Opts::new(
                "parent_up",
                "1 while a parent proxy is usable, 0 while it is marked down (upstream.parent_backoff).",
            ),
            &["parent"],
        )?;
        r.register(Box::new(requests.clone()))?;
        r.register(Box::new(failures.clone()))?;
        r.register(Box::new(up.clone()))?;
        Ok(ParentFamilies {
            requests,
            failures,
            up,
        })
    }
}

impl Metrics {
    /// `parent` carried one request or tunnel.
    pub(crate) fn parent_request(&self, parent: &str) {
        self.parents.requests.with_label_values(&[parent]).inc();
    }

    /// One attempt through `parent` failed.
    pub(crate) fn parent_failed(&self, parent: &str, kind: ParentFailure) {
        self.parents
            .failures
            .with_label_values(&[parent, kind.as_str()])
            .inc();
    }

    /// `parent` is usable (`up`) or marked down.
    pub(crate) fn parent_health(&self, parent: &str, up: bool) {
        self.parents
            .up
            .with_label_values(&[parent])
            .set(i64::from(up));
    }
}
