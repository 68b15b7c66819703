//! An intercepted CONNECT tunnel, after `200 Connection established`: the client's first bytes
//! decide. A TLS ClientHello is intercepted (unless the policy, deciding again with the SNI,
//! says tunnel or deny); anything else — or a server that speaks first — is relayed untouched.
//!
//! An intercepted tunnel connects to the origin *first*, verifying its certificate; only then
//! is a leaf minted (copying the origin's subjectAltNames) and the client handshake finished
//! with the ALPN the origin chose. A bad origin certificate is never laundered: the client gets
//! a certificate for the name it asked for and, inside that connection, a 502 page naming the
//! problem. The decrypted requests are served by hyper and go through `forward.rs`, the same
//! header, error and log code as plain HTTP. The TLS machinery itself is `crate::intercept`.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use portcullis_certs::{origin_sans, LeafName, LeafRequest};
use portcullis_policy::{Action, Decision, Identity, RequestFacts};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::StartHandshake;
use tracing::Instrument;

use super::connect::{relay_and_log, tunnel_reason, TunnelPlan};
use super::target::Target;
use super::{forward, Outcome, Txn};
use crate::activity::{Activity, ActivityIo};
use crate::body::ProxyBody;
use crate::context::{ConnCtx, Proxy};
use crate::driver::{drive, http1_builder, request_span, GracefulConnection};
use crate::error::{ProxyError, Side};
use crate::intercept::hello::{peek, read_client_hello, FirstBytes};
use crate::intercept::session::Session;
use crate::intercept::upstream_tls::{classify_handshake_error, server_name, H2, HTTP11};
use crate::intercept::Interceptor;
use crate::metrics::TlsTunnelReason;
use crate::record::ResultCode;
use crate::tunnel::TunnelClient;

/// Runs one CONNECT tunnel whose decision is "inspect", after the 200 has been sent.
pub(super) async fn run(
    proxy: Arc<Proxy>,
    conn: Arc<ConnCtx>,
    mut txn: Txn,
    client: Upgraded,
    upstream: TcpStream,
    target: Target,
    plan: TunnelPlan,
) {
    let Some(interceptor) = proxy.interceptor.clone() else {
        return;
    };
    let mut client = TokioIo::new(client);
    let peer = upstream.peer_addr().ok().map(|a| a.ip());
    let idle = plan.idle;
    // A silent client gets no longer than a silent tunnel would.
    let wait = proxy.config.timeouts.client_header.min(idle);
    let hello = match peek(&mut client, &upstream, wait).await {
        FirstBytes::Tls(bytes) => read_client_hello(&mut client, bytes, wait).await,
        FirstBytes::Other(bytes) => Err(bytes),
    };
    let (accepted, seen) = match hello {
        Ok(pair) => pair,
        Err(bytes) => {
            proxy.metrics.tls_tunnelled(TlsTunnelReason::NonTls);
            let client = TunnelClient::new(client.into_inner(), bytes);
            return relay_and_log(&proxy, conn, txn, client, upstream, idle).await;
        }
    };
    let hello = accepted.client_hello();
    let sni = hello.server_name().map(str::to_owned);
    let alpn: Vec<Vec<u8>> = hello
        .alpn()
        .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
        .unwrap_or_default();
    let mut denied = None;
    if let Some(decision) = decide_on_sni(&proxy, &conn, &txn, &target, sni.as_deref(), &plan) {
        txn.decided(&decision);
        match &decision.action {
            Action::Inspect => {}
            Action::Tunnel => {
                tracing::debug!(sni = ?sni, decision = %decision, "tunnelling untouched on the SNI");
                proxy.metrics.tls_tunnelled(tunnel_reason(&decision));
                let client = TunnelClient::new(client.into_inner(), seen.freeze());
                let idle = if txn.long_poll() {
                    proxy.tunnel_idle(true)
                } else {
                    idle
                };
                return relay_and_log(&proxy, conn, txn, client, upstream, idle).await;
            }
            // The 200 is already sent: finish the handshake and show the page inside.
            Action::Deny { .. } => denied = ProxyError::denial(&decision),
        }
    }
    // The policy said inspect, with the SNI too. Only now may an earlier refusal of this host
    // by this client (`tls.tunnel_after_refusal`, listed hosts only) turn the tunnel into a
    // relay: never for a host the policy denies or does not inspect.
    let judged = super::judged_host(&target, sni.as_deref()).to_owned();
    let client_ip = conn.client.ip();
    if denied.is_none() && interceptor.refusals.contains(client_ip, &judged) {
        tracing::debug!(host = %judged, "this client refused interception of this host; tunnelling untouched");
        proxy.metrics.tls_tunnelled(TlsTunnelReason::PinningFailure);
        txn.tunnelled_after_refusal();
        // rustls has seen the ClientHello; the origin gets the same bytes.
        let client = TunnelClient::new(client.into_inner(), seen.freeze());
        return relay_and_log(&proxy, conn, txn, client, upstream, idle).await;
    }
    // A refusal of a page the policy denies is no reason to stop inspecting.
    let remember_refusal = denied.is_none().then_some(judged.as_str());
    let start = StartHandshake::from_parts(accepted, client);
    let origin_name = sni.as_deref().unwrap_or(target.host.as_str()).to_owned();
    let origin = connect_origin(
        &proxy,
        &interceptor,
        &target,
        sni.as_deref(),
        &alpn,
        upstream,
        denied,
    )
    .await;
    let handshake = handshake_client(
        &proxy,
        &interceptor,
        &conn,
        start,
        &target,
        sni.as_deref(),
        &alpn,
        &origin,
        wait,
        remember_refusal,
    )
    .await;
    let client_tls = match handshake {
        Ok(tls) => tls,
        Err(failure) => return log_failed_interception(&proxy, txn, &origin, peer, failure),
    };
    proxy.metrics.tls_intercepted();
    let h2 = client_tls.get_ref().1.alpn_protocol() == Some(H2);
    let authority = if target.port == 443 {
        origin_name.clone()
    } else {
        format!("{origin_name}:{}", target.port)
    };
    // Squid logs an intercepted CONNECT as `NONE/200 0 CONNECT host:port`, then each decrypted
    // request on its own line.
    txn.inspected();
    let outcome = Outcome {
        result: ResultCode::None,
        ..Outcome::direct(peer)
    };
    let user = txn.user().map(str::to_owned);
    proxy.access_log.log(txn.record(outcome, 200, 0, None));
    let tunnel = Tunnel {
        session: origin.session,
        upstream_error: origin.error,
        authority,
        host: origin_name,
        port: target.port,
        sni,
        user,
    };
    serve_decrypted(proxy, conn, client_tls, h2, Arc::new(tunnel), idle).await;
}

/// The origin side of an intercepted tunnel, or why there is none.
struct Origin {
    session: Option<Arc<Session>>,
    /// The origin certificate's subjectAltNames, copied into the minted leaf.
    sans: Vec<LeafName>,
    /// The protocol the origin chose; the client is offered exactly this.
    alpn: Option<Vec<u8>>,
    error: Option<ProxyError>,
}

/// Origin first: its certificate is verified before anything is minted. `denied` skips the
/// origin altogether (the client gets the 403 page inside the tunnel).
async fn connect_origin(
    proxy: &Proxy,
    interceptor: &Interceptor,
    target: &Target,
    sni: Option<&str>,
    alpn: &[Vec<u8>],
    upstream: TcpStream,
    denied: Option<ProxyError>,
) -> Origin {
    let origin_name = sni.unwrap_or(target.host.as_str());
    let tls_config = interceptor.origin_config(alpn, [origin_name, target.host.as_str()]);
    let connected = match denied.map_or_else(|| server_name(sni, &target.host), Err) {
        Ok(name) => tokio_rustls::TlsConnector::from(Arc::clone(&tls_config))
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
            );
            Origin {
                session: Some(Arc::new(session)),
                sans,
                alpn,
                error: None,
            }
        }
        Err(e) => {
            if !matches!(e, ProxyError::Denied { .. }) {
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
struct HandshakeFailure {
    result: ResultCode,
    error: ProxyError,
}

/// The one line of a tunnel whose interception failed before any request could be served
/// (no `NONE/200` line was written), counted by the metrics like any other transaction. When
/// the origin had already failed, its cause is the line's: no client could have got further.
fn log_failed_interception(
    proxy: &Proxy,
    mut txn: Txn,
    origin: &Origin,
    peer: Option<std::net::IpAddr>,
    failure: HandshakeFailure,
) {
    let cause = match &origin.error {
        Some(e) if !matches!(e, ProxyError::Denied { .. }) => e,
        _ => &failure.error,
    };
    tracing::info!(error = %failure.error, cause = cause.cause(), "intercepted tunnel failed before its first request");
    txn.inspected();
    let outcome = Outcome {
        result: failure.result,
        error: Some(cause.cause()),
        ..if origin.session.is_some() {
            Outcome::direct(peer)
        } else {
            Outcome::LOCAL
        }
    };
    proxy.access_log.log(txn.record(outcome, 0, 0, None));
}

/// Mints the leaf (with the origin's names) and finishes the client's handshake with the
/// protocol the origin chose. Fails when the client refused, left or stalled, or no
/// certificate could be minted.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; the parts of one tunnel"
)]
async fn handshake_client(
    proxy: &Proxy,
    interceptor: &Interceptor,
    conn: &ConnCtx,
    start: StartHandshake<TokioIo<Upgraded>>,
    target: &Target,
    sni: Option<&str>,
    alpn: &[Vec<u8>],
    origin: &Origin,
    wait: Duration,
    remember_refusal: Option<&str>,
) -> Result<TlsStream<TokioIo<Upgraded>>, HandshakeFailure> {
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
        Some(p) if alpn.contains(p) => vec![p.clone()],
        _ => Vec::new(),
    };
    let server_config = interceptor
        .server_config(key, client_alpn)
        .map_err(|e| mint_failed(format!("TLS server config: {e}")))?;
    let e = match tokio::time::timeout(wait, start.into_stream(server_config)).await {
        Ok(Ok(tls)) => return Ok(tls),
        Ok(Err(e)) => e,
        Err(_) => {
            proxy.metrics.tls_handshake_failed(Side::Client);
            return Err(HandshakeFailure {
                result: ResultCode::NoneTimedOut,
                error: ProxyError::ClientTlsTimeout(wait),
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
                interceptor.refusals.remember(conn.client.ip(), host);
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

/// The CONNECT decided again with what the ClientHello says, when that can change anything:
/// a CONNECT to a bare IP is judged by its SNI name (only inspect/tunnel/deny: authentication
/// was settled on the target itself, so a forged SNI earns no exemption, and a tunnel it earns
/// carries only what the client could have sent anyway), and `sni` rules need the SNI.
fn decide_on_sni(
    proxy: &Proxy,
    conn: &ConnCtx,
    txn: &Txn,
    target: &Target,
    sni: Option<&str>,
    plan: &TunnelPlan,
) -> Option<Decision> {
    let sni = sni?;
    if target.ip().is_none() && !proxy.policy.uses_sni() {
        return None;
    }
    let facts = super::connect_facts(target, Some(sni), conn.client.ip())
        .with_user_agent(plan.user_agent.as_deref())
        .with_user(txn.user().map(Identity::named));
    Some(proxy.policy.decide_connect(&facts))
}

/// Per intercepted tunnel: where requests go, or why they cannot.
struct Tunnel {
    session: Option<Arc<Session>>,
    upstream_error: Option<ProxyError>,
    /// `host[:port]` as the client asked for it, for URLs and the upstream Host/:authority.
    authority: String,
    /// The origin's name (the SNI, else the CONNECT host) and port, for per-request decisions.
    host: String,
    port: u16,
    sni: Option<String>,
    user: Option<String>,
}

/// Serves the decrypted connection with hyper (HTTP/1.1 with upgrades, or HTTP/2) until the
/// client is done, idle for `idle`, or the proxy shuts down.
async fn serve_decrypted(
    proxy: Arc<Proxy>,
    conn: Arc<ConnCtx>,
    client_tls: TlsStream<TokioIo<Upgraded>>,
    h2: bool,
    tunnel: Arc<Tunnel>,
    idle: Duration,
) {
    let activity = Activity::new();
    let io = TokioIo::new(ActivityIo::new(client_tls, Arc::clone(&activity)));
    let service = {
        let (proxy, conn, tunnel, activity) = (
            Arc::clone(&proxy),
            Arc::clone(&conn),
            Arc::clone(&tunnel),
            Arc::clone(&activity),
        );
        service_fn(move |req| {
            let (proxy, conn, tunnel, activity) = (
                Arc::clone(&proxy),
                Arc::clone(&conn),
                Arc::clone(&tunnel),
                Arc::clone(&activity),
            );
            let span = request_span(&req);
            async move {
                Ok::<_, std::convert::Infallible>(
                    decrypted_request(proxy, conn, tunnel, activity, req).await,
                )
            }
            .instrument(span)
        })
    };
    let server = &proxy.config.server;
    let connection: std::pin::Pin<Box<dyn GracefulConnection + Send>> = if h2 {
        Box::pin(
            http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(server.max_header_bytes as u32)
                .serve_connection(io, service),
        )
    } else {
        Box::pin(
            http1_builder(server)
                .serve_connection(io, service)
                .with_upgrades(),
        )
    };
    let header = proxy.config.timeouts.client_header;
    if let Err(e) = drive(connection, &activity, header, idle, &proxy.shutdown).await {
        tracing::debug!(error = %e, "intercepted connection ended with an error");
    }
}

async fn decrypted_request(
    proxy: Arc<Proxy>,
    conn: Arc<ConnCtx>,
    tunnel: Arc<Tunnel>,
    activity: Arc<Activity>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let in_flight = activity.begin_request();
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let url = format!("https://{}{}", tunnel.authority, path);
    let mut txn = Txn::intercepted(conn.client.ip(), req.method(), url, tunnel.user.clone());
    if let Err(e) = crate::headers::check_transfer_coding(req.headers()) {
        return super::refuse_framing(&proxy, txn, in_flight, e);
    }
    let facts = RequestFacts::new(
        req.method().as_str(),
        &tunnel.host,
        tunnel.port,
        path,
        conn.client.ip(),
    )
    .with_sni(tunnel.sni.as_deref())
    .with_user_agent(crate::headers::user_agent(req.headers()))
    .with_user(tunnel.user.as_deref().map(Identity::named));
    let decision = proxy.policy.decide_request(&facts);
    txn.decided(&decision);
    if let Some(err) = ProxyError::denial(&decision) {
        return txn.fail(&proxy, in_flight, err);
    }
    match (&tunnel.session, &tunnel.upstream_error) {
        (Some(session), _) => {
            forward::handle_intercepted(
                &proxy,
                &conn,
                txn,
                in_flight,
                req,
                session,
                &tunnel.authority,
            )
            .await
        }
        (None, Some(err)) => txn.fail(&proxy, in_flight, err.clone()),
        (None, None) => {
            let err = ProxyError::Upstream("no origin connection".into());
            txn.fail(&proxy, in_flight, err)
        }
    }
}
