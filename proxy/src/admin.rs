//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/config`, `/doctor` and
//! `POST /reload`.
//!
//! It is bound *before* the proxy listeners, so that a probe can tell "alive but not yet
//! serving" (`/healthz` 200, `/readyz` 503) from "serving" — for instance while a large htpasswd
//! file or the CA is still being loaded. It runs outside the proxy's connection limits and drain:
//! monitoring must work when the proxy is saturated, and must not delay a shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, ORIGIN};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::reload::Reloader;

/// Admin connections served at once; a scraper or a probe needs one or two.
const MAX_ADMIN_CONNECTIONS: usize = 64;

/// What the admin endpoints read. Created before anything else at start, so `/healthz` and
/// `/metrics` answer while the rest is still loading.
pub(crate) struct AdminState {
    pub metrics: Arc<Metrics>,
    listeners_bound: AtomicBool,
    /// Set once the first configuration snapshot is built and serving.
    reloader: OnceLock<Arc<Reloader>>,
}

impl AdminState {
    pub(crate) fn new(metrics: Arc<Metrics>) -> AdminState {
        AdminState {
            metrics,
            listeners_bound: AtomicBool::new(false),
            reloader: OnceLock::new(),
        }
    }

    /// The proxy is running with its first snapshot; `/config` and `/reload` become available.
    pub(crate) fn set_reloader(&self, reloader: Arc<Reloader>) {
        let _ = self.reloader.set(reloader);
    }

    /// Every proxy listener is bound and accepting.
    pub(crate) fn set_listeners_bound(&self) {
        self.listeners_bound.store(true, Ordering::Release);
    }

    /// Each readiness check and its state; ready when all are `Ok`.
    pub(crate) fn readiness(&self) -> Vec<(&'static str, Result<String, String>)> {
        let snapshot = self.reloader.get().map(|r| r.current());
        // A rejected reload does not make the proxy unready: it keeps serving with the
        // previous, valid configuration. It is shown here and in the metrics for alerting.
        let config = match &snapshot {
            Some(_) if self.metrics.last_reload_ok() => Ok("valid".to_owned()),
            Some(_) => Ok("valid (the last reload was rejected; see the log)".to_owned()),
            None => Err("still loading".to_owned()),
        };
        let listeners = if self.listeners_bound.load(Ordering::Acquire) {
            match &snapshot {
                Some(proxy) => Ok(format!("bound ({})", proxy.listen_label())),
                None => Ok("bound".to_owned()),
            }
        } else {
            Err("not bound yet".to_owned())
        };
        // With inspection on, the proxy is only useful once it can mint certificates.
        let ca = match &snapshot {
            None => Err("not loaded yet".to_owned()),
            Some(proxy) if !proxy.config.tls.inspect => {
                Ok("not needed (tls.inspect is off)".to_owned())
            }
            Some(proxy) => match &proxy.interceptor {
                Some(interceptor) => Ok(format!("loaded ({})", interceptor.ca.subject())),
                None => Err("not loaded".to_owned()),
            },
        };
        let parents = match &snapshot {
            None => Ok("not loaded yet".to_owned()),
            Some(proxy) => proxy.parents.readiness(),
        };
        vec![
            ("config", config),
            ("listeners", listeners),
            ("ca", ca),
            ("parents", parents),
        ]
    }

    /// One line per ICAP service, asked now (OPTIONS). A service that is down fails the check
    /// when it fails closed (`bypass_on_error = false`: its traffic gets 502s); one that fails
    /// open is reported but keeps the proxy ready (its traffic passes unscanned).
    async fn icap_readiness(&self) -> Vec<(String, Result<String, String>)> {
        let Some(proxy) = self.reloader.get().map(|r| r.current()) else {
            return Vec::new();
        };
        let mut checks = Vec::new();
        for service in proxy.icap.services() {
            let name = format!("icap {}", service.name);
            let check = match (service.probe().await, service.bypass_on_error) {
                (Ok(()), _) => Ok("up".to_owned()),
                (Err(e), true) => Ok(format!(
                    "down, bypassed (bypass_on_error): traffic passes unscanned: {e}"
                )),
                (Err(e), false) => Err(format!("down: {e}")),
            };
            checks.push((name, check));
        }
        checks
    }
}

/// Serves the admin endpoints on `listener` until `shutdown` is cancelled.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            continue; // dropping the stream closes it
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let mut builder = http1::Builder::new();
            // A client that never finishes its request head must not hold a slot forever.
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(slot);
        });
    }
}

/// The admin address as a log line; worded differently from the proxy's `listening on`, which
/// tools and the test harness read to find the proxy port.
pub(crate) fn log_bound(addr: SocketAddr) {
    tracing::info!("admin endpoints on {addr} (/metrics /healthz /readyz /config /reload)");
}

async fn handle(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    match path {
        "/metrics" | "/healthz" | "/readyz" | "/config" | "/doctor" if !get => {
            not_allowed("GET, HEAD")
        }
        "/metrics" => match state.metrics.render() {
            Ok(text) => text_response(StatusCode::OK, prometheus::TEXT_FORMAT, text),
            Err(e) => plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot render metrics: {e}\n"),
            ),
        },
        "/healthz" => plain(StatusCode::OK, "ok\n".to_owned()),
        "/readyz" => {
            let mut checks: Vec<(String, Result<String, String>)> = state
                .readiness()
                .into_iter()
                .map(|(name, check)| (name.to_owned(), check))
                .collect();
            checks.extend(state.icap_readiness().await);
            let ready = checks.iter().all(|(_, s)| s.is_ok());
            let mut body = String::from(if ready { "ready\n" } else { "not ready\n" });
            for (name, check) in checks {
                match check {
                    Ok(detail) => body.push_str(&format!("{name}: ok: {detail}\n")),
                    Err(detail) => body.push_str(&format!("{name}: FAIL: {detail}\n")),
                }
            }
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            plain(status, body)
        }
        "/config" => match state.reloader.get() {
            Some(reloader) => text_response(
                StatusCode::OK,
                "application/toml; charset=utf-8",
                reloader.current().config.to_redacted_toml(),
            ),
            None => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "still starting\n".to_owned(),
            ),
        },
        // Takes no parameters: what it probes comes from the config alone (see `doctor`).
        "/doctor" => match state.reloader.get() {
            Some(reloader) => text_response(
                StatusCode::OK,
                "application/json",
                crate::doctor::cache::report(reloader).await.to_json(),
            ),
            None => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "still starting\n".to_owned(),
            ),
        },
        "/reload" => {
            if req.method() != Method::POST {
                return not_allowed("POST");
            }
            // A web page in a browser on this host may POST to loopback; browsers mark such
            // requests with Origin, command-line clients and Prometheus do not.
            if req.headers().contains_key(ORIGIN) {
                return plain(
                    StatusCode::FORBIDDEN,
                    "cross-origin reloads are refused\n".to_owned(),
                );
            }
            let Some(reloader) = state.reloader.get() else {
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "still starting\n".to_owned(),
                );
            };
            match reloader.reload().await {
                Ok(report) => plain(StatusCode::OK, report.to_string()),
                Err(e) => plain(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("reload rejected; the previous configuration stays in use: {e}\n"),
                ),
            }
        }
        "/" => plain(
            StatusCode::OK,
            "portcullis admin: /metrics /healthz /readyz /config /doctor, POST /reload\n"
                .to_owned(),
        ),
        _ => plain(StatusCode::NOT_FOUND, "not found\n".to_owned()),
    }
}

fn text_response(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    text_response(status, "text/plain; charset=utf-8", body)
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = plain(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed\n".to_owned(),
    );
    response
        .headers_mut()
        .insert(ALLOW, http::HeaderValue::from_static(allow));
    response
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    /// Before the first snapshot and the listeners exist, the process is alive but not ready,
    /// and readiness names what is missing.
    #[tokio::test]
    async fn alive_but_not_ready_while_starting() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(AdminState::new(Arc::new(Metrics::new().unwrap())));
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(listener, Arc::clone(&state), shutdown.clone()));
        let req =
            |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");

        let health = get(addr, &req("/healthz")).await;
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        let ready = get(addr, &req("/readyz")).await;
        assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
        assert!(ready.contains("listeners: FAIL: not bound yet"), "{ready}");
        let metrics = get(addr, &req("/metrics")).await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("portcullis_build_info"), "{metrics}");
        let config = get(addr, &req("/config")).await;
        assert!(config.starts_with("HTTP/1.1 503"), "{config}");
        let reload = get(
            addr,
            "POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(reload.starts_with("HTTP/1.1 503"), "{reload}");
        let wrong = get(addr, &req("/reload")).await;
        assert!(wrong.starts_with("HTTP/1.1 405"), "{wrong}");
        let cross = get(addr, "POST /reload HTTP/1.1\r\nHost: x\r\nOrigin: http://evil.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
        assert!(cross.starts_with("HTTP/1.1 403"), "{cross}");

        state.set_listeners_bound();
        let ready = get(addr, &req("/readyz")).await;
        assert!(
            ready.starts_with("HTTP/1.1 503"),
            "no snapshot yet: {ready}"
        );
        assert!(ready.contains("listeners: ok"), "{ready}");
        shutdown.cancel();
    }
}
