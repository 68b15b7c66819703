//! Failing origins, malformed requests and client-side limits, each with the status an
//! operator expects and nothing ambiguous reaching the origin.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use portcullis_e2e::{curl, raw, TestOrigin, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_origin_is_a_502_with_a_readable_page() {
    let proxy = TestProxy::start("");
    let r = curl(&[
        "-x",
        &proxy.url(),
        &format!("http://127.0.0.1:{}/", closed_port()),
    ])
    .await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(
        r.header("x-portcullis-error").as_deref(),
        Some("connection-refused")
    );
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.body_text().contains("refused"), "{}", r.body_text());
    let log = proxy.access_log(1);
    assert!(log[0].contains("TCP_MISS/502"), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_name_is_a_502_dns_failure() {
    let proxy = TestProxy::start("");
    let r = curl(&["-x", &proxy.url(), "http://no-such-host.invalid/"]).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(
        r.header("x-portcullis-error").as_deref(),
        Some("dns-failure")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_origin_is_a_504() {
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("[timeouts]\nupstream_response = \"1s\"\n");
    let started = Instant::now();
    let r = curl(&["-x", &proxy.url(), &origin.url("/silent")]).await;
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(
        r.header("x-portcullis-error").as_deref(),
        Some("response-timeout")
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_closing_without_answer_is_a_502() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await; // read the request, then hang up
        }
    });
    let proxy = TestProxy::start("");
    let r = curl(&["-x", &proxy.url(), &format!("http://{addr}/")]).await;
    assert_eq!(r.status, 502, "{r:?}");
    let cause = r.header("x-portcullis-error").unwrap();
    assert!(
        cause == "upstream-closed" || cause == "upstream-reset",
        "{cause}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_and_never_reach_the_origin() {
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("");
    let target = origin.url("/");
    let port = origin.addr.port();
    let cases: Vec<(String, &str)> = vec![
        ("GARBAGE\r\n\r\n".into(), "400"),
        (format!("GET {target} HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n"), "400"),
        (format!("GET {target} HTTP/1.1\r\nHost : x\r\n\r\n"), "400"),
        (format!("POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"), "400"),
        (format!("POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"), "400"),
        (format!("GET http://127.0.0.1:65561{}/ HTTP/1.1\r\nHost: x\r\n\r\n", port), "400"),
        (format!("GET http://user:pw@127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n"), "400"),
        (format!("GET http://127.0.0.1:{port}:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n"), "400"),
        ("GET ftp://127.0.0.1/file HTTP/1.1\r\nHost: x\r\n\r\n".into(), "501"),
        (format!("GET {target} HTTP/1.1\r\nHost: x\r\nX-Nul: a\0b\r\n\r\n"), "400"),
    ];
    for (request, want) in cases {
        let answer = raw(proxy.addr, request.as_bytes(), Duration::from_secs(3)).await;
        let status_line = answer.lines().next().unwrap_or("");
        assert!(
            status_line.starts_with(&format!("HTTP/1.1 {want}")),
            "request {request:?} got {status_line:?}"
        );
    }
    assert!(
        origin.seen().is_empty(),
        "origin received {:?}",
        origin.seen()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_431() {
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("");
    let big = "a".repeat(70 * 1024);
    let r = curl(&[
        "-x",
        &proxy.url(),
        "-H",
        &format!("X-Big: {big}"),
        &origin.url("/"),
    ])
    .await;
    assert_eq!(r.status, 431, "{}", r.stderr);
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = raw(
        proxy.addr,
        format!("GET {} HTTP/1.1\r\nHost: x\r\n{many}\r\n", origin.url("/")).as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // Just under the limit passes.
    let fits = "b".repeat(60 * 1024);
    let ok = curl(&[
        "-x",
        &proxy.url(),
        "-H",
        &format!("X-Big: {fits}"),
        &origin.url("/"),
    ])
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(origin.seen().len(), 1);
    let log = proxy.access_log(3);
    assert!(log.iter().any(|l| l.contains("NONE/431")), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_cut_off_without_delaying_others() {
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("[timeouts]\nclient_header = \"1s\"\n");
    let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
    slow.write_all(b"GET http://127.0.0.1/ HTTP/1.1\r\nX-Slow: ")
        .await
        .unwrap();
    // Meanwhile a normal client is served at once.
    let r = curl(&["-x", &proxy.url(), &origin.url("/")]).await;
    assert_eq!(r.status, 200);
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf))
        .await
        .expect("slow client was not cut off")
        .unwrap_or(0);
    assert_eq!(n, 0, "expected a close, got {:?}", &buf[..n]);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed() {
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("[timeouts]\nclient_idle = \"1s\"\nclient_header = \"10s\"\n");
    let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
    let req = format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", origin.url("/"));
    conn.write_all(req.as_bytes()).await.unwrap();
    let first =
        portcullis_e2e::client::read_until_quiet(&mut conn, Duration::from_millis(300)).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // Idle for longer than client_idle (but shorter than client_header): closed.
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_max_connections_get_503() {
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("[server]\nmax_connections = 2\n");
    let _a = TcpStream::connect(proxy.addr).await.unwrap();
    let _b = TcpStream::connect(proxy.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = curl(&["-x", &proxy.url(), &origin.url("/")]).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(
        r.header("x-portcullis-error").as_deref(),
        Some("too-many-connections")
    );
    drop((_a, _b));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ok = curl(&["-x", &proxy.url(), &origin.url("/")]).await;
    assert_eq!(ok.status, 200, "slots were not released: {ok:?}");
}

/// The origin read buffer is capped (`upstream.read_buffer_bytes`, 128 KiB by default; memory per
/// connection): a 60 KiB response head still passes intact, and a huge one is a 502 with a
/// readable page and one log line, not an unbounded buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_response_heads_pass_and_huge_ones_are_a_502() {
    let reply = |size: usize| {
        format!(
            "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
            "c".repeat(size)
        )
        .into_bytes()
    };
    let fits = portcullis_e2e::raw_origin::RawOrigin::start(reply(60 * 1024)).await;
    let too_big = portcullis_e2e::raw_origin::RawOrigin::start(reply(1024 * 1024)).await;
    let proxy = TestProxy::start("");
    let ok = curl(&["-x", &proxy.url(), &format!("http://{}/", fits.addr)]).await;
    assert_eq!(ok.status, 200, "{}", ok.stderr);
    assert_eq!(ok.header("x-big").map(|v| v.len()), Some(60 * 1024));
    assert_eq!(ok.body_text(), "ok");
    let r = curl(&["-x", &proxy.url(), &format!("http://{}/", too_big.addr)]).await;
    assert_eq!(r.status, 502, "{}", r.stderr);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    let log = proxy.access_log(2);
    assert!(log[1].contains("TCP_MISS/502"), "{log:?}");
}
