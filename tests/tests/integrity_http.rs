//! Control integrity for plain and decrypted HTTP (issue 15): nothing a client sends may carry a
//! request past the per-request policy and the access log — protocol upgrades other than
//! WebSocket, ambiguous chunked framing, `Max-Forwards`, and plain HTTP to arbitrary ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_e2e::client::read_until_quiet;
use portcullis_e2e::tls::tls_through;
use portcullis_e2e::{curl, raw, TestOrigin, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const NO_ADMIN: &str = "[[policy.rules]]\nname = \"no-admin\"\npath = \"/admin\"\naction = \"deny\"\nreason = \"Admin pages are off limits.\"\n";

/// An origin that honours `Upgrade: h2c` with `101 Switching Protocols` and then takes every
/// byte it gets (as an h2c server would read them as HTTP/2 frames, past any proxy's view);
/// any other request gets a small `200`. Records every byte received.
struct UpgradingOrigin {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for UpgradingOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl UpgradingOrigin {
    async fn start() -> UpgradingOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let sink = Arc::clone(&sink);
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    let mut upgraded = false;
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        sink.lock().unwrap().extend_from_slice(&buf[..n]);
                        if upgraded {
                            continue;
                        }
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head: Vec<u8> = pending.drain(..end + 4).collect();
                            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                            let reply: &[u8] = if head.contains("\r\nupgrade: h2c") {
                                upgraded = true;
                                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                            } else {
                                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
                            };
                            if stream.write_all(reply).await.is_err() {
                                return;
                            }
                            if upgraded {
                                break;
                            }
                        }
                    }
                });
            }
        });
        UpgradingOrigin {
            addr,
            received,
            task,
        }
    }

    fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_never_carries_requests_past_the_policy() {
    // curl asks for h2c on a plain http:// URL with --http2: the origin must not be offered it.
    let plain = TestOrigin::http().await;
    let proxy = TestProxy::start(NO_ADMIN);
    let r = curl(&["--http2", "-x", &proxy.url(), &plain.url("/ok")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = plain.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].headers.get("upgrade").is_none() && seen[0].headers.get("http2-settings").is_none(),
        "the h2c upgrade reached the origin: {:?}",
        seen[0].headers
    );

    // An origin that would switch: the client follows its allowed request with a denied one on
    // the same connection. It must meet the policy, never the origin.
    let origin = UpgradingOrigin::start().await;
    let o = origin.addr;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(
        format!(
            "GET http://{o}/ok HTTP/1.1\r\nHost: {o}\r\nConnection: Upgrade, HTTP2-Settings\r\n\
             Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let first = read_until_quiet(&mut tcp, Duration::from_millis(500)).await;
    tcp.write_all(format!("GET http://{o}/admin/secret HTTP/1.1\r\nHost: {o}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let second = read_until_quiet(&mut tcp, Duration::from_millis(500)).await;
    let received = origin.received();
    assert!(
        !received.contains("/admin/secret"),
        "a denied request reached the origin through an upgrade: {received:?}"
    );
    assert!(first.starts_with("HTTP/1.1 200"), "{first:?}");
    assert!(second.starts_with("HTTP/1.1 403"), "{second:?}");
    let log = proxy.access_log(3).join("\n");
    assert!(
        log.lines().any(|l| l.contains("TCP_DENIED/403")
            && l.contains(&format!("GET http://{o}/admin/secret"))
            && l.ends_with("deny/no-admin")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_listed_upgrades_are_forwarded() {
    let origin = TestOrigin::http().await;
    let o = origin.addr;
    let handshake = format!(
        "GET http://{o}/ws HTTP/1.1\r\nHost: {o}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    // The default list has websocket: the handshake passes.
    let proxy = TestProxy::start("");
    let reply = raw(proxy.addr, handshake.as_bytes(), Duration::from_millis(300)).await;
    assert!(reply.starts_with("HTTP/1.1 101"), "{reply:?}");
    // An empty list strips every upgrade: the origin is not asked to switch.
    let strict = TestProxy::start("[server]\nallowed_upgrades = []\n");
    let reply = raw(
        strict.addr,
        handshake.as_bytes(),
        Duration::from_millis(300),
    )
    .await;
    assert!(!reply.starts_with("HTTP/1.1 101"), "{reply:?}");
    let seen = origin.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].headers["upgrade"], "websocket");
    assert!(seen[1].headers.get("upgrade").is_none(), "{seen:?}");
    // h2c cannot be allowed: the key is named.
    let err = TestProxy::try_start("[server]\nallowed_upgrades = [\"websocket\", \"h2c\"]\n")
        .err()
        .unwrap_or_default();
    assert!(err.contains("server.allowed_upgrades"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_goes_only_to_safe_ports() {
    let proxy = TestProxy::start("");
    // Squid's Safe_ports: SMTP and SSH are not among them. Refused before any dial: a 403, not
    // the 502 a closed port would give.
    for port in [25, 22] {
        let url = format!("http://127.0.0.1:{port}/");
        let r = curl(&["-x", &proxy.url(), "--data-binary", "MAIL FROM:<x@y>", &url]).await;
        assert_eq!(r.status, 403, "port {port}: {r:?}");
        assert_eq!(
            r.header("x-portcullis-error").as_deref(),
            Some("port-not-allowed; setting=server.http_ports"),
            "port {port}"
        );
    }
    let log = proxy.access_log(2).join("\n");
    assert!(log.contains("TCP_DENIED/403"), "{log}");

    // A configured list, as numbers and ranges: an origin outside it is never connected to.
    let origin = TestOrigin::http().await;
    let narrow = TestProxy::start("[server]\nhttp_ports = [80, \"1025-1030\"]\n");
    let r = curl(&["-x", &narrow.url(), &origin.url("/")]).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(origin.connections(), 0);
    let wide = TestProxy::start(&format!(
        "[server]\nhttp_ports = [\"80\", \"1025-{}\"]\n",
        origin.addr.port()
    ));
    let r = curl(&["-x", &wide.url(), &origin.url("/")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    // Mistakes name the key.
    for bad in ["[0]", "[\"9-3\"]", "[\"http\"]", "[70000]"] {
        let err = TestProxy::try_start(&format!("[server]\nhttp_ports = {bad}\n"))
            .err()
            .unwrap_or_default();
        assert!(err.contains("server.http_ports"), "{bad}: {err}");
    }
}

/// A body chunked twice: decoding one layer leaves a chunked stream that an origin would read
/// as data, or as a different request.
fn twice_chunked() -> String {
    let inner = "4\r\nabcd\r\n0\r\n\r\n";
    format!("{:x}\r\n{inner}\r\n0\r\n\r\n", inner.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_chunked_coding_is_refused_plain_and_inside_tls() {
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("");
    let o = origin.addr;
    let body = twice_chunked();
    for te in [
        "Transfer-Encoding: chunked, chunked",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: Chunked ,chunked",
        // Any other coding would be dropped the same way.
        "Transfer-Encoding: gzip, chunked",
    ] {
        let request = format!("POST http://{o}/echo HTTP/1.1\r\nHost: {o}\r\n{te}\r\n\r\n{body}");
        let reply = raw(proxy.addr, request.as_bytes(), Duration::from_millis(500)).await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{te:?}: {reply:?}");
        assert!(
            reply.contains("x-portcullis-error: bad-request"),
            "{te:?}: {reply:?}"
        );
        assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{te:?}: {reply:?}");
    }
    assert!(
        origin.seen().is_empty(),
        "a doubly chunked request reached the origin: {:?}",
        origin.seen()
    );
    // One chunked coding is fine.
    let request = format!(
        "POST http://{o}/echo HTTP/1.1\r\nHost: {o}\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n"
    );
    let reply = raw(proxy.addr, request.as_bytes(), Duration::from_millis(500)).await;
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.ends_with("abcd"),
        "{reply:?}"
    );

    // The same inside an inspected tunnel.
    let tls_origin = TestOrigin::https().await;
    let port = tls_origin.addr.port();
    let inspecting = TestProxy::start(&format!(
        "[server]\nconnect_ports = [{port}]\n[tls]\nupstream_ca_file = \"{}\"\n",
        tls_origin.ca_file.as_ref().unwrap().display()
    ));
    let ca = std::fs::read(inspecting.dir.path().join("data/ca.pem")).unwrap();
    let target = format!("127.0.0.1:{port}");
    let mut tls = tls_through(inspecting.addr, &target, "localhost", &ca)
        .await
        .unwrap();
    let request = format!(
        "POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, chunked\r\n\r\n{body}"
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), tls.read_to_end(&mut out)).await;
    let reply = String::from_utf8_lossy(&out);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply:?}");
    assert!(tls_origin.seen().is_empty(), "{:?}", tls_origin.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_forwards_zero_is_answered_by_the_proxy_and_other_values_decremented() {
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("");
    let p = proxy.url();
    let options = curl(&[
        "-x",
        &p,
        "-X",
        "OPTIONS",
        "-H",
        "Max-Forwards: 0",
        &origin.url("/resource"),
    ])
    .await;
    assert_eq!(options.status, 200, "{options:?}");
    let allow = options.header("allow").unwrap_or_default();
    assert!(
        allow.contains("GET") && allow.contains("OPTIONS"),
        "{options:?}"
    );
    let trace = curl(&[
        "-x",
        &p,
        "-X",
        "TRACE",
        "-H",
        "Max-Forwards: 0",
        "-H",
        "X-Probe: traced",
        "-H",
        "Cookie: session=secret-cookie",
        "-H",
        "Authorization: Basic c2VjcmV0OnNlY3JldA==",
        "-H",
        "Proxy-Authorization: Basic cHJveHk6c2VjcmV0",
        &origin.url("/trace"),
    ])
    .await;
    assert_eq!(trace.status, 200, "{trace:?}");
    assert_eq!(
        trace.header("content-type").as_deref(),
        Some("message/http"),
        "{trace:?}"
    );
    let echo = trace.body_text();
    assert!(
        echo.starts_with(&format!("TRACE {} HTTP/1.1\r\n", origin.url("/trace"))),
        "{echo:?}"
    );
    assert!(echo.contains("x-probe: traced\r\n"), "{echo:?}");
    // RFC 9110 §9.3.8: fields likely to hold credentials are not echoed.
    for secret in ["secret-cookie", "c2VjcmV0OnNlY3JldA==", "cHJveHk6c2VjcmV0"] {
        assert!(!echo.contains(secret), "{secret} echoed: {echo:?}");
    }
    assert!(
        origin.seen().is_empty(),
        "Max-Forwards: 0 reached the origin: {:?}",
        origin.seen()
    );

    // Any other value is decremented; other methods are forwarded as they are.
    for (method, sent, forwarded) in [
        ("OPTIONS", "5", "4"),
        ("TRACE", "1", "0"),
        ("GET", "0", "0"),
    ] {
        let r = curl(&[
            "-x",
            &p,
            "-X",
            method,
            "-H",
            &format!("Max-Forwards: {sent}"),
            &origin.url("/hop"),
        ])
        .await;
        assert_eq!(r.status, 200, "{method}: {r:?}");
        let seen = origin.seen();
        let last = seen.last().unwrap();
        assert_eq!(last.method, method);
        assert_eq!(last.headers["max-forwards"], forwarded, "{method} {sent}");
    }
    let log = proxy.access_log(5).join("\n");
    assert!(
        log.lines()
            .any(|l| l.contains("NONE/200") && l.contains(" OPTIONS ") && l.contains("HIER_NONE")),
        "{log}"
    );

    // The same inside an inspected tunnel.
    let tls_origin = TestOrigin::https().await;
    let port = tls_origin.addr.port();
    let inspecting = TestProxy::start(&format!(
        "[server]\nconnect_ports = [{port}]\n[tls]\nupstream_ca_file = \"{}\"\n",
        tls_origin.ca_file.as_ref().unwrap().display()
    ));
    let ca = inspecting.dir.path().join("data/ca.pem");
    let r = curl(&[
        "-x",
        &inspecting.url(),
        "--cacert",
        &ca.display().to_string(),
        "-X",
        "OPTIONS",
        "-H",
        "Max-Forwards: 0",
        &format!("https://localhost:{port}/"),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.header("allow").is_some(), "{r:?}");
    assert!(tls_origin.seen().is_empty(), "{:?}", tls_origin.seen());
}
