//! Plain HTTP forwarding through the real binary, driven by curl and raw sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use portcullis_e2e::{curl, raw, TestOrigin, TestProxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_post_put_with_sized_and_chunked_bodies() {
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("");
    let url = origin.url("/echo");

    let get = curl(&["-x", &proxy.url(), &origin.url("/")]).await;
    assert_eq!(get.status, 200, "{get:?}");
    assert_eq!(get.body_text(), "hello from origin\n");

    let sized = curl(&["-x", &proxy.url(), "--data-binary", "sized body", &url]).await;
    assert_eq!(
        (sized.status, sized.body_text().as_str()),
        (200, "sized body")
    );

    let chunked = curl(&[
        "-x",
        &proxy.url(),
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        "chunked body",
        &url,
    ])
    .await;
    assert_eq!(
        (chunked.status, chunked.body_text().as_str()),
        (200, "chunked body")
    );

    let put = curl(&[
        "-x",
        &proxy.url(),
        "-X",
        "PUT",
        "--data-binary",
        "put body",
        &url,
    ])
    .await;
    assert_eq!((put.status, put.body_text().as_str()), (200, "put body"));

    let seen = origin.seen();
    let methods: Vec<_> = seen.iter().map(|s| s.method.as_str()).collect();
    assert_eq!(methods, ["GET", "POST", "POST", "PUT"]);
    // The origin gets origin-form targets, and the framing the client chose.
    assert!(seen.iter().all(|s| s.uri.starts_with('/')), "{seen:?}");
    assert_eq!(seen[1].headers["content-length"], "10");
    assert_eq!(seen[2].headers["transfer-encoding"], "chunked");
    assert!(seen[2].headers.get("content-length").is_none());

    let log = proxy.access_log(4);
    assert_eq!(log.len(), 4, "{log:?}");
    let fields: Vec<&str> = log[1].split_whitespace().collect();
    // time elapsed client code/status bytes method url user hier/peer type, then the policy's
    // action/rule
    assert_eq!(fields.len(), 11, "{}", log[1]);
    assert_eq!(fields[10], "inspect/default");
    assert_eq!(fields[2], "127.0.0.1");
    assert_eq!(fields[3], "TCP_MISS/200");
    assert_eq!(fields[4], "10");
    assert_eq!(fields[5], "POST");
    assert_eq!(fields[6], url);
    assert_eq!(fields[7], "-");
    assert_eq!(fields[8], "HIER_DIRECT/127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_expect_100_continue() {
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("");
    let head = curl(&["-x", &proxy.url(), "-I", &origin.url("/bytes/5000")]).await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("content-length").as_deref(), Some("5000"));
    // curl -I prints the head on stdout; no body bytes may follow it.
    assert!(
        !head.body_text().contains("xxx"),
        "HEAD got a body: {}",
        head.body_text()
    );

    // curl sends Expect: 100-continue for bodies over 1 MiB and waits for the 100.
    let body = "e".repeat(2 * 1024 * 1024);
    let file = proxy.dir.path().join("upload");
    std::fs::write(&file, &body).unwrap();
    let up = curl(&[
        "-x",
        &proxy.url(),
        "-H",
        "Expect: 100-continue",
        "--expect100-timeout",
        "30",
        "--data-binary",
        &format!("@{}", file.display()),
        &origin.url("/sink"),
    ])
    .await;
    assert_eq!(up.status, 200, "{up:?}");
    assert!(up.headers.contains("100 Continue"), "{}", up.headers);
    assert_eq!(up.body_text(), format!("received {} bytes\n", body.len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_and_via_added() {
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("");
    let r = curl(&[
        "-x",
        &proxy.url(),
        "-H",
        "Connection: keep-alive, X-Client-Hop",
        "-H",
        "X-Client-Hop: secret",
        "-H",
        "Keep-Alive: timeout=9",
        "-H",
        "Proxy-Connection: keep-alive",
        "-H",
        "Proxy-Authorization: Basic dXNlcjpwYXNz",
        "-H",
        "TE: gzip",
        "-H",
        "X-End-To-End: yes",
        "-H",
        "Host: evil.example",
        &origin.url("/hop"),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = &origin.seen()[0];
    for gone in [
        "x-client-hop",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
    ] {
        assert!(
            seen.headers.get(gone).is_none(),
            "{gone} reached the origin: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.headers["x-end-to-end"], "yes");
    assert_eq!(seen.headers["via"], "1.1 portcullis");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    // The absolute-form authority wins over a conflicting Host header.
    assert_eq!(seen.headers["host"], origin.addr.to_string());
    // And in the other direction.
    for gone in ["x-origin-hop", "keep-alive", "proxy-authenticate"] {
        assert!(
            r.header(gone).is_none(),
            "{gone} reached the client: {}",
            r.headers
        );
    }
    assert_eq!(r.header("x-end-to-end").as_deref(), Some("kept"));
    assert_eq!(r.header("via").as_deref(), Some("1.1 portcullis"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_and_pseudonym_are_configurable() {
    let origin = TestOrigin::http().await;
    let proxy =
        TestProxy::start("[server]\nx_forwarded_for = \"delete\"\nvia_pseudonym = \"gate7\"\n");
    let r = curl(&[
        "-x",
        &proxy.url(),
        "-H",
        "X-Forwarded-For: 10.9.9.9",
        &origin.url("/"),
    ])
    .await;
    assert_eq!(r.status, 200);
    let seen = &origin.seen()[0];
    assert!(seen.headers.get("x-forwarded-for").is_none());
    assert_eq!(seen.headers["via"], "1.1 gate7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_reuses_one_upstream_connection() {
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("");
    // One curl process, two URLs: one client connection, two requests.
    let r = curl(&["-x", &proxy.url(), &origin.url("/a"), &origin.url("/b")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = origin.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        origin.connections(),
        1,
        "the second request opened a new upstream connection"
    );
    assert_eq!(seen[0].conn, seen[1].conn);
    // A second client reuses the pooled upstream connection too.
    let again = curl(&["-x", &proxy.url(), &origin.url("/c")]).await;
    assert_eq!(again.status, 200);
    assert_eq!(origin.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_pass_when_the_client_accepts_them() {
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("");
    let r = raw(
        proxy.addr,
        format!(
            "GET {} HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n",
            origin.url("/trailers")
        )
        .as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        r.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{r}"
    );
    assert!(r.contains("chunked body"), "{r}");
    assert!(
        r.to_ascii_lowercase().contains("x-checksum: abc123"),
        "trailer missing: {r}"
    );
    assert_eq!(origin.seen()[0].headers["te"], "trailers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_bodies_stream_both_ways_in_bounded_memory() {
    const SIZE: u64 = 200 * 1024 * 1024;
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("");
    // Download: 200 MiB, discarded by curl.
    let down = portcullis_e2e::client::download_discarding(
        &proxy.url(),
        &origin.url(&format!("/bytes/{SIZE}")),
    )
    .await;
    assert_eq!(down, format!("200 {SIZE}"));
    // Upload: 200 MiB read from a sparse file, chunked (no length known up front).
    let file = proxy.dir.path().join("big");
    std::fs::File::create(&file).unwrap().set_len(SIZE).unwrap();
    let up = curl(&[
        "-x",
        &proxy.url(),
        "-H",
        "Transfer-Encoding: chunked",
        "-H",
        "Expect:",
        "--data-binary",
        &format!("@{}", file.display()),
        &origin.url("/sink"),
    ])
    .await;
    assert_eq!(up.status, 200, "{up:?}");
    assert_eq!(origin.sink_bytes(), SIZE);
    let peak = proxy.peak_rss_kib();
    assert!(peak > 0, "cannot read VmHWM");
    assert!(
        peak < 64 * 1024,
        "proxy peak RSS {peak} KiB while streaming 200 MiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::{protocol::Role, Message};

    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("");
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        origin.url("/ws"),
        origin.addr
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    // Read the 101 head byte by byte so no WebSocket frame is swallowed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(
            stream.read(&mut b).await.unwrap(),
            1,
            "closed during handshake: {head:?}"
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    let mut ws =
        tokio_tungstenite::WebSocketStream::from_raw_socket(stream, Role::Client, None).await;
    for text in ["hello", "through", "portcullis"] {
        ws.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    ws.close(None).await.unwrap();
    let seen = &origin.seen()[0];
    assert_eq!(seen.headers["upgrade"], "websocket");
    drop(ws);
    let log = proxy.access_log(1);
    assert!(
        log.iter()
            .any(|l| l.contains("TCP_MISS/101") && l.contains("/ws")),
        "{log:?}\n{}",
        proxy.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_the_proxy_itself_get_a_page() {
    let proxy = TestProxy::start("");
    let r = curl(&[&proxy.url()]).await;
    assert_eq!(r.status, 200);
    assert!(r.body_text().contains("Portcullis"), "{}", r.body_text());
    let missing = curl(&[&format!("{}/nope", proxy.url())]).await;
    assert_eq!(missing.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_loops_are_refused() {
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("");
    // A request aimed at the proxy's own listener, in absolute form.
    let own = curl(&["-x", &proxy.url(), &format!("http://{}/", proxy.addr)]).await;
    assert_eq!(own.status, 403, "{own:?}");
    assert_eq!(
        own.header("x-portcullis-error").as_deref(),
        Some("forwarding-loop")
    );
    // A request that already carries our Via entry.
    let via = curl(&[
        "-x",
        &proxy.url(),
        "-H",
        "Via: 1.1 portcullis",
        &origin.url("/"),
    ])
    .await;
    assert_eq!(via.status, 403);
    assert!(origin.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_resolve_map_points_names_at_lab_servers() {
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("[resolve]\n\"outlook.office365.com\" = [\"127.0.0.1\"]\n");
    let url = format!("http://outlook.office365.com:{}/", origin.addr.port());
    let r = curl(&["-x", &proxy.url(), &url]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        origin.seen()[0].headers["host"],
        format!("outlook.office365.com:{}", origin.addr.port())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_file_resolves_names() {
    let origin = TestOrigin::http().await;
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        "# lab\n127.0.0.1 mail.lab.test autodiscover.lab.test\n",
    )
    .unwrap();
    let proxy = TestProxy::start(&format!(
        "[upstream]\nhosts_file = \"{}\"\n",
        hosts.display()
    ));
    let r = curl(&[
        "-x",
        &proxy.url(),
        &format!("http://autodiscover.lab.test:{}/", origin.addr.port()),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
}
