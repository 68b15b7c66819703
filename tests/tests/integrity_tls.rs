//! Control integrity for inspected tunnels (issue 15): a client refusing an intercepted
//! handshake must not switch inspection off (let alone open a denied host), and every
//! interception that fails leaves one access-log line and is counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use portcullis_e2e::tls::{client_hello, connect_tunnel, short_lived_ca, OriginCert};
use portcullis_e2e::{curl, scrape_until, TestOrigin, TestProxy};
use tokio::io::AsyncWriteExt;

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

/// The access log's JSON records for CONNECTs to `target`.
fn connect_records(proxy: &TestProxy, target: &str, at_least: usize) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let records: Vec<serde_json::Value> = proxy
            .access_log(0)
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|r: &serde_json::Value| r["method"] == "CONNECT" && r["url"] == target)
            .collect();
        if records.len() >= at_least || std::time::Instant::now() > deadline {
            return records;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Exactly one CONNECT line for `target`, with `result` and the cause `error`.
fn assert_one_line(proxy: &TestProxy, target: &str, result: &str, error: &str) {
    // A moment for a second (wrong) line to appear.
    std::thread::sleep(Duration::from_millis(200));
    let records = connect_records(proxy, target, 1);
    assert_eq!(records.len(), 1, "{target}: {records:?}");
    let r = &records[0];
    assert_eq!(r["result"], result, "{target}: {r}");
    assert_eq!(r["status"], 0, "{target}: {r}");
    assert_eq!(r["error"], error, "{target}: {r}");
    assert_eq!(r["action"], "inspect", "{target}: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_interceptions_get_one_log_line_and_are_counted() {
    let good = TestOrigin::https().await;
    let expired = TestOrigin::https_with(OriginCert::Expired, false).await;
    let dir = tempfile::tempdir().unwrap();
    let roots = dir.path().join("roots.pem");
    let mut pem = std::fs::read_to_string(good.ca_file.as_ref().unwrap()).unwrap();
    pem.push_str(&std::fs::read_to_string(expired.ca_file.as_ref().unwrap()).unwrap());
    std::fs::write(&roots, pem).unwrap();
    let (p1, p2) = (good.addr.port(), expired.addr.port());
    let proxy = TestProxy::start(&format!(
        "[server]\nconnect_ports = [{p1}, {p2}]\n[timeouts]\nclient_header = \"1s\"\n\
         [tls]\nupstream_ca_file = \"{}\"\n[access_log]\nformat = \"json\"\n\
         [resolve]\n\"leaving.lab.test\" = [\"127.0.0.1\"]\n",
        roots.display()
    ));
    let trusted = ca_path(&good);

    // The client refuses the minted certificate (pinning, or the CA not installed).
    let r = curl(&[
        "-x",
        &proxy.url(),
        "--cacert",
        &trusted,
        &format!("https://localhost:{p1}/"),
    ])
    .await;
    assert_eq!(r.exit, 60, "{r:?}");
    assert_one_line(
        &proxy,
        &format!("localhost:{p1}"),
        "NONE_NONE_ABORTED",
        "client-tls-refused",
    );

    // The client starts a handshake and never finishes it.
    let mut stalled = connect_tunnel(proxy.addr, &format!("127.0.0.1:{p1}")).await;
    stalled
        .write_all(&client_hello("stalled.lab.test"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_one_line(
        &proxy,
        &format!("127.0.0.1:{p1}"),
        "NONE_NONE_TIMEDOUT",
        "client-tls-timeout",
    );
    drop(stalled);

    // The client starts a handshake and leaves.
    let leaving_target = format!("leaving.lab.test:{p1}");
    let mut leaving = connect_tunnel(proxy.addr, &leaving_target).await;
    leaving
        .write_all(&client_hello("leaving.lab.test"))
        .await
        .unwrap();
    drop(leaving);
    assert_one_line(
        &proxy,
        &leaving_target,
        "NONE_NONE_ABORTED",
        "client-tls-aborted",
    );

    // The origin's certificate has expired, and the client then refuses ours: the line names
    // the origin's failure, which no client could have got past.
    let r = curl(&[
        "-x",
        &proxy.url(),
        "--cacert",
        &trusted,
        &format!("https://localhost:{p2}/"),
    ])
    .await;
    assert_eq!(r.exit, 60, "{r:?}");
    assert_one_line(
        &proxy,
        &format!("localhost:{p2}"),
        "NONE_NONE_ABORTED",
        "upstream-certificate-expired",
    );

    let metrics = scrape_until(&proxy.admin_url(), |s| {
        s.value(
            "portcullis_request_errors_total",
            &[r#"cause="client-tls-timeout""#],
        ) >= 1.0
    })
    .await;
    for cause in [
        "client-tls-refused",
        "client-tls-timeout",
        "client-tls-aborted",
        "upstream-certificate-expired",
    ] {
        assert_eq!(
            metrics.value(
                "portcullis_request_errors_total",
                &[&format!("cause=\"{cause}\"")]
            ),
            1.0,
            "{cause}\n{}",
            metrics.0
        );
    }
    assert_eq!(
        metrics.value(
            "portcullis_requests_total",
            &[
                r#"method="CONNECT""#,
                r#"decision="inspect""#,
                r#"status_class="other""#
            ]
        ),
        4.0,
        "{}",
        metrics.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_whose_certificate_cannot_be_minted_is_logged() {
    let origin = TestOrigin::https().await;
    let port = origin.addr.port();
    let data = tempfile::tempdir().unwrap();
    let expires = short_lived_ca(data.path(), Duration::from_secs(8));
    let proxy = TestProxy::start(&format!(
        "[server]\nconnect_ports = [{port}]\ndata_dir = \"{}\"\n[tls]\nupstream_ca_file = \"{}\"\n\
         [access_log]\nformat = \"json\"\n",
        data.path().display(),
        ca_path(&origin)
    ));
    // Once the CA has expired, no leaf can be minted.
    while SystemTime::now() < expires + Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = curl(&[
        "-x",
        &proxy.url(),
        "-k",
        &format!("https://localhost:{port}/"),
    ])
    .await;
    assert_ne!(r.exit, 0, "{r:?}");
    let target = format!("localhost:{port}");
    let records = connect_records(&proxy, &target, 1);
    assert_eq!(records.len(), 1, "{records:?}\n{}", proxy.stderr());
    assert_eq!(records[0]["result"], "NONE_NONE", "{}", records[0]);
    assert_eq!(
        records[0]["error"], "certificate-mint-failed",
        "{}",
        records[0]
    );
    let metrics = scrape_until(&proxy.admin_url(), |s| {
        s.value(
            "portcullis_request_errors_total",
            &[r#"cause="certificate-mint-failed""#],
        ) >= 1.0
    })
    .await;
    assert_eq!(
        metrics.value(
            "portcullis_request_errors_total",
            &[r#"cause="certificate-mint-failed""#]
        ),
        1.0
    );
}
