//! Requests addressed to the proxy itself (origin-form, `GET / HTTP/1.1`): an information page
//! with CA installation instructions, and the CA certificate at `/ca.pem` and `/ca.der`
//! (like mitmproxy's mitm.it), the proxy auto-config file at `/proxy.pac` and `/wpad.dat`,
//! instead of a loop or a crash.

use http::header::{HeaderValue, CONTENT_DISPOSITION, CONTENT_TYPE};
use http::{Method, Request, Response};
use hyper::body::Incoming;

use super::{pages, Outcome, Txn};
use crate::activity::InFlight;
use crate::body::{self, ProxyBody};
use crate::context::{ConnCtx, Proxy};

pub(super) fn handle(
    proxy: &Proxy,
    conn: &ConnCtx,
    mut txn: Txn,
    in_flight: InFlight,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let ca = proxy.interceptor.as_ref().map(|i| &i.ca);
    let authority = client_authority(conn, &req);
    // Logged with a full URL like every other line (Squid logs its own pages the same way).
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    txn.set_url(format!("http://{authority}{target}"));
    let page = match (req.method(), req.uri().path(), ca) {
        (&Method::GET | &Method::HEAD, "/", _) => pages::info_page(
            &authority,
            &proxy.listen_label(),
            ca.map(|ca| (ca.subject(), ca.fingerprint())),
            crate::doctor::cache::info_line().as_deref(),
        ),
        (&Method::GET | &Method::HEAD, "/ca.pem", Some(ca)) => download(
            ca.cert_pem().into_bytes(),
            "application/x-pem-file",
            "portcullis-ca.pem",
        ),
        (&Method::GET | &Method::HEAD, "/ca.der" | "/ca.crt" | "/ca.cer", Some(ca)) => download(
            ca.cert_der().to_vec(),
            "application/x-x509-ca-cert",
            "portcullis-ca.cer",
        ),
        (&Method::GET | &Method::HEAD, "/proxy.pac" | "/wpad.dat", _) => {
            let pac = portcullis_policy::pac::render(&proxy.policy, &authority);
            let mut page = Response::new(body::full(pac.into_bytes()));
            page.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-ns-proxy-autoconfig"),
            );
            page
        }
        (_, path, _) => pages::not_found(path),
    };
    txn.respond(proxy, in_flight, page, Outcome::LOCAL)
}

/// The `host:port` the client reached the proxy as, for the PAC file (when `policy.pac.proxy`
/// is unset), the info page and the access log: the name
/// the client itself used to fetch the file (so a proxy reached as `proxy.corp:3128` hands out
/// that name, which Kerberos needs), else the address the connection arrived on.
fn client_authority(conn: &ConnCtx, req: &Request<Incoming>) -> String {
    req.headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        // It goes into JavaScript: only name, address and port characters.
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
        })
        .map(|h| {
            if h.contains(':') && !h.ends_with(']') {
                h.to_owned()
            } else {
                format!("{h}:{}", conn.local.port())
            }
        })
        .unwrap_or_else(|| conn.local.to_string())
}

fn download(bytes: Vec<u8>, content_type: &'static str, filename: &str) -> Response<ProxyBody> {
    let mut response = Response::new(body::full(bytes));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        headers.insert(CONTENT_DISPOSITION, v);
    }
    response
}
