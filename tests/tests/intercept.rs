//! TLS inspection through the real binary: curl, openssl s_client and rustls clients trusting
//! the proxy's CA; origins with good and bad certificates.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use portcullis_e2e::tls::OriginCert;
use portcullis_e2e::{curl, TestOrigin, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A proxy inspecting TLS that trusts `origin`'s CA (as it would the public roots).
fn inspecting_proxy(origin: &TestOrigin, extra: &str) -> TestProxy {
    TestProxy::start(&format!(
        "[server]\nconnect_ports = [{}]\n[tls]\nupstream_ca_file = \"{}\"\n{extra}",
        origin.addr.port(),
        origin.ca_file.as_ref().unwrap().display()
    ))
}

fn proxy_ca(proxy: &TestProxy) -> String {
    proxy.dir.path().join("data/ca.pem").display().to_string()
}

/// `openssl s_client` through the proxy: the leaf it was shown, as `openssl x509 -text`.
fn leaf_seen_by_openssl(proxy: &TestProxy, host: &str, port: u16, ca: &str) -> String {
    let script = format!(
        "openssl s_client -proxy {} -connect {host}:{port} -servername {host} -CAfile {ca} -verify_return_error </dev/null 2>/dev/null | openssl x509 -noout -text",
        proxy.addr
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_is_intercepted_with_a_certificate_from_the_proxy_ca() {
    let origin = TestOrigin::https().await;
    let proxy = inspecting_proxy(&origin, "");
    let port = origin.addr.port();
    let url = format!("https://localhost:{port}/bytes/300000");
    let r = curl(&["-x", &proxy.url(), "--cacert", &proxy_ca(&proxy), &url]).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", proxy.stderr());
    assert_eq!(r.body.len(), 300_000);

    let text = leaf_seen_by_openssl(&proxy, "localhost", port, &proxy_ca(&proxy));
    assert!(
        text.contains("Issuer: CN = Portcullis Interception CA")
            || text.contains("Issuer: CN=Portcullis Interception CA"),
        "{text}"
    );
    // The origin's subjectAltNames were copied, so clients that connect by IP also validate.
    assert!(text.contains("DNS:localhost"), "{text}");
    assert!(text.contains("IP Address:127.0.0.1"), "{text}");
    assert!(text.contains("TLS Web Server Authentication"), "{text}");

    // The origin saw a normal request from the proxy: Via added, no proxy headers.
    let seen = origin.seen();
    assert_eq!(seen[0].headers["via"], "1.1 portcullis");
    assert_eq!(seen[0].uri, "/bytes/300000");
    let log = proxy.access_log(2);
    assert!(
        log.iter()
            .any(|l| l.contains("NONE/200") && l.contains(&format!("CONNECT localhost:{port}"))),
        "{log:?}"
    );
    assert!(
        log.iter().any(|l| l.contains("TCP_MISS/200 300000 GET")
            && l.contains(&format!("https://localhost:{port}/bytes/300000"))),
        "{log:?}"
    );

    // The CA is downloadable from the proxy itself, identical to the file.
    let pem = curl(&[&format!("{}/ca.pem", proxy.url())]).await;
    assert_eq!(
        pem.body_text(),
        std::fs::read_to_string(proxy_ca(&proxy)).unwrap()
    );
    let page = curl(&[&proxy.url()]).await;
    assert!(
        page.body_text().contains("certutil -addstore"),
        "{}",
        page.body_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_and_http1_clients_are_both_served() {
    let origin = TestOrigin::https_with(OriginCert::Good, true).await;
    let proxy = inspecting_proxy(&origin, "");
    let url = format!("https://localhost:{}/echo", origin.addr.port());
    let ca = proxy_ca(&proxy);
    let h2 = curl(&[
        "-x",
        &proxy.url(),
        "--cacert",
        &ca,
        "--http2",
        "--data-binary",
        "over h2",
        &url,
    ])
    .await;
    assert_eq!(
        (h2.status, h2.body_text().as_str()),
        (200, "over h2"),
        "{h2:?}\n{}",
        proxy.stderr()
    );
    assert!(h2.headers.contains("\r\nHTTP/2 200"), "{}", h2.headers);
    assert!(
        h2.headers
            .starts_with("HTTP/1.1 200 Connection established"),
        "{}",
        h2.headers
    );
    let h1 = curl(&[
        "-x",
        &proxy.url(),
        "--cacert",
        &ca,
        "--http1.1",
        "--data-binary",
        "over h1",
        &url,
    ])
    .await;
    assert_eq!((h1.status, h1.body_text().as_str()), (200, "over h1"));
    assert_eq!(
        h1.headers.matches("HTTP/1.1 200").count(),
        2,
        "{}",
        h1.headers
    );
    let versions: Vec<_> = origin.seen().iter().map(|s| s.version).collect();
    assert_eq!(
        versions,
        [http::Version::HTTP_2, http::Version::HTTP_11],
        "ALPN was not mirrored to the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_origin_certificates_are_never_laundered() {
    let cases = [
        (
            OriginCert::Expired,
            "upstream-certificate-expired",
            "expired",
        ),
        (
            OriginCert::WrongHost,
            "upstream-certificate-wrong-host",
            "not valid for localhost",
        ),
        (
            OriginCert::SelfSigned,
            "upstream-certificate-untrusted",
            "not signed by a trusted CA",
        ),
        (
            OriginCert::IncompleteChain,
            "upstream-certificate-untrusted",
            "incomplete chain",
        ),
        // What `openssl req -x509` makes: webpki's CaUsedAsEndEntity, said in words.
        (
            OriginCert::SelfSignedCa,
            "upstream-certificate-untrusted",
            "presents a CA certificate as its own",
        ),
    ];
    for (kind, cause, words) in cases {
        let origin = TestOrigin::https_with(kind, false).await;
        let proxy = inspecting_proxy(&origin, "");
        let url = format!("https://localhost:{}/", origin.addr.port());
        let r = curl(&["-x", &proxy.url(), "--cacert", &proxy_ca(&proxy), &url]).await;
        assert_eq!(r.status, 502, "{kind:?}: {r:?}");
        assert_eq!(
            r.header("x-portcullis-error").as_deref(),
            Some(cause),
            "{kind:?}"
        );
        assert!(r.body_text().contains(words), "{kind:?}: {}", r.body_text());
        // Sentences, never Rust's debug output of the verifier's error.
        assert!(
            !r.body_text().contains("Error(") && !r.body_text().contains("Context"),
            "{kind:?}: {}",
            r.body_text()
        );
        assert!(
            origin.seen().is_empty(),
            "{kind:?}: a request reached the untrusted origin"
        );

        // The lab escape hatch: insecure_upstream lets this host through.
        let lab = inspecting_proxy(&origin, "insecure_upstream = [\"localhost\"]\n");
        let ok = curl(&["-x", &lab.url(), "--cacert", &proxy_ca(&lab), &url]).await;
        assert_eq!(ok.status, 200, "{kind:?} with insecure_upstream: {ok:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_a_rule_tunnels_see_the_origin_certificate() {
    let origin = TestOrigin::https().await;
    let tunnel = |host: &str| format!("[[policy.rules]]\nhost = \"{host}\"\naction = \"tunnel\"\n");
    let proxy = inspecting_proxy(&origin, &tunnel("localhost"));
    let origin_ca = origin.ca_file.as_ref().unwrap().display().to_string();
    let url = format!("https://localhost:{}/", origin.addr.port());
    let r = curl(&["-x", &proxy.url(), "--cacert", &origin_ca, &url]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let text = leaf_seen_by_openssl(&proxy, "localhost", origin.addr.port(), &origin_ca);
    assert!(text.contains("Portcullis Test Root"), "{text}");
    // A CONNECT to a bare IP is judged by the name in its ClientHello.
    let by_sni = inspecting_proxy(&origin, &tunnel("*.lab.test"));
    let resolve = format!("www.lab.test:{}:127.0.0.1", origin.addr.port());
    let r = curl(&[
        "-x",
        &by_sni.url(),
        "--cacert",
        &origin_ca,
        "--connect-to",
        &format!(
            "www.lab.test:{}:127.0.0.1:{}",
            origin.addr.port(),
            origin.addr.port()
        ),
        "--resolve",
        &resolve,
        &format!("https://www.lab.test:{}/", origin.addr.port()),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}\n{}", by_sni.stderr());
}

/// Opens a CONNECT tunnel to `host:port` and returns the leaf certificate the proxy presents.
async fn leaf_via_proxy(
    proxy: std::net::SocketAddr,
    host: &str,
    port: u16,
    ca_pem: &[u8],
) -> Vec<u8> {
    let tls = tls_via_proxy(proxy, host, port, ca_pem).await;
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec()
}

/// A TLS connection to `host` through a CONNECT to `127.0.0.1:port`, trusting `ca_pem`.
async fn tls_via_proxy(
    proxy: std::net::SocketAddr,
    host: &str,
    port: u16,
    ca_pem: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(tcp.read(&mut b).await.unwrap(), 1);
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"));
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_work_over_intercepted_tls() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let origin = TestOrigin::https().await;
    let proxy = inspecting_proxy(&origin, "");
    let port = origin.addr.port();
    let ca = std::fs::read(proxy_ca(&proxy)).unwrap();
    let tls = tls_via_proxy(proxy.addr, "localhost", port, &ca).await;
    let url = format!("wss://localhost:{port}/ws");
    let (mut ws, response) = tokio_tungstenite::client_async(url.as_str(), tls)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    for text in ["decrypted", "and", "re-encrypted"] {
        ws.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    ws.close(None).await.unwrap();
    assert_eq!(origin.seen()[0].headers["upgrade"], "websocket");
    let log = proxy.access_log(2);
    assert!(
        log.iter()
            .any(|l| l.contains("TCP_MISS/101") && l.contains("https://localhost")),
        "{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_first_connections_mints_once() {
    let origin = TestOrigin::https().await;
    let proxy = inspecting_proxy(&origin, "");
    let ca = std::fs::read(proxy_ca(&proxy)).unwrap();
    let port = origin.addr.port();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let ca = ca.clone();
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            leaf_via_proxy(addr, "burst.lab.test", port, &ca).await
        }));
    }
    let mut leaves = HashSet::new();
    for t in tasks {
        leaves.insert(t.await.unwrap());
    }
    assert_eq!(
        leaves.len(),
        1,
        "100 concurrent first connections got {} different certificates",
        leaves.len()
    );
    // Later connections are served from the cache: the same certificate (same serial).
    let again = leaf_via_proxy(proxy.addr, "burst.lab.test", port, &ca).await;
    assert!(leaves.contains(&again));
    // Another name gets another certificate.
    let other = leaf_via_proxy(proxy.addr, "other.lab.test", port, &ca).await;
    assert!(!leaves.contains(&other));
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_refuses_interception_is_tunnelled_on_its_next_try() {
    let origin = TestOrigin::https().await;
    let origin_ca = origin.ca_file.as_ref().unwrap().display().to_string();
    let url = format!("https://localhost:{}/", origin.addr.port());
    // A client that trusts only the public roots (the origin's CA): it refuses the minted
    // certificate, like an application pinning its server's certificate. Only a listed host
    // is tunnelled after a refusal, and only when the feature is on (it is off by default).
    let on = "tunnel_after_refusal = \"1h\"\ntunnel_after_refusal_hosts = [\"localhost\"]\n";
    for (setting, second_try) in [(on, 200), ("", 0)] {
        let proxy = inspecting_proxy(&origin, setting);
        let first = curl(&["-x", &proxy.url(), "--cacert", &origin_ca, &url]).await;
        assert_eq!(
            first.exit, 60,
            "the minted certificate was accepted: {first:?}"
        );
        let second = curl(&["-x", &proxy.url(), "--cacert", &origin_ca, &url]).await;
        assert_eq!(
            second.status,
            second_try,
            "{setting:?}: {second:?}\n{}",
            proxy.stderr()
        );
        // Another client (another source address) is still inspected.
        if second_try == 200 {
            let other = curl(&[
                "--interface",
                "127.0.0.2",
                "-x",
                &proxy.url(),
                "--cacert",
                &origin_ca,
                &url,
            ])
            .await;
            assert_eq!(other.exit, 60, "{other:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_is_as_strict_inside_intercepted_tls() {
    let origin = TestOrigin::https().await;
    let proxy = inspecting_proxy(&origin, "");
    let port = origin.addr.port();
    let ca = std::fs::read(proxy_ca(&proxy)).unwrap();
    let exchange = |request: &'static [u8]| {
        let ca = ca.clone();
        let addr = proxy.addr;
        async move {
            let mut tls = tls_via_proxy(addr, "localhost", port, &ca).await;
            tls.write_all(request).await.unwrap();
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), tls.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    let two_lengths = exchange(
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd",
    )
    .await;
    assert!(two_lengths.starts_with("HTTP/1.1 400"), "{two_lengths:?}");
    let smuggle = exchange(
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert_eq!(smuggle.matches("HTTP/1.1 ").count(), 1, "{smuggle}");
    // Only the smuggling POST reached the origin, chunked and without the stale length.
    let seen = origin.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].headers.get("content-length").is_none(), "{seen:?}");
}
