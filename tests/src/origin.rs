//! A loopback origin server that records exactly what it received, over HTTP or HTTPS.
//!
//! Routes: `/bytes/N` streams N bytes; `/sink` counts a streamed request body; `/echo` echoes
//! the body; `/delay/MS` answers after MS milliseconds; `/silent` never answers; `/hop` answers
//! with hop-by-hop headers; `/trailers` sends a chunked body with a trailer; `/ws` is a
//! WebSocket echo; anything else answers "hello from origin".

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

type Body = BoxBody<Bytes, Infallible>;

/// What the origin saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub conn: usize,
}

#[derive(Default)]
struct State {
    seen: Mutex<Vec<Seen>>,
    connections: AtomicUsize,
    sink_bytes: AtomicU64,
}

pub struct TestOrigin {
    pub addr: SocketAddr,
    state: Arc<State>,
    /// For HTTPS origins: the PEM file of the CA that signed the origin's certificate.
    pub ca_file: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestOrigin {
    pub async fn http() -> TestOrigin {
        let listener = bind().await;
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let state = Arc::new(State::default());
        let task = tokio::spawn(serve(listener, Arc::clone(&state), None));
        TestOrigin {
            addr,
            state,
            ca_file: None,
            _dir: None,
            task,
        }
    }

    /// An HTTPS origin with a certificate for `localhost` and 127.0.0.1 from a fresh test CA.
    pub async fn https() -> TestOrigin {
        TestOrigin::https_with(crate::tls::OriginCert::Good, false).await
    }

    /// An HTTPS origin whose certificate, from its own fresh "public" CA, names `names`
    /// (reached through the proxy's `[resolve]` map).
    pub async fn https_for(names: &[&str]) -> TestOrigin {
        let (ca_pem, chain, key) = crate::tls::origin_certificate(names);
        TestOrigin::serve_tls(ca_pem, crate::tls::acceptor(chain, key)).await
    }

    /// An HTTPS origin whose certificate is `kind` (for `localhost`, `127.0.0.1` and
    /// `*.lab.test`); with `h2`, it offers ALPN h2 and speaks HTTP/2 when chosen.
    pub async fn https_with(kind: crate::tls::OriginCert, h2: bool) -> TestOrigin {
        let (ca_pem, chain, key) =
            crate::tls::origin_certificate_kind(kind, &["localhost", "127.0.0.1", "*.lab.test"]);
        let alpn: &[&[u8]] = if h2 { &[b"h2", b"http/1.1"] } else { &[] };
        TestOrigin::serve_tls(ca_pem, crate::tls::acceptor_with_alpn(chain, key, alpn)).await
    }

    /// Serves TLS with `acceptor`; `ca_pem` (the CA clients must trust) goes to `ca_file`.
    async fn serve_tls(ca_pem: String, acceptor: tokio_rustls::TlsAcceptor) -> TestOrigin {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ca_file = dir.path().join("origin-ca.pem");
        std::fs::write(&ca_file, ca_pem).unwrap_or_else(|e| panic!("{e}"));
        let listener = bind().await;
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let state = Arc::new(State::default());
        let task = tokio::spawn(serve(listener, Arc::clone(&state), Some(acceptor)));
        TestOrigin {
            addr,
            state,
            ca_file: Some(ca_file),
            _dir: Some(dir),
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    pub fn sink_bytes(&self) -> u64 {
        self.state.sink_bytes.load(Ordering::SeqCst)
    }
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"))
}

async fn serve(listener: TcpListener, state: Arc<State>, tls: Option<tokio_rustls::TlsAcceptor>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let conn = state.connections.fetch_add(1, Ordering::SeqCst) + 1;
        let state = Arc::clone(&state);
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(Arc::clone(&state), conn, req));
            let builder = http1::Builder::new();
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                            let _ = hyper::server::conn::http2::Builder::new(
                                hyper_util::rt::TokioExecutor::new(),
                            )
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                        } else {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .with_upgrades()
                                .await;
                        }
                    }
                }
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                }
            }
        });
    }
}

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into()).boxed()
}

async fn handle(
    state: Arc<State>,
    conn: usize,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if let Ok(mut seen) = state.seen.lock() {
        seen.push(Seen {
            method: req.method().to_string(),
            uri: req.uri().to_string(),
            version: req.version(),
            headers: req.headers().clone(),
            conn,
        });
    }
    let path = req.uri().path().to_owned();
    // `?delay_ms=N` on any path: answer after N ms (long polls).
    let delay = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("delay_ms=")))
        .and_then(|ms| ms.parse().ok());
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut response = Response::new(full("hello from origin\n"));
    if let Some(n) = path.strip_prefix("/bytes/") {
        let total: u64 = n.parse().unwrap_or(0);
        *response.body_mut() = stream_bytes(total);
    } else if path == "/sink" || path.starts_with("/rpc/") {
        // Counted as it arrives, so a test can see a body stream before it ends.
        let mut body = req.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => n += frame.data_ref().map_or(0, |d| d.len() as u64),
                Err(e) => return Ok(text(StatusCode::BAD_REQUEST, format!("body error: {e}"))),
            }
            state.sink_bytes.store(n, Ordering::SeqCst);
        }
        state.sink_bytes.store(n, Ordering::SeqCst);
        *response.body_mut() = full(format!("received {n} bytes\n"));
    } else if path == "/echo" {
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return Ok(text(StatusCode::BAD_REQUEST, format!("body error: {e}"))),
        };
        response
            .headers_mut()
            .insert("x-body-len", HeaderValue::from(body.len()));
        *response.body_mut() = full(body);
    } else if let Some(ms) = path.strip_prefix("/delay/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        *response.body_mut() = full("done after delay\n");
    } else if path == "/ntlm" {
        // Exchange's own NTLM dance, bound to the TCP connection as real NTLM is:
        // `NTLM TYPE1` gets a challenge naming this connection, `NTLM TYPE3-<n>` succeeds only
        // on connection n. The origin's 401s must reach the client untouched.
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if auth == format!("NTLM TYPE3-{conn}") {
            *response.body_mut() = full(format!("authenticated on connection {conn}\n"));
        } else {
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            let h = response.headers_mut();
            if auth == "NTLM TYPE1" {
                let challenge = format!("NTLM CHALLENGE-{conn}");
                h.insert(
                    "www-authenticate",
                    HeaderValue::from_str(&challenge).unwrap_or_else(|e| panic!("{e}")),
                );
            } else {
                h.insert("www-authenticate", HeaderValue::from_static("NTLM"));
                h.append("www-authenticate", HeaderValue::from_static("Negotiate"));
            }
        }
    } else if path == "/silent" {
        std::future::pending::<()>().await;
    } else if path == "/hop" {
        let h = response.headers_mut();
        h.insert("connection", HeaderValue::from_static("x-origin-hop"));
        h.insert("x-origin-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            "proxy-authenticate",
            HeaderValue::from_static("Basic realm=\"origin\""),
        );
        h.insert("x-end-to-end", HeaderValue::from_static("kept"));
    } else if path == "/trailers" {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", HeaderValue::from_static("abc123"));
        let frames = vec![
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"chunked body\n"))),
            Ok(Frame::trailers(trailers)),
        ];
        *response.body_mut() = BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)));
        response
            .headers_mut()
            .insert("trailer", HeaderValue::from_static("x-checksum"));
    } else if path == "/ws" {
        return Ok(websocket_echo(&mut req));
    }
    Ok(response)
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r
}

fn stream_bytes(total: u64) -> Body {
    const CHUNK: usize = 64 * 1024;
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let stream = futures_util::stream::unfold(total, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(CHUNK as u64);
            Some((
                Ok::<_, Infallible>(Frame::data(chunk.slice(..n as usize))),
                left - n,
            ))
        }
    });
    let mut body = BodyExt::boxed(StreamBody::new(stream));
    // Declare the length so the response is Content-Length framed, like a file download.
    body = SizedBody {
        inner: body,
        len: total,
    }
    .boxed();
    body
}

/// Wraps a body to report an exact size hint (hence a Content-Length header).
struct SizedBody {
    inner: Body,
    len: u64,
}

impl hyper::body::Body for SizedBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.len)
    }
}

fn websocket_echo(req: &mut Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return text(StatusCode::BAD_REQUEST, "not a websocket request".into());
    };
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                if ws.send(msg).await.is_err() {
                    break;
                }
            } else if msg.is_close() {
                break;
            }
        }
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    h.insert("connection", HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    r
}
