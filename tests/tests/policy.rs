//! The policy and its built-in Outlook profile through the real binary: an administrator turns
//! on Basic auth and inspection, and Outlook's endpoints are still tunnelled untouched and
//! reachable without credentials, while other sites are inspected and need them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use portcullis_e2e::{curl, raw, TestOrigin, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An htpasswd file with `alice:secret`.
fn users(dir: &Path) -> std::path::PathBuf {
    let file = dir.join("users");
    portcullis_e2e::htpasswd(&file, "-B", "alice", "secret");
    file
}

/// Inspection and Basic auth on; `outlook.office365.com` and `www.example.test` resolve to the
/// test origin, whose certificate comes from its own "public" CA the proxy trusts.
fn outlook_lab(origin: &TestOrigin, htpasswd: &Path, extra: &str) -> TestProxy {
    TestProxy::start(&format!(
        "[server]\nconnect_ports = [{port}]\n\
         [tls]\nupstream_ca_file = \"{ca}\"\n\
         [auth]\nschemes = [\"basic\"]\nhtpasswd = \"{users}\"\n\
         [resolve]\n\"outlook.office365.com\" = [\"127.0.0.1\"]\n\"www.example.test\" = [\"127.0.0.1\"]\n\
         {extra}",
        port = origin.addr.port(),
        ca = origin.ca_file.as_ref().unwrap().display(),
        users = htpasswd.display(),
    ))
}

/// The issuer of the leaf certificate `openssl s_client` is shown through the proxy.
fn issuer_seen(proxy: &TestProxy, connect: &str, sni: &str, auth: Option<&str>) -> String {
    let auth = auth.map_or(String::new(), |a| {
        let (user, pass) = a.split_once(':').unwrap();
        format!("-proxy_user {user} -proxy_pass pass:{pass}")
    });
    let script = format!(
        "openssl s_client -proxy {} {auth} -connect {connect} -servername {sni} </dev/null 2>/dev/null \
         | openssl x509 -noout -issuer",
        proxy.addr
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The status line a raw CONNECT gets.
async fn connect_status(proxy: &TestProxy, target: &str) -> String {
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    let reply = raw(proxy.addr, request.as_bytes(), Duration::from_millis(500)).await;
    reply.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlook_is_tunnelled_without_credentials_while_other_sites_are_inspected_and_need_them() {
    let dir = tempfile::tempdir().unwrap();
    let origin = TestOrigin::https_for(&["outlook.office365.com", "www.example.test"]).await;
    let proxy = outlook_lab(&origin, &users(dir.path()), "");
    let port = origin.addr.port();
    let proxy_ca = proxy.dir.path().join("data/ca.pem");
    // The client trusts both the public roots (the origin's CA) and the proxy's CA.
    let trusted = dir.path().join("trusted.pem");
    let mut both = std::fs::read_to_string(origin.ca_file.as_ref().unwrap()).unwrap();
    both.push_str(&std::fs::read_to_string(&proxy_ca).unwrap());
    std::fs::write(&trusted, both).unwrap();
    let trusted = trusted.display().to_string();

    // Outlook: no credentials asked, the origin's own certificate.
    let outlook = format!("https://outlook.office365.com:{port}/mapi/emsmdb/");
    let r = curl(&["-x", &proxy.url(), "--cacert", &trusted, &outlook]).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", proxy.stderr());
    let issuer = issuer_seen(
        &proxy,
        &format!("outlook.office365.com:{port}"),
        "outlook.office365.com",
        None,
    );
    assert!(issuer.contains("Portcullis Test Origin CA"), "{issuer:?}");

    // Any other site: 407 without credentials; with them, the proxy's certificate.
    assert!(connect_status(&proxy, &format!("www.example.test:{port}"))
        .await
        .starts_with("HTTP/1.1 407"),);
    let other = format!("https://www.example.test:{port}/");
    let r = curl(&[
        "-x",
        &proxy.url(),
        "-U",
        "alice:secret",
        "--cacert",
        &trusted,
        &other,
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}\n{}", proxy.stderr());
    let issuer = issuer_seen(
        &proxy,
        &format!("www.example.test:{port}"),
        "www.example.test",
        Some("alice:secret"),
    );
    assert!(issuer.contains("Portcullis Interception CA"), "{issuer:?}");

    // The access log says who decided what.
    let log = proxy.access_log(4).join("\n");
    assert!(
        log.lines().any(|l| l.contains("TCP_TUNNEL/200")
            && l.contains("CONNECT outlook.office365.com:")
            && l.ends_with(" tunnel/outlook:m365-hosts")),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("CONNECT www.example.test:")
            && l.contains(" alice ")
            && l.ends_with(" inspect/default")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_ip_connect_is_judged_by_its_sni() {
    let dir = tempfile::tempdir().unwrap();
    let origin = TestOrigin::https_for(&["outlook.office365.com", "www.example.test"]).await;
    let proxy = outlook_lab(&origin, &users(dir.path()), "");
    let ip_target = format!("127.0.0.1:{}", origin.addr.port());
    // Authentication is decided on the bare IP (not exempt): a forged SNI earns no exemption.
    assert!(connect_status(&proxy, &ip_target)
        .await
        .starts_with("HTTP/1.1 407"));
    let auth = Some("alice:secret");
    let outlook = issuer_seen(&proxy, &ip_target, "outlook.office365.com", auth);
    assert!(
        outlook.contains("Portcullis Test Origin CA"),
        "tunnelled: {outlook:?}"
    );
    let other = issuer_seen(&proxy, &ip_target, "www.example.test", auth);
    assert!(
        other.contains("Portcullis Interception CA"),
        "inspected: {other:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_destinations_get_403_with_the_rule_reason() {
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start(
        "[[policy.rules]]\nname = \"no-gambling\"\nhost = \"*.casino.test\"\naction = \"deny\"\n\
         reason = \"Gambling sites are blocked by company policy.\"\n\
         [resolve]\n\"www.casino.test\" = [\"127.0.0.1\"]\n",
    );
    let url = format!("http://www.casino.test:{}/", origin.addr.port());
    let r = curl(&["-x", &proxy.url(), &url]).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(
        r.header("x-portcullis-error").as_deref(),
        Some("policy-denied")
    );
    assert!(
        r.body_text()
            .contains("Gambling sites are blocked by company policy."),
        "{}",
        r.body_text()
    );
    assert!(connect_status(&proxy, "www.casino.test:443")
        .await
        .starts_with("HTTP/1.1 403"));
    assert!(
        origin.seen().is_empty(),
        "a denied request reached the origin"
    );
    let log = proxy.access_log(2).join("\n");
    assert!(
        log.contains("TCP_DENIED/403") && log.contains("deny/no-gambling"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_requests_outlive_the_default_response_timeout() {
    let origin = TestOrigin::http().await;
    let proxy =
        TestProxy::start("[timeouts]\nupstream_response = \"1s\"\nlong_poll_idle = \"30s\"\n");
    // ActiveSync Ping: the origin answers after 2.5 s, beyond upstream_response.
    let ping = origin.url("/Microsoft-Server-ActiveSync?Cmd=Ping&delay_ms=2500");
    let r = curl(&["-x", &proxy.url(), "-X", "POST", "-d", "", &ping]).await;
    assert_eq!(
        (r.status, r.body_text().as_str()),
        (200, "hello from origin\n"),
        "{r:?}"
    );
    // The same wait on an ordinary URL hits the default timeout.
    let other = origin.url("/other?delay_ms=2500");
    let r = curl(&["-x", &proxy.url(), "-X", "POST", "-d", "", &other]).await;
    assert_eq!(r.status, 504, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_to_outlook_get_the_long_poll_idle_timeout() {
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start(&format!(
        "[server]\nconnect_ports = [{}]\n[tls]\ninspect = false\n\
         [timeouts]\ntunnel_idle = \"1s\"\nlong_poll_idle = \"30s\"\n\
         [resolve]\n\"outlook.office365.com\" = [\"127.0.0.1\"]\n\"www.example.test\" = [\"127.0.0.1\"]\n",
        origin.addr.port()
    ));
    async fn after_idle(proxy: &TestProxy, host: &str, port: u16) -> String {
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        let connect = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        tcp.write_all(connect.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let _ = tcp
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut reply)).await;
        String::from_utf8_lossy(&reply).into_owned()
    }
    let port = origin.addr.port();
    let outlook = after_idle(&proxy, "outlook.office365.com", port).await;
    assert!(
        outlook.starts_with("HTTP/1.1 200"),
        "Outlook tunnel closed while idle: {outlook:?}"
    );
    let other = after_idle(&proxy, "www.example.test", port).await;
    assert!(
        other.is_empty(),
        "ordinary tunnel survived tunnel_idle: {other:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_in_data_with_a_1_gib_declared_body_streams_through() {
    const DECLARED: u64 = 1 << 30;
    const SENT: u64 = 96 << 20;
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("");
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "RPC_IN_DATA http://{addr}/rpc/rpcproxy.dll?mail.corp.test:6001 HTTP/1.1\r\n\
         Host: {addr}\r\nUser-Agent: MSRPC\r\nContent-Length: {DECLARED}\r\n\r\n",
        addr = origin.addr
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'r'; 1 << 20];
    for _ in 0..(SENT >> 20) {
        tcp.write_all(&chunk).await.unwrap();
    }
    // Everything sent so far reaches the origin while the request is still open: streamed,
    // not buffered until the declared gigabyte is in.
    let mut received = 0;
    for _ in 0..100 {
        received = origin.sink_bytes();
        if received == SENT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(received, SENT);
    let rss_mib = proxy.peak_rss_kib() / 1024;
    assert!(rss_mib < 64, "proxy peak RSS {rss_mib} MiB while streaming");
    let seen = origin.seen();
    assert_eq!(seen[0].method, "RPC_IN_DATA");
    assert_eq!(
        seen[0].headers["content-length"],
        DECLARED.to_string().as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_401_passes_through_and_is_not_the_proxy_407() {
    let dir = tempfile::tempdir().unwrap();
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start(&format!(
        "[auth]\nschemes = [\"basic\"]\nhtpasswd = \"{}\"\n",
        users(dir.path()).display()
    ));
    let r = curl(&[
        "-x",
        &proxy.url(),
        "-U",
        "alice:secret",
        &origin.url("/ntlm"),
    ])
    .await;
    assert_eq!(r.status, 401, "{r:?}");
    let www: Vec<_> = r
        .headers
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"))
        .collect();
    assert_eq!(
        www,
        ["www-authenticate: NTLM", "www-authenticate: Negotiate"],
        "{}",
        r.headers
    );
    assert!(r.header("proxy-authenticate").is_none(), "{}", r.headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pac_file_sends_direct_hosts_direct_and_the_rest_to_the_proxy() {
    let proxy = TestProxy::start("[policy]\ndirect = [\"*.corp.test\"]\n");
    let mut body_len = 0;
    for path in ["/proxy.pac", "/wpad.dat"] {
        let r = curl(&[&format!("http://{}{path}", proxy.addr)]).await;
        body_len = r.body.len();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/x-ns-proxy-autoconfig")
        );
        let pac = r.body_text();
        assert!(pac.contains("function FindProxyForURL"), "{pac}");
        assert!(pac.contains("corp.test"), "{pac}");
        assert!(pac.contains(&format!("PROXY {}", proxy.addr)), "{pac}");
    }
    // The proxy's own pages are logged with a full URL, like every other line, and the size
    // field is the body's (the README says how that differs from Squid's).
    let log = proxy.access_log(2);
    for path in ["/proxy.pac", "/wpad.dat"] {
        let url = format!(" GET http://{}{path} ", proxy.addr);
        let line = log
            .iter()
            .find(|l| l.contains("NONE/200") && l.contains(&url))
            .unwrap_or_else(|| panic!("{url} not in {log:?}"));
        let bytes: usize = line.split_whitespace().nth(4).unwrap().parse().unwrap();
        assert_eq!(bytes, body_len, "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_explain_names_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("p.toml");
    std::fs::write(
        &config,
        "[[policy.rules]]\nname = \"pinned-bank\"\nhost = \"*.bank.test\"\naction = \"tunnel\"\n",
    )
    .unwrap();
    let explain = |url: &str| {
        let out = Command::new(portcullis_e2e::portcullis_bin())
            .args(["policy", "explain", "--config"])
            .arg(&config)
            .args(["--url", url])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let bank = explain("https://www.bank.test/");
    assert!(bank.contains("rule:     pinned-bank"), "{bank}");
    assert!(
        bank.contains("matched:  host *.bank.test ~ www.bank.test"),
        "{bank}"
    );
    let outlook = explain("https://autodiscover-s.outlook.com/autodiscover/autodiscover.xml");
    assert!(
        outlook.contains("decision: tunnel") && outlook.contains("auth:     Exempt"),
        "{outlook}"
    );
}

/// Reads one HTTP/1.1 response with a Content-Length body from a keep-alive connection.
async fn read_response(tcp: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(
            tcp.read(&mut byte).await.unwrap(),
            1,
            "connection closed: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    tcp.read_exact(&mut body).await.unwrap();
    head + &String::from_utf8_lossy(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_ntlm_pins_the_client_to_its_own_origin_connection() {
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start("");
    let url = origin.url("/ntlm");
    let mut a = TcpStream::connect(proxy.addr).await.unwrap();
    let leg = |auth: &str| {
        format!(
            "GET {url} HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}\r\n\r\n",
            origin.addr
        )
    };
    a.write_all(leg("NTLM TYPE1").as_bytes()).await.unwrap();
    let challenge = read_response(&mut a).await;
    assert!(challenge.starts_with("HTTP/1.1 401"), "{challenge}");
    let conn: usize = challenge
        .lines()
        .find_map(|l| l.strip_prefix("www-authenticate: NTLM CHALLENGE-"))
        .unwrap_or_else(|| panic!("{challenge}"))
        .trim()
        .parse()
        .unwrap();
    // Another client keeps an origin connection busy meanwhile; without pinning, the third leg
    // would land on a different origin connection and fail.
    let slow = tokio::spawn({
        let proxy_url = proxy.url();
        let delayed = origin.url("/other?delay_ms=1500");
        async move { curl(&["-x", &proxy_url, &delayed]).await.status }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.write_all(leg(&format!("NTLM TYPE3-{conn}")).as_bytes())
        .await
        .unwrap();
    let done = read_response(&mut a).await;
    assert!(done.starts_with("HTTP/1.1 200"), "{done}");
    assert!(
        done.ends_with(&format!("authenticated on connection {conn}\n")),
        "{done}"
    );
    // Later plain requests of this client stay on its authenticated connection.
    a.write_all(
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\n\r\n",
            origin.url("/"),
            origin.addr
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    assert!(read_response(&mut a).await.starts_with("HTTP/1.1 200"));
    assert_eq!(slow.await.unwrap(), 200);
    // And nobody else was ever served on it.
    let seen = origin.seen();
    let others: Vec<_> = seen.iter().filter(|s| s.uri.contains("/other")).collect();
    assert!(others.iter().all(|s| s.conn != conn), "{seen:?}");
    assert_eq!(
        seen.iter().filter(|s| s.conn == conn).count(),
        3,
        "{seen:?}"
    );
}
