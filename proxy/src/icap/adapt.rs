//! REQMOD and RESPMOD in HTTP terms: which messages are sent, and how the service's answer
//! becomes the request forwarded or the response returned.

use std::sync::Arc;

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;

use super::exchange::{Answer, Message};
use super::{wire, Adapted, Client, Failed, IcapError, IcapResult, Service};
use crate::body::{self, ProxyBody};

/// The request head as a service sees it: absolute URL (`https://` inside inspected TLS).
pub(crate) fn request_head(method: &http::Method, url: &str, headers: &HeaderMap) -> Vec<u8> {
    wire::request_head(method, url, headers)
}

/// A declared body length over `max_body`.
fn too_large(headers: &HeaderMap, max: u64) -> bool {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > max)
}

impl Service {
    /// RESPMOD: the origin's response (`req_head`: the request it answers) through the service.
    pub(crate) async fn respmod(
        self: &Arc<Self>,
        client: &Client<'_>,
        req_head: &[u8],
        response: Response<ProxyBody>,
    ) -> Result<(Response<ProxyBody>, IcapResult), Failed<Response<ProxyBody>>> {
        if too_large(response.headers(), self.max_body) {
            return Ok((response, IcapResult::BypassSize));
        }
        let (parts, body) = response.into_parts();
        let res_head = wire::response_head(parts.status, &parts.headers);
        let body = (!http_body::Body::is_end_stream(&body)).then_some(body);
        let had_body = body.is_some();
        let msg = Message {
            req_hdr: req_head,
            res_hdr: Some(&res_head),
            body,
        };
        let answer = self.exchange(client, msg).await;
        self.mark(answer.is_ok());
        match answer {
            Ok(Answer::Unmodified(body)) => Ok((
                Response::from_parts(parts, body.unwrap_or_else(body::empty)),
                IcapResult::Unmodified,
            )),
            Ok(Answer::Response(head, answer_body)) => {
                let framed = had_body || answer_body.is_some();
                let mut response = Response::new(answer_body.unwrap_or_else(body::empty));
                *response.status_mut() = head.status;
                *response.headers_mut() = head.headers;
                reframe(response.headers_mut(), framed);
                Ok((response, IcapResult::Modified))
            }
            Ok(Answer::Request(..)) => Err(Failed {
                error: IcapError::protocol("RESPMOD answered with a request"),
                original: None,
            }),
            Err(Failed { error, original }) => Err(Failed {
                error,
                original: original
                    .map(|body| Response::from_parts(parts, body.unwrap_or_else(body::empty))),
            }),
        }
    }

    /// REQMOD for a request without a body: the service may change its head or answer it.
    /// (Requests with a body are not sent: see [`reqmod_applies`].)
    pub(crate) async fn reqmod(
        self: &Arc<Self>,
        client: &Client<'_>,
        url: &str,
        mut req: Request<Incoming>,
    ) -> Result<Adapted<Request<Incoming>>, Failed<Request<Incoming>>> {
        let head = wire::request_head(req.method(), url, req.headers());
        let msg = Message {
            req_hdr: &head,
            res_hdr: None,
            body: None,
        };
        let answer = self.exchange(client, msg).await;
        self.mark(answer.is_ok());
        match answer {
            Ok(Answer::Unmodified(_)) => Ok(Adapted::Message(req, IcapResult::Unmodified)),
            Ok(Answer::Request(head, body)) => {
                if body.is_some() {
                    return Err(Failed {
                        error: IcapError::protocol("REQMOD added a body to a request without one"),
                        original: Some(req),
                    });
                }
                // The method and the path may change; the destination stays the one the
                // policy decided on.
                *req.method_mut() = head.method;
                if let Some(path) = head.uri.path_and_query() {
                    let mut parts = req.uri().clone().into_parts();
                    parts.path_and_query = Some(path.clone());
                    if let Ok(uri) = http::Uri::from_parts(parts) {
                        *req.uri_mut() = uri;
                    }
                }
                let host = req.headers().get(http::header::HOST).cloned();
                *req.headers_mut() = head.headers;
                match host {
                    Some(host) => req.headers_mut().insert(http::header::HOST, host),
                    None => req.headers_mut().remove(http::header::HOST),
                };
                Ok(Adapted::Message(req, IcapResult::Modified))
            }
            Ok(Answer::Response(head, body)) => {
                let had_body = body.is_some();
                let mut response = Response::new(body.unwrap_or_else(body::empty));
                *response.status_mut() = head.status;
                *response.headers_mut() = head.headers;
                reframe(response.headers_mut(), had_body);
                Ok(Adapted::Response(response))
            }
            Err(Failed { error, .. }) => Err(Failed {
                error,
                original: Some(req),
            }),
        }
    }
}

/// Whether REQMOD can be applied to `req` here: only requests without a body for now, so that
/// the request forwarded keeps hyper's own body type (a limitation, see README).
pub(crate) fn reqmod_applies(req: &Request<Incoming>) -> bool {
    http_body::Body::is_end_stream(req.body())
}

/// A service's head describes the body it sends, which the proxy frames itself: a length the
/// service left from the original (echo) or a chunked coding would be wrong. The length stays
/// only where neither message had a body (the answer to a HEAD).
fn reframe(headers: &mut HeaderMap, body: bool) {
    headers.remove(TRANSFER_ENCODING);
    if body {
        headers.remove(CONTENT_LENGTH);
    }
}
