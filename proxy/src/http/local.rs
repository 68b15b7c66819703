//! Requests addressed to the proxy itself (origin-form, `GET / HTTP/1.1`): a small page that
//! says what this is, instead of a loop or a crash.

use http::{Method, Request, Response};
use hyper::body::Incoming;

use super::{pages, Outcome, Txn};
use crate::activity::InFlight;
use crate::body::ProxyBody;
use crate::server::Proxy;

pub(super) fn handle(
    proxy: &Proxy,
    txn: Txn,
    in_flight: InFlight,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let page = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/") => pages::info_page(&proxy.listen_label()),
        (_, path) => pages::not_found(path),
    };
    txn.respond(proxy, in_flight, page, Outcome::LOCAL)
}
