//! Content adaptation over ICAP (RFC 3507): the services of `[[icap.services]]`, their
//! connection pools and OPTIONS caches, and the REQMOD and RESPMOD exchanges.
//!
//! Bodies stream: the encapsulated HTTP head and a preview go first; the rest follows in
//! chunks only after `100 Continue`, and a service's answer is streamed back as it arrives.
//! Nothing holds a whole body.

mod adapt;
mod body;
mod error;
mod exchange;
mod options;
mod pool;
mod stream;
mod wire;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use adapt::request_head;
pub(crate) use error::IcapError;
pub(crate) use exchange::{Adapted, Failed};

use crate::config::{IcapConfig, IcapMethod, IcapUrl};
use options::OptionsCache;
use pool::Pool;

/// Every configured service, by name.
pub(crate) struct Icap {
    services: Vec<Arc<Service>>,
}

impl Icap {
    /// The services of a validated config (a URL that does not parse is left out; validation
    /// already refused it).
    pub(crate) fn new(config: &IcapConfig) -> Icap {
        let services = config
            .services
            .iter()
            .filter_map(|s| {
                let url = IcapUrl::parse(&s.url).ok()?;
                Some(Arc::new(Service {
                    name: s.name.as_str().into(),
                    method: s.method,
                    pool: Pool::new(
                        url.host.clone(),
                        url.port,
                        s.connect_timeout,
                        s.timeout,
                        s.max_connections,
                        url.tls.then(|| pool::TlsTrust::new(s.ca_file.clone())),
                    ),
                    url,
                    bypass_on_error: s.bypass_on_error,
                    preview: s.preview,
                    timeout: s.timeout,
                    max_body: s.max_body,
                    options: OptionsCache::default(),
                    istag: std::sync::Mutex::new(None),
                }))
            })
            .collect();
        Icap { services }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The services named in `names` (a decision's `icap`) that serve `method`, in order.
    pub(crate) fn chain<'a>(
        &'a self,
        names: &'a [Arc<str>],
        method: IcapMethod,
    ) -> impl Iterator<Item = &'a Arc<Service>> + 'a {
        names.iter().filter_map(move |name| {
            self.services
                .iter()
                .find(|s| s.name == *name && s.method == method)
        })
    }

    /// Every service, for `/readyz` and the metrics.
    pub(crate) fn services(&self) -> &[Arc<Service>] {
        &self.services
    }
}

/// One `[[icap.services]]` entry at run time.
pub(crate) struct Service {
    pub(crate) name: Arc<str>,
    pub(crate) method: IcapMethod,
    url: IcapUrl,
    /// Fail open (forward unadapted) rather than closed (502) when the service fails.
    pub(crate) bypass_on_error: bool,
    preview: Option<u32>,
    timeout: Duration,
    /// Messages with a larger `Content-Length` are not sent.
    pub(crate) max_body: u64,
    pool: Pool,
    options: OptionsCache,
    /// The service's state tag as it last announced it (OPTIONS or an answer), logged with
    /// each transaction: which signature set scanned a file.
    istag: std::sync::Mutex<Option<Arc<str>>>,
}

impl Service {
    /// The `ISTag` the service last sent.
    pub(crate) fn istag(&self) -> Option<Arc<str>> {
        self.istag.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Keeps the `ISTag` of an answer head, when it has one and it changed.
    fn saw(&self, head: &wire::IcapHead) {
        let Some(tag) = head.header("istag") else {
            return;
        };
        let mut current = self.istag.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_deref() != Some(tag) {
            tracing::debug!(service = %self.name, istag = tag, "ICAP service state tag");
            *current = Some(tag.into());
        }
    }

    /// Checks the service now with an OPTIONS request (refreshing the cached answer), for
    /// `/readyz`.
    pub(crate) async fn probe(&self) -> Result<(), IcapError> {
        self.refresh_options().await.map(|_| ())
    }
}

/// Who the message is for, told to the service as Squid tells it.
pub(crate) struct Client<'a> {
    /// `X-Client-IP`.
    pub(crate) ip: IpAddr,
    /// `X-Authenticated-User`, base64 of the name (Squid's `icap_send_client_username`).
    pub(crate) user: Option<&'a str>,
}

/// What happened to one message at one service, for the access log and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IcapResult {
    /// 204: the service passed the message as it was.
    Unmodified,
    /// 200: the service sent a different message (for RESPMOD possibly its block page).
    Modified,
    /// REQMOD answered with a response (a block page): the request never reached the origin.
    Responded,
    /// The body was larger than `max_body`: not sent to the service.
    BypassSize,
    /// The service failed and `bypass_on_error` let the message through unadapted.
    BypassError,
    /// The service failed; the client got a 502.
    Error,
}

impl IcapResult {
    pub(crate) const ALL: [IcapResult; 6] = [
        IcapResult::Unmodified,
        IcapResult::Modified,
        IcapResult::Responded,
        IcapResult::BypassSize,
        IcapResult::BypassError,
        IcapResult::Error,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            IcapResult::Unmodified => "unmodified",
            IcapResult::Modified => "modified",
            IcapResult::Responded => "responded",
            IcapResult::BypassSize => "bypass-size",
            IcapResult::BypassError => "bypass-error",
            IcapResult::Error => "error",
        }
    }
}

/// One service's part in a transaction, as logged.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct IcapNote {
    pub(crate) service: Arc<str>,
    #[serde(serialize_with = "result_str")]
    pub(crate) result: IcapResult,
    pub(crate) ms: u64,
    /// The service's `ISTag` (its state, e.g. the signature version), when it sent one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) istag: Option<Arc<str>>,
}

fn result_str<S: serde::Serializer>(r: &IcapResult, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.as_str())
}

#[cfg(test)]
mod tests;
