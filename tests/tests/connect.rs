//! CONNECT tunnels through the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use portcullis_e2e::{curl, raw, TestOrigin, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn allow(port: u16) -> String {
    format!("[server]\nconnect_ports = [443, {port}]\n")
}

/// Plain tunnels, inspection off: the client talks TLS with the origin itself.
fn tunnel_only(port: u16) -> String {
    format!("{}[tls]\ninspect = false\n", allow(port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_through_a_tunnel_with_curl() {
    let origin = TestOrigin::https().await;
    let proxy = TestProxy::start(&tunnel_only(origin.addr.port()));
    let ca = origin.ca_file.as_ref().unwrap().display().to_string();
    let url = format!("https://localhost:{}/bytes/100000", origin.addr.port());
    let r = curl(&["-x", &proxy.url(), "-p", "--cacert", &ca, &url]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body.len(), 100_000);
    assert!(
        r.headers.contains("200 Connection established") || r.headers.starts_with("HTTP/1.1 200"),
        "{}",
        r.headers
    );
    // The TLS session is end to end: the origin saw an origin-form request with no proxy headers.
    let seen = &origin.seen()[0];
    assert!(seen.headers.get("via").is_none());
    let log = proxy.access_log(1);
    let fields: Vec<&str> = log[0].split_whitespace().collect();
    assert_eq!(fields[3], "TCP_TUNNEL/200", "{log:?}");
    assert_eq!(fields[5], "CONNECT");
    assert_eq!(fields[6], format!("localhost:{}", origin.addr.port()));
    let bytes: u64 = fields[4].parse().unwrap();
    assert!(bytes > 100_000, "tunnel bytes {bytes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_a_port_not_allowed_is_403() {
    let origin = TestOrigin::https().await;
    let proxy = TestProxy::start("");
    let url = format!("https://localhost:{}/", origin.addr.port());
    let r = curl(&["-x", &proxy.url(), "-p", "-k", &url]).await;
    assert_ne!(r.exit, 0);
    assert!(r.headers.starts_with("HTTP/1.1 403"), "{}", r.headers);
    assert!(
        r.headers
            .to_ascii_lowercase()
            .contains("x-portcullis-error: port-not-allowed; setting=server.connect_ports"),
        "{}",
        r.headers
    );
    assert_eq!(origin.connections(), 0);
    let log = proxy.access_log(1);
    assert!(log[0].contains("TCP_DENIED/403"), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_reported_before_200() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = TestProxy::start(&allow(port));
    let answer = raw(
        proxy.addr,
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(answer
        .to_ascii_lowercase()
        .contains("x-portcullis-error: connection-refused"));
    for bad in [
        "CONNECT 127.0.0.1 HTTP/1.1",
        "CONNECT 127.0.0.1:99999 HTTP/1.1",
        "CONNECT user@127.0.0.1:443 HTTP/1.1",
    ] {
        let answer = raw(
            proxy.addr,
            format!("{bad}\r\nHost: x\r\n\r\n").as_bytes(),
            Duration::from_secs(3),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{bad}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_tls_protocols_and_half_close_pass_through_untouched() {
    // An origin that speaks first-byte-last: it reads until the client half-closes, then
    // answers with what it got, reversed, and closes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got.reverse();
        s.write_all(&got).await.unwrap();
        s.shutdown().await.unwrap();
    });
    let proxy = TestProxy::start(&allow(port));
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    c.write_all(
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(c.read(&mut b).await.unwrap(), 1);
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    c.write_all(b"SMTP-ish payload, not TLS").await.unwrap();
    c.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"SLT ton ,daolyap hsi-PTMS");
    let log = proxy.access_log(1);
    let fields: Vec<&str> = log[0].split_whitespace().collect();
    assert_eq!((fields[3], fields[4]), ("TCP_TUNNEL/200", "25"), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tunnels_are_closed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (_s, _) = listener.accept().await.unwrap();
        std::future::pending::<()>().await;
    });
    let proxy = TestProxy::start(&format!(
        "{}[timeouts]\ntunnel_idle = \"1s\"\n",
        allow(port)
    ));
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    c.write_all(format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = portcullis_e2e::client::read_until_quiet(&mut c, Duration::from_millis(300)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("tunnel not closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
}
