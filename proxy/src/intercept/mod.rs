//! TLS interception of CONNECT tunnels.
//!
//! After `200 Connection established` the client's first bytes decide: a TLS ClientHello is
//! intercepted (unless the policy, deciding again with the SNI, says tunnel), anything else — or a server that speaks first — is
//! relayed untouched. An intercepted tunnel connects to the origin *first*, verifying its
//! certificate against the system roots; only then is a leaf minted (copying the origin's
//! subjectAltNames) and the client handshake finished with the ALPN the origin chose. A bad
//! origin certificate is never laundered: the client gets a certificate for the name it asked
//! for and, inside that connection, a 502 page naming the problem.

pub mod refusals;
pub mod session;
pub mod upstream_tls;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use portcullis_certs::{
    origin_sans, CaParams, CertCache, CertificateAuthority, Issuer, IssuerConfig, KeyAlgorithm,
    KeyFileCheck, LeafName, LeafRequest, ServerConfigs,
};
use portcullis_policy::host::{normalise, HostPattern};
use portcullis_policy::{Action, ConnectFacts, Decision, Identity, RequestFacts};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::StartHandshake;

use crate::activity::{Activity, ActivityIo};
use crate::body::ProxyBody;
use crate::config::Config;
use crate::error::{ProxyError, Side};
use crate::http::connect::{tunnel_reason, TunnelPlan};
use crate::http::headers::Target;
use crate::http::{forward, Outcome, Txn};
use crate::metrics::TlsTunnelReason;
use crate::server::{ConnCtx, Proxy};
use crate::tunnel::{relay_and_log, TunnelClient};
use session::Session;
use upstream_tls::{classify_handshake_error, server_name, UpstreamTls, HTTP11};

/// Longest ClientHello we buffer (post-quantum key shares make them ~2 KB; 64 KiB is generous).
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// Everything interception needs, built once at start-up.
pub struct Interceptor {
    pub ca: Arc<CertificateAuthority>,
    cache: CertCache,
    server_configs: ServerConfigs,
    upstream: UpstreamTls,
    insecure: Vec<HostPattern>,
    /// Client/host pairs whose interception the client refused.
    pub refusals: refusals::Refusals,
}

impl Interceptor {
    /// Loads (or, with `tls.auto_init_ca`, creates) the CA in `server.data_dir`. `None` when
    /// inspection is off. Errors name the key to fix.
    /// `mint_observer` hears how long each certificate took to mint (a metrics histogram).
    pub fn new(
        config: &Config,
        mint_observer: impl Fn(Duration) + Send + Sync + 'static,
    ) -> Result<Option<Interceptor>, (&'static str, String)> {
        let tls = &config.tls;
        if !tls.inspect {
            return Ok(None);
        }
        let dir = &config.server.data_dir;
        let ca = load_or_create_ca(dir, tls.auto_init_ca, tls.allow_insecure_key_permissions)?;
        let key_algorithm: KeyAlgorithm = tls
            .leaf_key
            .parse()
            .map_err(|e| ("tls.leaf_key", format!("{e}")))?;
        let ca = Arc::new(ca);
        let issuer = Issuer::new(
            Arc::clone(&ca),
            IssuerConfig {
                key_algorithm,
                ..IssuerConfig::default()
            },
        )
        .map_err(|e| ("tls.leaf_key", e.to_string()))?;
        let patterns = |key: &'static str, list: &[String]| {
            list.iter()
                .map(|p| HostPattern::parse(p).map_err(|e| (key, e.to_string())))
                .collect::<Result<Vec<_>, _>>()
        };
        let upstream = UpstreamTls::new(tls).map_err(|e| ("tls.upstream_ca_file", e))?;
        tracing::info!(
            ca = %ca.subject(),
            fingerprint = %ca.fingerprint(),
            roots = upstream.roots,
            "TLS inspection on"
        );
        Ok(Some(Interceptor {
            cache: CertCache::new(Arc::new(issuer), tls.cert_cache_size)
                .with_mint_observer(mint_observer),
            server_configs: ServerConfigs::new(4096),
            upstream,
            insecure: patterns("tls.insecure_upstream", &tls.insecure_upstream)?,
            refusals: refusals::Refusals::new(tls.tunnel_after_refusal),
            ca,
        }))
    }

    fn is_insecure(&self, host: &str) -> bool {
        let host = normalise(host);
        self.insecure.iter().any(|p| p.matches(&host))
    }

    pub fn cache_stats(&self) -> portcullis_certs::CacheStats {
        self.cache.stats()
    }
}

fn load_or_create_ca(
    dir: &Path,
    auto_init: bool,
    allow_insecure: bool,
) -> Result<CertificateAuthority, (&'static str, String)> {
    let check = if allow_insecure {
        KeyFileCheck::AllowInsecure
    } else {
        KeyFileCheck::OwnerOnly
    };
    let cert = dir.join(portcullis_certs::CA_CERT_FILE);
    if !cert.exists() && auto_init {
        let ca = CertificateAuthority::generate(&CaParams::default())
            .map_err(|e| ("tls", e.to_string()))?;
        ca.write_to_dir(dir, false).map_err(|e| {
            (
                "server.data_dir",
                format!("cannot create the interception CA: {e}"),
            )
        })?;
        tracing::warn!(
            path = %cert.display(),
            "created a new interception CA; clients must trust it (download it from http://<proxy>/ca.pem or run `portcullis ca export`)"
        );
        return Ok(ca);
    }
    CertificateAuthority::load_from_dir(dir, check).map_err(|e| ("server.data_dir", e.to_string()))
}

/// What the client sent first.
enum FirstBytes {
    Tls(BytesMut),
    /// Not TLS (or nothing, or the origin spoke first): relay untouched, replaying these bytes.
    Other(Bytes),
}

/// Runs one CONNECT tunnel whose decision is "inspect", after the 200 has been sent.
pub async fn run_tunnel(
    proxy: Arc<Proxy>,
    conn: Arc<ConnCtx>,
    mut txn: Txn,
    client: Upgraded,
    upstream: TcpStream,
    target: Target,
    plan: TunnelPlan,
) {
    let Some(interceptor) = proxy.interceptor.as_ref() else {
        return;
    };
    let mut client = TokioIo::new(client);
    let peer = upstream.peer_addr().ok().map(|a| a.ip());
    let idle = plan.idle;
    // A silent client gets no longer than a silent tunnel would.
    let wait = proxy.config.timeouts.client_header.min(idle);
    let first = peek(&mut client, &upstream, wait).await;
    let hello = match first {
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
    let client_ip = conn.client.ip();
    if let Some(name) = sni
        .as_deref()
        .filter(|n| interceptor.refusals.contains(client_ip, n))
    {
        tracing::debug!(sni = %name, "this client refused interception of this host; tunnelling untouched");
        proxy.metrics.tls_tunnelled(TlsTunnelReason::PinningFailure);
        let client = TunnelClient::new(client.into_inner(), seen.freeze());
        return relay_and_log(&proxy, conn, txn, client, upstream, idle).await;
    }
    let mut denied = None;
    if let Some(decision) = decide_on_sni(&proxy, &conn, &txn, &target, sni.as_deref(), &plan) {
        match &decision.action {
            Action::Inspect => txn.decided(&decision),
            Action::Tunnel => {
                tracing::debug!(sni = ?sni, decision = %decision, "tunnelling untouched on the SNI");
                proxy.metrics.tls_tunnelled(tunnel_reason(&decision));
                txn.decided(&decision);
                // rustls has seen the ClientHello; the origin gets the same bytes.
                let idle = if txn.long_poll() {
                    proxy.config.timeouts.long_poll_idle
                } else {
                    idle
                };
                let client = TunnelClient::new(client.into_inner(), seen.freeze());
                return relay_and_log(&proxy, conn, txn, client, upstream, idle).await;
            }
            Action::Deny { reason } => {
                // The 200 is already sent: finish the handshake and show the page inside.
                denied = Some(ProxyError::Denied {
                    reason: reason.to_string(),
                    rule: decision.rule.name.to_string(),
                });
            }
        }
    }
    let start = StartHandshake::from_parts(accepted, client);

    // Origin first: verify it before minting anything.
    let origin_name = sni.as_deref().unwrap_or(&target.host).to_owned();
    let insecure = interceptor.is_insecure(&origin_name) || interceptor.is_insecure(&target.host);
    let tls_config = interceptor.upstream.config(&alpn, insecure);
    let origin = match denied.map_or_else(|| server_name(sni.as_deref(), &target.host), Err) {
        Ok(name) => tokio_rustls::TlsConnector::from(Arc::clone(&tls_config))
            .connect(name.clone(), upstream)
            .await
            .map(|tls| (name, tls))
            .map_err(|e| classify_handshake_error(&e, &origin_name)),
        Err(e) => Err(e),
    };

    let leaf_name = match LeafName::for_connection(sni.as_deref(), &target.host) {
        Ok(name) => name,
        Err(e) => {
            tracing::info!(sni = ?sni, host = %target.host, error = %e, "cannot name a certificate for this tunnel");
            return;
        }
    };
    let (session, sans, origin_alpn, upstream_error) = match origin {
        Ok((name, tls)) => {
            let sans = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| origin_sans(leaf.as_ref()).ok())
                .unwrap_or_default();
            let chosen = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            let session = Session::new(
                target.host.clone(),
                target.port,
                name,
                tls_config,
                Arc::clone(&proxy.dialer),
                tls,
            );
            (Some(Arc::new(session)), sans, chosen, None)
        }
        Err(e) => {
            if !matches!(e, ProxyError::Denied { .. }) {
                proxy.metrics.tls_handshake_failed(Side::Upstream);
            }
            tracing::info!(host = %origin_name, error = %e, "no origin connection; the client gets an error page");
            (None, Vec::new(), Some(HTTP11.to_vec()), Some(e))
        }
    };
    let key = match interceptor
        .cache
        .get(&LeafRequest::new(leaf_name).with_sans(sans))
        .await
    {
        Ok(key) => key,
        Err(e) => {
            tracing::error!(error = %e, "minting a certificate failed");
            return;
        }
    };
    // Serve the client exactly the protocol the origin chose (none: HTTP/1.1).
    let client_alpn = match &origin_alpn {
        Some(p) if alpn.contains(p) => vec![p.clone()],
        _ => Vec::new(),
    };
    let server_config = match interceptor.server_configs.build(key, client_alpn) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "building the TLS server config failed");
            return;
        }
    };
    let client_tls = match tokio::time::timeout(wait, start.into_stream(server_config)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            // Typically a client that pins the origin's certificate or lacks our CA.
            proxy.metrics.tls_handshake_failed(Side::Client);
            let refused = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|e| matches!(e, rustls::Error::AlertReceived(_)));
            if refused {
                interceptor
                    .refusals
                    .remember(conn.client.ip(), &origin_name);
                interceptor
                    .refusals
                    .remember(conn.client.ip(), &target.host);
                tracing::warn!(
                    host = %origin_name, client = %conn.client, error = %e,
                    "client refused the intercepted connection (certificate pinning, or the proxy CA is not installed); its next tunnels to this host are relayed untouched for tls.tunnel_after_refusal; a policy rule with action = \"tunnel\" makes that permanent"
                );
            } else {
                // A client that simply went away (browsers drop surplus connections).
                tracing::debug!(host = %origin_name, client = %conn.client, error = %e, "client left during the intercepted handshake");
            }
            return;
        }
        Err(_) => return,
    };
    proxy.metrics.tls_intercepted();
    let h2 = client_tls.get_ref().1.alpn_protocol() == Some(upstream_tls::H2);
    let authority = if target.port == 443 {
        origin_name.clone()
    } else {
        format!("{origin_name}:{}", target.port)
    };
    log_connect(&proxy, &txn, "NONE", peer);
    let inner = Inner {
        session,
        upstream_error,
        authority,
        host: origin_name,
        port: target.port,
        sni,
        user: txn.user().map(str::to_owned),
    };
    serve_decrypted(proxy, conn, client_tls, h2, Arc::new(inner), idle).await;
}

/// Reads the client's first bytes. Gives up waiting when the origin speaks first (SMTP, IMAP
/// banners) or after `wait`; either way the tunnel is then relayed untouched.
async fn peek(client: &mut TokioIo<Upgraded>, upstream: &TcpStream, wait: Duration) -> FirstBytes {
    let mut buf = BytesMut::with_capacity(4096);
    let mut probe = [0u8; 1];
    tokio::select! {
        read = tokio::time::timeout(wait, client.read_buf(&mut buf)) => match read {
            Ok(Ok(n)) if n > 0 && buf[0] == 0x16 => FirstBytes::Tls(buf),
            _ => FirstBytes::Other(buf.freeze()),
        },
        _ = upstream.peek(&mut probe) => FirstBytes::Other(buf.freeze()),
    }
}

/// Feeds the client's bytes to a rustls `Acceptor` until the ClientHello is complete, keeping a
/// copy so the tunnel can still be relayed untouched. Not a ClientHello: the bytes come back.
pub(crate) async fn read_client_hello<R>(
    client: &mut R,
    mut seen: BytesMut,
    wait: Duration,
) -> Result<(rustls::server::Accepted, BytesMut), Bytes>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut acceptor = rustls::server::Acceptor::default();
    let mut fed = 0;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        while fed < seen.len() {
            match acceptor.read_tls(&mut &seen[fed..]) {
                Ok(0) => break,
                Ok(n) => fed += n,
                Err(_) => return Err(seen.freeze()),
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => return Ok((accepted, seen)),
            Ok(None) => {}
            Err(_) => return Err(seen.freeze()),
        }
        if seen.len() >= MAX_CLIENT_HELLO {
            return Err(seen.freeze());
        }
        match tokio::time::timeout_at(deadline, client.read_buf(&mut seen)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Err(seen.freeze()),
        }
    }
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
    let ip = target
        .host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok();
    if ip.is_none() && !proxy.policy.uses_sni() {
        return None;
    }
    let host = if ip.is_some() {
        sni
    } else {
        target.host.as_str()
    };
    let user = txn.user().map(|name| Identity { name, groups: &[] });
    let mut facts = ConnectFacts::new(host, target.port, conn.client.ip())
        .with_sni(Some(sni))
        .with_user_agent(plan.user_agent.as_deref())
        .with_user(user);
    if ip.is_some() {
        facts.dest_ip = ip;
    }
    Some(proxy.policy.decide_connect(&facts))
}

/// Squid logs an intercepted CONNECT as `NONE/200 0 CONNECT host:port`, then each decrypted
/// request on its own line.
fn log_connect(proxy: &Proxy, txn: &Txn, result: &'static str, peer: Option<std::net::IpAddr>) {
    let record = txn.clone().record(
        Outcome {
            result,
            ..Outcome::direct(peer)
        },
        200,
        0,
        None,
    );
    proxy.access_log.log(record);
}

/// Per intercepted tunnel: where requests go, or why they cannot.
struct Inner {
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
    client_tls: tokio_rustls::server::TlsStream<TokioIo<Upgraded>>,
    h2: bool,
    inner: Arc<Inner>,
    idle: Duration,
) {
    let activity = Activity::new();
    let io = TokioIo::new(ActivityIo::new(client_tls, Arc::clone(&activity)));
    let service = {
        let (proxy, conn, inner, activity) = (
            Arc::clone(&proxy),
            Arc::clone(&conn),
            Arc::clone(&inner),
            Arc::clone(&activity),
        );
        service_fn(move |req| {
            let (proxy, conn, inner, activity) = (
                Arc::clone(&proxy),
                Arc::clone(&conn),
                Arc::clone(&inner),
                Arc::clone(&activity),
            );
            async move {
                Ok::<_, std::convert::Infallible>(
                    decrypted_request(proxy, conn, inner, activity, req).await,
                )
            }
        })
    };
    let timeouts = proxy.config.timeouts.clone();
    let server = &proxy.config.server;
    let result = if h2 {
        let conn = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(server.max_header_bytes as u32)
            .serve_connection(io, service);
        crate::server::drive(
            conn,
            &activity,
            timeouts.client_header,
            idle,
            &proxy.shutdown,
        )
        .await
    } else {
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .max_header_size(server.max_header_bytes)
            .max_buf_size(server.max_header_bytes + 1024)
            .max_headers(server.max_headers)
            .preserve_header_case(true)
            .serve_connection(io, service)
            .with_upgrades();
        crate::server::drive(
            conn,
            &activity,
            timeouts.client_header,
            idle,
            &proxy.shutdown,
        )
        .await
    };
    if let Err(e) = result {
        tracing::debug!(client = %conn.client, error = %e, "intercepted connection ended with an error");
    }
}

async fn decrypted_request(
    proxy: Arc<Proxy>,
    conn: Arc<ConnCtx>,
    inner: Arc<Inner>,
    activity: Arc<Activity>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let in_flight = activity.begin_request();
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let url = format!("https://{}{}", inner.authority, path);
    let mut txn = Txn::intercepted(conn.client.ip(), req.method(), url, inner.user.clone());
    let user_agent = req
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let facts = RequestFacts::new(
        req.method().as_str(),
        &inner.host,
        inner.port,
        path,
        conn.client.ip(),
    )
    .with_sni(inner.sni.as_deref())
    .with_user_agent(user_agent)
    .with_user(
        inner
            .user
            .as_deref()
            .map(|name| Identity { name, groups: &[] }),
    );
    let decision = proxy.policy.decide_request(&facts);
    txn.decided(&decision);
    if let Action::Deny { reason } = &decision.action {
        let err = ProxyError::Denied {
            reason: reason.to_string(),
            rule: decision.rule.name.to_string(),
        };
        return txn.fail(&proxy, in_flight, err);
    }
    match (&inner.session, &inner.upstream_error) {
        (Some(session), _) => {
            forward::handle_intercepted(
                &proxy,
                &conn,
                txn,
                in_flight,
                req,
                session,
                &inner.authority,
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
