//! Negotiate (Kerberos) proxy authentication against a real MIT KDC, with curl as the client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use portcullis_e2e::kdc::{self, Kdc};
use portcullis_e2e::{curl_env, TestOrigin, TestProxy};

fn proxy_for(kdc: &Kdc, extra: &str) -> TestProxy {
    TestProxy::start_with_env(
        &format!(
            "[auth]\nschemes = [\"negotiate\"]\n[auth.negotiate]\nkeytab = \"{}\"\n{extra}",
            kdc.keytab().display()
        ),
        &[
            ("KRB5_CONFIG", kdc.krb5_conf().display().to_string()),
            ("KRB5RCACHEDIR", kdc.rcache().display().to_string()),
        ],
    )
}

fn client_env(kdc: &Kdc, ccache: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        ("KRB5_CONFIG", kdc.krb5_conf().display().to_string()),
        ("KRB5CCNAME", format!("FILE:{}", ccache.display())),
    ]
}

/// The proxy is addressed as `localhost`, so curl asks for `HTTP/localhost@LAB.TEST`.
fn proxy_url(proxy: &TestProxy) -> String {
    format!("http://localhost:{}", proxy.addr.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kerberos_ticket_authenticates_http_and_connect() {
    if !kdc::available() {
        return;
    }
    let kdc = Kdc::start(&["localhost"]);
    let cc = kdc.kinit_alice();
    let origin = TestOrigin::http().await;
    let tls_origin = TestOrigin::https().await;
    let proxy = proxy_for(
        &kdc,
        &format!(
            "[server]\nconnect_ports = [{}]\n[tls]\ninspect = false\n",
            tls_origin.addr.port()
        ),
    );
    let env = client_env(&kdc, &cc);

    let r = curl_env(
        &[
            "--proxy-negotiate",
            "-U",
            ":",
            "-x",
            &proxy_url(&proxy),
            &origin.url("/"),
        ],
        &env,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}\n{}", proxy.stderr());
    // Mutual authentication: the proxy proves itself with a reply token.
    let reply = r.header("proxy-authenticate").unwrap_or_default();
    assert!(
        reply.starts_with("Negotiate ") && reply.len() > 20,
        "{}",
        r.headers
    );
    assert!(origin.seen()[0]
        .headers
        .get("proxy-authorization")
        .is_none());

    let ca = tls_origin.ca_file.as_ref().unwrap().display().to_string();
    let url = format!("https://localhost:{}/", tls_origin.addr.port());
    let t = curl_env(
        &[
            "--proxy-negotiate",
            "-U",
            ":",
            "-x",
            &proxy_url(&proxy),
            "-p",
            "--cacert",
            &ca,
            &url,
        ],
        &env,
    )
    .await;
    assert_eq!(t.status, 200, "{t:?}\n{}", proxy.stderr());

    let log = proxy.access_log(2);
    assert!(
        log.iter()
            .any(|l| l.contains("TCP_MISS/200") && l.contains(" alice@LAB.TEST ")),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("TCP_TUNNEL/200") && l.contains(" alice@LAB.TEST ")),
        "{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ticket_is_407_with_a_negotiate_challenge() {
    if !kdc::available() {
        return;
    }
    let kdc = Kdc::start(&["localhost"]);
    let origin = TestOrigin::http().await;
    let proxy = proxy_for(&kdc, "strip_realm = true\n");
    let empty = kdc.dir.path().join("cc.empty");
    let r = curl_env(
        &[
            "--proxy-negotiate",
            "-U",
            ":",
            "-x",
            &proxy_url(&proxy),
            &origin.url("/"),
        ],
        &client_env(&kdc, &empty),
    )
    .await;
    assert_eq!(r.status, 407, "{r:?}");
    assert_eq!(r.header("proxy-authenticate").as_deref(), Some("Negotiate"));
    assert!(origin.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keytab_without_the_spn_is_407_and_says_why() {
    if !kdc::available() {
        return;
    }
    // The keytab only has HTTP/other.lab.test; the client asks for HTTP/localhost.
    let kdc = Kdc::start(&["other.lab.test"]);
    std::process::Command::new("sh")
        .args([
            "-c",
            "kadmin.local -q 'addprinc -randkey HTTP/localhost' >/dev/null",
        ])
        .env("KRB5_CONFIG", kdc.krb5_conf())
        .env("KRB5_KDC_PROFILE", kdc.dir.path().join("kdc.conf"))
        .status()
        .unwrap();
    let cc = kdc.kinit_alice();
    let origin = TestOrigin::http().await;
    let proxy = proxy_for(&kdc, "");
    let r = curl_env(
        &[
            "--proxy-negotiate",
            "-U",
            ":",
            "-x",
            &proxy_url(&proxy),
            &origin.url("/"),
        ],
        &client_env(&kdc, &cc),
    )
    .await;
    assert_eq!(r.status, 407, "{r:?}");
    let log = proxy.stderr();
    assert!(log.contains("Negotiate handshake failed"), "{log}");
    assert!(
        log.contains("HTTP/localhost"),
        "the log does not name the SPN asked for: {log}"
    );
}

/// Negotiate and directory groups together: the Kerberos principal `alice@LAB.TEST` is the
/// directory account `alice`, whose nested group `finance` a rule denies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kerberos_user_gets_directory_groups() {
    use portcullis_e2e::slapd::{self, Slapd};
    if !kdc::available() || !slapd::available() {
        return;
    }
    let kdc = Kdc::start(&["localhost"]);
    let cc = kdc.kinit_alice();
    let directory = Slapd::start();
    let origin = TestOrigin::http().await;
    let proxy = proxy_for(
        &kdc,
        &format!(
            "[auth.groups]\nsources = [\"ldap\"]\n{}\n[access_log]\nformat = \"json\"\n\
             [[policy.rules]]\nname = \"no-finance\"\npath = \"/finance/\"\ngroup = \"finance\"\naction = \"deny\"\nreason = \"no\"\n",
            directory.groups_toml()
        ),
    );
    let env = client_env(&kdc, &cc);
    let get = |path: &str| {
        let url = origin.url(path);
        let proxy_url = proxy_url(&proxy);
        let env = env.clone();
        async move {
            curl_env(
                &["--proxy-negotiate", "-U", ":", "-x", &proxy_url, &url],
                &env,
            )
            .await
            .status
        }
    };
    assert_eq!(get("/finance/q").await, 403, "{}", proxy.stderr());
    assert_eq!(get("/other").await, 200, "{}", proxy.stderr());
    let log = proxy.access_log(2);
    let line: serde_json::Value = serde_json::from_str(&log[0]).unwrap();
    assert_eq!(line["user"], "alice@LAB.TEST", "{line}");
    assert_eq!(line["rule"], "no-finance", "{line}");
    let groups = line["groups"].to_string();
    assert!(
        groups.contains("\"finance\"") && groups.contains("\"team-a\""),
        "{line}"
    );
}
