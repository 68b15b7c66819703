//! Content adaptation in the request pipeline: the decision's REQMOD services before the
//! request is forwarded, its RESPMOD services on the origin's response. Each service's outcome
//! goes to the transaction (access log) and the metrics; a failure either lets the message
//! through (`bypass_on_error`, logged) or ends the transaction with a 502 `icap-error`.

use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, Version};

use super::Txn;
use crate::body::ProxyBody;
use crate::config::IcapMethod;
use crate::context::Proxy;
use crate::error::ProxyError;
use crate::headers::strip_hop_by_hop;
use crate::icap::{self, Adapted, Client, Failed, IcapNote, IcapResult, Service};

/// Why REQMOD ended the transaction.
pub(super) enum Stop {
    /// The service answered the request itself (a block page).
    Respond(Response<ProxyBody>),
    Fail(ProxyError),
}

/// The ICAP context a transaction needs, when its decision names services.
pub(super) struct Plan {
    services: Arc<[Arc<str>]>,
    url: String,
}

impl Plan {
    pub(super) fn new(proxy: &Proxy, txn: &Txn) -> Option<Plan> {
        let services = txn.icap_services();
        (!services.is_empty() && !proxy.icap.is_empty()).then(|| Plan {
            services,
            url: txn.url().to_owned(),
        })
    }

    pub(super) fn has_respmod(&self, proxy: &Proxy) -> bool {
        proxy
            .icap
            .chain(&self.services, IcapMethod::Respmod)
            .next()
            .is_some()
    }
}

fn note(proxy: &Proxy, txn: &mut Txn, svc: &Service, result: IcapResult, start: Instant) {
    let elapsed = start.elapsed();
    proxy.metrics.icap(&svc.name, result, elapsed);
    txn.icap(IcapNote {
        service: Arc::clone(&svc.name),
        result,
        ms: elapsed.as_millis() as u64,
        istag: svc.istag(),
    });
}

fn failure(svc: &Service, error: &icap::IcapError) -> ProxyError {
    ProxyError::Icap {
        service: svc.name.to_string(),
        reason: error.to_string(),
    }
}

/// REQMOD through each of the decision's services in turn.
pub(super) async fn reqmod(
    proxy: &Proxy,
    txn: &mut Txn,
    plan: &Plan,
    mut req: Request<ProxyBody>,
) -> Result<Request<ProxyBody>, Stop> {
    let user = txn.user().map(str::to_owned);
    let client = Client {
        ip: txn.client(),
        user: user.as_deref(),
    };
    for svc in proxy.icap.chain(&plan.services, IcapMethod::Reqmod) {
        let start = Instant::now();
        match svc.reqmod(&client, &plan.url, req).await {
            Ok(Adapted::Message(adapted, result)) => {
                note(proxy, txn, svc, result, start);
                req = adapted;
                if result == IcapResult::Modified {
                    // The service's head: the same rules as the client's.
                    strip_hop_by_hop(req.headers_mut(), false);
                }
            }
            Ok(Adapted::Response(response)) => {
                note(proxy, txn, svc, IcapResult::Responded, start);
                return Err(Stop::Respond(response));
            }
            Err(Failed { error, original }) => match original {
                Some(original) if svc.bypass_on_error => {
                    tracing::warn!(service = %svc.name, url = %plan.url, %error, "ICAP service failed; request forwarded unadapted (bypass_on_error)");
                    note(proxy, txn, svc, IcapResult::BypassError, start);
                    req = original;
                }
                _ => {
                    note(proxy, txn, svc, IcapResult::Error, start);
                    return Err(Stop::Fail(failure(svc, &error)));
                }
            },
        }
    }
    Ok(req)
}

/// RESPMOD through each of the decision's services in turn; `req_head` is the request the
/// response answers, as the services see it.
pub(super) async fn respmod(
    proxy: &Proxy,
    txn: &mut Txn,
    plan: &Plan,
    req_head: &[u8],
    mut response: Response<ProxyBody>,
    version: Version,
) -> Result<Response<ProxyBody>, ProxyError> {
    let user = txn.user().map(str::to_owned);
    let client = Client {
        ip: txn.client(),
        user: user.as_deref(),
    };
    for svc in proxy.icap.chain(&plan.services, IcapMethod::Respmod) {
        let start = Instant::now();
        match svc.respmod(&client, req_head, response).await {
            Ok((adapted, result)) => {
                note(proxy, txn, svc, result, start);
                response = adapted;
                if result == IcapResult::Modified {
                    // The service's head: the same rules as an origin's.
                    strip_hop_by_hop(response.headers_mut(), false);
                    *response.version_mut() = version;
                }
            }
            Err(Failed { error, original }) => match original {
                Some(original) if svc.bypass_on_error => {
                    tracing::warn!(service = %svc.name, url = %plan.url, %error, "ICAP service failed; response passed unadapted (bypass_on_error)");
                    note(proxy, txn, svc, IcapResult::BypassError, start);
                    response = original;
                }
                _ => {
                    note(proxy, txn, svc, IcapResult::Error, start);
                    return Err(failure(svc, &error));
                }
            },
        }
    }
    Ok(response)
}

/// The request head RESPMOD services see.
pub(super) fn request_head<B>(plan: &Plan, req: &Request<B>) -> Vec<u8> {
    icap::request_head(req.method(), &plan.url, req.headers())
}
