//! REQMOD and RESPMOD in HTTP terms: which messages are sent, and how the service's answer
//! becomes the request forwarded or the response returned.

use std::sync::Arc;

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Request, Response};

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

    /// REQMOD: the request (`url`: absolute, as logged) through the service, which may pass
    /// it, change it, or answer it with a response of its own (a block page).
    pub(crate) async fn reqmod(
        self: &Arc<Self>,
        client: &Client<'_>,
        url: &str,
        req: Request<ProxyBody>,
    ) -> Result<Adapted<Request<ProxyBody>>, Failed<Request<ProxyBody>>> {
        if too_large(req.headers(), self.max_body) {
            return Ok(Adapted::Message(req, IcapResult::BypassSize));
        }
        let (mut parts, body) = req.into_parts();
        let head = wire::request_head(&parts.method, url, &parts.headers);
        let body = (!http_body::Body::is_end_stream(&body)).then_some(body);
        let had_body = body.is_some();
        let msg = Message {
            req_hdr: &head,
            res_hdr: None,
            body,
        };
        let answer = self.exchange(client, msg).await;
        match answer {
            Ok(Answer::Unmodified(body)) => Ok(Adapted::Message(
                Request::from_parts(parts, body.unwrap_or_else(body::empty)),
                IcapResult::Unmodified,
            )),
            Ok(Answer::Request(head, body)) => {
                // The method, the path and the headers may change; the destination stays the
                // one the policy decided on (and `Host` with it).
                parts.method = head.method;
                if let Some(path) = head.uri.path_and_query() {
                    let mut uri = parts.uri.clone().into_parts();
                    uri.path_and_query = Some(path.clone());
                    if let Ok(uri) = http::Uri::from_parts(uri) {
                        parts.uri = uri;
                    }
                }
                let host = parts.headers.get(http::header::HOST).cloned();
                parts.headers = head.headers;
                match host {
                    Some(host) => parts.headers.insert(http::header::HOST, host),
                    None => parts.headers.remove(http::header::HOST),
                };
                let framed = had_body || body.is_some();
                reframe(&mut parts.headers, framed);
                Ok(Adapted::Message(
                    Request::from_parts(parts, body.unwrap_or_else(body::empty)),
                    IcapResult::Modified,
                ))
            }
            Ok(Answer::Response(head, body)) => {
                let framed = body.is_some();
                let mut response = Response::new(body.unwrap_or_else(body::empty));
                *response.status_mut() = head.status;
                *response.headers_mut() = head.headers;
                reframe(response.headers_mut(), framed);
                Ok(Adapted::Response(response))
            }
            Err(Failed { error, original }) => Err(Failed {
                error,
                original: original
                    .map(|body| Request::from_parts(parts, body.unwrap_or_else(body::empty))),
            }),
        }
    }
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
