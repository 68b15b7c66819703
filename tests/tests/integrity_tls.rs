//! Control integrity for inspected tunnels (issue 15): a client refusing an intercepted
//! handshake must not switch inspection off (let alone open a denied host), and every
//! interception that fails leaves one access-log line and is counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_e2e::{curl, TestOrigin, TestProxy};

/// A proxy inspecting TLS on `origin`'s port that trusts `origin`'s CA (as it would the public
/// roots). `extra` continues the `[tls]` section and may add sections of its own.
fn inspecting_proxy(origin: &TestOrigin, extra: &str) -> TestProxy {
    TestProxy::start(&format!(
        "[server]\nconnect_ports = [{}]\n[tls]\nupstream_ca_file = \"{}\"\n{extra}",
        origin.addr.port(),
        origin.ca_file.as_ref().unwrap().display()
    ))
}

fn ca_path(origin: &TestOrigin) -> String {
    origin.ca_file.as_ref().unwrap().display().to_string()
}

const DENY_SECRET: &str = "[[policy.rules]]\nname = \"no-secrets\"\nhost = \"secret.lab.test\"\naction = \"deny\"\nreason = \"Not here.\"\n";

/// curl through `proxy` to `https://{host}:{port}/`, CONNECTing to the bare IP 127.0.0.1 and
/// naming `host` only in the SNI. `trusted` is the only CA file the client trusts.
async fn by_ip(proxy: &TestProxy, host: &str, port: u16, trusted: &str) -> portcullis_e2e::Curl {
    curl(&[
        "-x",
        &proxy.url(),
        "--cacert",
        trusted,
        "--connect-to",
        &format!("{host}:{port}:127.0.0.1:{port}"),
        &format!("https://{host}:{port}/"),
    ])
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_handshake_never_opens_a_denied_host() {
    let origin = TestOrigin::https().await;
    let port = origin.addr.port();
    let proxy = inspecting_proxy(
        &origin,
        &format!("tunnel_after_refusal = \"1h\"\n{DENY_SECRET}"),
    );
    // The client trusts only the public roots (the origin's CA), so it refuses the certificate
    // the 403 page comes in. Refusing must not earn it the origin on its next tries.
    for attempt in 0..3 {
        let r = by_ip(&proxy, "secret.lab.test", port, &ca_path(&origin)).await;
        assert_eq!(r.exit, 60, "attempt {attempt}: {r:?}\n{}", proxy.stderr());
    }
    assert!(
        origin.seen().is_empty(),
        "a request reached the denied origin: {:?}",
        origin.seen()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_tunnels_are_off_by_default_and_only_for_listed_inspected_hosts() {
    let origin = TestOrigin::https().await;
    let port = origin.addr.port();
    let trusted = ca_path(&origin);
    let resolve =
        "[resolve]\n\"pinned.lab.test\" = [\"127.0.0.1\"]\n\"other.lab.test\" = [\"127.0.0.1\"]\n";

    // Off by default: a client that refused once is inspected (and refuses) again.
    let proxy = inspecting_proxy(&origin, resolve);
    for attempt in 0..2 {
        let url = format!("https://pinned.lab.test:{port}/");
        let r = curl(&["-x", &proxy.url(), "--cacert", &trusted, &url]).await;
        assert_eq!(r.exit, 60, "attempt {attempt}: {r:?}");
    }
    assert!(origin.seen().is_empty(), "{:?}", origin.seen());

    // On, for the pinning application's host: that host is tunnelled on the next try, and the
    // line says why; other hosts and denied hosts are not.
    let listed = inspecting_proxy(
        &origin,
        &format!(
            "tunnel_after_refusal = \"1h\"\n\
             tunnel_after_refusal_hosts = [\"pinned.lab.test\", \"secret.lab.test\"]\n\
             {DENY_SECRET}{resolve}"
        ),
    );
    let get = |host: &str| {
        let url = format!("https://{host}:{port}/");
        let proxy = listed.url();
        let trusted = trusted.clone();
        async move { curl(&["-x", &proxy, "--cacert", &trusted, &url]).await }
    };
    assert_eq!(get("pinned.lab.test").await.exit, 60);
    let second = get("pinned.lab.test").await;
    assert_eq!(second.status, 200, "{second:?}\n{}", listed.stderr());
    assert_eq!(get("other.lab.test").await.exit, 60);
    assert_eq!(get("other.lab.test").await.exit, 60);
    for attempt in 0..2 {
        let r = by_ip(&listed, "secret.lab.test", port, &trusted).await;
        assert_eq!(r.exit, 60, "secret, attempt {attempt}: {r:?}");
    }
    let hosts: Vec<_> = origin
        .seen()
        .iter()
        .map(|s| s.headers["host"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(hosts, [format!("pinned.lab.test:{port}")]);
    let log = listed.access_log(6).join("\n");
    assert!(
        log.lines().any(|l| l.contains("TCP_TUNNEL/200")
            && l.contains(&format!("CONNECT pinned.lab.test:{port}"))
            && l.ends_with(" tunnel/refusal:default")),
        "{log}"
    );
}
