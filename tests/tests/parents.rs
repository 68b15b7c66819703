//! Parent proxies (issue 19): Portcullis chained to a real Squid requiring Basic auth, and to
//! a second Portcullis while inspecting; failover between parents and back; a parent refusing
//! our credentials; `deny` before routing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use portcullis_e2e::squid::{self, Squid};
use portcullis_e2e::tls::OriginCert;
use portcullis_e2e::{curl, htpasswd, scrape, TestOrigin, TestProxy};

/// `[[upstream.parents]]` entry for `squid` with `user` and a password file holding `password`.
fn parent_toml(dir: &Path, name: &str, addr: &str, user: &str, password: &str) -> String {
    let file = dir.join(format!("{name}.password"));
    std::fs::write(&file, format!("{password}\n")).unwrap();
    format!(
        "[[upstream.parents]]\nname = \"{name}\"\naddress = \"{addr}\"\nuser = \"{user}\"\npassword_file = \"{}\"\n",
        file.display()
    )
}

/// Our proxy requiring its own Basic credentials (bob), routing everything to `parents`.
fn chained_proxy(
    dir: &Path,
    origin_port: u16,
    parents: &str,
    route: &str,
    extra: &str,
) -> TestProxy {
    let users = dir.join("clients.htpasswd");
    htpasswd(&users, "-B", "bob", "bob-pw");
    TestProxy::start(&format!(
        "[server]\nconnect_ports = [{origin_port}]\n\
         [auth]\nschemes = [\"basic\"]\nhtpasswd = \"{}\"\n\
         [tls]\ninspect = false\n\
         [policy]\ndefault_route = {route}\n\
         [upstream]\nparent_backoff = \"1s\"\n{parents}{extra}",
        users.display()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn squid_parent_with_basic_auth_carries_http_and_connect() {
    if !squid::available() {
        return;
    }
    let squid = Squid::start(&[("alice", "alice-pw")]);
    let origin = TestOrigin::http().await;
    let dir = tempfile::tempdir().unwrap();
    let parents = parent_toml(
        dir.path(),
        "corp",
        &squid.addr.to_string(),
        "alice",
        "alice-pw",
    );
    let proxy = chained_proxy(dir.path(), origin.addr.port(), &parents, "\"corp\"", "");
    let url = origin.url("/hello");

    let get = curl(&["-x", &proxy.url(), "-U", "bob:bob-pw", &url]).await;
    assert_eq!(get.status, 200, "{get:?}\n{}", proxy.stderr());
    let tunnel = curl(&["-p", "-x", &proxy.url(), "-U", "bob:bob-pw", &url]).await;
    assert_eq!(tunnel.status, 200, "{tunnel:?}\n{}", proxy.stderr());

    // The parent saw our credentials' user for both, and never the client's own.
    let log = squid.access_log(2);
    assert!(
        log.iter()
            .any(|l| l.contains("TCP_MISS/200 GET") && l.ends_with("user=alice")),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("TCP_TUNNEL/200 CONNECT") && l.ends_with("user=alice")),
        "{log:?}"
    );
    assert!(!log.iter().any(|l| l.contains("user=bob")), "{log:?}");
    // Neither did the origin: no Proxy-Authorization got past us or the parent.
    assert!(origin
        .seen()
        .iter()
        .all(|s| !s.headers.contains_key("proxy-authorization")));

    // Our log names the parent hop as Squid does, with the user who authenticated to us.
    let ours = proxy.access_log(2);
    assert!(
        ours.iter()
            .any(|l| l.contains("TCP_MISS/200") && l.contains(" bob DEFAULT_PARENT/127.0.0.1")),
        "{ours:?}"
    );
    assert!(
        ours.iter()
            .any(|l| l.contains("TCP_TUNNEL/200") && l.contains("DEFAULT_PARENT/127.0.0.1")),
        "{ours:?}"
    );
    let metrics = scrape(&proxy.admin_url()).await;
    assert!(metrics.value("portcullis_parent_requests_total", &["parent=\"corp\""]) >= 2.0);
    assert_eq!(
        metrics.value("portcullis_parent_up", &["parent=\"corp\""]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_refusing_our_credentials_is_an_error_for_the_admin_not_a_407() {
    if !squid::available() {
        return;
    }
    let squid = Squid::start(&[("alice", "alice-pw")]);
    let origin = TestOrigin::http().await;
    let dir = tempfile::tempdir().unwrap();
    let parents = parent_toml(
        dir.path(),
        "corp",
        &squid.addr.to_string(),
        "alice",
        "wrong",
    );
    let proxy = chained_proxy(dir.path(), origin.addr.port(), &parents, "\"corp\"", "");
    let url = origin.url("/");

    let get = curl(&["-x", &proxy.url(), "-U", "bob:bob-pw", &url]).await;
    assert_eq!(get.status, 502, "{get:?}");
    assert_eq!(
        get.header("x-portcullis-error").as_deref(),
        Some("parent-auth-failed")
    );
    assert!(get.header("proxy-authenticate").is_none(), "{get:?}");
    assert!(
        get.body_text().contains("refused this proxy"),
        "{}",
        get.body_text()
    );
    let connect = curl(&[
        "-p",
        "-x",
        &proxy.url(),
        "-U",
        "bob:bob-pw",
        "-w",
        "%{http_connect}",
        &url,
    ])
    .await;
    assert!(connect.headers.contains("502"), "{connect:?}");
    assert!(!connect.headers.contains("407"), "{connect:?}");
    let ours = proxy.access_log(2);
    assert!(ours.iter().all(|l| l.contains("/502 ")), "{ours:?}");
    // Our credentials are not the parent's health: it stays up.
    let metrics = scrape(&proxy.admin_url()).await;
    assert!(
        metrics.value(
            "portcullis_parent_failures_total",
            &["parent=\"corp\"", "kind=\"auth\""]
        ) >= 2.0
    );
    assert_eq!(
        metrics.value("portcullis_parent_up", &["parent=\"corp\""]),
        1.0
    );

    // The password file is read again on reload: fixing it fixes the chain.
    std::fs::write(dir.path().join("corp.password"), "alice-pw\n").unwrap();
    let reload = curl(&["-X", "POST", &format!("{}/reload", proxy.admin_url())]).await;
    assert_eq!(reload.status, 200, "{reload:?}");
    let fixed = curl(&["-x", &proxy.url(), "-U", "bob:bob-pw", &url]).await;
    assert_eq!(fixed.status, 200, "{fixed:?}\n{}", proxy.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_the_second_parent_and_back_after_a_restart() {
    if !squid::available() {
        return;
    }
    let mut first = Squid::start(&[("alice", "alice-pw")]);
    let mut second = Squid::start(&[("alice", "alice-pw")]);
    let origin = TestOrigin::http().await;
    let dir = tempfile::tempdir().unwrap();
    let parents = parent_toml(
        dir.path(),
        "p1",
        &first.addr.to_string(),
        "alice",
        "alice-pw",
    ) + &parent_toml(
        dir.path(),
        "p2",
        &second.addr.to_string(),
        "alice",
        "alice-pw",
    );
    let proxy = chained_proxy(
        dir.path(),
        origin.addr.port(),
        &parents,
        "[\"p1\", \"p2\"]",
        "",
    );
    let url = origin.url("/");
    let via = proxy.url();
    let get_args = ["-x", via.as_str(), "-U", "bob:bob-pw", url.as_str()];
    let tunnel_args = ["-p", "-x", via.as_str(), "-U", "bob:bob-pw", url.as_str()];
    let get = || curl(&get_args);
    let tunnel = || curl(&tunnel_args);

    assert_eq!(get().await.status, 200);
    let log = first.access_log(1);
    assert!(
        log.iter().any(|l| l.contains("TCP_MISS/200")),
        "p1 is first while it is up: {log:?}"
    );

    first.stop();
    // Both kinds of request reach the origin through p2, without an error for the client.
    let (g, t) = (get().await, tunnel().await);
    assert_eq!(
        (g.status, t.status),
        (200, 200),
        "{g:?}\n{t:?}\n{}",
        proxy.stderr()
    );
    let log = second.access_log(1);
    assert!(!log.is_empty(), "p2 carried nothing");
    let ours = proxy.access_log(3);
    assert!(
        ours.iter().any(|l| l.contains("FIRSTUP_PARENT/127.0.0.1")),
        "{ours:?}"
    );
    let admin = proxy.admin_url();
    let metrics = scrape(&admin).await;
    assert_eq!(
        metrics.value("portcullis_parent_up", &["parent=\"p1\""]),
        0.0
    );
    assert_eq!(
        metrics.value("portcullis_parent_up", &["parent=\"p2\""]),
        1.0
    );
    assert!(
        metrics.value(
            "portcullis_parent_failures_total",
            &["parent=\"p1\"", "kind=\"connect\""]
        ) >= 1.0
    );
    let ready = curl(&[&format!("{admin}/readyz")]).await;
    assert!(
        ready.body_text().contains("parents: ok: down: p1"),
        "{}",
        ready.body_text()
    );

    // Everything down: a 502 naming the route, and /readyz says so.
    second.stop();
    let down = get().await;
    assert_eq!(down.status, 502, "{down:?}");
    assert_eq!(
        down.header("x-portcullis-error").as_deref(),
        Some("parents-down")
    );
    let page = down
        .body_text()
        .replace("&quot;", "\"")
        .replace("&#34;", "\"");
    assert!(page.contains("route [\"p1\", \"p2\"]"), "{page}");
    let ready = curl(&[&format!("{admin}/readyz")]).await;
    assert_eq!(ready.status, 503, "{}", ready.body_text());

    // p1 back: once its back-off is over, it is first again, and up in the metrics.
    first.restart();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let back = get().await;
    assert_eq!(back.status, 200, "{back:?}\n{}", proxy.stderr());
    assert!(
        first.access_log(2).len() >= 2,
        "p1 did not carry the request after its restart"
    );
    let metrics = scrape(&admin).await;
    assert_eq!(
        metrics.value("portcullis_parent_up", &["parent=\"p1\""]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_rules_apply_before_any_route() {
    if !squid::available() {
        return;
    }
    let squid = Squid::start(&[("alice", "alice-pw")]);
    let origin = TestOrigin::http().await;
    let dir = tempfile::tempdir().unwrap();
    let parents = parent_toml(
        dir.path(),
        "corp",
        &squid.addr.to_string(),
        "alice",
        "alice-pw",
    );
    let rule = "[[policy.rules]]\nname = \"blocked\"\npath = \"/secret\"\naction = \"deny\"\n\
                reason = \"not here\"\nroute = \"corp\"\n";
    let proxy = chained_proxy(dir.path(), origin.addr.port(), &parents, "\"corp\"", rule);
    let denied = curl(&[
        "-x",
        &proxy.url(),
        "-U",
        "bob:bob-pw",
        &origin.url("/secret"),
    ])
    .await;
    assert_eq!(denied.status, 403, "{denied:?}");
    let ok = curl(&["-x", &proxy.url(), "-U", "bob:bob-pw", &origin.url("/open")]).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let log = squid.access_log(1);
    assert!(log.iter().all(|l| !l.contains("/secret")), "{log:?}");
}

/// Ours inspects; the parent is a second Portcullis requiring Basic auth that tunnels. The
/// origin's certificate is verified by ours through the parent's tunnel: a good one works, a
/// self-signed one is a 502 page, exactly as without a parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspection_through_a_portcullis_parent_verifies_the_origin() {
    let good = TestOrigin::https().await;
    let bad = TestOrigin::https_with(OriginCert::SelfSigned, false).await;
    let dir = tempfile::tempdir().unwrap();
    let parent_users = dir.path().join("parent.htpasswd");
    htpasswd(&parent_users, "-B", "chain", "chain-pw");
    let ports = format!("[{}, {}]", good.addr.port(), bad.addr.port());
    let parent = TestProxy::start(&format!(
        "[server]\nconnect_ports = {ports}\nvia_pseudonym = \"parent\"\n\
         [auth]\nschemes = [\"basic\"]\nhtpasswd = \"{}\"\n\
         [policy]\ndefault = {{ action = \"tunnel\" }}\n",
        parent_users.display()
    ));
    let parents = parent_toml(
        dir.path(),
        "chain",
        &parent.addr.to_string(),
        "chain",
        "chain-pw",
    );
    let ours = TestProxy::start(&format!(
        "[server]\nconnect_ports = {ports}\n\
         [tls]\nupstream_ca_file = \"{}\"\n\
         [policy]\ndefault_route = \"chain\"\n{parents}",
        good.ca_file.as_ref().unwrap().display()
    ));
    let ca = ours.dir.path().join("data/ca.pem").display().to_string();
    let ok = curl(&[
        "-x",
        &ours.url(),
        "--cacert",
        &ca,
        &format!("https://localhost:{}/hi", good.addr.port()),
    ])
    .await;
    assert_eq!(ok.status, 200, "{ok:?}\n{}", ours.stderr());
    assert_eq!(
        good.seen()[0].headers["via"],
        "1.1 portcullis",
        "decrypted by ours, tunnelled by the parent"
    );
    let refused = curl(&[
        "-x",
        &ours.url(),
        "--cacert",
        &ca,
        &format!("https://localhost:{}/hi", bad.addr.port()),
    ])
    .await;
    assert_eq!(refused.status, 502, "{refused:?}");
    assert!(
        bad.seen().is_empty(),
        "a request reached an origin that failed verification"
    );

    let log = ours.access_log(3);
    assert!(
        log.iter().any(|l| l.contains("TCP_MISS/200")
            && l.contains("https://localhost:")
            && l.contains("DEFAULT_PARENT/127.0.0.1")),
        "{log:?}"
    );
    let parent_log = parent.access_log(2);
    assert!(
        parent_log
            .iter()
            .filter(|l| l.contains("TCP_TUNNEL/200") && l.contains(" chain "))
            .count()
            >= 1,
        "{parent_log:?}"
    );
}

/// Config mistakes are refused with the key to fix.
#[test]
fn unknown_parents_and_missing_password_files_name_their_key() {
    let err = TestProxy::try_start("[policy]\ndefault_route = \"nowhere\"\n")
        .err()
        .unwrap();
    assert!(
        err.contains("policy.default_route") && err.contains("nowhere"),
        "{err}"
    );
    let err = TestProxy::try_start(
        "[[upstream.parents]]\nname = \"corp\"\naddress = \"127.0.0.1:1\"\nuser = \"a\"\npassword_file = \"/nonexistent/pw\"\n",
    )
    .err()
    .unwrap();
    assert!(
        err.contains("upstream.parents") && err.contains("/nonexistent/pw"),
        "{err}"
    );
}

/// Negotiate to the parent: a second Portcullis requiring Kerberos from the test KDC. Ours
/// holds alice's ticket cache and asks for `HTTP@localhost` itself (libgssapi as initiator),
/// with a fresh token on every request, also on a reused pooled connection, and every CONNECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kerberos_credentials_to_a_negotiate_parent() {
    if !portcullis_e2e::kdc::available() {
        return;
    }
    let kdc = portcullis_e2e::kdc::Kdc::start(&["localhost"]);
    let cc = kdc.kinit_alice();
    let origin = TestOrigin::http().await;
    let krb5 = ("KRB5_CONFIG", kdc.krb5_conf().display().to_string());
    let parent = TestProxy::start_with_env(
        &format!(
            "[server]\nconnect_ports = [{}]\nvia_pseudonym = \"parent\"\n\
             [auth]\nschemes = [\"negotiate\"]\n[auth.negotiate]\nkeytab = \"{}\"\n\
             [tls]\ninspect = false\n",
            origin.addr.port(),
            kdc.keytab().display()
        ),
        &[
            krb5.clone(),
            ("KRB5RCACHEDIR", kdc.rcache().display().to_string()),
        ],
    );
    let ours = TestProxy::start_with_env(
        &format!(
            "[server]\nconnect_ports = [{}]\n[tls]\ninspect = false\n\
             [policy]\ndefault_route = \"kerberos\"\n\
             [[upstream.parents]]\nname = \"kerberos\"\naddress = \"localhost:{}\"\nnegotiate = true\n",
            origin.addr.port(),
            parent.addr.port()
        ),
        &[krb5.clone(), ("KRB5CCNAME", format!("FILE:{}", cc.display()))],
    );
    let url = origin.url("/krb");
    for _ in 0..2 {
        let get = curl(&["-x", &ours.url(), &url]).await;
        assert_eq!(
            get.status,
            200,
            "{get:?}\n{}\n{}",
            ours.stderr(),
            parent.stderr()
        );
    }
    let tunnel = curl(&["-p", "-x", &ours.url(), &url]).await;
    assert_eq!(tunnel.status, 200, "{tunnel:?}\n{}", ours.stderr());
    let log = parent.access_log(3);
    assert_eq!(
        log.iter()
            .filter(|l| l.contains("TCP_MISS/200") && l.contains(" alice@LAB.TEST "))
            .count(),
        2,
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("TCP_TUNNEL/200") && l.contains(" alice@LAB.TEST ")),
        "{log:?}"
    );
    // The parent authenticated every request and the CONNECT with a token of its own (a
    // replayed one would fail its replay cache), though the second GET reused the first's
    // pooled connection.
    let metrics = scrape(&parent.admin_url()).await;
    let attempts = |result: &str| {
        metrics.value(
            "portcullis_auth_attempts_total",
            &["scheme=\"negotiate\"", &format!("result=\"{result}\"")],
        )
    };
    assert_eq!(attempts("success"), 3.0, "{}", parent.stderr());
    assert_eq!(attempts("failure"), 0.0, "{}", parent.stderr());
    assert_eq!(
        metrics.value("portcullis_client_connections_total", &[]),
        2.0,
        "one pooled connection for both GETs, one for the CONNECT"
    );

    // Without a ticket for the parent's service: a clear error, never a 407.
    let wrong = TestProxy::start_with_env(
        &format!(
            "[server]\nconnect_ports = [{}]\n[tls]\ninspect = false\n\
             [[upstream.parents]]\nname = \"kerberos\"\naddress = \"localhost:{}\"\n\
             negotiate = true\nservice_principal = \"HTTP@nowhere.lab.test\"\n\
             [policy]\ndefault_route = \"kerberos\"\n",
            origin.addr.port(),
            parent.addr.port()
        ),
        &[krb5, ("KRB5CCNAME", format!("FILE:{}", cc.display()))],
    );
    let refused = curl(&["-x", &wrong.url(), &url]).await;
    assert_eq!(refused.status, 502, "{refused:?}");
    assert_eq!(
        refused.header("x-portcullis-error").as_deref(),
        Some("parent-auth-failed")
    );
    assert!(
        refused.header("proxy-authenticate").is_none(),
        "{refused:?}"
    );
    assert!(
        refused.body_text().contains("nowhere.lab.test"),
        "{}",
        refused.body_text()
    );
    let connect = curl(&["-p", "-x", &wrong.url(), "-w", "%{http_connect}", &url]).await;
    assert!(connect.headers.contains("502"), "{connect:?}");
    assert!(!connect.headers.contains("407"), "{connect:?}");
    assert!(
        connect.headers.contains("parent-auth-failed"),
        "{connect:?}"
    );
    // Our ticket is not the parent's health: it stays up, the failures count as auth.
    let metrics = scrape(&wrong.admin_url()).await;
    assert_eq!(
        metrics.value(
            "portcullis_parent_failures_total",
            &["parent=\"kerberos\"", "kind=\"auth\""]
        ),
        2.0
    );
    assert_eq!(
        metrics.value("portcullis_parent_up", &["parent=\"kerberos\""]),
        1.0
    );
    // The parent never saw a request from it.
    assert_eq!(
        scrape(&parent.admin_url())
            .await
            .value("portcullis_client_connections_total", &[]),
        2.0
    );
}

/// The service way: no `kinit`, a client keytab (`KRB5_CLIENT_KTNAME`) and a memory cache the
/// process fills and renews itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kerberos_to_a_parent_from_a_client_keytab() {
    if !portcullis_e2e::kdc::available() {
        return;
    }
    let kdc = portcullis_e2e::kdc::Kdc::start(&["localhost"]);
    let keytab = kdc.client_keytab_alice();
    let origin = TestOrigin::http().await;
    let krb5 = ("KRB5_CONFIG", kdc.krb5_conf().display().to_string());
    let parent = TestProxy::start_with_env(
        &format!(
            "[server]\nvia_pseudonym = \"parent\"\n\
             [auth]\nschemes = [\"negotiate\"]\n[auth.negotiate]\nkeytab = \"{}\"\n",
            kdc.keytab().display()
        ),
        &[
            krb5.clone(),
            ("KRB5RCACHEDIR", kdc.rcache().display().to_string()),
        ],
    );
    let ours = TestProxy::start_with_env(
        &format!(
            "[policy]\ndefault_route = \"kerberos\"\n\
             [[upstream.parents]]\nname = \"kerberos\"\naddress = \"localhost:{}\"\n\
             negotiate = true\nservice_principal = \"HTTP@localhost\"\n",
            parent.addr.port()
        ),
        &[
            krb5,
            ("KRB5_CLIENT_KTNAME", keytab.display().to_string()),
            ("KRB5CCNAME", "MEMORY:portcullis".to_owned()),
        ],
    );
    let get = curl(&["-x", &ours.url(), &origin.url("/keytab")]).await;
    assert_eq!(
        get.status,
        200,
        "{get:?}\n{}\n{}",
        ours.stderr(),
        parent.stderr()
    );
    let log = parent.access_log(1);
    assert!(
        log[0].contains("TCP_MISS/200") && log[0].contains(" alice@LAB.TEST "),
        "{log:?}"
    );
}
