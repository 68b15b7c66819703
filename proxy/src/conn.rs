//! One client connection: hyper's HTTP/1 server with upgrades, driven by [`crate::driver`]
//! under the client deadlines, in a tracing span naming the client; each request goes to
//! [`crate::http::handle`] with the configuration snapshot current when it starts.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::activity::ActivityIo;
use crate::context::{ConnCtx, Proxy};
use crate::driver::{drive, http1_builder, request_span, Closed};
use crate::original_dst::TransparentKind;
use crate::record::{Channel, Hierarchy, Record, ResultCode};
use crate::reload::Reloader;
use crate::rewind::Rewind;

/// Serves one admitted client connection until it closes, idles out or the proxy shuts down.
pub(crate) async fn serve(
    proxy: Arc<Proxy>,
    reloader: Arc<Reloader>,
    stream: Rewind<TcpStream>,
    ctx: Arc<ConnCtx>,
    shutdown: CancellationToken,
) {
    let span = tracing::debug_span!("conn", client = %ctx.client, listener = %ctx.local);
    if let Some(dst) = ctx.original_dst.filter(|d| d.kind == TransparentKind::Tls) {
        // A redirected TLS connection: no HTTP runs on it until the ClientHello is settled.
        // Boxed: inline, its (inspection-sized) future would make every connection's task that
        // large, idle keep-alive connections included.
        let serve = Box::pin(crate::http::serve_transparent_tls(
            proxy, ctx, stream, dst.addr,
        ));
        return serve.instrument(span).await;
    }
    serve_in_span(proxy, reloader, stream, ctx, shutdown)
        .instrument(span)
        .await;
}

async fn serve_in_span(
    proxy: Arc<Proxy>,
    reloader: Arc<Reloader>,
    stream: Rewind<TcpStream>,
    ctx: Arc<ConnCtx>,
    shutdown: CancellationToken,
) {
    let timeouts = proxy.config.timeouts.clone();
    let builder = http1_builder(&proxy.config.server);
    let io = TokioIo::new(ActivityIo::new(stream, Arc::clone(&ctx.activity)));
    let service = {
        let ctx = Arc::clone(&ctx);
        service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            // The snapshot is taken per request, so a reload applies to a keep-alive
            // connection's next request while this one finishes with what it started with.
            let proxy = reloader.current();
            let ctx = Arc::clone(&ctx);
            let span = request_span(&req);
            async move {
                let connect = req.method() == http::Method::CONNECT;
                let metrics = Arc::clone(&proxy.metrics);
                // Boxed: hyper keeps the slot for this future for the connection's whole life,
                // so an inline request future would stay resident on every idle keep-alive
                // connection (7 KiB each); a box lives only while the request does.
                let response = Box::pin(crate::http::handle(proxy, Arc::clone(&ctx), req)).await;
                let status = response.status();
                if (connect && status.is_success())
                    || status == http::StatusCode::SWITCHING_PROTOCOLS
                {
                    ctx.tunnel_opened(&metrics);
                }
                Ok::<_, Infallible>(response)
            }
            .instrument(span)
        })
    };
    let conn = builder.serve_connection(io, service).with_upgrades();
    let result = drive(
        conn,
        &ctx.activity,
        timeouts.client_header,
        timeouts.client_idle,
        &shutdown,
    )
    .await;
    match result {
        Err(Closed::HeaderTimeout) => {
            tracing::debug!("request head not received in time; closing");
            log_connection_error(&proxy, &ctx, 408, "error:request-head-timeout");
        }
        Err(Closed::Idle) => {
            tracing::trace!("idle keep-alive connection closed");
        }
        Err(Closed::Hyper(e)) if e.is_parse_too_large() => {
            log_connection_error(&proxy, &ctx, 431, "error:request-too-large");
        }
        Err(Closed::Hyper(e)) if e.is_parse() => {
            log_connection_error(&proxy, &ctx, 400, "error:invalid-request");
        }
        Err(Closed::Hyper(e)) => {
            tracing::debug!(error = %e, "client connection ended with an error");
        }
        Ok(()) => {}
    }
}

/// Squid logs requests it could not parse as `NONE/400 … error:invalid-request`; so do we.
fn log_connection_error(proxy: &Proxy, ctx: &ConnCtx, status: u16, url: &str) {
    proxy.access_log.log(Record {
        time: std::time::SystemTime::now(),
        elapsed_ms: 0,
        client: ctx.client.ip(),
        result: ResultCode::None,
        status,
        bytes: 0,
        bytes_in: 0,
        method: "NONE".into(),
        url: url.into(),
        user: None,
        groups: None,
        hierarchy: Hierarchy::None,
        peer: None,
        content_type: None,
        error: None,
        channel: Channel::Plain,
        policy: None,
        transparent: ctx.original_dst.map(|d| d.kind),
        icap: Vec::new(),
    });
}
