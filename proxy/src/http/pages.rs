//! Pages the proxy writes itself: error pages an operator can read, and the page for requests
//! addressed to the proxy.

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Response, StatusCode};

use crate::body::{self, ProxyBody};
use crate::error::ProxyError;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The `X-Portcullis-Error` header: a stable cause name for scripts and log searches.
pub static ERROR_HEADER: http::HeaderName = http::HeaderName::from_static("x-portcullis-error");

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn html(status: StatusCode, title: &str, body_html: &str) -> Response<ProxyBody> {
    let page = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
         <body><h1>{title}</h1>\n{body_html}\n<hr><address>Portcullis {VERSION}</address></body></html>\n",
    );
    let mut response = Response::new(body::full(page));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The page for a request the proxy could not or would not complete.
pub fn error_page(err: &ProxyError, target: &str) -> Response<ProxyBody> {
    let status = err.status();
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let body = format!(
        "<p>The proxy could not complete your request for <b>{}</b>.</p>\n<p>{}</p>\n<p>Cause: <code>{}</code></p>",
        escape(target),
        escape(&err.to_string()),
        err.cause()
    );
    let mut response = html(status, &title, &body);
    response
        .headers_mut()
        .insert(&ERROR_HEADER, HeaderValue::from_static(err.cause()));
    response
}

/// What a browser sees when it asks the proxy itself for a page (origin-form request).
pub fn info_page(listen: &str) -> Response<ProxyBody> {
    let body = format!(
        "<p>This is <b>Portcullis</b>, a forward proxy. It serves pages only to clients configured \
         to use it as their HTTP and HTTPS proxy ({}).</p>\n\
         <p>Configure your browser or operating system with this host and port as the proxy, \
         or use <code>curl -x http://HOST:PORT https://example.com/</code>.</p>",
        escape(listen)
    );
    html(StatusCode::OK, "Portcullis forward proxy", &body)
}

pub fn not_found(path: &str) -> Response<ProxyBody> {
    let body = format!(
        "<p>The proxy itself has no page at <code>{}</code>. To fetch a web page, configure this \
         host as your proxy and request the full URL.</p>",
        escape(path)
    );
    html(StatusCode::NOT_FOUND, "404 Not Found", &body)
}
