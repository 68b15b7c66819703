//! The two TLS handshakes of an intercepted tunnel: the origin's first (verified; its names and
//! protocol shape the leaf), then the client's with a minted leaf — and the one log line of a
//! tunnel whose interception failed before any request.

use std::sync::Arc;

use portcullis_certs::{origin_sans, LeafName, LeafRequest};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::StartHandshake;

use super::Interception;
use crate::context::Proxy;
use crate::error::{ProxyError, Side};
use crate::http::{Outcome, Txn};
use crate::intercept::session::Session;
use crate::intercept::upstream_tls::{classify_handshake_error, server_name, HTTP11};
use crate::parents::Hop;
use crate::record::ResultCode;
use crate::tunnel::ClientStream;

/// The origin side of an intercepted tunnel, or why there is none.
pub(super) struct Origin {
    pub(super) session: Option<Arc<Session>>,
    /// The origin certificate's subjectAltNames, copied into the minted leaf.
    sans: Vec<LeafName>,
    /// The protocol the origin chose; the client is offered exactly this.
    alpn: Option<Vec<u8>>,
    pub(super) error: Option<ProxyError>,
}

/// Origin first: its certificate is verified before anything is minted. `upstream` is the
/// origin's TCP connection (reached by `hop`), or why there is none: a denial (the client gets
/// the 403 page inside the tunnel, the origin is never contacted) or a failed dial (a 502/504
/// page).
pub(super) async fn connect_origin(
    tls: &Interception<'_>,
    upstream: Result<TcpStream, ProxyError>,
    hop: Hop,
) -> Origin {
    let (proxy, target, sni) = (tls.proxy, tls.target, tls.sni.as_deref());
    // Reconnections to the origin go the way the tunnel went.
    let via = match &tls.plan.route {
        route @ portcullis_policy::Route::Parents(_) => {
            Some((Arc::clone(&proxy.parents), route.clone()))
        }
        portcullis_policy::Route::Direct => None,
    };
    let origin_name = sni.unwrap_or(target.host.as_str());
    let tls_config = tls
        .interceptor
        .origin_config(&tls.alpn, [origin_name, target.host.as_str()]);
    let connected = match upstream.and_then(|u| server_name(sni, &target.host).map(|n| (n, u))) {
        Ok((name, upstream)) => tokio_rustls::TlsConnector::from(Arc::clone(&tls_config))
            .connect(name.clone(), upstream)
            .await
            .map(|tls| (name, tls))
            .map_err(|e| classify_handshake_error(&e, origin_name)),
        Err(e) => Err(e),
    };
    match connected {
        Ok((name, tls)) => {
            let sans = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| origin_sans(leaf.as_ref()).ok())
                .unwrap_or_default();
            let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            let session = Session::new(
                target.host.clone(),
                target.port,
                name,
                tls_config,
                Arc::clone(&proxy.dialer),
                tls,
                (hop, via),
            )
            .with_read_buffer(proxy.config.upstream.read_buffer_bytes);
            Origin {
                session: Some(Arc::new(session)),
                sans,
                alpn,
                error: None,
            }
        }
        Err(e) => {
            if !matches!(e, ProxyError::Denied { .. } | ProxyError::TransparentAuth) {
                proxy.metrics.tls_handshake_failed(Side::Upstream);
            }
            tracing::info!(host = %origin_name, error = %e, "no origin connection; the client gets an error page");
            Origin {
                session: None,
                sans: Vec::new(),
                alpn: Some(HTTP11.to_vec()),
                error: Some(e),
            }
        }
    }
}

/// Why an intercepted tunnel ended before its client handshake completed: Squid's result code
/// (`NONE_NONE`, `…_ABORTED`, `…_TIMEDOUT`) and the cause.
pub(super) struct HandshakeFailure {
    result: ResultCode,
    error: ProxyError,
}

/// The one line of a tunnel whose interception failed before any request could be served
/// (no `NONE/200` line was written), counted by the metrics like any other transaction. When
/// the origin had already failed, its cause is the line's: no client could have got further.
pub(super) fn log_failed_interception(
    proxy: &Proxy,
    mut txn: Txn,
    origin: &Origin,
    hop: Hop,
    failure: HandshakeFailure,
) {
    let cause = match &origin.error {
        Some(e) if !matches!(e, ProxyError::Denied { .. } | ProxyError::TransparentAuth) => e,
        _ => &failure.error,
    };
    tracing::info!(error = %failure.error, cause = cause.cause(), "intercepted tunnel failed before its first request");
    txn.inspected();
    let outcome = Outcome {
        result: failure.result,
        error: Some(cause.cause()),
        ..if origin.session.is_some() {
            Outcome::via(hop)
        } else {
            Outcome::LOCAL
        }
    };
    proxy.access_log.log(txn.record(outcome, 0, 0, None));
}

/// Mints the leaf (with the origin's names) and finishes the client's handshake with the
/// protocol the origin chose. Fails when the client refused, left or stalled, or no
/// certificate could be minted. A refusal is remembered for `remember_refusal`, if that host
/// is one `tls.tunnel_after_refusal` covers.
pub(super) async fn handshake_client(
    tls: &Interception<'_>,
    start: StartHandshake<ClientStream>,
    origin: &Origin,
    remember_refusal: Option<&str>,
) -> Result<TlsStream<ClientStream>, HandshakeFailure> {
    let (proxy, interceptor, target) = (tls.proxy, tls.interceptor, tls.target);
    let sni = tls.sni.as_deref();
    let mint_failed = |reason: String| HandshakeFailure {
        result: ResultCode::NoneNone,
        error: ProxyError::CertificateMint(reason),
    };
    let leaf_name = LeafName::for_connection(sni, target.host.as_str())
        .map_err(|e| mint_failed(format!("no certificate name for this tunnel: {e}")))?;
    let request = LeafRequest::new(leaf_name).with_sans(origin.sans.clone());
    let key = interceptor
        .leaf(&request)
        .await
        .map_err(|e| mint_failed(e.to_string()))?;
    // Serve the client exactly the protocol the origin chose (none: HTTP/1.1).
    let client_alpn = match &origin.alpn {
        Some(p) if tls.alpn.contains(p) => vec![p.clone()],
        _ => Vec::new(),
    };
    let server_config = interceptor
        .server_config(key, client_alpn)
        .map_err(|e| mint_failed(format!("TLS server config: {e}")))?;
    let e = match tokio::time::timeout(tls.wait, start.into_stream(server_config)).await {
        Ok(Ok(tls)) => return Ok(tls),
        Ok(Err(e)) => e,
        Err(_) => {
            proxy.metrics.tls_handshake_failed(Side::Client);
            return Err(HandshakeFailure {
                result: ResultCode::NoneTimedOut,
                error: ProxyError::ClientTlsTimeout(tls.wait),
            });
        }
    };
    // Typically a client that pins the origin's certificate or lacks our CA.
    proxy.metrics.tls_handshake_failed(Side::Client);
    let refused = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| matches!(e, rustls::Error::AlertReceived(_)));
    let origin_name = sni.unwrap_or(target.host.as_str());
    if refused {
        match remember_refusal.filter(|host| interceptor.refusals.covers(host)) {
            Some(host) => {
                interceptor.refusals.remember(tls.conn.client.ip(), host);
                tracing::warn!(
                    host = %origin_name, error = %e,
                    "client refused the intercepted connection (certificate pinning); its next tunnels to this host are relayed untouched for tls.tunnel_after_refusal"
                );
            }
            None => tracing::warn!(
                host = %origin_name, error = %e,
                "client refused the intercepted connection (certificate pinning, or the proxy CA is not installed); a policy rule with action = \"tunnel\" (or tls.tunnel_after_refusal_hosts) lets such an application through"
            ),
        }
    }
    // Otherwise a client that simply went away (browsers drop surplus connections).
    let error = if refused {
        ProxyError::ClientTlsRefused(e.to_string())
    } else {
        ProxyError::ClientTlsAborted(e.to_string())
    };
    Err(HandshakeFailure {
        result: ResultCode::NoneAborted,
        error,
    })
}
