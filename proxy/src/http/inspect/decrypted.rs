//! The decrypted side of an intercepted tunnel: hyper (HTTP/1.1 with upgrades, or HTTP/2)
//! serves the client's requests under the same deadlines as a plain connection; each is
//! decided by the policy and sent through `forward.rs` to the tunnel's own origin session.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use portcullis_policy::RequestFacts;
use tokio_rustls::server::TlsStream;
use tracing::Instrument;

use super::handshake::Origin;
use crate::activity::{Activity, ActivityIo};
use crate::body::ProxyBody;
use crate::context::{ConnCtx, Proxy};
use crate::driver::{drive, http1_builder, request_span, GracefulConnection};
use crate::error::ProxyError;
use crate::http::target::Target;
use crate::http::{forward, Txn};
use crate::intercept::session::Session;
use crate::intercept::upstream_tls::H2;
use crate::tunnel::ClientStream;

/// Per intercepted tunnel: where requests go, or why they cannot.
pub(super) struct Tunnel {
    session: Option<Arc<Session>>,
    upstream_error: Option<ProxyError>,
    /// `host[:port]` as the client asked for it, for URLs and the upstream Host/:authority.
    authority: String,
    /// The origin's name (the SNI, else the CONNECT host) and port, for per-request decisions.
    host: String,
    port: u16,
    sni: Option<String>,
    user: Option<String>,
    groups: Option<Arc<[String]>>,
}

impl Tunnel {
    /// The tunnel to `target`, as the client named it (`sni`), for `user`, reaching `origin`.
    pub(super) fn new(
        target: &Target,
        sni: Option<String>,
        (user, groups): (Option<String>, Option<Arc<[String]>>),
        origin: Origin,
    ) -> Tunnel {
        let host = sni.clone().unwrap_or_else(|| target.host.to_string());
        let authority = if target.port == 443 {
            host.clone()
        } else {
            format!("{host}:{}", target.port)
        };
        Tunnel {
            session: origin.session,
            upstream_error: origin.error,
            authority,
            host,
            port: target.port,
            sni,
            user,
            groups,
        }
    }
}

/// Serves the decrypted connection with hyper (HTTP/1.1 with upgrades, or HTTP/2) until the
/// client is done, idle for `idle`, or the proxy shuts down.
pub(super) async fn serve(
    proxy: Arc<Proxy>,
    conn: Arc<ConnCtx>,
    client_tls: TlsStream<ClientStream>,
    tunnel: Arc<Tunnel>,
    idle: Duration,
) {
    let h2 = client_tls.get_ref().1.alpn_protocol() == Some(H2);
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
    let mut txn = Txn::intercepted(
        &conn,
        req.method(),
        url,
        tunnel.user.clone(),
        tunnel.groups.clone(),
    );
    if let Err(e) = crate::headers::check_transfer_coding(req.headers()) {
        return crate::http::refuse_framing(&proxy, txn, in_flight, e);
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
    .with_user(txn.identity());
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
