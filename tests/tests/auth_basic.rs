//! Basic proxy authentication against htpasswd files written by Apache's real `htpasswd`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use portcullis_e2e::{curl, htpasswd, htpasswd_with, raw, TestOrigin, TestProxy};

/// An htpasswd file with one user per supported hash format and tool: u_<format> / pw-<format>.
fn users_file(dir: &Path) -> std::path::PathBuf {
    let file = dir.join("users.htpasswd");
    htpasswd(&file, "-B", "u_bcrypt", "pw-bcrypt");
    htpasswd(&file, "-m", "u_apr1", "pw-apr1");
    htpasswd(&file, "-2", "u_sha256", "pw-sha256");
    htpasswd(&file, "-5", "u_sha512", "pw-sha512");
    htpasswd(&file, "-s", "u_sha1", "pw-sha1");
    htpasswd(&file, "-B", "colon", "pa:ss:word");
    // Hashes with parameters other than the defaults, and MD5 crypt from openssl: both magics.
    let mut text = std::fs::read_to_string(&file).unwrap();
    for (user, program, args) in [
        (
            "u_bcrypt7",
            "htpasswd",
            &["-nbB", "-C", "7", "u", "pw-bcrypt7"][..],
        ),
        (
            "u_sha256r",
            "htpasswd",
            &["-nb2", "-r", "1234", "u", "pw-sha256r"],
        ),
        (
            "u_sha512r",
            "htpasswd",
            &["-nb5", "-r", "12000", "u", "pw-sha512r"],
        ),
        ("u_md5crypt", "openssl", &["passwd", "-1", "pw-md5crypt"]),
        (
            "u_apr1openssl",
            "openssl",
            &["passwd", "-apr1", "pw-apr1openssl"],
        ),
    ] {
        let out = Command::new(program).args(args).output().unwrap();
        assert!(out.status.success(), "{program} {args:?}: {out:?}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        // htpasswd -n prints `u:hash`, openssl only the hash.
        let hash = stdout.trim().trim_start_matches("u:");
        text.push_str(&format!("{user}:{hash}\n"));
    }
    std::fs::write(&file, text).unwrap();
    file
}

/// Every format `users_file` writes.
const FORMATS: [&str; 10] = [
    "bcrypt",
    "bcrypt7",
    "apr1",
    "apr1openssl",
    "sha256",
    "sha256r",
    "sha512",
    "sha512r",
    "sha1",
    "md5crypt",
];

fn basic_config(file: &Path, extra: &str) -> String {
    format!(
        "[auth]\nschemes = [\"basic\"]\nrealm = \"Lab Proxy\"\nhtpasswd = \"{}\"\n{extra}",
        file.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hash_format_right_wrong_and_missing() {
    let dir = tempfile::tempdir().unwrap();
    let file = users_file(dir.path());
    let origin = TestOrigin::http().await;
    // A wrong password per format: more failures than the throttle lets through undelayed.
    let proxy = TestProxy::start(&basic_config(&file, "[auth.throttle]\nfailures = 100\n"));
    let url = origin.url("/");
    for format in FORMATS {
        let good = curl(&[
            "-x",
            &proxy.url(),
            "-U",
            &format!("u_{format}:pw-{format}"),
            &url,
        ])
        .await;
        assert_eq!(good.status, 200, "{format}: {good:?}");
        let bad = curl(&["-x", &proxy.url(), "-U", &format!("u_{format}:wrong"), &url]).await;
        assert_eq!(bad.status, 407, "{format} accepted a wrong password");
    }
    let colon = curl(&["-x", &proxy.url(), "-U", "colon:pa:ss:word", &url]).await;
    assert_eq!(colon.status, 200, "a colon in the password");
    let unknown = curl(&["-x", &proxy.url(), "-U", "nobody:pw", &url]).await;
    assert_eq!(unknown.status, 407);

    let missing = curl(&["-x", &proxy.url(), &url]).await;
    assert_eq!(missing.status, 407);
    assert_eq!(
        missing.header("proxy-authenticate").as_deref(),
        Some("Basic realm=\"Lab Proxy\", charset=\"UTF-8\"")
    );
    assert_eq!(
        missing.header("x-portcullis-error").as_deref(),
        Some("auth-required")
    );

    // One user per format and the colon user authenticated; the origin never saw credentials.
    assert_eq!(origin.seen().len(), FORMATS.len() + 1);
    assert!(origin
        .seen()
        .iter()
        .all(|s| s.headers.get("proxy-authorization").is_none()));
    let log = proxy.access_log(2 * FORMATS.len() + 3);
    assert!(
        log.iter().any(|l| l.contains(" u_bcrypt HIER_DIRECT")),
        "{log:?}"
    );
    assert!(log.iter().any(|l| l.contains("TCP_DENIED/407")), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_authenticated_before_the_tunnel_opens() {
    let dir = tempfile::tempdir().unwrap();
    let file = users_file(dir.path());
    let origin = TestOrigin::https().await;
    let proxy = TestProxy::start(&basic_config(
        &file,
        &format!(
            "[server]\nconnect_ports = [{}]\n[tls]\ninspect = false\n",
            origin.addr.port()
        ),
    ));
    let ca = origin.ca_file.as_ref().unwrap().display().to_string();
    let url = format!("https://localhost:{}/", origin.addr.port());
    let denied = curl(&["-x", &proxy.url(), "-p", "--cacert", &ca, &url]).await;
    assert_ne!(denied.exit, 0);
    assert!(
        denied.headers.starts_with("HTTP/1.1 407"),
        "{}",
        denied.headers
    );
    assert_eq!(
        origin.connections(),
        0,
        "the tunnel was dialled before authentication"
    );
    let ok = curl(&[
        "-x",
        &proxy.url(),
        "-U",
        "u_apr1:pw-apr1",
        "-p",
        "--cacert",
        &ca,
        &url,
    ])
    .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let log = proxy.access_log(2);
    assert!(
        log.iter()
            .any(|l| l.contains("TCP_TUNNEL/200") && l.contains(" u_apr1 ")),
        "{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_credentials_are_cached() {
    let dir = tempfile::tempdir().unwrap();
    let file = users_file(dir.path());
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start(&basic_config(&file, ""));
    for _ in 0..3 {
        let r = curl(&[
            "-x",
            &proxy.url(),
            "-U",
            "u_bcrypt:pw-bcrypt",
            &origin.url("/"),
        ])
        .await;
        assert_eq!(r.status, 200);
    }
    // The counter the proxy logs with each slow-path verification: bcrypt ran once.
    let verifications = proxy.stderr().matches("password hash verified").count();
    assert_eq!(verifications, 1, "{}", proxy.stderr());
    // A wrong password is never served from the cache.
    let bad = curl(&["-x", &proxy.url(), "-U", "u_bcrypt:nope", &origin.url("/")]).await;
    assert_eq!(bad.status, 407);
    assert_eq!(proxy.stderr().matches("password hash verified").count(), 2);
    // An unknown user costs a hash verification too (against a dummy bcrypt hash), so a wrong
    // user name and a wrong password take the same time.
    let nobody = curl(&["-x", &proxy.url(), "-U", "nobody:nope", &origin.url("/")]).await;
    assert_eq!(nobody.status, 407);
    assert_eq!(proxy.stderr().matches("password hash verified").count(), 3);
}

/// A browser (or Outlook) opens several connections at once with the same credentials: they
/// all miss the cache together, and one bcrypt verification answers them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_opened_together_share_one_hash() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.htpasswd");
    // Cost 12: slow enough (a few hundred ms) that the six requests overlap the first hash.
    htpasswd_with(&file, &["-B", "-C", "12"], "alice", "pw-alice");
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start(&basic_config(&file, ""));
    let (url, proxy_url) = (origin.url("/"), proxy.url());
    let burst = |user: &'static str| {
        let (url, proxy_url) = (&url, &proxy_url);
        futures_util::future::join_all(
            (0..6).map(move |_| async move { curl(&["-x", proxy_url, "-U", user, url]).await }),
        )
    };
    for r in burst("alice:pw-alice").await {
        assert_eq!(r.status, 200, "{r:?}");
    }
    let verifications = proxy.stderr().matches("password hash verified").count();
    assert_eq!(verifications, 1, "{}", proxy.stderr());
    // A wrong password's burst shares its hash too. Failures are not cached, so a request
    // that arrives after the shared hash finished hashes again: fewer than one per request.
    for r in burst("alice:wrong").await {
        assert_eq!(r.status, 407, "{r:?}");
    }
    let wrong = proxy.stderr().matches("password hash verified").count() - 1;
    assert!((1..6).contains(&wrong), "{wrong} hashes for 6 wrong logins");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_changes_are_picked_up_and_broken_files_keep_the_old_users() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users");
    htpasswd(&file, "-B", "alice", "old-pw");
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start(&basic_config(&file, ""));
    let url = origin.url("/");
    assert_eq!(
        curl(&["-x", &proxy.url(), "-U", "alice:old-pw", &url])
            .await
            .status,
        200
    );

    htpasswd(&file, "-B", "alice", "new-pw");
    htpasswd(&file, "-m", "bob", "bob-pw");
    let mut switched = false;
    for _ in 0..50 {
        if curl(&["-x", &proxy.url(), "-U", "alice:new-pw", &url])
            .await
            .status
            == 200
        {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(switched, "new password not accepted after the file changed");
    assert_eq!(
        curl(&["-x", &proxy.url(), "-U", "alice:old-pw", &url])
            .await
            .status,
        407,
        "cached old password survived a reload"
    );
    assert_eq!(
        curl(&["-x", &proxy.url(), "-U", "bob:bob-pw", &url])
            .await
            .status,
        200
    );

    std::fs::write(&file, "alice:plaintext-is-not-allowed\n").unwrap();
    let mut logged = false;
    for _ in 0..50 {
        if proxy.stderr().contains("htpasswd reload failed") {
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(logged, "a broken file was not reported: {}", proxy.stderr());
    assert!(proxy.stderr().contains("line 1"), "{}", proxy.stderr());
    assert_eq!(
        curl(&["-x", &proxy.url(), "-U", "bob:bob-pw", &url])
            .await
            .status,
        200,
        "old users lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exemptions_by_destination_and_client() {
    let dir = tempfile::tempdir().unwrap();
    let file = users_file(dir.path());
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start(&basic_config(
        &file,
        "exempt_clients = [\"127.0.0.77/32\"]\n\
         [[policy.rules]]\nhost = \"*.exempt.test\"\naction = \"inspect\"\nauth = \"exempt\"\n\
         [resolve]\n\"www.exempt.test\" = [\"127.0.0.1\"]\n\"www.other.test\" = [\"127.0.0.1\"]\n",
    ));
    let port = origin.addr.port();
    let exempt = curl(&[
        "-x",
        &proxy.url(),
        &format!("http://www.exempt.test:{port}/"),
    ])
    .await;
    assert_eq!(exempt.status, 200, "{exempt:?}");
    let other = curl(&[
        "-x",
        &proxy.url(),
        &format!("http://www.other.test:{port}/"),
    ])
    .await;
    assert_eq!(other.status, 407);
    let from_exempt_client = curl(&[
        "--interface",
        "127.0.0.77",
        "-x",
        &proxy.url(),
        &format!("http://www.other.test:{port}/"),
    ])
    .await;
    assert_eq!(from_exempt_client.status, 200, "{from_exempt_client:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_credentials_get_407_and_the_proxy_survives() {
    let dir = tempfile::tempdir().unwrap();
    let file = users_file(dir.path());
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start(&basic_config(&file, "[auth.throttle]\nfailures = 100\n"));
    let target = origin.url("/");
    let huge = "A".repeat(10 * 1024);
    let nul = "dV9hcHIxAHg6cHctYXByMQ=="; // base64("u_apr1\0x:pw-apr1")
    let values = [
        "Basic !!!not-base64!!!".to_owned(),
        "Basic".to_owned(),
        "Basic ".to_owned(),
        format!("Basic {huge}"),
        format!("Negotiate {huge}"),
        "Digest username=\"u\"".to_owned(),
        "Bearer abc".to_owned(),
        format!("Basic {nul}"),
        "Basic OnB3".to_owned(), // ":pw", empty user
    ];
    for value in values {
        let answer = raw(
            proxy.addr,
            format!("GET {target} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {value}\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(3),
        )
        .await;
        let status = answer.lines().next().unwrap_or("");
        assert!(
            status.starts_with("HTTP/1.1 407") || status.starts_with("HTTP/1.1 400"),
            "{}…: {status}",
            &value[..value.len().min(20)]
        );
    }
    assert!(origin.seen().is_empty());
    assert_eq!(
        curl(&["-x", &proxy.url(), "-U", "u_apr1:pw-apr1", &target])
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_slow_down_only_that_client() {
    let dir = tempfile::tempdir().unwrap();
    let file = users_file(dir.path());
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start(&basic_config(
        &file,
        "[auth.throttle]\nfailures = 2\nwindow = \"1m\"\nmax_delay = \"1s\"\n",
    ));
    let url = origin.url("/");
    for _ in 0..4 {
        let r = curl(&[
            "--interface",
            "127.0.0.2",
            "-x",
            &proxy.url(),
            "-U",
            "u_apr1:bad",
            &url,
        ])
        .await;
        assert_eq!(r.status, 407);
    }
    let throttled = proxy.stderr();
    assert_eq!(
        throttled.matches("slowing this client down").count(),
        2,
        "{throttled}"
    );
    assert!(throttled.contains("client=127.0.0.2"));
    // Another address is not slowed, and its own failures start from zero (for another name:
    // u_apr1's failures are counted for the name too, from wherever they come).
    let r = curl(&[
        "--interface",
        "127.0.0.3",
        "-x",
        &proxy.url(),
        "-U",
        "u_sha1:bad",
        &url,
    ])
    .await;
    assert_eq!(r.status, 407);
    assert_eq!(
        proxy.stderr().matches("slowing this client down").count(),
        2
    );
    assert!(!proxy.stderr().contains("client=127.0.0.3 delay_ms"));
}

#[test]
fn broken_htpasswd_at_start_names_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users");
    std::fs::write(
        &file,
        "# ok\nalice:$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00\nbob:cleartext\n",
    )
    .unwrap();
    let err = TestProxy::try_start(&basic_config(&file, ""))
        .err()
        .unwrap();
    assert!(
        err.contains("auth.htpasswd") && err.contains("line 3"),
        "{err}"
    );
}

/// One keep-alive connection repeats its `Proxy-Authorization` on every request, and the proxy
/// remembers the connection's last good credentials. That memory must not outlive a password
/// change: after the file is reloaded, the same bytes on the same connection get a 407.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_loses_its_credentials_when_the_password_changes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users");
    htpasswd(&file, "-B", "alice", "old-pw");
    let origin = TestOrigin::http().await;
    let proxy = TestProxy::start(&basic_config(&file, ""));
    let url = origin.url("/");
    let request = format!(
        "GET {url} HTTP/1.1\r\nHost: {}\r\nProxy-Authorization: Basic {}\r\n\r\n",
        url.trim_start_matches("http://").trim_end_matches('/'),
        base64_of("alice:old-pw")
    );
    let mut conn = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    for _ in 0..3 {
        let head = portcullis_e2e::exchange(&mut conn, &request).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    htpasswd(&file, "-B", "alice", "new-pw");
    let mut reloaded = false;
    for _ in 0..50 {
        let r = curl(&["-x", &proxy.url(), "-U", "alice:new-pw", &url]).await;
        if r.status == 200 {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(reloaded, "new password not accepted after the file changed");
    let head = portcullis_e2e::exchange(&mut conn, &request).await;
    assert!(
        head.starts_with("HTTP/1.1 407"),
        "the old password still worked on its connection: {head}"
    );
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}
