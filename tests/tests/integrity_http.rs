//! Control integrity for plain and decrypted HTTP (issue 15): nothing a client sends may carry a
//! request past the per-request policy and the access log — protocol upgrades other than
//! WebSocket, ambiguous chunked framing, `Max-Forwards`, and plain HTTP to arbitrary ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use portcullis_e2e::tls::tls_through;
use portcullis_e2e::{curl, raw, TestOrigin, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
            Some("port-not-allowed"),
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
