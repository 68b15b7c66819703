//! The Microsoft 365 endpoints web service, live: the proxy keeps the Outlook profile's list of
//! Exchange Online hosts and networks current without anyone editing the config.
//!
//! - A ClientRequestId GUID is kept in `<data_dir>/m365/client-request-id`, as Microsoft asks
//!   (`m365_cache.rs`, with the cached list).
//! - `/version/<instance>` is asked every `m365.check_interval` (hourly for Microsoft's
//!   service); `/endpoints/<instance>` only when the version changed, because the service
//!   answers 429 to eager clients.
//! - The last good list is cached in `<data_dir>/m365/endpoints.json` (+ `version`), loaded at
//!   start and on every reload, and kept when the service is unreachable or sends garbage.
//! - A new list takes effect through the ordinary reload, so it is validated and swapped the
//!   same way as a config change.
//!
//! The parsing and the turning of sets into rules are pure and live in `portcullis_policy::m365`.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use portcullis_policy::m365;
use tokio_util::sync::CancellationToken;

use crate::intercept::upstream_tls::UpstreamTls;
use crate::m365_cache::{cached_version, client_request_id, store};
use crate::reload::Reloader;

/// The feed is ~100 KB; anything far larger is not the feed.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Checks the service every `check_interval` until shutdown; a new list triggers a reload.
///
/// An installation without Internet access fails every check. That is said once, at INFO, when
/// the first check fails (with the setting that stops asking); later failures are counted in
/// `portcullis_m365_fetches_total{result="failed"}` and logged at DEBUG. Losing a service that
/// answered before is a WARN, once per outage.
pub(crate) async fn run(reloader: Arc<Reloader>, shutdown: CancellationToken) {
    // Whether the last check reached the service; `None` before the first check.
    let mut reached: Option<bool> = None;
    loop {
        let proxy = reloader.current();
        let settings = proxy.config.m365.clone();
        if settings.fetch {
            let result = check(&proxy).await;
            let ok = !matches!(result, Err(Failure::Other(_)));
            record(&proxy, &result).await;
            match result {
                Ok(Checked::Unchanged) => proxy.metrics.m365_fetched("unchanged"),
                Ok(Checked::Updated { version, sets }) => {
                    proxy.metrics.m365_fetched("updated");
                    tracing::info!(%version, sets, "new Microsoft 365 endpoint list; reloading");
                    let _ = reloader.reload().await;
                }
                Err(Failure::Throttled) => {
                    proxy.metrics.m365_fetched("throttled");
                    tracing::warn!(
                        "the Microsoft 365 endpoints service answered 429 (too many requests); keeping the cached list"
                    );
                }
                Err(Failure::Other(e)) => {
                    proxy.metrics.m365_fetched("failed");
                    log_failure(reached, &settings.url, &e);
                }
            }
            if ok && reached == Some(false) {
                tracing::info!(url = %settings.url, "the Microsoft 365 endpoints service is reachable again");
            }
            reached = Some(ok);
        }
        drop(proxy);
        tokio::select! {
            _ = tokio::time::sleep(settings.check_interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Keeps the outcome on disk for `portcullis doctor`.
async fn record(proxy: &crate::context::Proxy, result: &Result<Checked, Failure>) {
    let (what, detail) = match result {
        Ok(Checked::Unchanged) => ("unchanged", String::new()),
        Ok(Checked::Updated { version, .. }) => ("updated", version.clone()),
        Err(Failure::Throttled) => ("throttled", "429 too many requests".to_owned()),
        Err(Failure::Other(e)) => ("failed", e.clone()),
    };
    let config = Arc::clone(&proxy.config);
    let _ = tokio::task::spawn_blocking(move || {
        crate::m365_cache::record_fetch(&config, what, &detail);
    })
    .await;
}

/// One failed check, logged by what came before it (see [`run`]).
fn log_failure(reached: Option<bool>, url: &str, error: &str) {
    match reached {
        None => tracing::info!(
            url,
            error,
            "the Microsoft 365 endpoints service cannot be reached; using the cached or built-in \
             endpoint list. Without Internet access set m365.fetch = false (and import a list \
             with `portcullis m365 import`); further failures are only counted \
             (portcullis_m365_fetches_total{{result=\"failed\"}})"
        ),
        Some(true) => tracing::warn!(
            url,
            error,
            "cannot refresh the Microsoft 365 endpoint list; keeping the one in use (cached or built in)"
        ),
        Some(false) => tracing::debug!(url, error, "the Microsoft 365 endpoints service is still unreachable"),
    }
}

enum Checked {
    Unchanged,
    Updated { version: String, sets: usize },
}

enum Failure {
    Throttled,
    Other(String),
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Failure::Other(e)
    }
}

async fn check(proxy: &crate::context::Proxy) -> Result<Checked, Failure> {
    let config = &proxy.config;
    let m = &config.m365;
    let id = {
        let config = Arc::clone(&proxy.config);
        tokio::task::spawn_blocking(move || client_request_id(&config))
            .await
            .map_err(|e| e.to_string())?
    };
    let base = m.url.trim_end_matches('/');
    let tls = UpstreamTls::new(&config.tls).map_err(|e| e.to_string())?;
    let version_url = format!("{base}/version/{}?ClientRequestId={id}", m.instance);
    let text = get(proxy, &tls, &version_url).await?;
    let versions = m365::parse_versions(&text).map_err(|e| e.to_string())?;
    let latest = versions
        .iter()
        .find(|v| v.instance.eq_ignore_ascii_case(&m.instance))
        .map(|v| v.latest.clone())
        .ok_or_else(|| format!("the version answer has no instance {}", m.instance))?;
    let cached = cached_version(config);
    if cached.as_deref().map(str::trim) == Some(latest.as_str()) {
        return Ok(Checked::Unchanged);
    }
    let endpoints_url = format!("{base}/endpoints/{}?ClientRequestId={id}", m.instance);
    let json = get(proxy, &tls, &endpoints_url).await?;
    let config = Arc::clone(&proxy.config);
    let version = latest.clone();
    let sets = tokio::task::spawn_blocking(move || store(&config, &json, &version))
        .await
        .map_err(|e| e.to_string())??;
    Ok(Checked::Updated {
        version: latest,
        sets,
    })
}

/// One GET through the proxy's own dialer (its resolver, its connect timeout); `https` is
/// verified like any origin.
async fn get(
    proxy: &crate::context::Proxy,
    tls: &UpstreamTls,
    url: &str,
) -> Result<String, Failure> {
    let uri: Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let https = uri.scheme_str() == Some("https");
    let host = portcullis_policy::Host::new(uri.host().ok_or_else(|| format!("{url}: no host"))?);
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = proxy
        .dialer
        .dial_uncounted(&host, port)
        .await
        .map_err(|e| e.to_string())?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let request = Request::get(path)
        .header(http::header::HOST, host.to_uri_host())
        .header(
            http::header::USER_AGENT,
            concat!("portcullis/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let timeout = proxy.config.timeouts.upstream_response;
    let exchange = async {
        if https {
            let name = rustls::pki_types::ServerName::try_from(host.as_str().to_owned())
                .map_err(|e| format!("{host}: {e}"))?;
            let stream = tokio_rustls::TlsConnector::from(tls.config(&[], false))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {host}: {e}"))?;
            send(TokioIo::new(stream), request).await
        } else {
            send(TokioIo::new(tcp), request).await
        }
    };
    let (status, body) = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{url}: no answer within {timeout:?}"))??;
    match status {
        StatusCode::OK => {
            String::from_utf8(body.to_vec()).map_err(|_| format!("{url}: not UTF-8").into())
        }
        StatusCode::TOO_MANY_REQUESTS => Err(Failure::Throttled),
        other => Err(format!("{url}: HTTP {other}").into()),
    }
}

async fn send<I>(io: I, request: Request<Empty<Bytes>>) -> Result<(StatusCode, Bytes), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok((status, body))
}
