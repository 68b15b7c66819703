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

/// The proxy's own style: inline, no external assets (a client that cannot use the proxy yet
/// can still read its pages), readable on a phone and when printed.
const STYLE: &str = "\
:root{color-scheme:light dark;--fg:#1d2430;--muted:#5b6573;--bg:#f6f7f9;--card:#fff;\
--line:#d9dde3;--accent:#1f5fbf;--code:#eef1f5}\
@media (prefers-color-scheme:dark){:root{--fg:#e6e9ee;--muted:#a3acb9;--bg:#14171c;\
--card:#1c2027;--line:#323844;--accent:#7fb0ff;--code:#262b34}}\
*{box-sizing:border-box}\
body{margin:0;background:var(--bg);color:var(--fg);\
font:16px/1.55 system-ui,-apple-system,\"Segoe UI\",Roboto,\"Noto Sans\",sans-serif}\
main{max-width:54rem;margin:0 auto;padding:2rem 1.25rem 3rem}\
h1{font-size:1.7rem;margin:0 0 .25rem}h2{font-size:1.2rem;margin:0 0 .75rem}\
h3{font-size:1rem;margin:1.1rem 0 .35rem}\
p{margin:.5rem 0}.lead{color:var(--muted);margin-bottom:1.5rem}\
section{background:var(--card);border:1px solid var(--line);border-radius:10px;\
padding:1.1rem 1.3rem;margin:0 0 1.1rem}\
code{font:.88em/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;\
background:var(--code);border-radius:4px;padding:.1em .35em;overflow-wrap:anywhere}\
pre{background:var(--code);border-radius:6px;padding:.6rem .8rem;margin:.4rem 0;\
white-space:pre-wrap;overflow-wrap:anywhere}\
pre code{padding:0;background:none}\
a{color:var(--accent)}\
.buttons{display:flex;flex-wrap:wrap;gap:.6rem;margin:.8rem 0}\
.button{display:inline-block;padding:.5rem .95rem;border-radius:7px;background:var(--accent);\
color:var(--card);text-decoration:none;font-weight:600}\
.fingerprint{display:block;padding:.5rem .7rem;margin:.4rem 0;word-break:break-all}\
footer{color:var(--muted);font-size:.85rem;text-align:center}";

fn html(status: StatusCode, title: &str, body_html: &str) -> Response<ProxyBody> {
    let page = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>{STYLE}</style></head>\n\
         <body><main><h1>{title}</h1>\n{body_html}\n\
         <footer>Portcullis {VERSION}</footer></main></body></html>\n",
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

/// What a browser sees when it asks the proxy itself for a page (origin-form request): how to
/// point a device at this proxy (address, PAC file) and, with inspection on, how to install
/// its CA on each platform.
///
/// `proxy` is the `host:port` clients use (the PAC file's), `listen` every listening address.
pub(super) fn info_page(
    proxy: &str,
    listen: &str,
    ca: Option<(&str, String)>,
    self_test: Option<&str>,
) -> Response<ProxyBody> {
    let proxy = escape(proxy);
    let use_it = format!(
        "\n<section id=\"use\"><h2>Use this proxy</h2>\n\
         <p>Proxy address: <code>{proxy}</code> for HTTP and HTTPS (listening on {listen}).</p>\n\
         <p>Automatic configuration (PAC): <a href=\"/proxy.pac\"><code>http://{proxy}/proxy.pac</code></a> \
         — it also tells devices which hosts to reach directly.</p>\n\
         <h3>Windows</h3><p>Settings → Network &amp; Internet → Proxy: \"Use setup script\" with the PAC \
         address, or \"Use a proxy server\" with the proxy address. Outlook uses these settings.</p>\n\
         <h3>macOS</h3><p>System Settings → Network → your network → Details → Proxies: \
         \"Automatic proxy configuration\" with the PAC address, or \"Web proxy\" and \"Secure web \
         proxy\".</p>\n\
         <h3>Linux</h3><p>GNOME Settings → Network → Network Proxy → Automatic (the PAC address) or \
         Manual; command-line tools: <code>export https_proxy=http://{proxy} http_proxy=http://{proxy}</code>.</p>\n\
         <h3>Firefox</h3><p>Settings → Network Settings → \"Automatic proxy configuration URL\" with \
         the PAC address.</p>\n</section>",
        listen = escape(listen),
    );
    let mut body = "<p class=\"lead\">A forward proxy for web and Outlook traffic. It serves \
                    pages to devices set up to use it as their HTTP and HTTPS proxy.</p>"
        .to_owned();
    // The certificate first: it is what most people come to this page for.
    match ca {
        Some((subject, fingerprint)) => body.push_str(&format!(
            "\n<section id=\"ca\"><h2>Install the proxy's certificate authority</h2>\n\
             <p>HTTPS is inspected: your device must trust the certificate authority \
             <b>{subject}</b>, or secure sites will show certificate errors.</p>\n\
             <div class=\"buttons\"><a class=\"button\" href=\"/ca.pem\">Download ca.pem (PEM)</a>\
             <a class=\"button\" href=\"/ca.der\">Download ca.cer (DER, Windows and macOS)</a></div>\n\
             <p>Before trusting it, check that its SHA-256 fingerprint is the one your administrator \
             gave you:</p>\n<code class=\"fingerprint\">{fingerprint}</code>\n\
             <h3>Windows</h3><p>Open the .cer file → Install Certificate → Local Machine → \
             \"Trusted Root Certification Authorities\"; or as administrator:</p>\
             <pre><code>certutil -addstore -f Root portcullis-ca.cer</code></pre>\
             <p>Group Policy can deploy it to every machine (Computer Configuration → Windows \
             Settings → Security Settings → Public Key Policies → Trusted Root Certification \
             Authorities). Outlook and Edge use this store.</p>\n\
             <h3>macOS</h3><pre><code>sudo security add-trusted-cert -d -r trustRoot \
             -k /Library/Keychains/System.keychain portcullis-ca.pem</code></pre>\
             <p>or open it in Keychain Access and set \"Always Trust\".</p>\n\
             <h3>Linux</h3><p>Debian, Ubuntu:</p><pre><code>sudo cp portcullis-ca.pem \
             /usr/local/share/ca-certificates/portcullis-ca.crt\nsudo update-ca-certificates</code></pre>\
             <p>Fedora, RHEL: copy it to <code>/etc/pki/ca-trust/source/anchors/</code> and run \
             <code>sudo update-ca-trust</code>. Chromium and Chrome on Linux use their own \
             database:</p><pre><code>certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n portcullis \
             -i portcullis-ca.pem</code></pre>\n\
             <h3>Firefox</h3><p>Settings → Privacy &amp; Security → Certificates → View \
             Certificates → Authorities → Import, and tick \"Trust this CA to identify websites\" \
             (or set <code>security.enterprise_roots.enabled</code> to use the system's).</p>\n\
             </section>",
            subject = escape(subject),
            fingerprint = escape(&fingerprint),
        )),
        None => body.push_str(
            "\n<section id=\"ca\"><h2>Certificates</h2><p>HTTPS is not inspected by this proxy: \
             no certificate needs to be installed.</p></section>",
        ),
    }
    body.push_str(&use_it);
    if let Some(summary) = self_test {
        body.push_str(&format!(
            "\n<section id=\"self-test\"><h2>Self-test</h2><p>{}</p></section>",
            escape(summary)
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
