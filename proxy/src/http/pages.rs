//! Pages the proxy writes itself: error pages an operator can read, and the page for requests
//! addressed to the proxy.

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Response, StatusCode};

use crate::body::{self, ProxyBody};
use crate::error::ProxyError;

pub(super) const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The `X-Portcullis-Error` header: a stable cause name for scripts and log searches.
pub(super) static ERROR_HEADER: http::HeaderName =
    http::HeaderName::from_static("x-portcullis-error");

pub(super) fn escape(text: &str) -> String {
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
pub(super) fn error_page(err: &ProxyError, target: &str) -> Response<ProxyBody> {
    let status = err.status();
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let mut body = format!(
        "<p>The proxy could not complete your request for <b>{}</b>.</p>\n<p>{}</p>\n<p>Cause: <code>{}</code></p>",
        escape(target),
        escape(&err.to_string()),
        err.cause()
    );
    if let Some(setting) = err.setting() {
        body.push_str(&format!(
            "\n<p>Refused by the proxy's setting <code>{setting}</code>; an administrator can \
             change it to allow this.</p>"
        ));
    }
    let mut response = html(status, &title, &body);
    response
        .headers_mut()
        .insert(&ERROR_HEADER, error_header(err));
    response
}

/// `X-Portcullis-Error`: the cause, and for a refusal by a setting that setting as a parameter
/// (`destination-denied; setting=upstream.deny_networks`, a structured-field token with a
/// parameter, RFC 8941), so scripts that read the cause up to `;` keep working.
fn error_header(err: &ProxyError) -> HeaderValue {
    match err.setting() {
        None => HeaderValue::from_static(err.cause()),
        Some(setting) => HeaderValue::from_str(&format!("{}; setting={setting}", err.cause()))
            .unwrap_or_else(|_| HeaderValue::from_static(err.cause())),
    }
}

/// What a browser sees when it asks the proxy itself for a page (origin-form request): what
/// this is and, with inspection on, how to install the CA on each platform.
pub(super) fn info_page(listen: &str, ca: Option<(&str, String)>) -> Response<ProxyBody> {
    let mut body = format!(
        "<p>This is <b>Portcullis</b>, a forward proxy. It serves pages only to clients configured \
         to use it as their HTTP and HTTPS proxy ({}).</p>\n\
         <p>Configure your browser or operating system with this host and port as the proxy, \
         or use <code>curl -x http://HOST:PORT https://example.com/</code>.</p>",
        escape(listen)
    );
    if let Some((subject, fingerprint)) = ca {
        body.push_str(&format!(
            "\n<h2>Install the proxy's certificate authority</h2>\n\
             <p>HTTPS is inspected. Your device must trust <b>{}</b> \
             (SHA-256 fingerprint <code>{}</code>): download it as \
             <a href=\"/ca.pem\">PEM</a> or <a href=\"/ca.der\">DER (.cer)</a>.</p>\n<ul>\n\
             <li><b>Windows</b>: open the .cer file → Install Certificate → Local Machine → \
             \"Trusted Root Certification Authorities\"; or as administrator: \
             <code>certutil -addstore -f Root portcullis-ca.cer</code>. Group Policy can deploy it \
             to every machine (Computer Configuration → Public Key Policies → Trusted Root).</li>\n\
             <li><b>macOS</b>: <code>sudo security add-trusted-cert -d -r trustRoot -k \
             /Library/Keychains/System.keychain portcullis-ca.pem</code>, or open it in Keychain \
             Access and set \"Always Trust\".</li>\n\
             <li><b>Linux</b> (Debian/Ubuntu): <code>sudo cp portcullis-ca.pem \
             /usr/local/share/ca-certificates/portcullis-ca.crt &amp;&amp; sudo update-ca-certificates</code>; \
             Fedora/RHEL: copy to <code>/etc/pki/ca-trust/source/anchors/</code> and run \
             <code>sudo update-ca-trust</code>. Chromium on Linux uses the NSS database: \
             <code>certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n portcullis -i portcullis-ca.pem</code>.</li>\n\
             <li><b>Firefox</b>: Settings → Privacy &amp; Security → Certificates → View Certificates → \
             Authorities → Import, tick \"Trust this CA to identify websites\" (or set \
             <code>security.enterprise_roots.enabled</code> to use the system store).</li>\n</ul>",
            escape(subject),
            escape(&fingerprint)
        ));
    }
    html(StatusCode::OK, "Portcullis forward proxy", &body)
}

pub(super) fn not_found(path: &str) -> Response<ProxyBody> {
    let body = format!(
        "<p>The proxy itself has no page at <code>{}</code>. To fetch a web page, configure this \
         host as your proxy and request the full URL.</p>",
        escape(path)
    );
    html(StatusCode::NOT_FOUND, "404 Not Found", &body)
}

/// The 407 page; the caller adds one `Proxy-Authenticate` header per enabled scheme.
pub(super) fn auth_required(cause: &'static str) -> Response<ProxyBody> {
    let body = "<p>This proxy requires you to sign in. Your browser or operating system should \
                ask for your credentials (or use your Kerberos ticket) automatically.</p>";
    let mut response = html(
        StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        "407 Proxy Authentication Required",
        body,
    );
    response
        .headers_mut()
        .insert(&ERROR_HEADER, HeaderValue::from_static(cause));
    response
}
