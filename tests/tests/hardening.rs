//! Hostile requests over raw TCP: every one gets a clear 4xx (or a closed connection), and
//! nothing ambiguous reaches the recording origin. Also the default destination deny list.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use portcullis_e2e::{curl, raw, TestOrigin, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The status line of the first response `request` gets, or "" when the proxy closes instead.
async fn first_status(proxy: &TestProxy, request: &[u8]) -> String {
    let reply = raw(proxy.addr, request, Duration::from_millis(500)).await;
    reply.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_and_never_reach_the_origin() {
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("");
    let o = origin.addr;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("two different Content-Lengths", format!("POST http://{o}/ HTTP/1.1\r\nHost: {o}\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd").into()),
        ("non-numeric Content-Length", format!("POST http://{o}/ HTTP/1.1\r\nHost: {o}\r\nContent-Length: +4\r\n\r\nabcd").into()),
        ("Transfer-Encoding gzip", format!("POST http://{o}/ HTTP/1.1\r\nHost: {o}\r\nTransfer-Encoding: gzip\r\n\r\nabcd").into()),
        ("chunked not last", format!("POST http://{o}/ HTTP/1.1\r\nHost: {o}\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n").into()),
        ("obfuscated TE value", format!("POST http://{o}/ HTTP/1.1\r\nHost: {o}\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n").into()),
        ("TE with vertical tab", format!("POST http://{o}/ HTTP/1.1\r\nHost: {o}\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n").into()),
        ("space before colon", format!("GET http://{o}/ HTTP/1.1\r\nHost: {o}\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n").into()),
        ("bare CR", format!("GET http://{o}/ HTTP/1.1\r\nHost: {o}\rX-Smuggle: y\r\n\r\n").into()),
        ("NUL in a header", format!("GET http://{o}/ HTTP/1.1\r\nHost: {o}\r\nX: a\x00b\r\n\r\n").into()),
        ("obs-fold", format!("GET http://{o}/ HTTP/1.1\r\nHost: {o}\r\nX-A: a\r\n b\r\n\r\n").into()),
        ("HTTP/1.2", format!("GET http://{o}/ HTTP/1.2\r\nHost: {o}\r\n\r\n").into()),
        ("HTTP/0.9", format!("GET http://{o}/\r\n\r\n").into()),
        ("HTTP/1.0 with Transfer-Encoding", format!("POST http://{o}/ HTTP/1.0\r\nHost: {o}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").into()),
        ("userinfo in the authority", format!("GET http://user:pw@{o}/ HTTP/1.1\r\nHost: {o}\r\n\r\n").into()),
        ("port overflow", b"GET http://127.0.0.1:65561/ HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("double port", format!("GET http://{o}:80/ HTTP/1.1\r\nHost: {o}\r\n\r\n").into()),
        ("decimal IPv4", format!("GET http://2130706433:{}/ HTTP/1.1\r\nHost: x\r\n\r\n", o.port()).into()),
        ("hex IPv4", format!("GET http://0x7f000001:{}/ HTTP/1.1\r\nHost: x\r\n\r\n", o.port()).into()),
        ("octal IPv4", format!("GET http://0177.0.0.1:{}/ HTTP/1.1\r\nHost: x\r\n\r\n", o.port()).into()),
        ("short IPv4", format!("GET http://127.1:{}/ HTTP/1.1\r\nHost: x\r\n\r\n", o.port()).into()),
        ("CONNECT to decimal IPv4", format!("CONNECT 2130706433:{} HTTP/1.1\r\nHost: x\r\n\r\n", o.port()).into()),
    ];
    for (what, request) in &cases {
        let status = first_status(&proxy, request).await;
        assert!(status.starts_with("HTTP/1.1 400"), "{what}: {status:?}");
    }
    // Invalid chunk sizes and oversized chunk extensions: refused once the body is read.
    for (what, body) in [
        ("invalid chunk size", "zz\r\nabcd\r\n0\r\n\r\n".to_owned()),
        (
            "huge chunk extension",
            format!("4;{}\r\nabcd\r\n0\r\n\r\n", "a".repeat(70_000)),
        ),
    ] {
        let request = format!("POST http://{o}/sink HTTP/1.1\r\nHost: {o}\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        let status = first_status(&proxy, request.as_bytes()).await;
        assert!(
            status.starts_with("HTTP/1.1 400") || status.starts_with("HTTP/1.1 502"),
            "{what}: {status:?}"
        );
        assert_eq!(
            origin.sink_bytes(),
            0,
            "{what}: body bytes reached the origin"
        );
    }
    let reached: Vec<_> = origin
        .seen()
        .into_iter()
        .filter(|s| s.uri != "/sink")
        .collect();
    assert!(
        reached.is_empty(),
        "malformed requests reached the origin: {reached:?}"
    );
    // Unsupported schemes: 501.
    let status = first_status(
        &proxy,
        b"GET gopher://127.0.0.1:70/ HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 501"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_normalised_and_the_connection_closed() {
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("");
    let o = origin.addr;
    // The classic CL.TE smuggle: by Content-Length the body hides a second request; by
    // Transfer-Encoding it follows the first. RFC 9112 §6.3: Transfer-Encoding wins, the
    // Content-Length is removed before forwarding, and the connection is closed afterwards.
    let smuggled = format!("GET http://{o}/smuggled HTTP/1.1\r\nHost: {o}\r\n\r\n");
    let request = format!(
        "POST http://{o}/echo HTTP/1.1\r\nHost: {o}\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
        5 + smuggled.len()
    );
    let reply = raw(proxy.addr, request.as_bytes(), Duration::from_millis(800)).await;
    assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{reply}");
    let seen = origin.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].headers["transfer-encoding"], "chunked");
    assert!(seen[0].headers.get("content-length").is_none(), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_request_after_a_good_request_gets_its_own_response() {
    // Bare LF line endings are accepted (RFC 9112 §2.2 allows it) and forwarded re-framed with
    // CRLF; the next request on the connection is answered on its own.
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("");
    let o = origin.addr;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let two = format!(
        "GET http://{o}/a HTTP/1.1\nHost: {o}\n\nGET http://{o}/b HTTP/1.1\r\nHost: {o}\r\n\r\n"
    );
    tcp.write_all(two.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while String::from_utf8_lossy(&got)
        .matches("hello from origin")
        .count()
        < 2
    {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let uris: Vec<_> = origin.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, ["/a", "/b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_preface_on_the_http1_port_is_refused() {
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("");
    let reply = raw(
        proxy.addr,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 400"),
        "{reply:?}"
    );
    assert!(origin.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_never_reflects_proxy_credentials() {
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("");
    let r = curl(&[
        "-x",
        &proxy.url(),
        "-X",
        "TRACE",
        "-H",
        "Proxy-Authorization: Basic c2VjcmV0OnNlY3JldA==",
        &origin.url("/"),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = origin.seen();
    assert_eq!(seen[0].method, "TRACE");
    assert!(
        seen[0].headers.get("proxy-authorization").is_none(),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_link_local_and_metadata_destinations_are_denied_by_default() {
    let origin = TestOrigin::http().await;
    let port = origin.addr.port();
    // The shipped default, read from the binary itself (the test harness allows loopback, so
    // the default is written out explicitly here).
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let effective = std::process::Command::new(portcullis_e2e::portcullis_bin())
        .arg("check-config")
        .arg(&empty)
        // check-config loads what `run` would; a test data directory keeps it off /var/lib.
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let effective: toml::Table =
        toml::from_str(&String::from_utf8_lossy(&effective.stdout)).unwrap();
    let default = effective["upstream"]["deny_networks"].clone();
    let proxy = TestProxy::start(&format!(
        "[upstream]\ndeny_networks = {default}\n\
         [server]\nconnect_ports = [443, 1]\n\
         [resolve]\n\"sneaky.test\" = [\"127.0.0.1\"]\n\"mixed.test\" = [\"192.0.2.1\", \"127.0.0.1\"]\n",
    ));
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://sneaky.test:{port}/"),
        format!("http://mixed.test:{port}/"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("http://0.0.0.0:{port}/"),
    ] {
        let r = curl(&["-x", &proxy.url(), &url]).await;
        assert_eq!(r.status, 403, "{url}: {r:?}");
        // The header and the page name the setting a lab on localhost has to change.
        assert_eq!(
            r.header("x-portcullis-error").as_deref(),
            Some("destination-denied; setting=upstream.deny_networks"),
            "{url}"
        );
        assert!(
            r.body_text()
                .contains("setting <code>upstream.deny_networks</code>"),
            "{url}: {}",
            r.body_text()
        );
    }
    let connect = first_status(
        &proxy,
        b"CONNECT 169.254.169.254:443 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(connect.starts_with("HTTP/1.1 403"), "{connect:?}");
    assert!(origin.seen().is_empty());
    // The same proxy with the list emptied reaches the loopback origin: the list is what refused.
    let open = TestProxy::start("[resolve]\n\"sneaky.test\" = [\"127.0.0.1\"]\n");
    let r = curl(&["-x", &open.url(), &format!("http://sneaky.test:{port}/")]).await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// `curl` through `proxy` to `origin`: (status, body, X-Portcullis-Error).
async fn via(
    proxy: &TestProxy,
    origin: &portcullis_e2e::raw_origin::RawOrigin,
) -> (u16, String, Option<String>) {
    let r = curl(&["-x", &proxy.url(), &format!("http://{}/", origin.addr)]).await;
    let cause = r.header("x-portcullis-error");
    (r.status, r.body_text(), cause)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_responses_never_reach_the_client_ambiguously() {
    use portcullis_e2e::raw_origin::RawOrigin;
    let proxy = TestProxy::start("");
    // Two different lengths: which body is it? Refused.
    let two_lengths = RawOrigin::start(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 7\r\n\r\nok".to_vec(),
    )
    .await;
    let (status, _, cause) = via(&proxy, &two_lengths).await;
    assert_eq!(
        (status, cause.as_deref()),
        (502, Some("upstream-protocol-error"))
    );

    // Content-Length with chunked: the chunked framing wins and the client gets one clean body.
    let both = RawOrigin::start(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec(),
    )
    .await;
    let r = curl(&["-x", &proxy.url(), &format!("http://{}/", both.addr)]).await;
    assert_eq!((r.status, r.body_text().as_str()), (200, "ok"), "{r:?}");
    assert!(r.header("content-length").is_none(), "{}", r.headers);

    // A 101 nobody asked for.
    let upgrade = RawOrigin::start(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            .to_vec(),
    )
    .await;
    let (status, _, cause) = via(&proxy, &upgrade).await;
    assert_eq!(
        (status, cause.as_deref()),
        (502, Some("upstream-protocol-error"))
    );

    // A response followed by a second, unsolicited one: it must never become the answer to the
    // next request (another client's): the poisoned connection is not reused.
    let extra = RawOrigin::start(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirstHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\npoisoned".to_vec(),
    )
    .await;
    for _ in 0..3 {
        let (status, body, _) = via(&proxy, &extra).await;
        assert_eq!((status, body.as_str()), (200, "first"));
    }
    assert!(
        extra.connections() >= 2,
        "the poisoned connection was reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_informational_responses_is_bounded() {
    use portcullis_e2e::raw_origin::RawOrigin;
    let proxy = TestProxy::start("");
    let mut flood = b"HTTP/1.1 102 Processing\r\n\r\n".repeat(100_000);
    flood.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let origin = RawOrigin::start(flood).await;
    let (status, _, _) = via(&proxy, &origin).await;
    // Whatever the outcome, it is one clean answer, and the proxy is still serving.
    assert!(status == 200 || status == 502, "{status}");
    let fine = TestOrigin::http().await;
    let r = curl(&["-x", &proxy.url(), &fine.url("/")]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_take_every_connection_slot() {
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("[server]\nmax_connections_per_client = 3\n");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = curl(&["-x", &proxy.url(), &origin.url("/")]).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        r.body_text().contains("max_connections_per_client"),
        "{}",
        r.body_text()
    );
    // Another address is served meanwhile.
    let other = curl(&[
        "--interface",
        "127.0.0.2",
        "-x",
        &proxy.url(),
        &origin.url("/"),
    ])
    .await;
    assert_eq!(other.status, 200, "{other:?}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = curl(&["-x", &proxy.url(), &origin.url("/")]).await;
    assert_eq!(r.status, 200, "slots were not given back: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_slowloris_clients_do_not_delay_a_normal_one() {
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("[timeouts]\nclient_header = \"5s\"\n");
    // Each sends a request head one byte every 200 ms and never finishes it in time.
    let mut slow = Vec::new();
    for i in 0..50 {
        let addr = proxy.addr;
        let target = origin.url("/");
        slow.push(tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            let head = format!("GET {target}?{i} HTTP/1.1\r\nHost: x\r\nX-Slow: ");
            for b in head.bytes().chain(std::iter::repeat(b'a')) {
                if tcp.write_all(&[b]).await.is_err() {
                    return true; // closed by the header deadline
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            false
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let r = curl(&["-x", &proxy.url(), &origin.url("/normal")]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    // And the slow ones are cut off by the header deadline rather than held forever.
    let deadline = tokio::time::timeout(Duration::from_secs(30), async {
        let mut closed = 0;
        for s in slow {
            if s.await.unwrap() {
                closed += 1;
            }
        }
        closed
    })
    .await
    .expect("slow clients were never disconnected");
    assert_eq!(deadline, 50);
    assert_eq!(
        origin.seen().len(),
        1,
        "only the normal request reached the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gibibyte_each_way_keeps_the_proxy_small() {
    const SIZE: u64 = 1 << 30;
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("");
    let warm = curl(&["-x", &proxy.url(), &origin.url("/")]).await;
    assert_eq!(warm.status, 200);
    let baseline = portcullis_e2e::proxy::proc_status_kib(proxy.pid() as u32, "VmRSS:");
    // Download 1 GiB, discarded by curl.
    let down = portcullis_e2e::client::download_discarding(
        &proxy.url(),
        &origin.url(&format!("/bytes/{SIZE}")),
    )
    .await;
    assert_eq!(down, format!("200 {SIZE}"));
    // Upload 1 GiB as Outlook Anywhere does: RPC_IN_DATA with the whole length declared,
    // streamed by curl from a sparse file.
    let file = proxy.dir.path().join("gib");
    std::fs::File::create(&file).unwrap().set_len(SIZE).unwrap();
    let up = curl(&[
        "-x",
        &proxy.url(),
        "-X",
        "RPC_IN_DATA",
        "-H",
        "Expect:",
        "-T",
        &file.display().to_string(),
        &origin.url("/rpc/rpcproxy.dll?mail.corp.test:6001"),
    ])
    .await;
    assert_eq!(up.status, 200, "{up:?}");
    assert_eq!(origin.sink_bytes(), SIZE);
    let growth = proxy.peak_rss_kib().saturating_sub(baseline);
    assert!(baseline > 0, "cannot read VmRSS");
    assert!(
        growth < 64 * 1024,
        "RSS grew by {growth} KiB moving 1 GiB each way"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_gets_backpressure_not_buffering() {
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("");
    let warm = curl(&["-x", &proxy.url(), &origin.url("/")]).await;
    assert_eq!(warm.status, 200);
    let baseline = portcullis_e2e::proxy::proc_status_kib(proxy.pid() as u32, "VmRSS:");
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\n\r\n",
        origin.url("/bytes/1073741824")
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut first = [0u8; 1024];
    let n = tcp.read(&mut first).await.unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    // Read nothing more for a while: an eager proxy would pull the gigabyte into memory.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let growth = portcullis_e2e::proxy::proc_status_kib(proxy.pid() as u32, "VmRSS:")
        .saturating_sub(baseline);
    assert!(
        growth < 32 * 1024,
        "RSS grew by {growth} KiB while the client was not reading"
    );
    drop(tcp);
    // The proxy is fine afterwards.
    let r = curl(&["-x", &proxy.url(), &origin.url("/")]).await;
    assert_eq!(r.status, 200);
}
