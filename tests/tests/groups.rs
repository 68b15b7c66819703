//! Group membership for `group` rules (issue 20): a group file and a real OpenLDAP `slapd`,
//! with Basic users from a real htpasswd file and curl as the client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use portcullis_e2e::kdc::{self, Kdc};
use portcullis_e2e::slapd::{self, Slapd};
use portcullis_e2e::{curl, htpasswd, scrape_until, TestOrigin, TestProxy};

/// alice, bob, carol and the spellings `LAB\alice` and `alice@LAB.TEST`, all with `pw`.
fn users(dir: &Path) -> std::path::PathBuf {
    let file = dir.join("users.htpasswd");
    for user in ["alice", "bob", "carol", "LAB\\alice", "Alice@LAB.TEST"] {
        htpasswd(&file, "-B", user, "pw");
    }
    file
}

/// `finance` denied on /finance/, `CN=Staff` (spelled as a DN, oddly) denied on /staff/.
const RULES: &str = r#"
[[policy.rules]]
name = "finance-only"
path = "/finance/"
group = "Finance"
action = "deny"
reason = "Finance may not."

[[policy.rules]]
name = "staff-by-dn"
path = "/staff/"
group = "CN=Staff, OU=Groups,DC=lab,DC=test"
action = "deny"
reason = "Staff may not."
"#;

async fn get(proxy: &TestProxy, user: &str, url: &str) -> u16 {
    let r = curl(&["-x", &proxy.url(), "-U", &format!("{user}:pw"), url]).await;
    r.status
}

fn json_lines(proxy: &TestProxy, n: usize) -> Vec<serde_json::Value> {
    proxy
        .access_log(n)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_file_decides_and_is_reloaded_on_change() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = users(dir.path());
    let groups = dir.path().join("htgroup");
    std::fs::write(&groups, "# finance team\nfinance: alice\nother: carol\n").unwrap();
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start(&format!(
        "[auth]\nschemes = [\"basic\"]\nhtpasswd = \"{}\"\n[auth.groups]\nsources = [\"file\"]\nfile = \"{}\"\n\
         [access_log]\nformat = \"json\"\n{RULES}",
        htpasswd.display(),
        groups.display()
    ));
    let finance = origin.url("/finance/report");
    for (user, want) in [
        ("alice", 403),
        ("LAB\\alice", 403),
        ("Alice@LAB.TEST", 403),
        ("bob", 200),
        ("carol", 200),
    ] {
        assert_eq!(
            get(&proxy, user, &finance).await,
            want,
            "{user}\n{}",
            proxy.stderr()
        );
    }
    // A group the client claims in a header is nothing: groups come from the file only.
    let r = curl(&[
        "-x",
        &proxy.url(),
        "-U",
        "bob:pw",
        "-H",
        "X-Groups: finance",
        &finance,
    ])
    .await;
    assert_eq!(r.status, 200);
    let log = json_lines(&proxy, 6);
    let alice = log.iter().find(|l| l["user"] == "alice").unwrap();
    assert_eq!(alice["groups"], serde_json::json!(["finance"]), "{alice}");
    assert_eq!(alice["rule"], "finance-only", "{alice}");
    let carol = log.iter().find(|l| l["user"] == "carol").unwrap();
    assert_eq!(carol["groups"], serde_json::json!(["other"]), "{carol}");

    // An edit is picked up without a signal (the file is polled like the htpasswd file).
    std::fs::write(&groups, "finance: alice bob\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&proxy, "bob", &finance).await != 403 {
        assert!(
            Instant::now() < deadline,
            "edit not picked up\n{}",
            proxy.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A broken file keeps the previous groups, and says so.
    std::fs::write(&groups, "finance alice bob carol\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy.stderr().contains("group file reload failed") {
        assert!(
            Instant::now() < deadline,
            "no complaint\n{}",
            proxy.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(proxy.stderr().contains("line 1"), "{}", proxy.stderr());
    assert_eq!(get(&proxy, "bob", &finance).await, 403);
    assert_eq!(get(&proxy, "carol", &finance).await, 200);
}

#[test]
fn a_missing_group_file_is_a_start_error_naming_the_key() {
    let err = match TestProxy::try_start(
        "[auth.groups]\nsources = [\"file\"]\nfile = \"/nonexistent/htgroup\"\n",
    ) {
        Ok(_) => panic!("started without its group file"),
        Err(e) => e,
    };
    assert!(
        err.contains("auth.groups.file") && err.contains("/nonexistent/htgroup"),
        "{err}"
    );
}

fn ldap_proxy(dir: &Path, directory: &Slapd, extra: &str) -> TestProxy {
    TestProxy::start(&format!(
        "[auth]\nschemes = [\"basic\"]\nhtpasswd = \"{}\"\n[auth.groups]\nsources = [\"ldap\"]\n{extra}\n{}\n\
         [access_log]\nformat = \"json\"\n{RULES}",
        users(dir).display(),
        directory.groups_toml(),
    ))
}

/// Nested groups from the directory decide `group` rules in every spelling of the user and of
/// the group; the JSON log names the groups; lookups are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_groups_nested_decide_rules() {
    if !slapd::available() {
        return;
    }
    let directory = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let origin = TestOrigin::http().await;
    let proxy = ldap_proxy(dir.path(), &directory, "");
    let (finance, staff) = (origin.url("/finance/x"), origin.url("/staff/x"));
    // alice: team-a → finance → staff; bob: finance → staff; carol: nothing.
    for (user, url, want) in [
        ("alice", &finance, 403),
        ("LAB\\alice", &finance, 403),
        ("Alice@LAB.TEST", &staff, 403),
        ("alice", &staff, 403),
        ("bob", &finance, 403),
        ("bob", &staff, 403),
        ("carol", &finance, 200),
        ("carol", &staff, 200),
    ] {
        assert_eq!(
            get(&proxy, user, url).await,
            want,
            "{user} {url}\n{}",
            proxy.stderr()
        );
    }
    let log = json_lines(&proxy, 8);
    let alice = log.iter().find(|l| l["user"] == "alice").unwrap();
    let groups: Vec<&str> = alice["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g.as_str())
        .collect();
    for want in [
        "team-a",
        "finance",
        "staff",
        "cn=staff,ou=groups,dc=lab,dc=test",
    ] {
        assert!(groups.contains(&want), "{want} in {groups:?}");
    }
    let s = scrape_until(&proxy.admin_url(), |s| {
        s.value(
            "portcullis_group_lookups_total",
            &[r#"source="ldap""#, r#"result="hit""#],
        ) >= 1.0
    })
    .await;
    // Three accounts looked up once each (the cache answers the rest; the spellings of alice
    // are one account).
    assert_eq!(
        s.value(
            "portcullis_group_lookups_total",
            &[r#"source="ldap""#, r#"result="miss""#]
        ),
        3.0,
        "{}",
        s.0
    );
    assert_eq!(
        s.value("portcullis_group_lookups_total", &[r#"result="error""#]),
        0.0
    );
    assert!(s.value("portcullis_group_lookup_duration_seconds_count", &[]) >= 3.0);
}

/// A membership change shows after the TTL (refreshed in the background); with slapd stopped,
/// cached answers keep deciding, an account with no cached answer gets no groups at once, and
/// the failure is counted and logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_change_after_ttl_and_outage_keeps_cached_answers() {
    if !slapd::available() {
        return;
    }
    let mut directory = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let origin = TestOrigin::http().await;
    let proxy = ldap_proxy(dir.path(), &directory, "ttl = \"1s\"\ntimeout = \"1s\"");
    let finance = origin.url("/finance/x");
    assert_eq!(
        get(&proxy, "carol", &finance).await,
        200,
        "{}",
        proxy.stderr()
    );
    assert_eq!(get(&proxy, "alice", &finance).await, 403);
    directory.add_member("team-a", &slapd::user_dn("carol"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(&proxy, "carol", &finance).await != 403 {
        assert!(
            Instant::now() < deadline,
            "change not picked up\n{}",
            proxy.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    directory.stop();
    // Past the TTL: the refreshes fail, the cached answers stay.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for user in ["alice", "carol", "alice", "carol"] {
        assert_eq!(
            get(&proxy, user, &finance).await,
            403,
            "{user}\n{}",
            proxy.stderr()
        );
    }
    // bob was never looked up: no answer to fall back on, so his rule does not match — and
    // the request does not hang.
    let started = Instant::now();
    assert_eq!(get(&proxy, "bob", &finance).await, 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let s = scrape_until(&proxy.admin_url(), |s| {
        s.value("portcullis_group_lookups_total", &[r#"result="error""#]) >= 1.0
    })
    .await;
    assert!(
        s.value("portcullis_group_lookups_total", &[r#"result="stale""#]) >= 1.0,
        "{}",
        s.0
    );
    assert!(
        proxy.stderr().contains("directory group lookup failed"),
        "{}",
        proxy.stderr()
    );

    // The directory comes back: bob's groups are found.
    directory.resume();
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&proxy, "bob", &finance).await != 403 {
        assert!(
            Instant::now() < deadline,
            "directory back, bob still unknown\n{}",
            proxy.stderr()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn tls_proxy(dir: &Path, directory: &Slapd, urls: &[&str], extra: &str) -> TestProxy {
    TestProxy::start(&format!(
        "[auth]\nschemes = [\"basic\"]\nhtpasswd = \"{}\"\n[auth.groups]\nsources = [\"ldap\"]\n{}\n{RULES}",
        users(dir).display(),
        directory.groups_toml_with(urls, extra),
    ))
}

/// LDAPS and StartTLS against the directory's own CA; a first URL that is down fails over to
/// the next; a CA the server's certificate does not chain to gets no groups (and says why).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_over_tls_with_failover() {
    if !slapd::available() {
        return;
    }
    let directory = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    let origin = TestOrigin::http().await;
    let finance = origin.url("/finance/x");
    let ca = format!("ca_file = {:?}", directory.ca_file().display().to_string());
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("ldaps://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    let ldaps = tls_proxy(dir.path(), &directory, &[&dead, &directory.url_tls()], &ca);
    assert_eq!(
        get(&ldaps, "alice", &finance).await,
        403,
        "{}",
        ldaps.stderr()
    );
    assert!(
        ldaps.stderr().contains("trying the next"),
        "{}",
        ldaps.stderr()
    );
    let starttls = tls_proxy(
        dir.path(),
        &directory,
        &[&directory.url()],
        &format!("starttls = true\n{ca}"),
    );
    assert_eq!(
        get(&starttls, "bob", &finance).await,
        403,
        "{}",
        starttls.stderr()
    );

    // Trusting another CA: the TLS handshake fails, alice gets no groups, the rule does not match.
    let other_ca = dir.path().join("other.pem");
    let other = TestOrigin::https().await;
    std::fs::copy(other.ca_file.as_ref().unwrap(), &other_ca).unwrap();
    let untrusted = tls_proxy(
        dir.path(),
        &directory,
        &[&directory.url_tls()],
        &format!("ca_file = {:?}", other_ca.display().to_string()),
    );
    assert_eq!(
        get(&untrusted, "alice", &finance).await,
        200,
        "{}",
        untrusted.stderr()
    );
    assert!(
        untrusted.stderr().contains("directory group lookup failed"),
        "{}",
        untrusted.stderr()
    );
}

/// SASL GSSAPI: the proxy binds to slapd (`ldap/localhost`) as `HTTP/localhost`, from the
/// keytab it would accept Negotiate with, given as its client keytab (`KRB5_CLIENT_KTNAME`);
/// nested groups decide as with a simple bind. Without usable Kerberos credentials the bind
/// fails at once: the user has no directory groups (the rule does not match), and the failure
/// is logged with GSS-API's reason and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_bind_with_the_proxy_keytab() {
    if !slapd::available() || !slapd::gssapi_available() || !kdc::available() {
        return;
    }
    let kdc = Kdc::start(&["localhost"]);
    let directory = Slapd::start_kerberos(
        &kdc.krb5_conf(),
        &kdc.service_keytab("ldap/localhost", "ldap.keytab"),
    );
    let dir = tempfile::tempdir().unwrap();
    let origin = TestOrigin::http().await;
    let (finance, staff) = (origin.url("/finance/x"), origin.url("/staff/x"));
    let htpasswd = users(dir.path());
    let config_with = |ldap: String| {
        format!(
            "[auth]\nschemes = [\"basic\"]\nhtpasswd = \"{}\"\n[auth.groups]\nsources = [\"ldap\"]\n{ldap}\n\
             [access_log]\nformat = \"json\"\n{RULES}",
            htpasswd.display(),
        )
    };
    let config = config_with(directory.groups_toml_gssapi());
    let env = |client_keytab: &Path| {
        vec![
            ("KRB5_CONFIG", kdc.krb5_conf().display().to_string()),
            ("KRB5_CLIENT_KTNAME", client_keytab.display().to_string()),
            // Tickets stay in the process (not in a /tmp/krb5cc_<uid> other tests share).
            ("KRB5CCNAME", "MEMORY:portcullis".to_owned()),
        ]
    };
    let proxy = TestProxy::start_with_env(&config, &env(&kdc.keytab()));
    for (user, url, want) in [
        ("alice", &finance, 403),
        ("bob", &staff, 403),
        ("carol", &finance, 200),
    ] {
        assert_eq!(
            get(&proxy, user, url).await,
            want,
            "{user} {url}\n{}",
            proxy.stderr()
        );
    }
    let log = json_lines(&proxy, 3);
    let alice = log.iter().find(|l| l["user"] == "alice").unwrap();
    assert_eq!(alice["rule"], "finance-only", "{alice}");
    let groups = alice["groups"].to_string();
    for want in ["\"team-a\"", "\"finance\"", "\"staff\""] {
        assert!(groups.contains(want), "{want} in {groups}");
    }
    let s = scrape_until(&proxy.admin_url(), |s| {
        s.value(
            "portcullis_group_lookups_total",
            &[r#"source="ldap""#, r#"result="miss""#],
        ) >= 3.0
    })
    .await;
    assert_eq!(
        s.value("portcullis_group_lookups_total", &[r#"result="error""#]),
        0.0,
        "{}",
        s.0
    );

    // StartTLS to the address the server certificate names, the principal named by
    // `sasl_host`: Kerberos authenticates inside TLS (no SASL security layer).
    let tls = TestProxy::start_with_env(
        &config_with(directory.groups_toml_gssapi_with(
            &directory.url(),
            &format!(
                "sasl_host = \"localhost\"\nstarttls = true\nca_file = {:?}",
                directory.ca_file().display().to_string()
            ),
        )),
        &env(&kdc.keytab()),
    );
    assert_eq!(get(&tls, "bob", &finance).await, 403, "{}", tls.stderr());
    assert_eq!(get(&tls, "carol", &finance).await, 200, "{}", tls.stderr());

    // No credentials (the client keytab is missing): no groups, at once, and says why.
    let broken = TestProxy::start_with_env(&config, &env(&dir.path().join("missing.keytab")));
    let started = Instant::now();
    assert_eq!(
        get(&broken, "alice", &finance).await,
        200,
        "{}",
        broken.stderr()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let stderr = broken.stderr();
    assert!(
        stderr.contains("directory group lookup failed")
            && stderr.contains("SASL GSSAPI bind to ldap/localhost failed"),
        "{stderr}"
    );
    let s = scrape_until(&broken.admin_url(), |s| {
        s.value("portcullis_group_lookups_total", &[r#"result="error""#]) >= 1.0
    })
    .await;
    assert_eq!(
        s.value(
            "portcullis_group_lookups_total",
            &[r#"source="ldap""#, r#"result="miss""#]
        ),
        1.0,
        "{}",
        s.0
    );
}

/// A KDC that takes the connection and never answers: GSS-API blocks in the bind, on a
/// blocking thread. The request waits at most `[auth.groups] timeout` (the rule does not
/// match), and the next lookup does not start a second stuck bind but fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_kerberos_bind_does_not_wait_for_a_silent_kdc() {
    if !slapd::available() || !kdc::available() {
        return;
    }
    let kdc = Kdc::start(&["localhost"]);
    let directory = Slapd::start();
    let dir = tempfile::tempdir().unwrap();
    // Listening, never accepting: the kernel completes the handshake, nobody reads.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let krb5_conf = dir.path().join("krb5.conf");
    std::fs::write(
        &krb5_conf,
        format!(
            "[libdefaults]\n default_realm = {realm}\n dns_lookup_kdc = false\n dns_lookup_realm = false\n \
             rdns = false\n dns_canonicalize_hostname = false\n udp_preference_limit = 1\n\
             [realms]\n {realm} = {{\n  kdc = {}\n }}\n[domain_realm]\n localhost = {realm}\n",
            silent.local_addr().unwrap(),
            realm = kdc::REALM
        ),
    )
    .unwrap();
    let origin = TestOrigin::http().await;
    let finance = origin.url("/finance/x");
    let proxy = TestProxy::start_with_env(
        &format!(
            "[auth]\nschemes = [\"basic\"]\nhtpasswd = \"{}\"\n[auth.groups]\nsources = [\"ldap\"]\ntimeout = \"1s\"\n{}\n{RULES}",
            users(dir.path()).display(),
            directory.groups_toml_gssapi_with(&directory.url_localhost(), ""),
        ),
        &[
            ("KRB5_CONFIG", krb5_conf.display().to_string()),
            ("KRB5_CLIENT_KTNAME", kdc.keytab().display().to_string()),
            ("KRB5CCNAME", "MEMORY:portcullis".to_owned()),
        ],
    );
    for user in ["alice", "bob"] {
        let started = Instant::now();
        assert_eq!(get(&proxy, user, &finance).await, 200, "{}", proxy.stderr());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{user}: {:?}",
            started.elapsed()
        );
    }
    let stderr = proxy.stderr();
    assert!(stderr.contains("no answer within 1s"), "{stderr}");
    assert!(
        stderr.contains("the previous SASL GSSAPI bind to ldap/localhost has not finished"),
        "{stderr}"
    );
}
